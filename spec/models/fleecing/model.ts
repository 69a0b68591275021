// The fleecing data plane at the granularity where the race lives (docs/requirements/qemu-fleecing.md §3, §2.3):
//   guest write W: submit (block-copy claims the dirty clusters of its range and reads their old
//     data from the source) -> [S3: mark the temp write serialising] -> copyWrite (old data to
//     the target; cbw: set done) -> write (cbw: after reqlist_wait_all on frozen reads) -> done
//   snapshot read R, legacy (S1-S3): start -> per cluster: lookup (qcow2: allocated in temp?) ->
//     read (temp or backing = source)
//   snapshot read R, cbw (S4): start -> per chunk: lock (cbw_snapshot_read_lock: access check,
//     done prefix, frozen req) -> read (target or source) + unlock
//   snapshot discard D (S4, optional): cbw_co_pdiscard_snapshot on one cluster.
// One interpreter serves every Scheme; the scheme's flags decide guards and order.
//
// Hot path: enabled/step/key run millions of times, so they are plain switches (exhaustive via
// `never`) over small immutable records, not ts-pattern chains (docs/verification.md §3).

import type { ActionLabel, Behaviour, Invariant, TraceStep } from '../../explorer/behaviour.ts';
import { SpecError } from '../../explorer/errors.ts';
import { packedFleecing } from './packed.ts';
import type { Scheme } from './scheme.ts';
import {
  DISCARDED,
  GARBAGE,
  IDLE_READER,
  IDLE_WRITER,
  SNAPSHOT,
  TEMP_DATA,
  UNALLOCATED,
  isGuestData,
  clustersOf,
  describeRange,
  describeValue,
  rangeMask,
  type FleecingState,
  type Reader,
  type Writer,
} from './state.ts';

export interface FleecingParams {
  readonly clusters: number;
  readonly writers: number;
  readonly readers: number;
  /** Guest write length in clusters (> 1: requests straddle cluster boundaries). */
  readonly writeSize: number;
  /** Snapshot read length in clusters. */
  readonly readSize: number;
  /** cbw `bitmap`: copy and allow access to the first ceil(clusters/2) clusters only. */
  readonly bitmap: boolean;
  /** A snapshot discard of one cluster by the snapshot client. */
  readonly discard: boolean;
  readonly onCbwError: 'break-guest-write' | 'break-snapshot';
  /** How many CBW copies the environment may fail (target write error or cbw-timeout). */
  readonly cbwFailures: number;
  /** The reference's snapshot discard (not QEMU's, whose cbw_co_pdiscard_snapshot frees the
   * target at once): drop access and copy bits at once, then free the target range only when no
   * snapshot read is reading it from the target. Two steps, `discard` then `discard(punch)`.
   * Unpacked only (the explorer's packed form does not have it). */
  readonly discardWaitsTargetReads: boolean;
  /** Clients writing the temp/target image through a writable export on it (docs/requirements/qemu-fleecing.md §6 B6,
   * accepted by QEMU 7.2's permissions): each writes one request of writeSize clusters. */
  readonly tempWriters: number;
}

export const DEFAULT_FLEECING_PARAMS: FleecingParams = {
  clusters: 4,
  writers: 2,
  readers: 2,
  writeSize: 1,
  readSize: 1,
  bitmap: false,
  discard: false,
  onCbwError: 'break-guest-write',
  cbwFailures: 1,
  tempWriters: 0,
  discardWaitsTargetReads: false,
};

export type FleecingAction =
  | { readonly kind: 'submit'; readonly w: number; readonly off: number }
  | { readonly kind: 'serialise'; readonly w: number }
  | { readonly kind: 'copyWrite'; readonly w: number }
  | { readonly kind: 'copyFail'; readonly w: number }
  | { readonly kind: 'write'; readonly w: number }
  | { readonly kind: 'start'; readonly r: number; readonly off: number }
  | { readonly kind: 'lookup'; readonly r: number; readonly c: number }
  | { readonly kind: 'lock'; readonly r: number; readonly c: number }
  | { readonly kind: 'read'; readonly r: number; readonly c: number; readonly n: number; readonly fromTarget: boolean }
  | { readonly kind: 'discard'; readonly off: number; readonly punch?: boolean }
  | { readonly kind: 'tempWrite'; readonly t: number; readonly off: number };

export type FleecingBehaviour = Behaviour<FleecingState, FleecingAction> & {
  readonly scheme: Scheme;
  readonly config: FleecingParams;
};

