// Scenario-shaped fleecing models (docs/design.md "Interleavings"): a small, fixed set of NBD requests (guest writes on
// the live export, snapshot reads on the fleecing export, each at a fixed byte range), and the
// interleavings of their internal steps that the scheme's model allows.
//
// The fleecing model (models/fleecing) lets each actor pick its cluster; a scenario fixes it, so
// this adapter restricts `submit`/`start` to the scenario's cluster. It then makes three
// reductions, each reported with its count so nothing is hidden:
//  1. atomic steps of the implementation: a snapshot read's `start` and its first `lookup`/`lock`
//     happen in one go once the request arrives (nothing can park between them), and so do a
//     cbw read's unlock of one chunk and the lock of the next. Fusing them drops only orders in
//     which the fused step commutes with everything in between (start holds nothing in S1/S4; in
//     S3 no action that can run between start and lookup changes the temp allocation of the
//     read's range; the chunk relock is atomic in both QEMU and the reference).
//  2. partial-order reduction: a stateless DFS with sleep sets (Godefroid), two steps of
//     different actors being independent in a state when both orders reach the same exact state
//     and neither disables the other: one interleaving per Mazurkiewicz trace.
//  3. symmetry: actors with identical requests are interchangeable; executions equal up to
//     renaming them are driven once.
// Predictions are made at byte level by replaying the model's decisions (which clusters a copy
// claimed, where a read chunk was read from) over real buffers.
import type { ActionLabel } from '../explorer/behaviour.ts';
import { SpecError } from '../explorer/errors.ts';
import { formatLabel } from '../explorer/label.ts';
import { fleecingModel, type FleecingAction, type FleecingBehaviour } from '../models/fleecing/model.ts';
import type { Scheme } from '../models/fleecing/scheme.ts';
import { rangeMask, type FleecingState } from '../models/fleecing/state.ts';

export interface ScenarioRequest {
  /** Byte offset inside the scenario's region (the region is `clusters` clusters long). */
  readonly offset: number;
  readonly length: number;
  /** Guest writes only: NBD_CMD_WRITE (default) or NBD_CMD_WRITE_ZEROES. */
  readonly zeroes?: boolean;
}

export interface FleecingScenario {
  /** Stable id, e.g. `2w2r-2c`. */
  readonly id: string;
  readonly title: string;
  readonly clusterSize: number;
  readonly clusters: number;
  /** Guest writes W0, W1, ... on the live export (all must span the same number of clusters). */
  readonly writes: readonly ScenarioRequest[];
  /** Snapshot reads R0, R1, ... on the fleecing export (same number of clusters each). */
  readonly reads: readonly ScenarioRequest[];
  /** Graph kinds the scenario is meaningful for (default both). */
  readonly kinds?: readonly ('legacy' | 'cbw')[];
  /** Why the scenario is restricted to `kinds` (shown in reports). */
  readonly note?: string;
  /** Guest writes whose copy-before-write fails (the environment's copyFail, docs/requirements/qemu-fleecing.md
   * §2.3 on-cbw-error): each such writer's copy fails whenever it has one; every other copy
   * lands. cbw graphs only. */
  readonly failingCopies?: readonly number[];
  /** copy-before-write's on-cbw-error (default break-guest-write, as in QEMU). */
  readonly onCbwError?: 'break-guest-write' | 'break-snapshot';
  /** At most one snapshot discard D0 (NBD_CMD_TRIM on the fleecing export), whole clusters.
   * It follows the reference's discard, which frees the target range only once no snapshot read
   * is reading it from there (model parameter discardWaitsTargetReads; QEMU frees it at once). */
  readonly discards?: readonly ScenarioRequest[];
}

export const CLUSTER = 65536;
const KiB = 1024;

/** The default scenarios: small enough to drive every interleaving in well under a minute. Every
 * read overlaps, byte for byte, each write that shares a cluster with it, so the model's
 * cluster-level invariant and the byte-level check of the replies say the same thing. */
