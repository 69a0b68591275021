// The TypeScript twin of fleecing.ts's Promela: the same variables, the same atomic steps, as a
// Behaviour for our explorer. Because the two state vectors match (minus SPIN's program
// counters and process table), state counts are comparable, not only verdicts
// (docs/verification.md §2, "compare counts only on a Promela model written to mirror our state
// vector").
//
// State layout (one Uint8Array, so copying and keying are cheap):
//   src[N] tmp[N] alloc[N] claim[N] nread[N] serw[N]  | per writer: pc c old | per reader: pc c fromTemp v
import type { ActionLabel, Behaviour, Invariant } from '../../explorer/behaviour.ts';
import type { PromelaParams } from './fleecing.ts';
import { PromelaModelError } from './fleecing.ts';

/** Writer program counters. */
const W_CLAIM = 1, W_COPY = 2, W_WRITE = 3, W_RELEASE = 4, W_LAND = 5, W_DONE = 6;
/** Reader program counters. */
const R_LOOKUP = 1, R_READ = 2, R_CHECK = 3, R_DONE = 4;

const WRITER_STEPS = ['-', 'claim', 'copy', 'write-temp', 'release', 'land'] as const;
const READER_STEPS = ['-', 'lookup', 'read', 'finish'] as const;

export type MirrorState = Uint8Array;
/** (actor index << 8) | (program counter << 5) | 31 (the low bits are free for a choice). */
export type MirrorAction = number;

export interface MirrorModel extends Behaviour<MirrorState, MirrorAction> {
  readonly layout: { readonly n: number; readonly w: number; readonly r: number };
}