/** Builds the model of `scheme` with `params` (missing ones from the defaults). */
export function fleecingModel(scheme: Scheme, params: Partial<FleecingParams> = {}): FleecingBehaviour {
  const p: FleecingParams = { ...DEFAULT_FLEECING_PARAMS, ...scheme.defaults, ...params };
  validate(p, scheme);
  const cbw = scheme.kind === 'cbw';
  const N = p.clusters;
  const all = rangeMask(0, N);
  const bitmapMask = cbw && p.bitmap ? rangeMask(0, Math.ceil(N / 2)) : all;
  const failures = cbw ? p.cbwFailures : 0;
  const ws = p.writeSize;
  const rs = p.readSize;

  const initial: FleecingState = {
    source: new Array<number>(N).fill(SNAPSHOT),
    target: new Array<number>(N).fill(cbw ? GARBAGE : UNALLOCATED),
    copy: bitmapMask,
    done: 0,
    access: cbw ? bitmapMask : all,
    snapshotError: false,
    failuresLeft: failures,
    writers: new Array<Writer>(p.writers).fill(IDLE_WRITER),
    readers: new Array<Reader>(p.readers).fill(IDLE_READER),
    discarder: cbw && p.discard ? { pc: 'idle', off: -1 } : undefined,
    tempDone: 0,
  };


  // Every action of this instance, built once: enabled() hands out these shared (immutable)
  // records instead of allocating one per enabled instance.
  const W = p.writers;
  const R = p.readers;
  const actSubmit: FleecingAction[] = [];
  const actSerialise: FleecingAction[] = [];
  const actCopyWrite: FleecingAction[] = [];
  const actCopyFail: FleecingAction[] = [];
  const actWrite: FleecingAction[] = [];
  for (let w = 0; w < W; w++) {
    for (let off = 0; off < N; off++) actSubmit.push({ kind: 'submit', w, off });
    actSerialise.push({ kind: 'serialise', w });
    actCopyWrite.push({ kind: 'copyWrite', w });
    actCopyFail.push({ kind: 'copyFail', w });
    actWrite.push({ kind: 'write', w });
  }
  const actStart: FleecingAction[] = [];
  const actLookup: FleecingAction[] = [];
  const actLock: FleecingAction[] = [];
  const actRead: FleecingAction[] = [];
  for (let r = 0; r < R; r++) {
    for (let c = 0; c < N; c++) {
      actStart.push({ kind: 'start', r, off: c });
      actLookup.push({ kind: 'lookup', r, c });
      actLock.push({ kind: 'lock', r, c });
      for (let n = 0; n <= rs; n++) {
        actRead.push({ kind: 'read', r, c, n, fromTarget: false });
        actRead.push({ kind: 'read', r, c, n, fromTarget: true });
      }
    }
  }
  const actDiscard: FleecingAction[] = [];
  for (let off = 0; off < N; off++) actDiscard.push({ kind: 'discard', off });
  const actPunch: FleecingAction[] = [];
  for (let off = 0; off < N; off++) actPunch.push({ kind: 'discard', off, punch: true });
  const actTempWrite: FleecingAction[] = [];
  for (let t = 0; t < p.tempWriters; t++) for (let off = 0; off < N; off++) actTempWrite.push({ kind: 'tempWrite', t, off });

  function enabled(s: FleecingState): FleecingAction[] {
    const out: FleecingAction[] = [];
    const { writers, readers } = s;
    let readerHold = 0;
    for (const r of readers) readerHold |= r.hold;
    let writerInflight = 0;
    for (const w of writers) writerInflight |= inflight(w, cbw, ws);

    for (let i = 0; i < writers.length; i++) {
      const w = writers[i]!;
      switch (w.pc) {
        case 'idle': {
          for (let off = 0; off + ws <= N; off++) {
            const m = rangeMask(off, ws);
            if (cbw && s.snapshotError) {
              out.push(actSubmit[i * N + off]!); // cbw_do_copy_before_write: CBW skipped
              continue;
            }
            // block-copy / backup CoW: wait for overlapping in-flight copies (block_copy_wait_one);
            // S2 also for reads holding a cow request (backup_wait_for_overlapping_requests).
            const blockers = writerInflight | (scheme.readers === 'cow-freeze' ? readerHold : 0);
            if ((blockers & m) === 0) out.push(actSubmit[i * N + off]!);
          }
          break;
        }
        case 'serialise':
          out.push(actSerialise[i]!);
          break;
        case 'copyWrite':
          // S3 rule (a): the serialising temp write waits for every overlapping temp request.
          if (!scheme.serialisedCopy || (readerHold & w.claim) === 0) out.push(actCopyWrite[i]!);
          if (s.failuresLeft > 0) out.push(actCopyFail[i]!);
          break;
        case 'copyLate':
          out.push(actCopyWrite[i]!);
          if (s.failuresLeft > 0) out.push(actCopyFail[i]!);
          break;
        case 'write':
        case 'writeEarly':
          // cbw: reqlist_wait_all(frozen_read_reqs, range) before forwarding the write.
          if (!cbw || w.noWait || (readerHold & rangeMask(w.off, ws)) === 0) out.push(actWrite[i]!);
          break;
        case 'done':
        case 'failed':
          break;
        default:
          return unreachable(w.pc);
      }
    }

    for (let i = 0; i < readers.length; i++) {
      const r = readers[i]!;
      switch (r.pc) {
        case 'idle': {
          for (let off = 0; off + rs <= N; off++) {
            const m = rangeMask(off, rs);
            let blocked = false;
            if (scheme.readers === 'cow-freeze' || scheme.readers === 'cow-wait-only') {
              blocked = (writerInflight & m) !== 0;
            } else if (scheme.readers === 'temp-tracked') {
              // S3 rule (b): a normal request waits for overlapping serialising requests.
              for (const w of writers) if (w.pc === 'copyWrite' && (w.claim & m) !== 0) blocked = true;
            }
            if (!blocked) out.push(actStart[i * N + off]!);
          }
          break;
        }
        case 'lookup':
          out.push(actLookup[i * N + r.pos]!);
          break;
        case 'lock':
          out.push(actLock[i * N + r.pos]!);
          break;
        case 'read':
          out.push(actRead[((i * N + r.pos) * (rs + 1) + r.n) * 2 + (r.fromTarget ? 1 : 0)]!);
          break;
        case 'done':
        case 'failed':
          break;
        default:
          return unreachable(r.pc);
      }
    }

    if (s.discarder?.pc === 'idle') for (let off = 0; off < N; off++) out.push(actDiscard[off]!);
    if (s.discarder?.pc === 'waiting') {
      // The reference's discard: the target range is freed once no read reads it from there.
      const c = s.discarder.off;
      if (!readers.some((r) => r.pc === 'read' && r.fromTarget && c >= r.pos && c < r.pos + r.n)) out.push(actPunch[c]!);
    }
    for (let t = 0; t < p.tempWriters; t++) {
      if (((s.tempDone >> t) & 1) === 0) for (let off = 0; off + ws <= N; off++) out.push(actTempWrite[t * N + off]!);
    }
    return out;
  }

  function step(s: FleecingState, a: FleecingAction): FleecingState {
    switch (a.kind) {
      case 'submit': {
        const m = rangeMask(a.off, ws);
        if (cbw && s.snapshotError) {
          // snapshot already broken: no CBW. QEMU 7.1 returns before reqlist_wait_all too.
          return setWriter(s, a.w, mkWriter('write', a.off, 0, NO_DATA, false, scheme.errorEarlyReturn));
        }
        const claim = m & s.copy;
        const buf: number[] = [];
        for (let c = a.off; c < a.off + ws; c++) if ((claim >> c) & 1) buf.push(s.source[c]!);
        let done = s.done;
        if (cbw && (claim === 0 || scheme.doneBeforeCopy)) done |= m; // block_copy returned success
        const pc =
          claim === 0 ? 'write' : scheme.serialisedCopy ? 'serialise' : scheme.writeBeforeCopy ? 'writeEarly' : 'copyWrite';
        const writers = s.writers.slice();
        writers[a.w] = mkWriter(pc, a.off, claim, buf, false, false);
        return mkState(s.source, s.target, s.copy & ~claim, done, s.access, s.snapshotError, s.failuresLeft, writers, s.readers, s.discarder, s.tempDone);
      }
      case 'serialise':
        const w = s.writers[a.w]!;
        return setWriter(s, a.w, mkWriter('copyWrite', w.off, w.claim, w.buf, w.failed, w.noWait));
      case 'copyWrite': {
        const w = s.writers[a.w]!;
        const target = s.target.slice();
        let i = 0;
        for (let c = w.off; c < w.off + ws; c++) if ((w.claim >> c) & 1) target[c] = w.buf[i++]!;
        const done = cbw && !scheme.doneBeforeCopy ? s.done | rangeMask(w.off, ws) : s.done;
        const writers = s.writers.slice();
        writers[a.w] = w.pc === 'copyLate' ? finished(w, 'done') : mkWriter('write', w.off, 0, NO_DATA, w.failed, w.noWait);
        return mkState(s.source, target, s.copy, done, s.access, s.snapshotError, s.failuresLeft, writers, s.readers, s.discarder, s.tempDone);
      }
      case 'copyFail': {
        const w = s.writers[a.w]!;
        // block-copy sets the claimed bits again on failure.
        const base = mkState(s.source, s.target, s.copy | w.claim, s.done, s.access, s.snapshotError, s.failuresLeft - 1, s.writers, s.readers, s.discarder, s.tempDone);
        if (w.pc === 'copyLate') {
          // write-before-copy variant: the guest write already landed before its copy failed.
          const broken = p.onCbwError === 'break-snapshot';
          const t = setWriter(base, a.w, broken ? DONE_WRITER : FAILED_CBW_DONE);
          return mkState(t.source, t.target, t.copy, t.done, t.access, s.snapshotError || broken, t.failuresLeft, t.writers, t.readers, t.discarder, t.tempDone);
        }
        if (p.onCbwError === 'break-guest-write') {
          const next: Writer = scheme.errorIgnored
            ? mkWriter('write', w.off, 0, NO_DATA, true, w.noWait)
            : finished(w, 'failed');
          return setWriter(base, a.w, next);
        }
        const next: Writer = mkWriter('write', w.off, 0, NO_DATA, w.failed, scheme.errorSkipsWait);
        const t = setWriter(base, a.w, next);
        return mkState(t.source, t.target, t.copy, t.done, t.access, true, t.failuresLeft, t.writers, t.readers, t.discarder, t.tempDone);
      }
      case 'write': {
        const w = s.writers[a.w]!;
        const source = s.source.slice();
        for (let c = w.off; c < w.off + ws; c++) source[c] = a.w + 1;
        const writers = s.writers.slice();
        writers[a.w] = w.pc === 'writeEarly' ? mkWriter('copyLate', w.off, w.claim, w.buf, w.failed, w.noWait) : finished(w, 'done');
        return mkState(source, s.target, s.copy, s.done, s.access, s.snapshotError, s.failuresLeft, writers, s.readers, s.discarder, s.tempDone);
      }
      case 'start': {
        const hold = scheme.readers === 'cow-freeze' || scheme.readers === 'temp-tracked' ? rangeMask(a.off, rs) : 0;
        return setReader(s, a.r, mkReader(cbw ? 'lock' : 'lookup', a.off, a.off, 0, false, hold, SNAPSHOT, -1));
      }
      case 'lookup': {
        const r = s.readers[a.r]!;
        return setReader(s, a.r, mkReader('read', r.off, r.pos, 1, s.target[r.pos] !== UNALLOCATED, r.hold, r.bad, r.badAt));
      }
      case 'lock': {
        const r = s.readers[a.r]!;
        const end = r.off + rs;
        const remaining = rangeMask(r.pos, end - r.pos);
        if (s.snapshotError || (remaining & ~s.access) !== 0) {
          return setReader(s, a.r, IDLE_READER_FAILED); // -EACCES
        }
        // bdrv_dirty_bitmap_status: longest prefix uniformly done or not done.
        const isDone = (s.done >> r.pos) & 1;
        let n = 1;
        while (r.pos + n < end && ((s.done >> (r.pos + n)) & 1) === isDone) n++;
        // QEMU 7.2 hbitmap_status: a done prefix that stops at a not-done cluster inside the range
        // is reported (with the right length) as not done: read from the source, frozen.
        const fromTarget = isDone === 1 && !(scheme.donePrefixNotDone && r.pos + n < end);
        const hold = !fromTarget && scheme.readers === 'frozen-reqs' ? rangeMask(r.pos, n) : 0;
        return setReader(s, a.r, mkReader('read', r.off, r.pos, n, fromTarget, hold, r.bad, r.badAt));
      }
      case 'read': {
        const r = s.readers[a.r]!;
        let bad = r.bad;
        let badAt = r.badAt;
        for (let c = r.pos; c < r.pos + r.n; c++) {
          const v = r.fromTarget ? s.target[c]! : s.source[c]!;
          const ok = v === SNAPSHOT || (v === DISCARDED && ((s.access >> c) & 1) === 0);
          if (!ok && bad === SNAPSHOT) {
            bad = v;
            badAt = c;
          }
        }
        const pos = r.pos + r.n;
        const end = r.off + rs;
        let next: Reader;
        if (pos === end) {
          next = bad === SNAPSHOT ? IDLE_READER_DONE : mkReader('done', r.off, 0, 0, false, 0, bad, badAt);
        } else {
          // legacy: the tracked/cow request lives until the whole read ends; cbw: unlock per chunk.
          next = mkReader(cbw ? 'lock' : 'lookup', r.off, pos, 0, false, cbw ? 0 : r.hold, bad, badAt);
        }
        return setReader(s, a.r, next);
      }
      case 'discard': {
        const m = 1 << a.off;
        if (p.discardWaitsTargetReads && !a.punch) {
          // Access and copy bits dropped now; the target is freed by the punch step.
          return mkState(s.source, s.target, s.copy & ~m, s.done, s.access & ~m, s.snapshotError, s.failuresLeft, s.writers, s.readers, { pc: 'waiting', off: a.off }, s.tempDone);
        }
        const target = s.target.slice();
        target[a.off] = DISCARDED;
        let readers = s.readers;
        if (scheme.discardUntracked && readers.some((r) => r.hold & m)) {
          readers = readers.map((r) => (r.hold & m ? mkReader(r.pc, r.off, r.pos, r.n, r.fromTarget, r.hold & ~m, r.bad, r.badAt) : r));
        }
        // block_copy_reset clears the copy bit too.
        return mkState(s.source, target, s.copy & ~m, s.done, s.access & ~m, s.snapshotError, s.failuresLeft, s.writers, readers, { pc: 'done', off: a.off }, s.tempDone);
      }
      case 'tempWrite': {
        const target = s.target.slice();
        for (let c = a.off; c < a.off + ws; c++) target[c] = TEMP_DATA + a.t;
        return mkState(s.source, target, s.copy, s.done, s.access, s.snapshotError, s.failuresLeft, s.writers, s.readers, s.discarder, s.tempDone | (1 << a.t));
      }
      default:
        return unreachable(a);
    }
  }

  function label(a: FleecingAction): ActionLabel {
    switch (a.kind) {
      case 'submit':
        return { actor: `W${a.w}`, action: 'submit', args: ws > 1 ? { cluster: a.off, count: ws } : { cluster: a.off } };
      case 'serialise':
      case 'copyWrite':
      case 'copyFail':
      case 'write':
        return { actor: `W${a.w}`, action: a.kind };
      case 'start':
        return { actor: `R${a.r}`, action: 'start', args: rs > 1 ? { cluster: a.off, count: rs } : { cluster: a.off } };
      case 'lookup':
      case 'lock':
        return { actor: `R${a.r}`, action: a.kind, args: { cluster: a.c } };
      case 'read':
        return {
          actor: `R${a.r}`,
          action: 'read',
          args: { cluster: a.c, ...(a.n > 1 ? { count: a.n } : {}), from: a.fromTarget ? (cbw ? 'target' : 'temp') : cbw ? 'source' : 'backing' },
        };
      case 'discard':
        return { actor: 'D', action: 'discard', args: a.punch ? { cluster: a.off, target: 'free' } : { cluster: a.off } };
      case 'tempWrite':
        return { actor: `T${a.t}`, action: 'tempWrite', args: ws > 1 ? { cluster: a.off, count: ws } : { cluster: a.off } };
      default:
        return unreachable(a);
    }
  }

  const invariants: Invariant<FleecingState>[] = [
    {
      name: 'snapshot-read-consistent',
      check(s) {
        for (let i = 0; i < s.readers.length; i++) {
          const r = s.readers[i]!;
          if (r.pc !== 'done' || r.bad === SNAPSHOT) continue;
          const what = isGuestData(r.bad)
            ? `data written by W${r.bad - 1}, after the snapshot`
            : r.bad >= TEMP_DATA
              ? `data T${r.bad - TEMP_DATA} wrote into the ${cbw ? 'target' : 'temp'} image, not snapshot data`
              : r.bad === GARBAGE
                ? 'target content that was never copied there'
                : 'discarded target content of a cluster that is still accessible';
          // Single-cluster reads read like the example; longer ones name the cluster.
          const where = rs === 1 ? '' : ` for cluster ${r.badAt}`;
          return `snapshot read R${i} of ${describeRange(r.off, rs)} returned${where} ${what}`;
        }
        return undefined;
      },
    },
  ];
  if (cbw && p.onCbwError === 'break-guest-write') {
    invariants.push({
      name: 'failed-cbw-fails-guest-write',
      check(s) {
        for (let i = 0; i < s.writers.length; i++) {
          const w = s.writers[i]!;
          if (w.pc === 'done' && w.failed) {
            return `guest write W${i} reached the source although its copy-before-write failed (on-cbw-error=break-guest-write)`;
          }
        }
        return undefined;
      },
    });
  }
  invariants.push({
    // docs/requirements/qemu-fleecing.md §2.3 invariant (i): the source is overwritten only after the old data is
    // on the target (unless the cluster is outside the snapshot or the snapshot is broken).
    name: 'copied-before-overwritten',
    check(s) {
      if (s.snapshotError) return undefined;
      for (let c = 0; c < N; c++) {
        const v = s.source[c]!;
        if (isGuestData(v) && (s.access >> c) & 1 && s.target[c] !== SNAPSHOT) {
          return `W${v - 1} overwrote cluster ${c} on the source while its snapshot data was not on the target (target: ${describeValue(s.target[c]!)})`;
        }
      }
      return undefined;
    },
  });

  const actionNames = [
    'submit',
    ...(scheme.serialisedCopy ? ['serialise'] : []),
    'copyWrite',
    ...(failures > 0 ? ['copyFail'] : []),
    'write',
    'start',
    ...(cbw ? ['lock'] : ['lookup']),
    'read',
    ...(initial.discarder ? ['discard'] : []),
    ...(p.tempWriters > 0 ? ['tempWrite'] : []),
  ];

  const shown: Record<string, string | number | boolean> = {
    clusters: p.clusters,
    writers: p.writers,
    readers: p.readers,
    writeSize: p.writeSize,
    readSize: p.readSize,
  };
  if (p.tempWriters > 0) shown['tempWriters'] = p.tempWriters;
  if (cbw) Object.assign(shown, { bitmap: p.bitmap, discard: p.discard, onCbwError: p.onCbwError, cbwFailures: p.cbwFailures });

  return {
    name: scheme.name,
    params: shown,
    scheme,
    config: p,
    initial: () => [initial],
    enabled,
    step,
    label,
    actionName: (a) => a.kind,
    key: (s, symmetric) => keyOf(s, symmetric),
    writeKey: (s, symmetric, out) => writeKeyOf(s, symmetric, out),
    ...(p.discardWaitsTargetReads ? {} : { packed: packedFleecing(scheme, p, initial.discarder !== undefined) }),
    invariants,
    pending: (s) =>
      s.tempDone !== (1 << p.tempWriters) - 1 ||
      s.writers.some((w) => w.pc !== 'done' && w.pc !== 'failed') ||
      s.readers.some((r) => r.pc !== 'done' && r.pc !== 'failed') ||
      s.discarder?.pc === 'idle' ||
      s.discarder?.pc === 'waiting',
    actionNames,
    view: (s) => viewOf(s, cbw),
    annotate(message: string, trace: readonly TraceStep<FleecingState>[]) {
      // "written by W1" -> "written by W1 at step 5": the step where W1's write reached the source.
      return message.replace(/written by W(\d+)(?= ?,)/, (all, w: string) => {
        const at = trace.findIndex((t) => t.label.actor === `W${w}` && t.label.action === 'write');
        return at < 0 ? all : `${all} at step ${at + 1}`;
      });
    },
  };
}