export const DEFAULT_SCENARIOS: readonly FleecingScenario[] = [
  {
    id: '1w1r-same-cluster',
    title: 'one guest write and one snapshot read of the same cluster (the seed race)',
    clusterSize: CLUSTER,
    clusters: 1,
    writes: [{ offset: 0, length: CLUSTER }],
    reads: [{ offset: 0, length: CLUSTER }],
  },
  {
    id: '2w2r-2c',
    title: 'two guest writes (a WRITE and a WRITE_ZEROES) and two snapshot reads over two clusters, one of each per cluster',
    clusterSize: CLUSTER,
    clusters: 2,
    writes: [{ offset: 0, length: CLUSTER }, { offset: CLUSTER, length: CLUSTER, zeroes: true }],
    reads: [{ offset: 0, length: CLUSTER }, { offset: CLUSTER, length: CLUSTER }],
  },
  {
    id: '2w2r-1c',
    title: 'two guest writes and two snapshot reads, all of the same cluster (contended copy-before-write)',
    clusterSize: CLUSTER,
    clusters: 1,
    writes: [{ offset: 0, length: CLUSTER }, { offset: 0, length: CLUSTER }],
    reads: [{ offset: 0, length: CLUSTER }, { offset: 0, length: CLUSTER }],
  },
  {
    id: '2w1r-subcluster',
    title: 'two sub-cluster guest writes (4 KiB) into one cluster and a sub-cluster snapshot read over both',
    clusterSize: CLUSTER,
    clusters: 1,
    writes: [{ offset: 4 * KiB, length: 4 * KiB }, { offset: 12 * KiB, length: 4 * KiB }],
    reads: [{ offset: 0, length: 16 * KiB }],
  },
  {
    id: '1w2r-straddle-write',
    title: 'a guest write straddling two clusters, and a snapshot read of each cluster',
    clusterSize: CLUSTER,
    clusters: 2,
    writes: [{ offset: CLUSTER / 2, length: CLUSTER }],
    reads: [{ offset: 0, length: CLUSTER }, { offset: CLUSTER, length: CLUSTER }],
  },
  {
    id: '2w1r-straddle-read',
    title: 'a snapshot read straddling two clusters, and a guest write into each',
    clusterSize: CLUSTER,
    clusters: 2,
    writes: [{ offset: CLUSTER / 2 + 8 * KiB, length: 8 * KiB }, { offset: CLUSTER + 16 * KiB, length: 8 * KiB }],
    reads: [{ offset: CLUSTER / 2, length: CLUSTER }],
    kinds: ['cbw'],
    note: 'copy-before-write graphs only: the S1-S3 model looks up the temp allocation per cluster, while an overlay (like qcow2) looks up a whole run at once, so a multi-cluster legacy read has no step-for-step counterpart',
  },
  {
    id: '2w1r-fail-break-snapshot',
    title: "on-cbw-error=break-snapshot: W0's copy fails while a snapshot read of both clusters may be frozen on the source; W1 writes the other cluster after the snapshot broke (both must still wait for the frozen read)",
    clusterSize: CLUSTER,
    clusters: 2,
    writes: [{ offset: 0, length: CLUSTER }, { offset: CLUSTER, length: CLUSTER }],
    reads: [{ offset: 0, length: 2 * CLUSTER }],
    failingCopies: [0],
    onCbwError: 'break-snapshot',
    kinds: ['cbw'],
    note: 'copy-before-write graphs only: on-cbw-error and its failure paths are copy-before-write\'s (the failure is injected at the block-copy target write through a breakpoint)',
  },
  {
    id: '2w1r-fail-rewrite',
    title: "on-cbw-error=break-guest-write: W0's copy fails (W0 fails), then W1 writes the same cluster, whose copy must be made again, against a snapshot read",
    clusterSize: CLUSTER,
    clusters: 1,
    writes: [{ offset: 0, length: CLUSTER }, { offset: 0, length: CLUSTER }],
    reads: [{ offset: 0, length: CLUSTER }],
    failingCopies: [0],
    kinds: ['cbw'],
    note: 'copy-before-write graphs only: on-cbw-error and its failure paths are copy-before-write\'s (the failure is injected at the block-copy target write through a breakpoint)',
  },
  {
    id: '1w1r1d-discard',
    title: 'a snapshot discard of the cluster a guest write copies and a snapshot read may be reading from the target (the discard frees the target only after that read)',
    clusterSize: CLUSTER,
    clusters: 1,
    writes: [{ offset: 0, length: CLUSTER }],
    reads: [{ offset: 0, length: CLUSTER }],
    discards: [{ offset: 0, length: CLUSTER }],
    kinds: ['cbw'],
    note: 'copy-before-write graphs only: snapshot discard is the snapshot-access API\'s',
  },
];

