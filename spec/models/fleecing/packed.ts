// The fleecing model over packed states: each state is a fixed-width byte vector, and successors
// are computed by copying the vector and patching the bytes one action changes. The explorer uses
// this form (Behaviour.packed) for searches without symmetry: no object per transition, the vector
// is its own exact key, and the BFS frontier is the visited set's arena itself.
//
// It is a second rendering of model.ts's enabled()/step(), kept deliberately literal: the same
// guards, the same order of actions, the same successor for each. model.ts stays the reference
// (labels, traces, invariants, replay); a packed state is always unpacked before an invariant or
// `pending` is evaluated on it.
//
// Layout (one byte per field; data values and offsets biased by +8, masks as two bytes):
//   source[N] target[N] copy(2) done(2) access(2) flags(snapshotError*128 | failuresLeft)
//   per writer: pc off claim(2) failed*2|noWait buflen buf[ws]   (unused buf bytes are 0)
//   per reader: pc off pos n fromTarget hold(2) bad badAt
//   [discarder: pc off]  tempDone

import type { PackedForm } from '../../explorer/behaviour.ts';
import type { Scheme } from './scheme.ts';
import type { FleecingState, Reader, Writer } from './state.ts';

/** The parameters packed.ts needs (a subset of FleecingParams). */
export interface PackedParams {
  readonly clusters: number;
  readonly writers: number;
  readonly readers: number;
  readonly writeSize: number;
  readonly readSize: number;
  readonly onCbwError: 'break-guest-write' | 'break-snapshot';
  readonly tempWriters: number;
}

// Data values (state.ts), biased by +8 as stored.
const B = 8;
const SNAP = 0 + B;
const UNALLOC = -1 + B;
const DISCARD = -3 + B;
const TEMP_DATA = 64;

// Program counter codes, as in model.ts's keys.
const W_IDLE = 1;
const W_SERIALISE = 2;
const W_COPYWRITE = 3;
const W_WRITE = 4;
const W_WRITEEARLY = 5;
const W_COPYLATE = 6;
const W_DONE = 7;
const W_FAILED = 8;
const R_IDLE = 1;
const R_LOOKUP = 2;
const R_LOCK = 3;
const R_READ = 4;
const R_DONE = 5;
const R_FAILED = 6;

const WRITER_PCS: readonly Writer['pc'][] = ['idle', 'idle', 'serialise', 'copyWrite', 'write', 'writeEarly', 'copyLate', 'done', 'failed'];
const READER_PCS: readonly Reader['pc'][] = ['idle', 'idle', 'lookup', 'lock', 'read', 'done', 'failed'];

// Action codes (coverage buckets).
const A_SUBMIT = 0;
const A_SERIALISE = 1;
const A_COPYWRITE = 2;
const A_COPYFAIL = 3;
const A_WRITE = 4;
const A_START = 5;
const A_LOOKUP = 6;
const A_LOCK = 7;
const A_READ = 8;
const A_DISCARD = 9;
const A_TEMPWRITE = 10;
const ACTION_NAMES = ['submit', 'serialise', 'copyWrite', 'copyFail', 'write', 'start', 'lookup', 'lock', 'read', 'discard', 'tempWrite'];

function rangeMask(off: number, size: number): number {
  return ((1 << size) - 1) << off;
}

