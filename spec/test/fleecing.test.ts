import { describe, expect, it } from 'vitest';
import { explore, formatCounterexample, formatLabel, neverEnabled, parseTraceFile, replay, toJson } from '../explorer/index.ts';
import {
  fleecingModel,
  KNOWN_BAD,
  S1,
  S2,
  S3,
  S4,
  S4_QEMU_EARLY_RETURN,
  S4_QEMU_HBITMAP_STATUS,
  type FleecingAction,
  type FleecingParams,
  type FleecingState,
} from '../models/fleecing/index.ts';
import { rangeMask } from '../models/fleecing/state.ts';

const steps = (r: ReturnType<typeof explore>) => r.counterexample!.steps.map((s) => formatLabel(s.label));

describe('S1: backup sync=none without serialization (the seed race)', () => {
  it('fails with a shortest counterexample equivalent to the seed steps', () => {
    const m = fleecingModel(S1);
    const r = explore(m);
    expect(r.verdict).toBe('violation');
    expect(r.counterexample!.invariant).toBe('snapshot-read-consistent');
    // Lookup finds the cluster unallocated in temp (so the read goes to the backing file), the
    // CBW copies the old data and the guest write lands, then the backing read returns new data.
    expect(steps(r)).toEqual([
      'W0.submit(cluster=0)',
      'R0.start(cluster=0)',
      'R0.lookup(cluster=0)',
      'W0.copyWrite()',
      'W0.write()',
      'R0.read(cluster=0, from=backing)',
    ]);
    expect(r.counterexample!.message).toBe(
      'snapshot read R0 of cluster 0 returned data written by W0 at step 5, after the snapshot',
    );
    // Shortest: nothing goes wrong within 5 steps.
    const five = explore(m, { maxDepth: 5 });
    expect(five.verdict).toBe('ok');
    expect(five.exhaustive).toBe(false);
    const text = formatCounterexample(m, r.counterexample!);
    expect(text).toMatch(/R0\.from: - -> backing/);
    expect(text).toMatch(/source: \[snapshot,snapshot,snapshot,snapshot\] -> \[W0,snapshot,snapshot,snapshot\]/);
  });

  it('finds the same race with one writer and one reader, and with straddling requests', () => {
    expect(explore(fleecingModel(S1, { clusters: 1, writers: 1, readers: 1 })).counterexample!.steps).toHaveLength(6);
    const r = explore(fleecingModel(S1, { clusters: 3, writeSize: 2, readSize: 2 }), { symmetry: true });
    expect(r.verdict).toBe('violation');
  });
});

describe('the protected schemes hold exhaustively', () => {
  for (const scheme of [S2, S3]) {
    it(`${scheme.name} at 4 clusters x 2 writers x 2 readers, with and without symmetry`, () => {
      const plain = explore(fleecingModel(scheme));
      expect(plain.verdict).toBe('ok');
      expect(plain.exhaustive).toBe(true);
      expect(neverEnabled(plain)).toEqual([]);
      const sym = explore(fleecingModel(scheme), { symmetry: true });
      expect(sym.verdict).toBe('ok');
      expect(sym.exhaustive).toBe(true);
      expect(sym.distinct).toBeLessThan(plain.distinct);
      expect(sym.terminal).toBeGreaterThan(0);
    });
  }

  const combos: Partial<FleecingParams>[] = [];
  for (const bitmap of [false, true])
    for (const discard of [false, true])
      for (const onCbwError of ['break-guest-write', 'break-snapshot'] as const) combos.push({ bitmap, discard, onCbwError });
  for (const c of combos) {
    it(`s4 with bitmap=${c.bitmap} discard=${c.discard} on-cbw-error=${c.onCbwError} (4x2x2, one CBW failure)`, () => {
      const r = explore(fleecingModel(S4, c), { symmetry: true });
      expect(r.verdict).toBe('ok');
      expect(r.exhaustive).toBe(true);
      expect(neverEnabled(r)).toEqual([]);
    });
  }

  it('s2, s3, s4 hold with straddling requests (2-cluster writes and reads)', () => {
    for (const scheme of [S2, S3, S4]) {
      const r = explore(fleecingModel(scheme, { clusters: 3, writeSize: 2, readSize: 2 }), { symmetry: true });
      expect(r.verdict, scheme.name).toBe('ok');
      expect(r.exhaustive).toBe(true);
      expect(neverEnabled(r), scheme.name).toEqual([]);
    }
  });

  it('s2, s3, s4 hold at 3 writers x 3 readers (3 clusters, symmetry)', () => {
    for (const scheme of [S2, S3, S4]) {
      const r = explore(fleecingModel(scheme, { clusters: 3, writers: 3, readers: 3 }), { symmetry: true });
      expect(r.verdict, scheme.name).toBe('ok');
      expect(r.exhaustive).toBe(true);
    }
  });

  it('s4 holds in every option combination at 3 writers x 3 readers (2 clusters, symmetry)', () => {
    // The same at 4 clusters (up to 2.2 M states, ~2 min CPU in all) is in the report/bench.
    for (const c of combos) {
      const r = explore(fleecingModel(S4, { clusters: 2, writers: 3, readers: 3, ...c }), { symmetry: true });
      expect(r.verdict, JSON.stringify(c)).toBe('ok');
      expect(r.exhaustive).toBe(true);
    }
  });

  it('S1 enables every action (coverage, with the invariants switched off)', () => {
    const m = fleecingModel(S1);
    const r = explore({ ...m, invariants: [] }, { symmetry: true });
    expect(r.verdict).toBe('ok');
    expect(neverEnabled(r)).toEqual([]);
  });
});

