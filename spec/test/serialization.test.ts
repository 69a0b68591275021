import { describe, expect, it } from 'vitest';
import { explore, formatLabel, neverEnabled } from '../explorer/index.ts';
import { SERIALIZATION, SERIALIZATION_BAD, serializationModel } from '../models/serialization/index.ts';

const bad = (name: string) => SERIALIZATION_BAD.find((v) => v.name === name)!;

describe('request serialization (docs/requirements/qemu-fleecing.md §2.1)', () => {
  it('holds exhaustively, without deadlock, with every action enabled', () => {
    for (const params of [{}, { reads: 2, writes: 0, serialising: 2 }, { sectors: 6, clusterSize: 4, length: 2 }]) {
      const r = explore(serializationModel(SERIALIZATION, params));
      expect(r.verdict, JSON.stringify(params)).toBe('ok');
      expect(r.exhaustive).toBe(true);
      expect(neverEnabled(r)).toEqual([]);
    }
  });

  it('without cluster widening a serialising write runs beside a read of the same cluster', () => {
    const r = explore(serializationModel(bad('serialization-no-widening')));
    expect(r.verdict).toBe('violation');
    expect(r.counterexample!.message).toMatch(/serialising write S0 \(cluster-aligned window 0-1\) runs concurrently with overlapping read R0/);
    // Cluster size 1: widening changes nothing, so the same variant is safe.
    expect(explore(serializationModel(bad('serialization-no-widening'), { clusterSize: 1 })).verdict).toBe('ok');
  });

  it('dropping rule (a) or (b) lets overlapping requests run together', () => {
    expect(explore(serializationModel(bad('serialization-normal-ignores-serialising'))).verdict).toBe('violation');
    expect(explore(serializationModel(bad('serialization-serialising-ignores-normal'))).verdict).toBe('violation');
  });

  it('not skipping waiting requests deadlocks (detected as pending work with nothing enabled)', () => {
    const r = explore(serializationModel(bad('serialization-no-skip-waiting')));
    expect(r.verdict).toBe('deadlock');
    const labels = r.counterexample!.steps.map((s) => formatLabel(s.label));
    expect(labels).toContain('S0.wait(on=R0)');
    expect(labels).toContain('R0.wait(on=S0)');
  });
});