/** Which clusters [first, last) a request touches. */
export function clusterSpan(r: ScenarioRequest, clusterSize: number): { first: number; count: number } {
  const first = Math.floor(r.offset / clusterSize);
  const last = Math.ceil((r.offset + r.length) / clusterSize);
  return { first, count: last - first };
}

/** A step of a scenario execution: one actor's macro step (one or more fused model actions). */
export interface ScenarioStep {
  /** `W0`, `R1`. */
  readonly actor: string;
  readonly parts: readonly FleecingAction[];
  readonly labels: readonly ActionLabel[];
  /** Model states before and after the step. */
  readonly before: FleecingState;
  readonly after: FleecingState;
}

export interface ScenarioExecution {
  readonly index: number;
  readonly steps: readonly ScenarioStep[];
  readonly final: FleecingState;
  readonly deadlocked: boolean;
  /** First invariant the model violates along the execution (undefined: every state is fine). */
  readonly violation: string | undefined;
  /** Names of every invariant violated somewhere along the execution. */
  readonly violated: readonly string[];
}

/** A step the model has an actor wait for (its guard is false), with who it waits for: what the
 * blocking refinement check lets go on the implementation to see that it does wait. */
export interface BlockedStep {
  readonly actor: string;
  /** The action the actor takes once the wait is over (its guard ignored). */
  readonly action: FleecingAction;
  readonly label: ActionLabel;
  /** The actors it waits for, each with its own next action: `R0.read`, `W1.copyWrite`. */
  readonly waitsFor: readonly string[];
  /** Which wait, in the implementation's terms. */
  readonly wait: 'block-copy-inflight' | 'frozen-reads' | 'serialising-target-write' | 'serialising-read' | 'cow-request' | 'target-reads';
  /** S3 only: the serialising request the actor waits for is itself waiting, which
   * bdrv_find_conflicting_request skips (§2.1 rule c) and the model does not: the model is
   * stricter than the implementation here, so such a step proves nothing. */
  readonly blockerWaiting?: boolean;
}

export interface ScenarioModel {
  readonly scenario: FleecingScenario;
  readonly scheme: Scheme;
  readonly base: FleecingBehaviour;
  readonly actors: readonly string[];
  /** Each actor's enabled macro step in `s` (at most one per actor). */
  steps(s: FleecingState): ScenarioStep[];
  /** Each unfinished actor without an enabled step in `s`: what it waits for (the model's
   * guards, models/fleecing/model.ts `enabled`, read back as waits). */
  blocked(s: FleecingState): BlockedStep[];
  /** Maximal paths of the offset-restricted model, counted (no fusion, no reduction). */
  countModelPaths(): number;
  /** Maximal paths after fusing the implementation's atomic steps (no reduction). */
  countFusedPaths(): number;
  /** Executions to drive: fused, partial-order and symmetry reduced (each reduction can be
   * turned off), in a deterministic order. */
  executions(options?: { limit?: number; por?: boolean; symmetry?: boolean }): ScenarioExecution[];
  /** Extra executions for the blocking check: partial-order reduction keeps every trace but not
   * every state, so a state where an actor waits may be on no driven interleaving (the orders
   * that pass through it are equivalent to one that does not). For each waiting situation
   * (actor, wait, its pending step, what it waits for) reachable in the fused model and met by
   * none of `driven`, one execution through it: the shortest prefix to it, then the first
   * enabled step of each state. Indexes continue after `driven`. */
  blockingExecutions(driven: readonly ScenarioExecution[]): ScenarioExecution[];
}

