import { describe, expect, it } from 'vitest';
import {
  allExecutions,
  explore,
  formatCounterexample,
  formatReport,
  neverEnabled,
  parseTraceFile,
  replay,
  SpecError,
  terminalStates,
  toDot,
  toJson,
  toTraceFile,
} from '../explorer/index.ts';
import { counterModel, lockModel } from './toys.ts';

describe('explorer: BFS search', () => {
  it('finds the lost update with a shortest (4-step) counterexample', () => {
    const m = counterModel(2);
    const r = explore(m);
    expect(r.verdict).toBe('violation');
    const cx = r.counterexample!;
    expect(cx.invariant).toBe('no-lost-update');
    expect(cx.steps).toHaveLength(4);
    expect(cx.steps.map((s) => s.label.action)).toEqual(['load', 'load', 'store', 'store']);
    expect(cx.message).toMatch(/update was lost/);
    const text = formatCounterexample(m, cx);
    expect(text).toMatch(/1\. P0\.load\(\)/);
    expect(text).toMatch(/x: 0 -> 1/);
    // Only changed fields: step 1 does not mention x.
    expect(text.split('\n')[3]).not.toMatch(/x:/);
  });

  it('proves the atomic counter exhaustively and counts states and transitions', () => {
    const r = explore(counterModel(3, { atomic: true }));
    expect(r.verdict).toBe('ok');
    expect(r.exhaustive).toBe(true);
    expect(r.distinct).toBe(8); // each subset of done processes
    expect(r.generated).toBe(12);
    expect(r.terminal).toBe(1);
    expect(r.depth).toBe(3);
  });

  it('symmetry reduction stores fewer states and keeps the verdict', () => {
    const plain = explore(counterModel(3, { atomic: true }));
    const sym = explore(counterModel(3, { atomic: true }), { symmetry: true });
    expect(sym.verdict).toBe('ok');
    expect(sym.exhaustive).toBe(true);
    expect(sym.distinct).toBe(4); // 0..3 processes done
    expect(sym.distinct).toBeLessThan(plain.distinct);
    const bad = explore(counterModel(3), { symmetry: true });
    expect(bad.verdict).toBe('violation');
    expect(bad.counterexample!.steps).toHaveLength(explore(counterModel(3)).counterexample!.steps.length);
  });

  it('detects a deadlock (pending work, nothing enabled), and not in the fixed lock order', () => {
    const r = explore(lockModel(true));
    expect(r.verdict).toBe('deadlock');
    expect(r.counterexample!.kind).toBe('deadlock');
    expect(r.counterexample!.steps).toHaveLength(2);
    const ok = explore(lockModel(false));
    expect(ok.verdict).toBe('ok');
    expect(ok.exhaustive).toBe(true);
  });

  it('reports per-action coverage and lists never-enabled actions', () => {
    const r = explore(counterModel(2, { atomic: true, dead: true }));
    expect(neverEnabled(r)).toEqual(['store', 'reset']);
    const load = r.coverage.find((c) => c.action === 'load')!;
    expect(load.taken).toBeGreaterThan(0);
    expect(formatReport(counterModel(2, { atomic: true, dead: true }), r)).toMatch(/never enabled \(vacuous model\?\): store, reset/);
    expect(neverEnabled(explore(counterModel(2, { atomic: true })))).toEqual(['store']);
  });

  it('says the search was not exhaustive when a bound stops it', () => {
    const r = explore(counterModel(4, { atomic: true }), { maxStates: 5 });
    expect(r.exhaustive).toBe(false);
    expect(r.stoppedBy).toBe('max-states');
    expect(r.verdict).toBe('ok');
    const d = explore(counterModel(4, { atomic: true }), { maxDepth: 2 });
    expect(d.exhaustive).toBe(false);
    expect(d.stoppedBy).toBe('max-depth');
    const full = explore(counterModel(4, { atomic: true }), { maxDepth: 4 });
    expect(full.exhaustive).toBe(true);
  });

  it('prints progress lines when asked', () => {
    const lines: string[] = [];
    explore(counterModel(10, { atomic: true }), { progress: { intervalMs: 0, write: (l) => lines.push(l) } });
    expect(lines.length).toBeGreaterThan(0);
    expect(lines[0]).toMatch(/depth \d+, distinct \d+, generated \d+, queue \d+, \d+ states\/s, rss \d+ MB/);
  });
});