/** Clusters a writer's in-flight copy holds against other CBW (block-copy task, S2 cow req). */
function inflight(w: Writer, cbw: boolean, ws: number): number {
  return w.pc === 'serialise' || w.pc === 'copyWrite' || w.pc === 'copyLate' ? (cbw ? w.claim : rangeMask(w.off, ws)) : 0;
}

const DONE_WRITER: Writer = mkWriter('done', -1, 0, IDLE_WRITER.buf, false, false);
const FAILED_WRITER: Writer = mkWriter('failed', -1, 0, IDLE_WRITER.buf, false, false);
/** Known-bad errorIgnored only: the write went through although its CBW failed. */
const FAILED_CBW_DONE: Writer = mkWriter('done', -1, 0, IDLE_WRITER.buf, true, false);
const IDLE_READER_DONE: Reader = mkReader('done', -1, 0, 0, false, 0, SNAPSHOT, -1);
const IDLE_READER_FAILED: Reader = mkReader('failed', -1, 0, 0, false, 0, SNAPSHOT, -1);

/** A finished writer drops its dead fields, so equal outcomes share one state. */
function finished(w: Writer, pc: 'done' | 'failed'): Writer {
  return pc === 'done' && w.failed ? FAILED_CBW_DONE : pc === 'done' ? DONE_WRITER : FAILED_WRITER;
}