/** What makes two blocked steps the same situation for the blocking check. */
export function blockedSituation(b: BlockedStep): string {
  return `${b.actor} ${b.wait} ${formatLabel(b.label)} for ${[...b.waitsFor].sort().join(',')}`;
}

const actorOf = (a: FleecingAction): string => {
  // Not exhaustive on purpose: an action kind added to the model later (scenarios never enable
  // it) must not stop this adapter from compiling.
  switch (a.kind as string) {
    case 'submit': case 'serialise': case 'copyWrite': case 'copyFail': case 'write': return `W${(a as { w: number }).w}`;
    case 'start': case 'lookup': case 'lock': case 'read': return `R${(a as { r: number }).r}`;
    case 'discard': return 'D0';
    default: return `other:${a.kind}`;
  }
};

export function scenarioModel(scheme: Scheme, sc: FleecingScenario): ScenarioModel {
  const kind = scheme.kind;
  if (sc.kinds && !sc.kinds.includes(kind)) throw new SpecError(`scenario ${sc.id} does not apply to ${kind} schemes: ${sc.note ?? ''}`, scheme.name);
  const ws = sc.writes.map((w) => clusterSpan(w, sc.clusterSize));
  const rs = sc.reads.map((r) => clusterSpan(r, sc.clusterSize));
  const writeSize = ws[0]?.count ?? 1;
  const readSize = rs[0]?.count ?? 1;
  if (ws.some((w) => w.count !== writeSize) || rs.some((r) => r.count !== readSize)) {
    throw new SpecError(`scenario ${sc.id}: every write (read) must span the same number of clusters`, scheme.name);
  }
  for (const x of [...ws, ...rs]) if (x.first + x.count > sc.clusters) throw new SpecError(`scenario ${sc.id}: a request leaves the region`, scheme.name);
  const failing = new Set(sc.failingCopies ?? []);
  const ds = (sc.discards ?? []).map((d) => clusterSpan(d, sc.clusterSize));
  if (ds.length > 1) throw new SpecError(`scenario ${sc.id}: at most one snapshot discard`, scheme.name);
  if (ds.length && (kind !== 'cbw' || ds[0]!.count !== 1 || sc.discards![0]!.offset % sc.clusterSize || sc.discards![0]!.length !== sc.clusterSize)) {
    throw new SpecError(`scenario ${sc.id}: a snapshot discard is one whole cluster of a copy-before-write graph`, scheme.name);
  }
  if (failing.size && kind !== 'cbw') throw new SpecError(`scenario ${sc.id}: failing copies need a copy-before-write graph`, scheme.name);
  const base = fleecingModel(scheme, {
    clusters: sc.clusters, writers: sc.writes.length, readers: sc.reads.length, writeSize, readSize,
    bitmap: false, discard: ds.length > 0, discardWaitsTargetReads: ds.length > 0, cbwFailures: failing.size, onCbwError: sc.onCbwError ?? 'break-guest-write',
  });
  const actors = [...sc.writes.map((_, i) => `W${i}`), ...sc.reads.map((_, i) => `R${i}`), ...ds.map((_, i) => `D${i}`)];

  /** The model's enabled actions restricted to the scenario's clusters, per actor. */
  const restricted = (s: FleecingState): Map<string, FleecingAction> => {
    const out = new Map<string, FleecingAction>();
    for (const a of base.enabled(s)) {
      if (a.kind === 'submit' && a.off !== ws[a.w]!.first) continue;
      if (a.kind === 'start' && a.off !== rs[a.r]!.first) continue;
      // The scenario decides which copies fail: a failing writer's copy never lands, the others'
      // never fail.
      if (a.kind === 'copyFail' && !failing.has(a.w)) continue;
      if (a.kind === 'copyWrite' && failing.has(a.w)) continue;
      if (a.kind === 'discard' && !a.punch && a.off !== ds[0]!.first) continue;
      const who = actorOf(a);
      if (out.has(who)) throw new SpecError(`internal: actor ${who} has two enabled actions`, scheme.name);
      out.set(who, a);
    }
    return out;
  };

  const fuse = (s: FleecingState, a: FleecingAction): ScenarioStep => {
    const parts = [a];
    let t = base.step(s, a);
    if (a.kind === 'start' || a.kind === 'read') {
      const r = t.readers[a.r]!;
      if (r.pc === 'lookup' || r.pc === 'lock') {
        const next = restricted(t).get(`R${a.r}`);
        if (!next || (next.kind !== 'lookup' && next.kind !== 'lock')) throw new SpecError(`internal: ${r.pc} of R${a.r} is not enabled`, scheme.name);
        parts.push(next);
        t = base.step(t, next);
      }
    }
    return { actor: actorOf(a), parts, labels: parts.map((p) => base.label(p)), before: s, after: t };
  };

  const steps = (s: FleecingState): ScenarioStep[] => [...restricted(s).values()].map((a) => fuse(s, a));

  // The guards of models/fleecing/model.ts `enabled`, per actor, as "who does it wait for".
  const inflightOf = (w: FleecingState['writers'][number]) =>
    w.pc === 'serialise' || w.pc === 'copyWrite' || w.pc === 'copyLate' ? (kind === 'cbw' ? w.claim : rangeMask(w.off, writeSize)) : 0;
  const blocked = (s: FleecingState): BlockedStep[] => {
    const en = restricted(s);
    const next = (actor: string): string => {
      const a = en.get(actor);
      if (a) return `${actor}.${a.kind}`;
      const i = Number(actor.slice(1));
      return `${actor}.${actor.startsWith('W') ? s.writers[i]!.pc : s.readers[i]!.pc}`;
    };
    const holders = (m: number) => s.readers.flatMap((r, j) => (r.hold & m ? [next(`R${j}`)] : []));
    const out: BlockedStep[] = [];
    s.writers.forEach((w, i) => {
      const actor = `W${i}`;
      if (en.has(actor) || w.pc === 'done' || w.pc === 'failed') return;
      let action: FleecingAction;
      let waitsFor: string[];
      let wait: BlockedStep['wait'];
      if (w.pc === 'idle') {
        const m = rangeMask(ws[i]!.first, writeSize);
        action = { kind: 'submit', w: i, off: ws[i]!.first };
        waitsFor = s.writers.flatMap((o, j) => (j !== i && inflightOf(o) & m ? [next(`W${j}`)] : []));
        wait = waitsFor.length ? 'block-copy-inflight' : 'cow-request';
        if (scheme.readers === 'cow-freeze') waitsFor.push(...holders(m));
      } else if (w.pc === 'copyWrite') {
        action = { kind: 'copyWrite', w: i };
        waitsFor = holders(w.claim);
        wait = 'serialising-target-write';
      } else if (w.pc === 'write' || w.pc === 'writeEarly') {
        action = { kind: 'write', w: i };
        waitsFor = holders(rangeMask(w.off, writeSize));
        wait = 'frozen-reads';
      } else {
        throw new SpecError(`internal: writer ${actor} at ${w.pc} has no enabled step and no known wait`, scheme.name);
      }
      out.push({ actor, action, label: base.label(action), waitsFor, wait });
    });
    s.readers.forEach((r, i) => {
      const actor = `R${i}`;
      if (en.has(actor) || r.pc === 'done' || r.pc === 'failed') return;
      if (r.pc !== 'idle') throw new SpecError(`internal: reader ${actor} at ${r.pc} has no enabled step`, scheme.name);
      const m = rangeMask(rs[i]!.first, readSize);
      const action: FleecingAction = { kind: 'start', r: i, off: rs[i]!.first };
      let readerHold = 0;
      for (const x of s.readers) readerHold |= x.hold;
      if (scheme.readers === 'temp-tracked') {
        const by = s.writers.flatMap((w, j) => (w.pc === 'copyWrite' && w.claim & m ? [j] : []));
        const blockerWaiting = by.some((j) => (readerHold & s.writers[j]!.claim) !== 0);
        out.push({ actor, action, label: base.label(action), waitsFor: by.map((j) => next(`W${j}`)), wait: 'serialising-read', ...(blockerWaiting ? { blockerWaiting } : {}) });
      } else {
        out.push({ actor, action, label: base.label(action), waitsFor: s.writers.flatMap((w, j) => (inflightOf(w) & m ? [next(`W${j}`)] : [])), wait: 'cow-request' });
      }
    });
    const d = s.discarder;
    if (d?.pc === 'waiting' && !en.has('D0')) {
      const action: FleecingAction = { kind: 'discard', off: d.off, punch: true };
      const waitsFor = s.readers.flatMap((r, j) => (r.pc === 'read' && r.fromTarget && d.off >= r.pos && d.off < r.pos + r.n ? [next(`R${j}`)] : []));
      out.push({ actor: 'D0', action, label: base.label(action), waitsFor, wait: 'target-reads' });
    }
    return out;
  };

  const countPaths = (next: (s: FleecingState) => FleecingState[]): number => {
    const memo = new Map<string, number>();
    const go = (s: FleecingState): number => {
      const k = base.key(s, false);
      const m = memo.get(k);
      if (m !== undefined) return m;
      const succ = next(s);
      const n = succ.length === 0 ? 1 : succ.reduce((acc, t) => acc + go(t), 0);
      memo.set(k, n);
      return n;
    };
    return go(base.initial()[0]!);
  };

  // Symmetry classes: actors with identical requests.
  const classOf = new Map<string, string>();
  sc.writes.forEach((w, i) => classOf.set(`W${i}`, `W:${w.offset}:${w.length}:${w.zeroes ? 'z' : 'd'}`));
  sc.reads.forEach((r, i) => classOf.set(`R${i}`, `R:${r.offset}:${r.length}`));
  ds.forEach((_, i) => classOf.set(`D${i}`, `D${i}`));
  const canonical = (seq: readonly string[]): string => {
    const rename = new Map<string, string>();
    const used = new Map<string, number>();
    return seq.map((a) => {
      let n = rename.get(a);
      if (!n) {
        const c = classOf.get(a)!;
        const k = used.get(c) ?? 0;
        used.set(c, k + 1);
        n = `${c}#${k}`;
        rename.set(a, n);
      }
      return n;
    }).join(' ');
  };

  function execution(index: number, path: readonly ScenarioStep[], final: FleecingState): ScenarioExecution {
    let violation: string | undefined;
    const violated = new Set<string>();
    for (const st of path) {
      for (const inv of base.invariants) {
        const msg = inv.check(st.after);
        if (!msg) continue;
        violated.add(inv.name);
        violation ??= `${inv.name}: ${msg}`;
      }
    }
    return { index, steps: [...path], final, deadlocked: base.pending(final), violation, violated: [...violated] };
  }

  function blockingExecutions(driven: readonly ScenarioExecution[]): ScenarioExecution[] {
    const covered = new Set<string>();
    for (const ex of driven) for (const st of ex.steps) for (const b of blocked(st.before)) covered.add(blockedSituation(b));
    // Breadth first over the fused model's states: the first path to each situation is a
    // shortest one.
    const key = (s: FleecingState) => base.key(s, false);
    const start = base.initial()[0]!;
    const prefix = new Map<string, readonly ScenarioStep[]>([[key(start), []]]);
    const targets: { situation: string; state: FleecingState; path: readonly ScenarioStep[] }[] = [];
    for (let frontier = [start]; frontier.length; ) {
      const next: FleecingState[] = [];
      for (const s of frontier) {
        const path = prefix.get(key(s))!;
        for (const b of blocked(s)) {
          const situation = blockedSituation(b);
          if (covered.has(situation)) continue;
          covered.add(situation);
          targets.push({ situation, state: s, path });
        }
        for (const st of steps(s)) {
          const k = key(st.after);
          if (prefix.has(k)) continue;
          prefix.set(k, [...path, st]);
          next.push(st.after);
        }
      }
      frontier = next;
    }
    return targets.map((t, i) => {
      const path = [...t.path];
      let s = t.state;
      for (let en = steps(s); en.length; en = steps(s)) {
        path.push(en[0]!);
        s = en[0]!.after;
      }
      return execution(driven.length + i, path, s);
    });
  }

  function executions(options: { limit?: number; por?: boolean; symmetry?: boolean } = {}): ScenarioExecution[] {
    const limit = options.limit ?? 20_000;
    const por = options.por ?? true;
    const symmetry = options.symmetry ?? true;
    const out: ScenarioExecution[] = [];
    const seen = new Set<string>();
    const key = (s: FleecingState) => base.key(s, false);
    const same = (x: ScenarioStep | undefined, y: ScenarioStep) => x !== undefined && JSON.stringify(x.labels) === JSON.stringify(y.labels);
    const independent = (s: FleecingState, a: ScenarioStep, b: ScenarioStep): boolean => {
      const ab = steps(a.after).find((x) => x.actor === b.actor);
      const ba = steps(b.after).find((x) => x.actor === a.actor);
      if (!same(ab, b) || !same(ba, a)) return false;
      return key(ab!.after) === key(ba!.after);
    };
    const path: ScenarioStep[] = [];
    const dfs = (s: FleecingState, sleep: ScenarioStep[]) => {
      const en = steps(s);
      if (en.length === 0) {
        const c = symmetry ? canonical(path.map((p) => p.actor)) : path.map((p) => p.actor).join(' ');
        if (seen.has(c)) return;
        seen.add(c);
        if (out.length >= limit) throw new SpecError(`scenario ${sc.id}: more than ${limit} interleavings; make it smaller`, scheme.name);
        out.push(execution(out.length, path, s));
        return;
      }
      const done: ScenarioStep[] = [];
      for (const a of en) {
        if (sleep.some((b) => b.actor === a.actor)) continue;
        const nextSleep = !por ? [] : [...sleep, ...done].filter((b) => independent(s, a, b)).map((b) => steps(a.after).find((x) => x.actor === b.actor)!);
        path.push(a);
        dfs(a.after, nextSleep);
        path.pop();
        done.push(a);
      }
    };
    dfs(base.initial()[0]!, []);
    return out;
  }

  return {
    scenario: sc,
    scheme,
    base,
    actors,
    steps,
    blocked,
    countModelPaths: () => countPaths((s) => [...restricted(s).values()].map((a) => base.step(s, a))),
    countFusedPaths: () => countPaths((s) => steps(s).map((x) => x.after)),
    executions,
    blockingExecutions,
  };
}

