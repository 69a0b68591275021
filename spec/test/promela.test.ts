// SPIN as an external cross-check of the fleecing verdicts (docs/verification.md §2;
// docs/verification.md §2). SPIN must find the seed's race in S1 and verify S3, and agree with our
// own breadth-first search on every configuration.
//
// Two pairings. (1) fleecing.ts's Promela against its TS twin (mirror.ts), searched by a tiny
// BFS written in this file (written before spec/explorer landed). (2) twin.ts, the Promela port
// of the explorer's own models (spec/models/fleecing S1/S3), against spec/explorer itself: same
// verdicts, and state counts within a few percent (SPIN adds states for init and process exit).
import { describe, expect, it } from 'vitest';
import type { Behaviour } from '../explorer/behaviour.ts';
import { explore } from '../explorer/explore.ts';
import { fleecingModel, S1, S3 } from '../models/fleecing/index.ts';
import { fleecingPromela, type PromelaParams } from '../models/promela/fleecing.ts';
import { explorerTwinPromela } from '../models/promela/twin.ts';
import { mirrorModel } from '../models/promela/mirror.ts';
import { parsePan, runSpin as runSpinUncached, SpinError, type SpinOptions, type SpinResult } from '../models/promela/spin.ts';

// Compiling pan.c is most of a SPIN run: compile at -O0 and reuse results across tests.
const cache = new Map<string, SpinResult>();
function runSpin(model: string, opts: SpinOptions = {}): SpinResult {
  if (opts.env !== undefined) return runSpinUncached(model, opts);
  const key = JSON.stringify([model, opts]);
  let r = cache.get(key);
  if (r === undefined) {
    r = runSpinUncached(model, { optimize: 0, hashBits: 18, ...opts });
    cache.set(key, r);
  }
  return r;
}

/** Minimal BFS: verdict, distinct states, and the length of the first (shortest) violation. */
function bfs<S, A>(m: Behaviour<S, A>, symmetric = false): { verdict: 'ok' | 'violation' | 'deadlock'; distinct: number; depth: number } {
  const seen = new Set<string>();
  let level: S[] = [];
  for (const s of m.initial()) {
    const k = m.key(s, symmetric);
    if (!seen.has(k)) {
      seen.add(k);
      level.push(s);
    }
  }
  for (let depth = 0; level.length > 0; depth++) {
    const next: S[] = [];
    for (const s of level) {
      if (m.invariants.some((inv) => inv.check(s) !== undefined)) return { verdict: 'violation', distinct: seen.size, depth };
      const acts = m.enabled(s);
      if (acts.length === 0 && m.pending(s)) return { verdict: 'deadlock', distinct: seen.size, depth };
      for (const a of acts) {
        const t = m.step(s, a);
        const k = m.key(t, symmetric);
        if (!seen.has(k)) {
          seen.add(k);
          next.push(t);
        }
      }
    }
    level = next;
  }
  return { verdict: 'ok', distinct: seen.size, depth: 0 };
}

const cfg = (scheme: 'S1' | 'S3', clusters: number, writers: number, readers: number): PromelaParams => ({
  scheme,
  clusters,
  writers,
  readers,
});

describe('SPIN on the Promela ports', () => {
  it('finds the seed race in S1 (assertion violated), also at the smallest configuration', () => {
    for (const p of [cfg('S1', 2, 1, 1), cfg('S1', 3, 2, 2)]) {
      const r = runSpin(fleecingPromela(p), { noReduce: true });
      expect(r.verdict, `${JSON.stringify(p)}\n${r.output}`).toBe('violation');
      expect(r.violation).toBe('assertion violated (v==0)');
    }
  });

  it('verifies S3 exhaustively at 3 clusters x 2 writers x 2 readers, with and without POR', () => {
    for (const noReduce of [false, true]) {
      const r = runSpin(fleecingPromela(cfg('S3', 3, 2, 2)), { noReduce });
      expect(r.verdict, r.output).toBe('pass');
      expect(r.exhaustive).toBe(true);
      expect(r.statesStored).toBeGreaterThan(1000);
      expect(r.transitions).toBeGreaterThanOrEqual(r.statesStored);
    }
  });

  it('agrees with our BFS on the TS twin on every verdict, and the state counts are close', () => {
    const rows: string[] = [];
    // (every SPIN run compiles pan.c, so the configurations are the ones the tests above ran)
    for (const p of [cfg('S1', 2, 1, 1), cfg('S1', 3, 2, 2), cfg('S3', 3, 2, 2)]) {
      const spin = runSpin(fleecingPromela(p), { noReduce: true });
      const ours = bfs(mirrorModel(p));
      const expected = p.scheme === 'S1' ? 'violation' : 'pass';
      rows.push(`${p.scheme} ${p.clusters}x${p.writers}x${p.readers}: spin=${spin.verdict} ours=${ours.verdict}`);
      expect(spin.verdict).toBe(expected);
      expect(ours.verdict === 'ok' ? 'pass' : ours.verdict).toBe(expected);
      if (expected === 'pass') {
        // Same variables and steps; SPIN adds a few states for init and process creation.
        const ratio = spin.statesStored / ours.distinct;
        expect(ratio, rows.join('\n')).toBeGreaterThan(0.9);
        expect(ratio, rows.join('\n')).toBeLessThan(1.3);
      }
    }
  });

  it('our S1 counterexample is the seed race: lookup unallocated, CBW copies, write lands, read', () => {
    const m = mirrorModel(cfg('S1', 1, 1, 1));
    const r = bfs(m);
    expect(r.verdict).toBe('violation');
    // R0.lookup, W0.claim, W0.copy, W0.write-temp, W0.release, W0.land, R0.read
    expect(r.depth).toBe(7);
  });

  it('symmetry reduction keeps the verdicts and shrinks the state space', () => {
    const s3 = mirrorModel(cfg('S3', 3, 2, 2));
    const plain = bfs(s3, false);
    const sym = bfs(s3, true);
    expect(sym.verdict).toBe('ok');
    expect(sym.distinct).toBeLessThan(plain.distinct / 2);
    expect(bfs(mirrorModel(cfg('S1', 3, 2, 2)), true).verdict).toBe('violation');
  });
});