describe('known-bad variants fail', () => {
  for (const scheme of [...KNOWN_BAD, S4_QEMU_EARLY_RETURN, S4_QEMU_HBITMAP_STATUS]) {
    it(`${scheme.name}: ${scheme.summary}`, () => {
      const r = explore(fleecingModel(scheme));
      expect(r.verdict).toBe('violation');
      expect(r.counterexample!.message.length).toBeGreaterThan(20);
    });
  }

  it('each invariant is seen failing', () => {
    const violated = (name: string) => explore(fleecingModel(KNOWN_BAD.find((s) => s.name === name)!)).counterexample!;
    expect(violated('s4-write-before-copy').invariant).toBe('copied-before-overwritten');
    expect(violated('s4-write-before-copy').message).toMatch(/W0 overwrote cluster 0 on the source while its snapshot data was not on the target/);
    expect(violated('s4-error-ignored').invariant).toBe('failed-cbw-fails-guest-write');
    expect(violated('s4-done-before-copy').message).toMatch(/target content that was never copied there/);
    expect(violated('s4-discard-untracked').steps.some((s) => s.label.action === 'discard')).toBe(true);
    expect(violated('s4-error-skips-wait').steps.some((s) => s.label.action === 'copyFail')).toBe(true);
  });

  it('the QEMU 7.1 early return (snapshot_error set: no wait for frozen reads) leaks post-snapshot data', () => {
    const r = explore(fleecingModel(S4_QEMU_EARLY_RETURN));
    expect(r.verdict).toBe('violation');
    // R0 reads cluster 0 from the source; W0's copy of another cluster fails (break-snapshot);
    // W1's write to cluster 0 then skips CBW and the wait; R0's read returns W1's data.
    const labels = steps(r);
    expect(labels).toContain('W0.copyFail()');
    expect(labels[labels.length - 1]).toBe('R0.read(cluster=0, from=source)');
    // Under break-guest-write the snapshot never breaks, so the same code is safe.
    const ok = explore(fleecingModel(S4_QEMU_EARLY_RETURN, { onCbwError: 'break-guest-write' }), { symmetry: true });
    expect(ok.verdict).toBe('ok');
  });
});