// ------------------------------------------------------------------------------------------
// Byte-level predictions

/** Snapshot content of byte `i` of a region: distinct per region, cluster and offset. */
export function snapshotBytes(region: number, size: number): Buffer {
  const k = `${region}:${size}`;
  let b = snapCache.get(k);
  if (!b) {
    b = makeSnapshot(region, size);
    if (snapCache.size > 4096) snapCache.clear();
    snapCache.set(k, b);
  }
  return Buffer.from(b);
}
const snapCache = new Map<string, Buffer>();

function makeSnapshot(region: number, size: number): Buffer {
  const b = Buffer.alloc(size);
  for (let i = 0; i < size; i++) b[i] = (((i >> 9) * 7 + region * 13) % 127) + 1; // 0x01-0x7f: never zero, never a write's
  return b;
}

/** Data guest write k writes: 0x80 | k in the top bits, offset-dependent low bits. */
/** What guest write `k` puts on the disk: its pattern, or zeroes for a WRITE_ZEROES. */
export function writeData(w: ScenarioRequest, k: number): Buffer {
  return w.zeroes ? Buffer.alloc(w.length) : writeBytes(k, w.length);
}

export function writeBytes(k: number, length: number): Buffer {
  const key = `${k}:${length}`;
  let b = writeCache.get(key);
  if (!b) {
    b = makeWrite(k, length);
    writeCache.set(key, b);
  }
  return Buffer.from(b);
}
const writeCache = new Map<string, Buffer>();