export function packedFleecing(scheme: Scheme, p: PackedParams, hasDiscarder: boolean): PackedForm<FleecingState> {
  const cbw = scheme.kind === 'cbw';
  const N = p.clusters;
  const W = p.writers;
  const R = p.readers;
  const ws = p.writeSize;
  const rs = p.readSize;
  const T = p.tempWriters;
  const cowFreeze = scheme.readers === 'cow-freeze';
  const cowWait = scheme.readers === 'cow-wait-only';
  const tempTracked = scheme.readers === 'temp-tracked';
  const frozenReqs = scheme.readers === 'frozen-reqs';
  const startHolds = cowFreeze || tempTracked;
  const serialisedCopy = scheme.serialisedCopy;
  const doneBeforeCopy = scheme.doneBeforeCopy;
  const writeBeforeCopy = scheme.writeBeforeCopy;
  const donePrefixNotDone = scheme.donePrefixNotDone;
  const breakSnapshot = p.onCbwError === 'break-snapshot';

  const SRC = 0;
  const TGT = N;
  const COPY = 2 * N;
  const DONE = COPY + 2;
  const ACCESS = DONE + 2;
  const FLAGS = ACCESS + 2;
  const WOFF = FLAGS + 1;
  const WB = 6 + ws;
  const ROFF = WOFF + W * WB;
  const RB = 9;
  const DOFF = ROFF + R * RB;
  const TDONE = DOFF + (hasDiscarder ? 2 : 0);
  const width = (TDONE + 4) & ~3; // padded to whole 32-bit words (padding bytes stay 0)
  // Writer / reader field offsets.
  const W_PC = 0, W_OFF = 1, W_CLAIM = 2, W_FLAGS = 4, W_BUFLEN = 5, W_BUF = 6;
  const R_PC = 0, R_OFF = 1, R_POS = 2, R_N = 3, R_FROM = 4, R_HOLD = 5, R_BAD = 7, R_BADAT = 8;

  const maxSuccessors = W * (N + 2) + R * N + N + T * N + 1;

  const get16 = (b: Uint8Array, i: number): number => b[i]! | (b[i + 1]! << 8);
  const set16 = (b: Uint8Array, i: number, v: number): void => {
    b[i] = v & 255;
    b[i + 1] = v >> 8;
  };

  /** Sets writer fields (not its buffer) at `o`. */
  function setW(b: Uint8Array, o: number, pc: number, off: number, claim: number, failed: boolean, noWait: boolean): void {
    b[o + W_PC] = pc;
    b[o + W_OFF] = off + B;
    set16(b, o + W_CLAIM, claim);
    b[o + W_FLAGS] = (failed ? 2 : 0) | (noWait ? 1 : 0);
  }
  function clearBuf(b: Uint8Array, o: number): void {
    b[o + W_BUFLEN] = 0;
    for (let j = 0; j < ws; j++) b[o + W_BUF + j] = 0;
  }
  /** A finished writer (model.ts finished / DONE_WRITER / FAILED_WRITER / FAILED_CBW_DONE). */
  function finishW(b: Uint8Array, o: number, pc: number, failed: boolean): void {
    setW(b, o, pc, -1, 0, failed, false);
    clearBuf(b, o);
  }
  function setR(b: Uint8Array, o: number, pc: number, off: number, pos: number, n: number, from: boolean, hold: number, bad: number, badAt: number): void {
    b[o + R_PC] = pc;
    b[o + R_OFF] = off + B;
    b[o + R_POS] = pos + B;
    b[o + R_N] = n;
    b[o + R_FROM] = from ? 1 : 0;
    set16(b, o + R_HOLD, hold);
    b[o + R_BAD] = bad; // already biased
    b[o + R_BADAT] = badAt + B;
  }

  function pack(s: FleecingState, b: Uint8Array, at: number): void {
    for (let i = 0; i < width; i++) b[at + i] = 0;
    for (let c = 0; c < N; c++) {
      b[at + SRC + c] = s.source[c]! + B;
      b[at + TGT + c] = s.target[c]! + B;
    }
    set16(b, at + COPY, s.copy);
    set16(b, at + DONE, s.done);
    set16(b, at + ACCESS, s.access);
    b[at + FLAGS] = (s.snapshotError ? 128 : 0) | s.failuresLeft;
    for (let i = 0; i < W; i++) {
      const w = s.writers[i]!;
      const o = at + WOFF + i * WB;
      setW(b, o, writerPc(w.pc), w.off, w.claim, w.failed, w.noWait);
      b[o + W_BUFLEN] = w.buf.length;
      for (let j = 0; j < w.buf.length; j++) b[o + W_BUF + j] = w.buf[j]! + B;
    }
    for (let i = 0; i < R; i++) {
      const r = s.readers[i]!;
      setR(b, at + ROFF + i * RB, readerPc(r.pc), r.off, r.pos, r.n, r.fromTarget, r.hold, r.bad + B, r.badAt);
    }
    if (hasDiscarder) {
      b[at + DOFF] = s.discarder!.pc === 'idle' ? 1 : 2;
      b[at + DOFF + 1] = s.discarder!.off + B;
    }
    b[at + TDONE] = s.tempDone;
  }

  function unpack(b: Uint8Array, at: number): FleecingState {
    const source: number[] = [];
    const target: number[] = [];
    for (let c = 0; c < N; c++) {
      source.push(b[at + SRC + c]! - B);
      target.push(b[at + TGT + c]! - B);
    }
    const writers: Writer[] = [];
    for (let i = 0; i < W; i++) {
      const o = at + WOFF + i * WB;
      const buf: number[] = [];
      for (let j = 0; j < b[o + W_BUFLEN]!; j++) buf.push(b[o + W_BUF + j]! - B);
      const f = b[o + W_FLAGS]!;
      writers.push({ pc: WRITER_PCS[b[o + W_PC]!]!, off: b[o + W_OFF]! - B, claim: get16(b, o + W_CLAIM), buf, failed: (f & 2) !== 0, noWait: (f & 1) !== 0 });
    }
    const readers: Reader[] = [];
    for (let i = 0; i < R; i++) {
      const o = at + ROFF + i * RB;
      readers.push({
        pc: READER_PCS[b[o + R_PC]!]!,
        off: b[o + R_OFF]! - B,
        pos: b[o + R_POS]! - B,
        n: b[o + R_N]!,
        fromTarget: b[o + R_FROM] === 1,
        hold: get16(b, o + R_HOLD),
        bad: b[o + R_BAD]! - B,
        badAt: b[o + R_BADAT]! - B,
      });
    }
    return {
      source,
      target,
      copy: get16(b, at + COPY),
      done: get16(b, at + DONE),
      access: get16(b, at + ACCESS),
      snapshotError: (b[at + FLAGS]! & 128) !== 0,
      failuresLeft: b[at + FLAGS]! & 127,
      writers,
      readers,
      discarder: hasDiscarder ? { pc: b[at + DOFF] === 1 ? 'idle' : 'done', off: b[at + DOFF + 1]! - B } : undefined,
      tempDone: b[at + TDONE]!,
    };
  }

  /** Successors of src[at..at+width) in enabled() order, back to back in `out`; codes[j] is the
   * action code of the j-th. */
  function successors(src: Uint8Array, at: number, out: Uint8Array, codes: Int32Array): number {
    bindViews(src, at, out);
    const flags = src[at + FLAGS]!;
    const snapshotError = (flags & 128) !== 0;
    const failuresLeft = flags & 127;
    const copy = get16(src, at + COPY);
    const done = get16(src, at + DONE);
    const access = get16(src, at + ACCESS);
    let readerHold = 0;
    for (let i = 0; i < R; i++) readerHold |= get16(src, at + ROFF + i * RB + R_HOLD);
    let writerInflight = 0;
    for (let i = 0; i < W; i++) {
      const o = at + WOFF + i * WB;
      const pc = src[o + W_PC]!;
      if (pc === W_SERIALISE || pc === W_COPYWRITE || pc === W_COPYLATE) {
        writerInflight |= cbw ? get16(src, o + W_CLAIM) : rangeMask(src[o + W_OFF]! - B, ws);
      }
    }
    let n = 0;
    for (let i = 0; i < W; i++) n = writerSuccessors(src, at, out, codes, n, i, copy, done, snapshotError, failuresLeft, readerHold, writerInflight);
    for (let i = 0; i < R; i++) n = readerSuccessors(src, at, out, codes, n, i, done, access, snapshotError, writerInflight);
    if (hasDiscarder || T > 0) n = environmentSuccessors(src, at, out, codes, n, copy, access);
    return n;
  }

  // The successors by one writer, one reader, and the environment (discard, temp writers), split
  // so that each is small enough to be optimised early in a short search.

  function writerSuccessors(
    src: Uint8Array, at: number, out: Uint8Array, codes: Int32Array, n: number, i: number,
    copy: number, done: number, snapshotError: boolean, failuresLeft: number, readerHold: number, writerInflight: number,
  ): number {
    const wo = WOFF + i * WB; // offset within a state
    const o = at + wo;
    const pc = src[o + W_PC]!;
    const woff = src[o + W_OFF]! - B;
    const claim = get16(src, o + W_CLAIM);
    const wflags = src[o + W_FLAGS]!;
    const failed = (wflags & 2) !== 0;
    const noWait = (wflags & 1) !== 0;
    switch (pc) {
      case W_IDLE: {
        for (let off = 0; off + ws <= N; off++) {
          const m = rangeMask(off, ws);
          if (cbw && snapshotError) {
            // submit, CBW skipped
            const b = n * width;
            copyState(src, at, out, b, width);
            codes[n++] = A_SUBMIT;
            setW(out, b + wo, W_WRITE, off, 0, false, scheme.errorEarlyReturn);
            clearBuf(out, b + wo);
            continue;
          }
          const blockers = writerInflight | (cowFreeze ? readerHold : 0);
          if ((blockers & m) !== 0) continue;
          const b = n * width;
          copyState(src, at, out, b, width);
          codes[n++] = A_SUBMIT;
          const cl = m & copy;
          let len = 0;
          for (let c = off; c < off + ws; c++) if ((cl >> c) & 1) out[b + wo + W_BUF + len++] = src[at + SRC + c]!;
          for (let j = len; j < ws; j++) out[b + wo + W_BUF + j] = 0;
          out[b + wo + W_BUFLEN] = len;
          let d = done;
          if (cbw && (cl === 0 || doneBeforeCopy)) d |= m;
          const npc = cl === 0 ? W_WRITE : serialisedCopy ? W_SERIALISE : writeBeforeCopy ? W_WRITEEARLY : W_COPYWRITE;
          setW(out, b + wo, npc, off, cl, false, false);
          set16(out, b + COPY, copy & ~cl);
          set16(out, b + DONE, d);
        }
        break;
      }
      case W_SERIALISE: {
        const b = n * width;
        copyState(src, at, out, b, width);
        codes[n++] = A_SERIALISE;
        out[b + wo + W_PC] = W_COPYWRITE;
        break;
      }
      case W_COPYWRITE:
      case W_COPYLATE: {
        if (pc === W_COPYLATE || !serialisedCopy || (readerHold & claim) === 0) {
          const b = n * width;
          copyState(src, at, out, b, width);
          codes[n++] = A_COPYWRITE;
          let j = 0;
          for (let c = woff; c < woff + ws; c++) if ((claim >> c) & 1) out[b + TGT + c] = src[o + W_BUF + j++]!;
          if (cbw && !doneBeforeCopy) set16(out, b + DONE, done | rangeMask(woff, ws));
          if (pc === W_COPYLATE) finishW(out, b + wo, W_DONE, failed);
          else {
            setW(out, b + wo, W_WRITE, woff, 0, failed, noWait);
            clearBuf(out, b + wo);
          }
        }
        if (failuresLeft > 0) {
          const b = n * width;
          copyState(src, at, out, b, width);
          codes[n++] = A_COPYFAIL;
          set16(out, b + COPY, copy | claim);
          let snapErr = snapshotError;
          if (pc === W_COPYLATE) {
            finishW(out, b + wo, W_DONE, !breakSnapshot);
            snapErr = snapErr || breakSnapshot;
          } else if (!breakSnapshot) {
            if (scheme.errorIgnored) {
              setW(out, b + wo, W_WRITE, woff, 0, true, noWait);
              clearBuf(out, b + wo);
            } else finishW(out, b + wo, W_FAILED, false);
          } else {
            setW(out, b + wo, W_WRITE, woff, 0, failed, scheme.errorSkipsWait);
            clearBuf(out, b + wo);
            snapErr = true;
          }
          out[b + FLAGS] = (snapErr ? 128 : 0) | (failuresLeft - 1);
        }
        break;
      }
      case W_WRITE:
      case W_WRITEEARLY: {
        if (!cbw || noWait || (readerHold & rangeMask(woff, ws)) === 0) {
          const b = n * width;
          copyState(src, at, out, b, width);
          codes[n++] = A_WRITE;
          for (let c = woff; c < woff + ws; c++) out[b + SRC + c] = i + 1 + B;
          if (pc === W_WRITEEARLY) out[b + wo + W_PC] = W_COPYLATE;
          else finishW(out, b + wo, W_DONE, failed);
        }
        break;
      }
      default:
        break; // done, failed
    }
      return n;
  }

  function readerSuccessors(
    src: Uint8Array, at: number, out: Uint8Array, codes: Int32Array, n: number, i: number,
    done: number, access: number, snapshotError: boolean, writerInflight: number,
  ): number {
    const ro = ROFF + i * RB;
    const o = at + ro;
    const pc = src[o + R_PC]!;
    switch (pc) {
      case R_IDLE: {
        for (let off = 0; off + rs <= N; off++) {
          const m = rangeMask(off, rs);
          let blocked = false;
          if (cowFreeze || cowWait) {
            blocked = (writerInflight & m) !== 0;
          } else if (tempTracked) {
            for (let k = 0; k < W; k++) {
              const wo = at + WOFF + k * WB;
              if (src[wo + W_PC] === W_COPYWRITE && (get16(src, wo + W_CLAIM) & m) !== 0) blocked = true;
            }
          }
          if (blocked) continue;
          const b = n * width;
          copyState(src, at, out, b, width);
          codes[n++] = A_START;
          setR(out, b + ro, cbw ? R_LOCK : R_LOOKUP, off, off, 0, false, startHolds ? m : 0, SNAP, -1);
        }
        break;
      }
      case R_LOOKUP: {
        const b = n * width;
        copyState(src, at, out, b, width);
        codes[n++] = A_LOOKUP;
        const pos = src[o + R_POS]! - B;
        out[b + ro + R_PC] = R_READ;
        out[b + ro + R_N] = 1;
        out[b + ro + R_FROM] = src[at + TGT + pos] !== UNALLOC ? 1 : 0;
        break;
      }
      case R_LOCK: {
        const b = n * width;
        copyState(src, at, out, b, width);
        codes[n++] = A_LOCK;
        const off = src[o + R_OFF]! - B;
        const pos = src[o + R_POS]! - B;
        const end = off + rs;
        const remaining = rangeMask(pos, end - pos);
        if (snapshotError || (remaining & ~access) !== 0) {
          setR(out, b + ro, R_FAILED, -1, 0, 0, false, 0, SNAP, -1);
          break;
        }
        const isDone = (done >> pos) & 1;
        let len = 1;
        while (pos + len < end && ((done >> (pos + len)) & 1) === isDone) len++;
        // QEMU 7.2 hbitmap_status: a done prefix ending at a not-done cluster reads as not done.
        const fromTarget = isDone === 1 && !(donePrefixNotDone && pos + len < end);
        out[b + ro + R_PC] = R_READ;
        out[b + ro + R_N] = len;
        out[b + ro + R_FROM] = fromTarget ? 1 : 0;
        set16(out, b + ro + R_HOLD, !fromTarget && frozenReqs ? rangeMask(pos, len) : 0);
        break;
      }
      case R_READ: {
        const b = n * width;
        copyState(src, at, out, b, width);
        codes[n++] = A_READ;
        const off = src[o + R_OFF]! - B;
        const pos = src[o + R_POS]! - B;
        const len = src[o + R_N]!;
        const from = src[o + R_FROM] === 1 ? TGT : SRC;
        let bad = src[o + R_BAD]!;
        let badAt = src[o + R_BADAT]! - B;
        for (let c = pos; c < pos + len; c++) {
          const v = src[at + from + c]!;
          const ok = v === SNAP || (v === DISCARD && ((access >> c) & 1) === 0);
          if (!ok && bad === SNAP) {
            bad = v;
            badAt = c;
          }
        }
        const npos = pos + len;
        if (npos === off + rs) {
          if (bad === SNAP) setR(out, b + ro, R_DONE, -1, 0, 0, false, 0, SNAP, -1);
          else setR(out, b + ro, R_DONE, off, 0, 0, false, 0, bad, badAt);
        } else {
          setR(out, b + ro, cbw ? R_LOCK : R_LOOKUP, off, npos, 0, false, cbw ? 0 : get16(src, o + R_HOLD), bad, badAt);
        }
        break;
      }
      default:
        break; // done, failed
    }
      return n;
  }

  function environmentSuccessors(src: Uint8Array, at: number, out: Uint8Array, codes: Int32Array, n: number, copy: number, access: number): number {
    if (hasDiscarder && src[at + DOFF] === 1) {
      for (let off = 0; off < N; off++) {
        const b = n * width;
        copyState(src, at, out, b, width);
        codes[n++] = A_DISCARD;
        const m = 1 << off;
        out[b + TGT + off] = DISCARD;
        if (scheme.discardUntracked) {
          for (let i = 0; i < R; i++) {
            const h = b + ROFF + i * RB + R_HOLD;
            set16(out, h, get16(out, h) & ~m);
          }
        }
        set16(out, b + ACCESS, access & ~m);
        set16(out, b + COPY, copy & ~m);
        out[b + DOFF] = 2;
        out[b + DOFF + 1] = off + B;
      }
    }
    const tempDone = src[at + TDONE]!;
    for (let t = 0; t < T; t++) {
      if (((tempDone >> t) & 1) !== 0) continue;
      for (let off = 0; off + ws <= N; off++) {
        const b = n * width;
        copyState(src, at, out, b, width);
        codes[n++] = A_TEMPWRITE;
        for (let c = off; c < off + ws; c++) out[b + TGT + c] = TEMP_DATA + t + B;
        out[b + TDONE] = tempDone | (1 << t);
      }
    }
    return n;
  }

  /** False only when every invariant of model.ts holds (checked on the bytes); true means "unpack
   * and check". An over-approximation of the invariants' failure conditions:
   *  snapshot-read-consistent: a reader returned non-snapshot data (bad != snapshot, any pc);
   *  failed-cbw-fails-guest-write: a writer carries `failed` (any pc);
   *  copied-before-overwritten: without snapshot_error, an accessible cluster holds guest data
   *  on the source and not snapshot data on the target. */
  function mayViolate(b: Uint8Array, at: number): boolean {
    for (let i = 0; i < R; i++) if (b[at + ROFF + i * RB + R_BAD] !== SNAP) return true;
    for (let i = 0; i < W; i++) if ((b[at + WOFF + i * WB + W_FLAGS]! & 2) !== 0) return true;
    if ((b[at + FLAGS]! & 128) === 0) {
      const access = get16(b, at + ACCESS);
      for (let c = 0; c < N; c++) {
        const v = b[at + SRC + c]! - B;
        if (v > 0 && v < TEMP_DATA && ((access >> c) & 1) !== 0 && b[at + TGT + c] !== SNAP) return true;
      }
    }
    return false;
  }

  return { width, maxSuccessors, actionNames: ACTION_NAMES, pack, unpack, successors, mayViolate };
}