describe('explorer: replay', () => {
  it('round-trips a counterexample through JSON', () => {
    const m = counterModel(2);
    const r = explore(m);
    const file = JSON.stringify(toJson(m, r).trace);
    const parsed = parseTraceFile(file, 'cx.json');
    const out = replay(m, parsed, 'cx.json');
    expect(out.violation).toEqual({ step: 4, invariant: 'no-lost-update', message: r.counterexample!.message });
    expect(out.stepsRun).toBe(4);
  });

  it('rejects a tampered trace naming the step and the action', () => {
    const m = counterModel(2);
    const trace = toTraceFile(m, explore(m).counterexample!);
    const tampered = { ...trace, steps: [trace.steps[0]!, trace.steps[0]!, ...trace.steps.slice(2)] };
    expect(() => replay(m, tampered, 'bad.json')).toThrow(SpecError);
    expect(() => replay(m, tampered, 'bad.json')).toThrow(/bad\.json: step 2: P0\.load\(\) is not enabled; enabled here: P0\.store\(\), P1\.load\(\)/);
  });

  it('rejects malformed files with the field at fault', () => {
    expect(() => parseTraceFile('{', 'f.json')).toThrow(/f\.json: not valid JSON/);
    expect(() => parseTraceFile('{"format":"x"}', 'f.json')).toThrow(/"format" must be "fleece-trace"/);
    const base = { format: 'fleece-trace', version: 1, model: 'toy', params: {}, initial: 0 };
    expect(() => parseTraceFile(JSON.stringify({ ...base, steps: [{ actor: 'P0' }] }), 'f.json')).toThrow(
      /f\.json: steps\[0\]: "action" must be a string/,
    );
    expect(() => replay(counterModel(2), { ...base, model: 'other', steps: [] })).toThrow(/model "other", not "toy-counter"/);
    expect(() => replay(counterModel(2), { initial: 3, steps: [] })).toThrow(/initial state #3 does not exist/);
  });
});

describe('explorer: executions, terminal states, dot', () => {
  it('enumerates every maximal path', () => {
    const execs = [...allExecutions(counterModel(2))];
    expect(execs).toHaveLength(6); // C(4,2) interleavings of two 2-step processes
    expect(new Set(execs.map((e) => e.labels.map((l) => `${l.actor}.${l.action}`).join(' '))).size).toBe(6);
    expect(execs.every((e) => !e.deadlocked)).toBe(true);
    expect(execs.filter((e) => e.final.x === 1)).toHaveLength(4);
    const dl = [...allExecutions(lockModel(true))];
    expect(dl.some((e) => e.deadlocked)).toBe(true);
    expect(() => [...allExecutions(counterModel(4), { maxExecutions: 10 })]).toThrow(/more than 10 executions/);
  });

  it('lists distinct terminal states with shortest traces', () => {
    const ts = terminalStates(counterModel(2));
    expect(ts.map((t) => t.state.x).sort()).toEqual([1, 2]);
    expect(ts.every((t) => t.labels.length === 4)).toBe(true);
  });

  it('draws small graphs and refuses big ones', () => {
    const dot = toDot(counterModel(2));
    expect(dot).toMatch(/^digraph "toy-counter"/);
    expect(dot).toMatch(/-> s\d+ \[label="P0\.load\(\)"\]/);
    expect(dot).toMatch(/fillcolor/); // violating states are highlighted
    expect(() => toDot(counterModel(6), { maxStates: 10 })).toThrow(/more than 10 states/);
  });
});