function setWriter(s: FleecingState, i: number, w: Writer): FleecingState {
  const writers = s.writers.slice();
  writers[i] = w;
  return withActors(s, writers, s.readers);
}

function setReader(s: FleecingState, i: number, r: Reader): FleecingState {
  const readers = s.readers.slice();
  readers[i] = r;
  return withActors(s, s.writers, readers);
}

/** One literal with every field keeps all states on one hidden class (faster than spreads). */
function withActors(s: FleecingState, writers: readonly Writer[], readers: readonly Reader[]): FleecingState {
  return mkState(s.source, s.target, s.copy, s.done, s.access, s.snapshotError, s.failuresLeft, writers, readers, s.discarder, s.tempDone);
}

function mkState(
  source: readonly number[],
  target: readonly number[],
  copy: number,
  done: number,
  access: number,
  snapshotError: boolean,
  failuresLeft: number,
  writers: readonly Writer[],
  readers: readonly Reader[],
  discarder: FleecingState['discarder'],
  tempDone: number,
): FleecingState {
  return { source, target, copy, done, access, snapshotError, failuresLeft, writers, readers, discarder, tempDone };
}

/** Writer and reader records, always with the field order of IDLE_WRITER / IDLE_READER (one
 * hidden class each). */
function mkWriter(pc: Writer['pc'], off: number, claim: number, buf: readonly number[], failed: boolean, noWait: boolean): Writer {
  return { pc, off, claim, buf, failed, noWait };
}