// Word views of the explorer's (reused) byte buffers, cached by buffer and bound once per
// successors() call, for copying states a 32-bit word at a time (widths and offsets are multiples
// of 4). An unaligned caller (a test slicing buffers) gets the bytewise copy.
let srcBytes: Uint8Array | undefined;
let srcWords: Int32Array<ArrayBufferLike> = new Int32Array(0);
let outBytes: Uint8Array | undefined;
let outWords: Int32Array<ArrayBufferLike> = new Int32Array(0);
let aligned = false;

function bindViews(src: Uint8Array, at: number, out: Uint8Array): void {
  aligned = ((src.byteOffset | out.byteOffset | at | src.byteLength | out.byteLength) & 3) === 0;
  if (!aligned) return;
  if (src !== srcBytes) {
    srcBytes = src;
    srcWords = new Int32Array(src.buffer, src.byteOffset, src.byteLength >> 2);
  }
  if (out !== outBytes) {
    outBytes = out;
    outWords = new Int32Array(out.buffer, out.byteOffset, out.byteLength >> 2);
  }
}

/** Copies the state at src[at..at+width) to out[b..b+width); views bound by bindViews. */
function copyState(src: Uint8Array, at: number, out: Uint8Array, b: number, width: number): void {
  if (!aligned) {
    for (let i = 0; i < width; i++) out[b + i] = src[at + i]!;
    return;
  }
  const sw = srcWords;
  const ow = outWords;
  for (let i = at >> 2, j = b >> 2, end = (at + width) >> 2; i < end; i++, j++) ow[j] = sw[i]!;
}