describe('Promela twin of spec/models/fleecing vs spec/explorer', () => {
  it('same verdicts on S1 and S3, and SPIN -DNOREDUCE stores about as many states as we do', () => {
    const rows: string[] = [];
    for (const p of [cfg('S1', 3, 2, 2), cfg('S3', 3, 2, 2)]) {
      const spin = runSpin(explorerTwinPromela(p), { noReduce: true });
      const ours = explore(fleecingModel(p.scheme === 'S1' ? S1 : S3, { clusters: p.clusters, writers: p.writers, readers: p.readers }));
      const expected = p.scheme === 'S1' ? 'violation' : 'pass';
      rows.push(`${p.scheme} ${p.clusters}x${p.writers}x${p.readers}: spin=${spin.verdict}/${spin.statesStored} ours=${ours.verdict}/${ours.distinct}`);
      expect(spin.verdict, rows.join('\n')).toBe(expected);
      expect(ours.verdict === 'ok' ? 'pass' : ours.verdict, rows.join('\n')).toBe(expected);
      if (expected === 'pass') {
        expect(ours.exhaustive).toBe(true);
        const ratio = spin.statesStored / ours.distinct;
        expect(ratio, rows.join('\n')).toBeGreaterThan(1);
        expect(ratio, rows.join('\n')).toBeLessThan(1.3);
      }
    }
  });

  it('a twin that drops S3 serialization (i.e. S1) is caught: SPIN reports the race', () => {
    const bad = runSpin(explorerTwinPromela(cfg('S1', 3, 2, 2)), { noReduce: true });
    expect(bad.verdict).toBe('violation');
    expect(bad.violation).toMatch(/assertion violated \(rbad\[\d\]==0\)/);
  });
});

describe('SPIN runner', () => {
  it('fails, naming the missing command and `npm run peers`, when spin is not on PATH', () => {
    expect(() => runSpin(fleecingPromela(cfg('S3', 1, 1, 1)), { env: { PATH: '/nonexistent' } })).toThrow(SpinError);
    expect(() => runSpin(fleecingPromela(cfg('S3', 1, 1, 1)), { env: { PATH: '/nonexistent' } })).toThrow(
      /command 'spin' not found: run `npm run peers`/,
    );
  });

  it('repeats a short pan run and reports the mean of its 10 ms-tick times', () => {
    const r = runSpin(fleecingPromela(cfg('S3', 2, 1, 1)), { repeats: 3 });
    expect(r.runSeconds).toHaveLength(3);
    expect(r.seconds).toBeCloseTo(r.runSeconds.reduce((a, b) => a + b, 0) / 3, 9);
    expect(r.verdict).toBe('pass');
  });

  it('parses pan summaries: pass, violation, and a search cut short is not a pass', () => {
    const summary = (errors: number, extra = '') =>
      `${extra}State-vector 64 byte, depth reached 43, errors: ${errors}\n    83393 states, stored\n   175224 states, matched\n   258617 transitions (= stored+matched)\n    19.200\ttotal actual memory usage\npan: elapsed time 0.07 seconds\n`;
    const ok = parsePan(summary(0));
    expect(ok).toMatchObject({ verdict: 'pass', statesStored: 83393, transitions: 258617, depth: 43, seconds: 0.07, memoryMb: 19.2 });
    expect(parsePan(summary(1, 'pan:1: assertion violated (v==0) (at depth 16)\n'))).toMatchObject({
      verdict: 'violation',
      violation: 'assertion violated (v==0)',
    });
    expect(parsePan(summary(0, 'pan: reached -DMEMLIM bound\nWarning: Search not completed\n')).verdict).toBe('incomplete');
  });

  it('refuses nonsense parameters', () => {
    expect(() => fleecingPromela(cfg('S3', 0, 1, 1))).toThrow(/clusters must be an integer/);
  });
});