function mkReader(
  pc: Reader['pc'],
  off: number,
  pos: number,
  n: number,
  fromTarget: boolean,
  hold: number,
  bad: number,
  badAt: number,
): Reader {
  return { pc, off, pos, n, fromTarget, hold, bad, badAt };
}

/** The empty buffer of writers holding no old data (shared; buffers are never mutated). */
const NO_DATA: readonly number[] = IDLE_WRITER.buf;

function unreachable(x: never): never {
  throw new SpecError(`internal: unhandled case ${JSON.stringify(x)}`);
}

function validate(p: FleecingParams, scheme: Scheme): void {
  const int = (name: keyof FleecingParams, lo: number, hi: number) => {
    const v = p[name];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < lo || v > hi) {
      throw new SpecError(`parameter ${name} must be an integer in [${lo}, ${hi}], got ${JSON.stringify(v)}`, scheme.name);
    }
  };
  int('clusters', 1, 16);
  int('writers', 0, 8);
  int('readers', 0, 8);
  int('writeSize', 1, p.clusters);
  int('readSize', 1, p.clusters);
  int('cbwFailures', 0, 8);
  int('tempWriters', 0, 4);
  if (p.onCbwError !== 'break-guest-write' && p.onCbwError !== 'break-snapshot') {
    throw new SpecError(`parameter onCbwError must be break-guest-write or break-snapshot, got ${JSON.stringify(p.onCbwError)}`, scheme.name);
  }
}

