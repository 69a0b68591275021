// Every model the registry ships: its verdict with default parameters is the one it declares,
// and no action is vacuous (each is enabled somewhere once the invariants stop no search).
import { describe, expect, it } from 'vitest';
import { explore, neverEnabled } from '../explorer/index.ts';
import { buildModel, flagName, listModels } from '../models/index.ts';

describe('model registry', () => {
  const models = listModels();

  it('ships the fleecing schemes, their known-bad variants, serialization and the NBD session', () => {
    const names = models.map((m) => m.name);
    for (const n of ['s1', 's2', 's3', 's4', 's4-done-before-copy', 's4-qemu-7.2-hbitmap-status', 'serialization', 'nbd-session']) expect(names).toContain(n);
    expect(flagName('onCbwError')).toBe('on-cbw-error');
  });

  for (const entry of models) {
    it(`${entry.name}: verdict "${entry.expect}" with defaults, every action enabled`, () => {
      const m = buildModel(entry.name);
      const r = explore(m, { symmetry: true });
      const expected = { holds: 'ok', violates: 'violation', deadlocks: 'deadlock' }[entry.expect];
      expect(r.verdict).toBe(expected);
      if (entry.expect === 'holds') expect(r.exhaustive).toBe(true);
      const small = buildModel(entry.name, entry.family === 'fleecing' ? { clusters: 2 } : {});
      const cov = explore({ ...small, invariants: [] }, { symmetry: true, checkDeadlock: false });
      expect(cov.exhaustive).toBe(true);
      expect(neverEnabled(cov)).toEqual([]);
    });
  }

  it('refuses unknown models and parameters with the known names', () => {
    expect(() => buildModel('s9')).toThrow(/unknown model 's9'; known models: s1, s2/);
    expect(() => buildModel('s3', { bitmap: true })).toThrow(/model 's3' has no parameter 'bitmap'; its parameters: clusters, writers/);
    expect(() => buildModel('s4', { clusters: 99 }, 'f.json')).toThrow(/f\.json: model 's4': parameter clusters must be in \[1, 16\], got 99/);
  });
});