describe('QEMU 7.2 hbitmap_status: a done prefix before a not-done cluster reads as not done (findings F1/F3)', () => {
  it('leaks post-snapshot data with a shortest counterexample that reads like the bug', () => {
    const m = fleecingModel(S4_QEMU_HBITMAP_STATUS);
    expect(m.config.readSize).toBe(2); // the variant's default: only straddling reads show it
    const r = explore(m);
    expect(r.verdict).toBe('violation');
    const cx = r.counterexample!;
    const trace = formatCounterexample(m, cx);
    expect(cx.invariant, trace).toBe('snapshot-read-consistent');
    // W0 copies cluster 0 (done) and overwrites it on the source, waiting for nothing; R0 locks
    // [0,2) while cluster 1 is not done, is told "not done" for cluster 0 and reads it from the
    // source.
    expect(steps(r), trace).toEqual([
      'W0.submit(cluster=0)',
      'W0.copyWrite()',
      'W0.write()',
      'R0.start(cluster=0, count=2)',
      'R0.lock(cluster=0)',
      'R0.read(cluster=0, from=source)',
      'R0.lock(cluster=1)',
      'R0.read(cluster=1, from=source)',
    ]);
    expect(cx.message, trace).toBe('snapshot read R0 of clusters 0-1 returned for cluster 0 data written by W0 at step 3, after the snapshot');
    expect(explore(m, { maxDepth: 7 }).verdict, 'shortest: nothing within 7 steps').toBe('ok');
    // The same trace under symmetry, and every action is enabled somewhere.
    expect(explore(m, { symmetry: true }).counterexample!.steps, trace).toHaveLength(8);
    const cov = explore({ ...m, invariants: [] }, { symmetry: true });
    expect(cov.exhaustive).toBe(true);
    expect(neverEnabled(cov)).toEqual([]);
  });

  it('plain s4 with the same parameters holds exhaustively, and so does the variant with 1-cluster reads', () => {
    for (const symmetry of [false, true]) {
      const r = explore(fleecingModel(S4, { readSize: 2 }), { symmetry });
      expect(r.verdict, `symmetry=${symmetry}`).toBe('ok');
      expect(r.exhaustive).toBe(true);
      expect(neverEnabled(r)).toEqual([]);
    }
    const single = explore(fleecingModel(S4_QEMU_HBITMAP_STATUS, { readSize: 1 }), { symmetry: true });
    expect(single.verdict).toBe('ok');
    expect(single.exhaustive).toBe(true);
  });

  it('differs from s4 only on a lock whose range starts done and reaches a not-done cluster', () => {
    // Every reachable lock step of the variant against s4's step from the same state: a range
    // entirely done (target) or starting not done (source) is handled alike; a done prefix
    // before a not-done cluster is read from the source, frozen, with the same length.
    const params: Partial<FleecingParams> = { clusters: 3, writers: 2, readers: 1, readSize: 3 };
    const bad = fleecingModel(S4_QEMU_HBITMAP_STATUS, params);
    const good = fleecingModel(S4, params);
    const seen = new Set<string>();
    const queue: FleecingState[] = [...bad.initial()];
    const counts = { allDone: 0, startsNotDone: 0, straddles: 0 };
    for (let q = 0; q < queue.length; q++) {
      const s = queue[q]!;
      const k = bad.key(s, false);
      if (seen.has(k)) continue;
      seen.add(k);
      for (const a of bad.enabled(s)) {
        const t = bad.step(s, a);
        queue.push(t);
        if (a.kind !== 'lock') {
          expect(t).toEqual(good.step(s, a));
          continue;
        }
        const lock = a as Extract<FleecingAction, { kind: 'lock' }>;
        const r = s.readers[lock.r]!;
        const u = good.step(s, a);
        const ur = u.readers[lock.r]!;
        const end = r.off + 3;
        const startsDone = ((s.done >> r.pos) & 1) === 1;
        const allDone = (s.done & rangeMask(r.pos, end - r.pos)) === rangeMask(r.pos, end - r.pos);
        if (ur.pc !== 'read' || !startsDone || allDone) {
          if (ur.pc === 'read') counts[startsDone ? 'allDone' : 'startsNotDone']++;
          expect(t).toEqual(u);
        } else {
          counts.straddles++;
          expect(ur.fromTarget).toBe(true);
          expect(t).toEqual({ ...u, readers: u.readers.map((x, i) => (i === lock.r ? { ...ur, fromTarget: false, hold: rangeMask(r.pos, ur.n) } : x)) });
        }
      }
    }
    expect(counts.allDone).toBeGreaterThan(0);
    expect(counts.startsNotDone).toBeGreaterThan(0);
    expect(counts.straddles).toBeGreaterThan(0);
  });
});

describe('a writable export on the temp/target image (docs/requirements/qemu-fleecing.md §6 B6)', () => {
  it('breaks every scheme: a snapshot read can return what the temp writer wrote', () => {
    for (const scheme of [S2, S3, S4]) {
      const m = fleecingModel(scheme, { clusters: 2, writers: 1, readers: 1, tempWriters: 1 });
      const r = explore(m);
      expect(r.verdict, scheme.name).toBe('violation');
      expect(r.counterexample!.message, scheme.name).toMatch(/T0/);
      // The read-side invariant alone also fails: drop the others to see it.
      const readOnly = explore({ ...m, invariants: m.invariants.filter((i) => i.name === 'snapshot-read-consistent') });
      expect(readOnly.counterexample!.message, scheme.name).toMatch(/data T0 wrote into the (temp|target) image, not snapshot data/);
    }
  });
});

describe('replay of fleecing counterexamples', () => {
  it('round-trips the S1 counterexample and rejects a tampered step', () => {
    const m = fleecingModel(S1);
    const json = JSON.stringify(toJson(m, explore(m)).trace);
    const out = replay(m, parseTraceFile(json, 's1.json'), 's1.json');
    expect(out.violation?.invariant).toBe('snapshot-read-consistent');
    expect(out.violation?.step).toBe(6);
    const file = JSON.parse(json);
    file.steps[3] = { actor: 'W0', action: 'write' }; // write before its copy landed: not enabled
    expect(() => replay(m, parseTraceFile(JSON.stringify(file), 's1.json'), 's1.json')).toThrow(
      /s1\.json: step 4: W0\.write\(\) is not enabled; enabled here: .*W0\.copyWrite\(\)/,
    );
  });
});

describe('parameters', () => {
  it('refuses out-of-range parameters with the name and the value', () => {
    expect(() => fleecingModel(S3, { clusters: 0 })).toThrow(/s3: parameter clusters must be an integer in \[1, 16\], got 0/);
    expect(() => fleecingModel(S3, { readSize: 5 })).toThrow(/parameter readSize must be an integer in \[1, 4\]/);
  });
});