// Canonical keys. Writers are interchangeable, and so are readers (each picks its range
// nondeterministically). Under symmetry, writers are sorted by their local state and every
// value naming a writer (source/target data, buffers, a read's bad value) is renamed with the
// same permutation; readers are sorted; writers still tied are tried in every order (keyOf).

const WRITER_PC: Readonly<Record<Writer['pc'], number>> = {
  idle: 1, serialise: 2, copyWrite: 3, write: 4, writeEarly: 5, copyLate: 6, done: 7, failed: 8,
};
const READER_PC: Readonly<Record<Reader['pc'], number>> = { idle: 1, lookup: 2, lock: 3, read: 4, done: 5, failed: 6 };

// Keys are one-byte (latin1) strings, one byte per small field (values offset by 8 so codes stay
// positive, masks as two bytes since clusters <= 16), written into one scratch buffer and turned
// into a flat string by a single native call: no ropes for the visited set to flatten, half the
// memory of UTF-16 keys, and no closures on this path.

// 16 clusters x 2 + 6 + 8 writers x (6 + 16) + 8 readers x 10 + 3 fits in 512 bytes.
const scratch = Buffer.allocUnsafe(512);
const scratchCandidate = new Uint8Array(512);
const scratchOrder: number[] = [];
const scratchIndex: number[] = [];
const scratchReaders: number[] = [];
const scratchFirst: number[] = [];

/** Compares two writers by their local state without values naming writers. */
function compareWriters(a: Writer, b: Writer): number {
  return (
    WRITER_PC[a.pc] - WRITER_PC[b.pc] ||
    a.off - b.off ||
    a.claim - b.claim ||
    Number(a.failed) - Number(b.failed) ||
    Number(a.noWait) - Number(b.noWait)
  );
}

function renamed(v: number, newIndex: readonly number[]): number {
  return v > 0 && v < TEMP_DATA ? newIndex[v - 1]! + 9 : v + 8;
}

function compareReaders(a: Reader, b: Reader, newIndex: readonly number[]): number {
  return (
    READER_PC[a.pc] - READER_PC[b.pc] ||
    a.off - b.off ||
    a.pos - b.pos ||
    a.n - b.n ||
    Number(a.fromTarget) - Number(b.fromTarget) ||
    a.hold - b.hold ||
    renamed(a.bad, newIndex) - renamed(b.bad, newIndex) ||
    a.badAt - b.badAt
  );
}

function keyOf(s: FleecingState, symmetric: boolean): string {
  const n = writeKeyOf(s, symmetric, scratch);
  return scratch.toString('latin1', 0, n);
}

