// The packed byte form of the fleecing models (spec/models/fleecing/packed.ts) is a second copy
// of enabled/step used by the fast unreduced search: it must agree with the object model on every
// reachable state of every scheme, or the two copies have drifted apart.
import { describe, expect, it } from 'vitest';
import { crossCheckPacked, fleecingModel, S4, S4_QEMU_HBITMAP_STATUS, SCHEMES } from '../models/fleecing/index.ts';
import type { FleecingParams } from '../models/fleecing/index.ts';

const CONFIGS: Array<Partial<FleecingParams>> = [
  { clusters: 2, writers: 2, readers: 2 },
  { clusters: 3, writers: 2, readers: 1, writeSize: 2, readSize: 2 },
  { clusters: 2, writers: 1, readers: 1, tempWriters: 1 },
];
const S4_OPTIONS: Array<Partial<FleecingParams>> = [
  { clusters: 2, writers: 2, readers: 1, bitmap: true, discard: true },
  { clusters: 2, writers: 2, readers: 1, onCbwError: 'break-snapshot', cbwFailures: 1 },
  { clusters: 2, writers: 2, readers: 1, onCbwError: 'break-guest-write', cbwFailures: 1 },
];

function buildOrSkip(scheme: (typeof SCHEMES)[number], params: Partial<FleecingParams>) {
  try {
    return fleecingModel(scheme, params);
  } catch {
    return undefined; // a parameter this scheme does not take (validated by the model)
  }
}

describe('packed fleecing models agree with the object models', () => {
  for (const scheme of SCHEMES) {
    it(scheme.name, () => {
      const configs = scheme.name.startsWith('s4') ? [...CONFIGS, ...S4_OPTIONS] : CONFIGS;
      let checked = 0;
      for (const params of configs) {
        const model = buildOrSkip(scheme, params);
        if (!model || !model.packed) continue;
        expect(crossCheckPacked(model, 20_000), `${scheme.name} ${JSON.stringify(params)}`).toBeUndefined();
        checked++;
      }
      expect(checked).toBeGreaterThan(0);
    });
  }

  it('covers the hbitmap_status flag: s4-qemu-7.2-hbitmap-status with s4\'s packed form is caught', () => {
    const params: Partial<FleecingParams> = { clusters: 2, writers: 1, readers: 1, readSize: 2 };
    const model = fleecingModel(S4_QEMU_HBITMAP_STATUS, params);
    expect(crossCheckPacked(model, 20_000)).toBeUndefined();
    const drifted = { ...model, packed: fleecingModel(S4, params).packed };
    expect(crossCheckPacked(drifted, 20_000)).toMatch(/differs at byte/);
  });

  it('reports a drifted copy (the check can fail)', () => {
    const model = fleecingModel(SCHEMES[0]!, { clusters: 2, writers: 1, readers: 1 });
    const drifted = {
      ...model,
      name: model.name,
      initial: () => model.initial(),
      enabled: (s: Parameters<typeof model.enabled>[0]) => model.enabled(s),
      key: (s: Parameters<typeof model.key>[0], sym: boolean) => model.key(s, sym),
      invariants: model.invariants,
      packed: model.packed,
      // one action's successor differs from what the packed copy computes
      step: (s: Parameters<typeof model.step>[0], a: Parameters<typeof model.step>[1]) => {
        const n = model.step(s, a);
        return a.kind === model.enabled(model.initial()[0]!)[0]?.kind ? model.step(n, model.enabled(n)[0] ?? a) : n;
      },
    };
    expect(crossCheckPacked(drifted, 20_000)).toBeDefined();
  });
});
