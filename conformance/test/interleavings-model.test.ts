// The scenario models behind the interleavings suite (spec/scenarios/fleecing.ts): the reductions
// lose no outcome, the S1 counts the wire check must match, byte-level predictions agree with the
// model's invariant, and the outcome check rejects what a safe model cannot explain.
import { describe, expect, it } from 'vitest';
import { KNOWN_BAD, S1, S3, S4, type Scheme } from '../../spec/models/fleecing/scheme.ts';
import {
  CLUSTER,
  DEFAULT_SCENARIOS,
  predict,
  scenarioModel,
  snapshotBytes,
  writeBytes,
  type FleecingScenario,
  type ScenarioModel,
} from '../../spec/scenarios/fleecing.ts';
import type { FleecingState } from '../../spec/models/fleecing/state.ts';
import { planStep, DEFAULT_MAPPING } from '../interleavings/drive.ts';
import { explain, originKey, origins, outcomeClasses } from '../interleavings/run.ts';

const applies = (s: Scheme, sc: FleecingScenario) => !sc.kinds || sc.kinds.includes(s.kind);
/** The same scenario with clusters `f` times smaller (same model, cheaper byte predictions). */
const shrink = (sc: FleecingScenario, f = 64): FleecingScenario => ({
  ...sc,
  clusterSize: sc.clusterSize / f,
  writes: sc.writes.map((w) => ({ offset: w.offset / f, length: w.length / f })),
  reads: sc.reads.map((r) => ({ offset: r.offset / f, length: r.length / f })),
});

/** Every outcome of every fused path (no reduction): final state up to symmetry, violation, and
 * the predicted replies. */
function outcomes(m: ScenarioModel, por: boolean): Set<string> {
  const sc = m.scenario;
  const same = (xs: readonly { offset: number; length: number }[]) => xs.length > 1 && xs.every((x) => x.offset === xs[0]!.offset && x.length === xs[0]!.length);
  const out = new Set<string>();
  for (const ex of m.executions({ por, symmetry: por, limit: 100_000 })) {
    let reads = predict(m, ex).origins.map(originKey);
    // Up to renaming interchangeable actors (identical requests): writers by first appearance,
    // reads sorted.
    if (same(sc.reads)) reads = [...reads].sort();
    let text = reads.join(';');
    if (same(sc.writes)) {
      const names = new Map<string, string>();
      text = text.replace(/W\d/g, (w) => names.get(w) ?? (names.set(w, `V${names.size}`), `V${names.size - 1}`));
    }
    out.add(`${m.base.key(ex.final, true)}|${ex.violation !== undefined}|${text}`);
  }
  return out;
}