/** The key of `s` as bytes in `out` (the latin1 code units of keyOf); returns the length. */
function writeKeyOf(s: FleecingState, symmetric: boolean, out: Uint8Array): number {
  if (!symmetric) return encodePlain(s, out);
  const W = s.writers.length;
  const order = scratchOrder;
  order.length = W;
  for (let i = 0; i < W; i++) order[i] = i;
  if (W < 2) return encode(s, order, symmetric, out);
  // Sort writers by local state, ties by the first cluster whose source data they wrote.
  const first = scratchFirst;
  first.length = W;
  for (let i = 0; i < W; i++) first[i] = 255;
  for (let c = s.source.length - 1; c >= 0; c--) {
    const v = s.source[c]!;
    if (isGuestData(v)) first[v - 1] = c;
  }
  for (let i = 1; i < W; i++) {
    const x = order[i]!;
    let j = i - 1;
    while (j >= 0 && (compareWriters(s.writers[order[j]!]!, s.writers[x]!) || first[order[j]!]! - first[x]!) > 0) {
      order[j + 1] = order[j]!;
      j--;
    }
    order[j + 1] = x;
  }
  // Writers still tied have identical local state; swapping two of them changes the key only if
  // data names both (a target value, a buffer, a read's bad value). For those rare groups try
  // every order and keep the least key, so the key is fully canonical: permutation-equivalent
  // states always get the same key (which also lets traces be rebuilt under symmetry).
  const named = namedWriters(s);
  const groups: [number, number][] = [];
  for (let a = 0; a < W; ) {
    let b = a + 1;
    while (b < W && compareWriters(s.writers[order[a]!]!, s.writers[order[b]!]!) === 0 && first[order[a]!] === first[order[b]!]) b++;
    let namedCount = 0;
    for (let i = a; i < b; i++) if ((named >> order[i]!) & 1) namedCount++;
    if (namedCount >= 2) groups.push([a, b]);
    a = b;
  }
  if (groups.length === 0) return encode(s, order, true, out);
  // Least key in byte order (= latin1 string order: shorter prefix first).
  let bestLen = -1;
  const cand = scratchCandidate;
  const visit = (g: number): void => {
    if (g === groups.length) {
      const len = encode(s, order, true, cand);
      if (bestLen < 0 || compareBytes(cand, len, out, bestLen) < 0) {
        for (let i = 0; i < len; i++) out[i] = cand[i]!;
        bestLen = len;
      }
      return;
    }
    const [lo, hi] = groups[g]!;
    permuteRange(order, lo, hi, () => visit(g + 1));
  };
  visit(0);
  return bestLen;
}

function compareBytes(a: Uint8Array, alen: number, b: Uint8Array, blen: number): number {
  const n = Math.min(alen, blen);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i]! - b[i]!;
  return alen - blen;
}

/** Calls `each` once for every ordering of arr[lo..hi) (restores the original order after). */
function permuteRange(arr: number[], lo: number, hi: number, each: () => void): void {
  if (hi - lo <= 1) {
    each();
    return;
  }
  for (let i = lo; i < hi; i++) {
    [arr[lo], arr[i]] = [arr[i]!, arr[lo]!];
    permuteRange(arr, lo + 1, hi, each);
    [arr[lo], arr[i]] = [arr[i]!, arr[lo]!];
  }
}

/** Writers whose value appears anywhere in the state, as a mask. */
function namedWriters(s: FleecingState): number {
  let m = 0;
  for (const v of s.source) if (isGuestData(v)) m |= 1 << (v - 1);
  for (const v of s.target) if (isGuestData(v)) m |= 1 << (v - 1);
  for (const w of s.writers) for (const v of w.buf) if (isGuestData(v)) m |= 1 << (v - 1);
  for (const r of s.readers) if (isGuestData(r.bad)) m |= 1 << (r.bad - 1);
  return m;
}

function writerPcCode(pc: Writer['pc']): number {
  switch (pc) {
    case 'idle':
      return 1;
    case 'serialise':
      return 2;
    case 'copyWrite':
      return 3;
    case 'write':
      return 4;
    case 'writeEarly':
      return 5;
    case 'copyLate':
      return 6;
    case 'done':
      return 7;
    case 'failed':
      return 8;
    default:
      return unreachable(pc);
  }
}

function readerPcCode(pc: Reader['pc']): number {
  switch (pc) {
    case 'idle':
      return 1;
    case 'lookup':
      return 2;
    case 'lock':
      return 3;
    case 'read':
      return 4;
    case 'done':
      return 5;
    case 'failed':
      return 6;
    default:
      return unreachable(pc);
  }
}

/** encode() without symmetry: writers and readers in index order, no renaming (renamed(v) is
 * v + 8 under the identity permutation). The same bytes, without the permutation bookkeeping. */
function encodePlain(s: FleecingState, k: Uint8Array): number {
  let n = 0;
  const { source, target, writers, readers } = s;
  for (let c = 0; c < source.length; c++) k[n++] = source[c]! + 8;
  for (let c = 0; c < target.length; c++) k[n++] = target[c]! + 8;
  k[n++] = s.copy & 255;
  k[n++] = s.copy >> 8;
  k[n++] = s.done & 255;
  k[n++] = s.done >> 8;
  k[n++] = s.access & 255;
  k[n++] = s.access >> 8;
  k[n++] = (s.snapshotError ? 128 : 0) | s.failuresLeft;
  for (let i = 0; i < writers.length; i++) {
    const w = writers[i]!;
    k[n++] = writerPcCode(w.pc);
    k[n++] = w.off + 8;
    k[n++] = w.claim & 255;
    k[n++] = w.claim >> 8;
    k[n++] = (w.failed ? 2 : 0) | (w.noWait ? 1 : 0);
    const buf = w.buf;
    k[n++] = buf.length;
    for (let j = 0; j < buf.length; j++) k[n++] = buf[j]! + 8;
  }
  for (let i = 0; i < readers.length; i++) {
    const r = readers[i]!;
    k[n++] = readerPcCode(r.pc);
    k[n++] = r.off + 8;
    k[n++] = r.pos + 8;
    k[n++] = r.n;
    k[n++] = r.fromTarget ? 1 : 0;
    k[n++] = r.hold & 255;
    k[n++] = r.hold >> 8;
    k[n++] = r.bad + 8;
    k[n++] = r.badAt + 8;
  }
  const d = s.discarder;
  if (d !== undefined) {
    k[n++] = d.pc === 'idle' ? 1 : d.pc === 'done' ? 2 : 3;
    k[n++] = d.off + 8;
  }
  k[n++] = s.tempDone;
  return n;
}