function makeWrite(k: number, length: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = 0x80 | ((k & 7) << 4) | ((i >> 9) & 0x0f);
  return b;
}

export interface Prediction {
  /** Expected data of each snapshot read (the model never predicts an error here). */
  readonly reads: readonly Buffer[];
  /** Which guest write each byte of each read came from (-1: snapshot data), for messages. */
  readonly origins: readonly Int8Array[];
  /** Reads whose predicted data differ from the snapshot (byte-level invariant violation). */
  readonly badReads: readonly number[];
  /** Requests the model fails (a snapshot read of a broken snapshot: EACCES; a guest write whose
   * copy failed under break-guest-write): the reply must be an error. */
  readonly readFails: readonly boolean[];
  readonly writeFails: readonly boolean[];
}

/** Replays the model's decisions of `ex` over bytes. `target0` is the target's initial content
 * (cbw: the raw temp file, zeroes; legacy: unallocated, so never read). */
export function predict(m: ScenarioModel, ex: ScenarioExecution, region = 0): Prediction {
  const sc = m.scenario;
  const step1 = (s: FleecingState, a: FleecingAction) => m.base.step(s, a);
  const cs = sc.clusterSize;
  const size = sc.clusters * cs;
  const snap = snapshotBytes(region, size);
  const src = Buffer.from(snap);
  const srcOrigin = new Int8Array(size).fill(-1);
  const tgt = Buffer.alloc(size);
  const tgtOrigin = new Int8Array(size).fill(-1);
  const bufs = new Map<number, Map<number, { data: Buffer; origin: Int8Array }>>();
  const reads = sc.reads.map((r) => Buffer.alloc(r.length));
  const origins = sc.reads.map((r) => new Int8Array(r.length).fill(-1));
  for (const st of ex.steps) {
    let s = st.before;
    for (const a of st.parts) {
      switch (a.kind) {
        case 'submit': {
          const t = step1(s, a);
          const claim = t.writers[a.w]!.claim;
          // Old data of the claimed clusters only.
          const parts = new Map<number, { data: Buffer; origin: Int8Array }>();
          for (let c = 0; c < sc.clusters; c++) {
            if ((claim >> c) & 1) parts.set(c, { data: Buffer.from(src.subarray(c * cs, (c + 1) * cs)), origin: srcOrigin.slice(c * cs, (c + 1) * cs) });
          }
          bufs.set(a.w, parts);
          break;
        }
        case 'copyWrite': {
          for (const [c, p] of bufs.get(a.w)!) {
            p.data.copy(tgt, c * cs);
            tgtOrigin.set(p.origin, c * cs);
          }
          break;
        }
        case 'write': {
          const w = sc.writes[a.w]!;
          writeData(w, a.w).copy(src, w.offset);
          srcOrigin.fill(a.w, w.offset, w.offset + w.length);
          break;
        }
        case 'read': {
          const r = sc.reads[a.r]!;
          const lo = Math.max(r.offset, a.c * cs);
          const hi = Math.min(r.offset + r.length, (a.c + a.n) * cs);
          const from = a.fromTarget ? tgt : src;
          const fromO = a.fromTarget ? tgtOrigin : srcOrigin;
          from.copy(reads[a.r]!, lo - r.offset, lo, hi);
          origins[a.r]!.set(fromO.subarray(lo, hi), lo - r.offset);
          break;
        }
        case 'serialise': case 'start': case 'lookup': case 'lock': case 'copyFail': case 'discard': case 'tempWrite':
          break;
      }
      s = step1(s, a);
    }
  }
  const readFails = ex.final.readers.map((r) => r.pc === 'failed');
  const writeFails = ex.final.writers.map((w) => w.pc === 'failed');
  const badReads = sc.reads.map((r, i) => (readFails[i] || reads[i]!.equals(snap.subarray(r.offset, r.offset + r.length)) ? -1 : i)).filter((i) => i >= 0);
  return { reads, origins, badReads, readFails, writeFails };
}