describe('scenario models', () => {
  it('partial-order and symmetry reduction keep every outcome of every fused path (S1, S3, S4 and known-bad variants)', () => {
    let compared = 0;
    const seen = new Set<string>();
    for (const scheme of [S1, S3, S4, ...KNOWN_BAD.filter((k) => !k.defaults)]) {
      for (const sc of DEFAULT_SCENARIOS.map((x) => shrink(x))) {
        if (!applies(scheme, sc)) continue;
        const m = scenarioModel(scheme, sc);
        if (m.countFusedPaths() > 5000) continue;
        const full = outcomes(m, false);
        const reduced = outcomes(m, true);
        expect([...reduced].sort(), `${scheme.name} ${sc.id}`).toEqual([...full].sort());
        expect(m.executions().length).toBeLessThanOrEqual(m.countFusedPaths());
        compared++;
        seen.add(sc.id);
      }
    }
    expect(compared).toBeGreaterThan(30);
    expect([...seen].sort()).toEqual(['1w1r-same-cluster', '1w2r-straddle-write', '2w1r-straddle-read', '2w1r-subcluster', '2w2r-1c']);
  });

  it('the reduction is not vacuous: an unreduced enumeration of the same scenario finds more paths and the same violations', () => {
    const m = scenarioModel(S1, DEFAULT_SCENARIOS.find((s) => s.id === '2w1r-subcluster')!);
    const full = m.executions({ por: false, symmetry: false });
    expect(full.length).toBe(m.countFusedPaths());
    expect(full.length).toBe(126);
    expect(m.executions().length).toBe(16);
    expect(full.some((e) => e.violation)).toBe(true);
  });

  it('symmetry: two identical snapshot reads are driven once per renaming class', () => {
    const sc: FleecingScenario = { id: 'sym', title: 'sym', clusterSize: CLUSTER, clusters: 1, writes: [{ offset: 0, length: CLUSTER }], reads: [{ offset: 0, length: CLUSTER }, { offset: 0, length: CLUSTER }] };
    const m = scenarioModel(S1, sc);
    const withSym = m.executions({ por: false });
    const without = m.executions({ por: false, symmetry: false });
    expect(withSym.length).toBeLessThan(without.length);
    const rename = (o: string) => o.replace(/R0/g, 'X').replace(/R1/g, 'R0').replace(/X/g, 'R1');
    const orders = withSym.map((e) => e.steps.map((s) => s.actor).join(' '));
    for (const o of orders) if (rename(o) !== o) expect(orders).not.toContain(rename(o));
  });

  it('S1 violates the invariant on 1 + 5 + 34 + 8 + 5 interleavings of the default scenarios; S3 and S4 on none', () => {
    const count = (s: Scheme) => DEFAULT_SCENARIOS.filter((sc) => applies(s, sc)).map((sc) => scenarioModel(s, sc).executions().filter((e) => e.violation).length);
    expect(count(S1)).toEqual([1, 5, 34, 8, 5]);
    expect(count(S3)).toEqual([0, 0, 0, 0, 0]);
    expect(count(S4)).toEqual([0, 0, 0, 0, 0, 0]);
  });

  it('byte-level predictions break the snapshot exactly where the model invariant is violated', () => {
    for (const scheme of [S1, S3, S4, ...KNOWN_BAD.filter((k) => !k.defaults)]) {
      for (const sc of DEFAULT_SCENARIOS) {
        if (!applies(scheme, sc)) continue;
        const m = scenarioModel(scheme, sc);
        for (const ex of m.executions()) {
          const bad = predict(m, ex).badReads.length > 0;
          const snapViolation = ex.violated.includes('snapshot-read-consistent');
          expect(bad, `${scheme.name} ${sc.id} #${ex.index}: ${ex.violation}`).toBe(snapViolation);
        }
      }
    }
  });

  it('every step maps to a breakpoint park point or a reply, and no reader step ends between atomic parts', () => {
    for (const scheme of [S1, S3, S4]) {
      for (const sc of DEFAULT_SCENARIOS) {
        if (!applies(scheme, sc)) continue;
        const m = scenarioModel(scheme, sc);
        for (const ex of m.executions()) {
          for (const st of ex.steps) {
            const p = planStep(scheme.kind, st, DEFAULT_MAPPING);
            expect(p.await === 'reply' || p.arm !== undefined).toBe(true);
            if (st.actor.startsWith('R')) {
              const pc = (st.after as FleecingState).readers[Number(st.actor.slice(1))]!.pc;
              expect(['read', 'done', 'failed']).toContain(pc);
            }
          }
        }
      }
    }
  });

  it('the outcome check: post-snapshot replies are explained by S1 and rejected by S3 (the check can fail)', () => {
    const sc = DEFAULT_SCENARIOS[0]!;
    const snap = snapshotBytes(0, CLUSTER);
    const post = originKey(origins(writeBytes(0, CLUSTER), snap));
    const ok = originKey(origins(Buffer.from(snap), snap));
    expect(post).toBe('[0, 65536) W0');
    expect(explain(outcomeClasses(scenarioModel(S1, sc)), [post]).length).toBe(1);
    expect(explain(outcomeClasses(scenarioModel(S3, sc)), [post])).toEqual([]);
    expect(explain(outcomeClasses(scenarioModel(S3, sc)), [ok]).length).toBe(2);
    expect(originKey(origins(Buffer.alloc(CLUSTER), snap))).toBe('[0, 65536) other');
  });
});