/** The key of `s` with writers in `order` (order[pos] = writer index) and, when `symmetric`,
 * readers sorted. */
function encode(s: FleecingState, order: readonly number[], symmetric: boolean, k: Uint8Array): number {
  const W = s.writers.length;
  const R = s.readers.length;
  const newIndex = scratchIndex;
  newIndex.length = W;
  for (let pos = 0; pos < W; pos++) newIndex[order[pos]!] = pos;

  let n = 0;
  for (const v of s.source) k[n++] = renamed(v, newIndex);
  for (const v of s.target) k[n++] = renamed(v, newIndex);
  k[n++] = s.copy & 255;
  k[n++] = s.copy >> 8;
  k[n++] = s.done & 255;
  k[n++] = s.done >> 8;
  k[n++] = s.access & 255;
  k[n++] = s.access >> 8;
  k[n++] = (s.snapshotError ? 128 : 0) | s.failuresLeft;
  for (let pos = 0; pos < W; pos++) {
    const w = s.writers[order[pos]!]!;
    k[n++] = WRITER_PC[w.pc];
    k[n++] = w.off + 8;
    k[n++] = w.claim & 255;
    k[n++] = w.claim >> 8;
    k[n++] = (w.failed ? 2 : 0) | (w.noWait ? 1 : 0);
    k[n++] = w.buf.length;
    for (const v of w.buf) k[n++] = renamed(v, newIndex);
  }
  const ro = scratchReaders;
  ro.length = R;
  for (let i = 0; i < R; i++) ro[i] = i;
  if (symmetric) {
    for (let i = 1; i < R; i++) {
      const x = ro[i]!;
      let j = i - 1;
      while (j >= 0 && compareReaders(s.readers[ro[j]!]!, s.readers[x]!, newIndex) > 0) {
        ro[j + 1] = ro[j]!;
        j--;
      }
      ro[j + 1] = x;
    }
  }
  for (let i = 0; i < R; i++) {
    const r = s.readers[ro[i]!]!;
    k[n++] = READER_PC[r.pc];
    k[n++] = r.off + 8;
    k[n++] = r.pos + 8;
    k[n++] = r.n;
    k[n++] = r.fromTarget ? 1 : 0;
    k[n++] = r.hold & 255;
    k[n++] = r.hold >> 8;
    k[n++] = renamed(r.bad, newIndex);
    k[n++] = r.badAt + 8;
  }
  if (s.discarder) {
    k[n++] = s.discarder.pc === 'idle' ? 1 : s.discarder.pc === 'done' ? 2 : 3;
    k[n++] = s.discarder.off + 8;
  }
  k[n++] = s.tempDone;
  return n;
}

function maskText(m: number, n: number): string {
  return `{${clustersOf(m & rangeMask(0, n)).join(',')}}`;
}

function viewOf(s: FleecingState, cbw: boolean): Record<string, string | number | boolean> {
  const N = s.source.length;
  const v: Record<string, string | number | boolean> = {
    source: `[${s.source.map(describeValue).join(',')}]`,
    target: `[${s.target.map(describeValue).join(',')}]`,
    copyBitmap: maskText(s.copy, N),
  };
  if (cbw) {
    v['doneBitmap'] = maskText(s.done, N);
    v['accessBitmap'] = maskText(s.access, N);
    v['snapshotError'] = s.snapshotError;
  }
  s.writers.forEach((w, i) => {
    v[`W${i}.pc`] = w.pc;
    if (w.off >= 0) v[`W${i}.off`] = w.off;
    if (w.claim) v[`W${i}.claim`] = maskText(w.claim, N);
    if (w.buf.length) v[`W${i}.buf`] = `[${w.buf.map(describeValue).join(',')}]`;
    if (w.failed) v[`W${i}.failed`] = true;
  });
  s.readers.forEach((r, i) => {
    v[`R${i}.pc`] = r.pc;
    if (r.off >= 0) v[`R${i}.pos`] = r.pos;
    if (r.pc === 'read') v[`R${i}.from`] = r.fromTarget ? (cbw ? 'target' : 'temp') : cbw ? 'source' : 'backing';
    if (r.hold) v[`R${i}.${cbw ? 'frozen' : 'holds'}`] = maskText(r.hold, N);
    if (r.bad !== SNAPSHOT) v[`R${i}.returned`] = `${describeValue(r.bad)}@${r.badAt}`;
  });
  if (s.discarder) v['D.pc'] = s.discarder.pc;
  if (s.tempDone) v['tempWritersDone'] = maskText(s.tempDone, 8);
  return v;
}