function writerPc(pc: Writer['pc']): number {
  return WRITER_PCS.indexOf(pc, 1);
}

function readerPc(pc: Reader['pc']): number {
  return READER_PCS.indexOf(pc, 1);
}

/**
 * Cross-checks a model's packed form against its object form on every state reachable within
 * `maxStates` (breadth-first over enabled/step): pack/unpack round trip, the successors (count,
 * order, bytes, action names) and the soundness of mayViolate. Returns the first disagreement as a
 * sentence, or undefined. For tests (spec/test) over every scheme and option.
 */
export function crossCheckPacked<A extends { readonly kind: string }>(
  model: {
    readonly name: string;
    initial(): readonly FleecingState[];
    enabled(s: FleecingState): readonly A[];
    step(s: FleecingState, a: A): FleecingState;
    key(s: FleecingState, symmetric: boolean): string;
    readonly invariants: readonly { check(s: FleecingState): string | undefined }[];
    readonly packed?: PackedForm<FleecingState>;
  },
  maxStates = 200_000,
): string | undefined {
  const pk = model.packed;
  if (pk === undefined) return `${model.name}: no packed form`;
  const width = pk.width;
  const cur = new Uint8Array(width);
  const out = new Uint8Array(width * pk.maxSuccessors);
  const codes = new Int32Array(pk.maxSuccessors);
  const expect = new Uint8Array(width);
  const seen = new Set<string>();
  const queue: FleecingState[] = [...model.initial()];
  for (let q = 0; q < queue.length && seen.size < maxStates; q++) {
    const s = queue[q]!;
    const k = model.key(s, false);
    if (seen.has(k)) continue;
    seen.add(k);
    pk.pack(s, cur, 0);
    if (JSON.stringify(pk.unpack(cur, 0)) !== JSON.stringify(s)) return `${model.name}: unpack(pack(s)) differs from s = ${JSON.stringify(s)}`;
    if (pk.mayViolate && !pk.mayViolate(cur, 0) && model.invariants.some((inv) => inv.check(s) !== undefined)) {
      return `${model.name}: mayViolate misses a violation in ${JSON.stringify(s)}`;
    }
    const acts = model.enabled(s);
    const n = pk.successors(cur, 0, out, codes);
    if (n !== acts.length) return `${model.name}: ${n} packed successors, ${acts.length} enabled actions in ${JSON.stringify(s)}`;
    for (let j = 0; j < n; j++) {
      const a = acts[j]!;
      const t = model.step(s, a);
      pk.pack(t, expect, 0);
      for (let i = 0; i < width; i++) {
        if (expect[i] !== out[j * width + i]) return `${model.name}: packed successor ${j} (${JSON.stringify(a)}) differs at byte ${i} in ${JSON.stringify(s)}`;
      }
      if (pk.actionNames[codes[j]!] !== a.kind) return `${model.name}: packed successor ${j} is ${pk.actionNames[codes[j]!]}, enabled says ${a.kind}`;
      queue.push(t);
    }
    if (queue.length > 4 * maxStates) queue.splice(0, q + 1), (q = -1);
  }
  return undefined;
}