export function mirrorModel(p: PromelaParams): MirrorModel {
  const n = p.clusters, w = p.writers, r = p.readers;
  if (n > 30 || w + r > 60) throw new PromelaModelError('mirror model: too many clusters or actors');
  const serial = p.scheme === 'S3';
  const SRC = 0, TMP = n, ALLOC = 2 * n, CLAIM = 3 * n, NREAD = 4 * n, SERW = 5 * n;
  const WB = 6 * n; // writer block: 3 bytes each
  const RB = WB + 3 * w; // reader block: 4 bytes each
  const size = RB + 4 * r;

  const enabled = (s: MirrorState): MirrorAction[] => {
    const out: MirrorAction[] = [];
    for (let i = 0; i < w; i++) {
      const o = WB + 3 * i, pc = s[o]!, c = s[o + 1]!;
      const a = (i << 8) | (pc << 5);
      switch (pc) {
        case W_CLAIM: if (!s[CLAIM + c]) out.push(a | 31); break;
        case W_COPY: case W_RELEASE: case W_LAND: out.push(a | 31); break;
        case W_WRITE: if (!serial || s[NREAD + c] === 0) out.push(a | 31); break;
      }
    }
    for (let j = 0; j < r; j++) {
      const o = RB + 4 * j, pc = s[o]!, c = s[o + 1]!;
      const a = ((w + j) << 8) | (pc << 5);
      switch (pc) {
        case R_LOOKUP: if (!serial || !s[SERW + c]) out.push(a | 31); break;
        case R_READ: case R_CHECK: out.push(a | 31); break;
      }
    }
    return out;
  };

  const step = (s: MirrorState, act: MirrorAction): MirrorState => {
    const t = s.slice();
    const actor = act >> 8, k = act & 31;
    if (actor < w) {
      const o = WB + 3 * actor, c = t[o + 1]!;
      switch (t[o]) {
        // claim the copy, or skip CBW when the cluster is already in temp
        case W_CLAIM: if (t[ALLOC + c]) t[o] = W_LAND; else { t[CLAIM + c] = 1; t[o] = W_COPY; } break;
        case W_COPY: t[o + 2] = t[SRC + c]!; t[o] = W_WRITE; break;
        case W_WRITE: if (serial) t[SERW + c] = 1; t[TMP + c] = t[o + 2]!; t[ALLOC + c] = 1; t[o] = W_RELEASE; break;
        case W_RELEASE: if (serial) t[SERW + c] = 0; t[CLAIM + c] = 0; t[o + 2] = 0; t[o] = W_LAND; break;
        case W_LAND: t[SRC + c] = actor + 1; t[o + 1] = 0; t[o] = W_DONE; break;
        default: throw new PromelaModelError(`writer W${actor} has no step at pc ${t[o]}`);
      }
    } else {
      const j = actor - w, o = RB + 4 * j, c = t[o + 1]!;
      switch (t[o]) {
        case R_LOOKUP: if (serial) t[NREAD + c]!++; t[o + 2] = t[ALLOC + c]!; t[o] = R_READ; break;
        case R_READ: t[o + 3] = t[o + 2] ? t[TMP + c]! : t[SRC + c]!; t[o] = R_CHECK; break;
        // Promela asserts here; the invariant below flags the state before this step already.
        case R_CHECK: if (serial) t[NREAD + c]!--; t[o + 1] = 0; t[o + 2] = 0; t[o + 3] = 0; t[o] = R_DONE; break;
        default: throw new PromelaModelError(`reader R${j} has no step at pc ${t[o]}`);
      }
    }
    return t;
  };

  const plainKey = (s: MirrorState): string => String.fromCharCode.apply(null, s as unknown as number[]);

  // Symmetry: readers are interchangeable (sort their 4-byte records); writers are
  // interchangeable up to the data value they write (try every writer permutation, relabel
  // src/tmp/old values, keep the least key). W <= 4 keeps that at most 24 permutations.
  const perms = permutations(w);
  const symKey = (s: MirrorState): string => {
    let best: string | undefined;
    const t = new Uint8Array(size);
    for (const perm of perms) {
      // perm[i] = new index of writer i; data value i+1 becomes perm[i]+1
      const relabel = (v: number): number => (v === 0 ? 0 : perm[v - 1]! + 1);
      for (let c = 0; c < n; c++) {
        t[SRC + c] = relabel(s[SRC + c]!);
        t[TMP + c] = relabel(s[TMP + c]!);
        t[ALLOC + c] = s[ALLOC + c]!; t[CLAIM + c] = s[CLAIM + c]!;
        t[NREAD + c] = s[NREAD + c]!; t[SERW + c] = s[SERW + c]!;
      }
      for (let i = 0; i < w; i++) {
        const from = WB + 3 * i, to = WB + 3 * perm[i]!;
        t[to] = s[from]!; t[to + 1] = s[from + 1]!; t[to + 2] = relabel(s[from + 2]!);
      }
      const recs: number[] = [];
      for (let j = 0; j < r; j++) {
        const o = RB + 4 * j;
        recs.push((s[o]! << 24) | (s[o + 1]! << 16) | (s[o + 2]! << 8) | relabel(s[o + 3]!));
      }
      recs.sort((a, b) => a - b);
      recs.forEach((v, j) => {
        const o = RB + 4 * j;
        t[o] = (v >>> 24) & 255; t[o + 1] = (v >>> 16) & 255; t[o + 2] = (v >>> 8) & 255; t[o + 3] = v & 255;
      });
      const k = plainKey(t);
      if (best === undefined || k < best) best = k;
    }
    return best!;
  };

  const snapshotRead: Invariant<MirrorState> = {
    name: 'snapshot-reads-see-snapshot-data',
    check(s) {
      for (let j = 0; j < r; j++) {
        const o = RB + 4 * j;
        if (s[o] === R_CHECK && s[o + 3] !== 0) {
          const c = s[o + 1]!;
          return `snapshot read R${j} of cluster ${c} returned data written by W${s[o + 3]! - 1}, after the snapshot` +
            ` (it found the cluster ${s[o + 2] ? 'allocated in temp' : 'unallocated and read the source'})`;
        }
      }
      return undefined;
    },
  };

  return {
    name: `promela-mirror-${p.scheme}`,
    params: { scheme: p.scheme, clusters: n, writers: w, readers: r },
    layout: { n, w, r },
    // Every actor's cluster is chosen up front: one initial state per choice (N^(W+R)).
    initial: () => {
      const out: MirrorState[] = [];
      const actors = w + r;
      for (let code = 0; code < n ** actors; code++) {
        const s = new Uint8Array(size);
        let x = code;
        for (let i = 0; i < w; i++, x = Math.floor(x / n)) { s[WB + 3 * i] = W_CLAIM; s[WB + 3 * i + 1] = x % n; }
        for (let j = 0; j < r; j++, x = Math.floor(x / n)) { s[RB + 4 * j] = R_LOOKUP; s[RB + 4 * j + 1] = x % n; }
        out.push(s);
      }
      return out;
    },
    enabled,
    step,
    label(act): ActionLabel {
      const actor = act >> 8, pc = (act >> 5) & 7, k = act & 31;
      const args: Record<string, number> = k === 31 ? {} : { c: k };
      return actor < w
        ? { actor: `W${actor}`, action: WRITER_STEPS[pc]!, args }
        : { actor: `R${actor - w}`, action: READER_STEPS[pc]!, args };
    },
    actionName(act) {
      const actor = act >> 8, pc = (act >> 5) & 7;
      return actor < w ? `writer.${WRITER_STEPS[pc]!}` : `reader.${READER_STEPS[pc]!}`;
    },
    key: (s, symmetric) => (symmetric ? symKey(s) : plainKey(s)),
    invariants: [snapshotRead],
    pending(s) {
      for (let i = 0; i < w; i++) if (s[WB + 3 * i] !== W_DONE) return true;
      for (let j = 0; j < r; j++) if (s[RB + 4 * j] !== R_DONE) return true;
      return false;
    },
    actionNames: [...WRITER_STEPS.slice(1).map((x) => `writer.${x}`), ...READER_STEPS.slice(1).map((x) => `reader.${x}`)],
  };
}

/** Names of the steps, for readers of traces. */
export const MIRROR_STEPS = { writer: WRITER_STEPS, reader: READER_STEPS } as const;

function permutations(k: number): number[][] {
  if (k === 0) return [[]];
  const out: number[][] = [];
  for (const rest of permutations(k - 1)) {
    for (let pos = 0; pos <= rest.length; pos++) out.push([...rest.slice(0, pos), k - 1, ...rest.slice(pos)]);
  }
  return out;
}
