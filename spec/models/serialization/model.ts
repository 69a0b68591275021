// Request serialization on one block node (docs/requirements/qemu-fleecing.md §2.1, block/io.c): every request is
// a tracked request for its whole life; a serialising one (BDRV_REQ_SERIALISING, RMW padding,
// copy-on-read) has its overlap window rounded out to the cluster size. Waiting follows
// bdrv_find_conflicting_request / bdrv_wait_serialising_requests:
//   (a) a serialising request waits for every overlapping request,
//   (b) a normal request waits for overlapping serialising requests,
//   (c) the window of a serialising request is cluster-aligned,
// and a request that is itself waiting is skipped as a conflict (that is what keeps two requests
// from waiting for each other).
//
// Units are request-alignment sectors. Requests pick their offset nondeterministically.
// Written with ts-pattern so a missing action or program counter fails to compile; this model
// is small, so readability wins over the last bit of speed (docs/verification.md §3).

import { match } from 'ts-pattern';
import type { ActionLabel, Behaviour, Invariant } from '../../explorer/behaviour.ts';
import { SpecError } from '../../explorer/errors.ts';

export type RequestKind = 'read' | 'write' | 'serialising-write';

export interface Request {
  readonly kind: RequestKind;
  /** idle: not submitted; check: tracked, about to look for conflicts; blocked: waiting on
   * `waitingFor`; run: past the wait, doing I/O; done: tracked_request_end ran. */
  readonly pc: 'idle' | 'check' | 'blocked' | 'run' | 'done';
  readonly off: number;
  /** Overlap window [lo, hi) as registered (widened for serialising requests). */
  readonly lo: number;
  readonly hi: number;
  readonly waitingFor: number;
}

export interface SerializationState {
  readonly reqs: readonly Request[];
}

export type SerializationAction =
  | { readonly kind: 'begin'; readonly i: number; readonly off: number }
  | { readonly kind: 'wait'; readonly i: number; readonly on: number }
  | { readonly kind: 'proceed'; readonly i: number }
  | { readonly kind: 'wake'; readonly i: number }
  | { readonly kind: 'end'; readonly i: number };

export interface SerializationParams {
  /** Node size in request-alignment units. */
  readonly sectors: number;
  /** Cluster size in the same units (the serialising alignment). */
  readonly clusterSize: number;
  readonly reads: number;
  readonly writes: number;
  readonly serialising: number;
  /** Length of every request, in units. */
  readonly length: number;
}

export const DEFAULT_SERIALIZATION_PARAMS: SerializationParams = {
  sectors: 4,
  clusterSize: 2,
  reads: 1,
  writes: 1,
  serialising: 1,
  length: 1,
};

/** Which rule a variant drops (all false: QEMU's logic). */
export interface SerializationVariant {
  readonly name: string;
  readonly summary: string;
  readonly noWidening: boolean;
  readonly normalIgnoresSerialising: boolean;
  readonly serialisingIgnoresNormal: boolean;
  readonly noSkipWaiting: boolean;
  readonly expect: 'holds' | 'violates' | 'deadlocks';
}

const correct = {
  noWidening: false,
  normalIgnoresSerialising: false,
  serialisingIgnoresNormal: false,
  noSkipWaiting: false,
};

export const SERIALIZATION: SerializationVariant = {
  ...correct,
  name: 'serialization',
  summary: 'tracked and serialising requests on one node (block/io.c, QEMU 5.2+)',
  expect: 'holds',
};

export const SERIALIZATION_BAD: readonly SerializationVariant[] = [
  {
    ...correct,
    name: 'serialization-no-widening',
    summary: 'serialising window not rounded out to the cluster size (rule c dropped)',
    noWidening: true,
    expect: 'violates',
  },
  {
    ...correct,
    name: 'serialization-normal-ignores-serialising',
    summary: 'normal requests do not wait for serialising ones (rule b dropped)',
    normalIgnoresSerialising: true,
    expect: 'violates',
  },
  {
    ...correct,
    name: 'serialization-serialising-ignores-normal',
    summary: 'serialising requests wait only for serialising ones (rule a dropped)',
    serialisingIgnoresNormal: true,
    expect: 'violates',
  },
  {
    ...correct,
    name: 'serialization-no-skip-waiting',
    summary: 'conflict search does not skip requests that are already waiting',
    noSkipWaiting: true,
    expect: 'deadlocks',
  },
];

const tag = (k: RequestKind) => (k === 'read' ? 'R' : k === 'write' ? 'W' : 'S');

export function serializationModel(
  variant: SerializationVariant = SERIALIZATION,
  params: Partial<SerializationParams> = {},
): Behaviour<SerializationState, SerializationAction> {
  const p: SerializationParams = { ...DEFAULT_SERIALIZATION_PARAMS, ...params };
  for (const [k, lo, hi] of [
    ['sectors', 1, 64],
    ['clusterSize', 1, 64],
    ['reads', 0, 4],
    ['writes', 0, 4],
    ['serialising', 0, 4],
    ['length', 1, p.sectors],
  ] as const) {
    const v = p[k];
    if (!Number.isInteger(v) || v < lo || v > hi) {
      throw new SpecError(`parameter ${k} must be an integer in [${lo}, ${hi}], got ${JSON.stringify(v)}`, variant.name);
    }
  }
  const kinds: RequestKind[] = [
    ...Array<RequestKind>(p.reads).fill('read'),
    ...Array<RequestKind>(p.writes).fill('write'),
    ...Array<RequestKind>(p.serialising).fill('serialising-write'),
  ];
  const names = kinds.map((k, i) => `${tag(k)}${kinds.slice(0, i).filter((x) => x === k).length}`);
  const cs = p.clusterSize;
  /** The window the spec requires: rule (c) widens serialising requests. */
  const specWindow = (kind: RequestKind, off: number): [number, number] =>
    kind === 'serialising-write'
      ? [Math.floor(off / cs) * cs, Math.ceil((off + p.length) / cs) * cs]
      : [off, off + p.length];
  const tracked = (r: Request) => r.pc === 'check' || r.pc === 'blocked' || r.pc === 'run';
  const overlaps = (a: Request, b: Request) => a.lo < b.hi && b.lo < a.hi;

  /** bdrv_find_conflicting_request: every candidate, not just the first (list order is not
   * part of the spec). */
  function conflicts(s: SerializationState, i: number): number[] {
    const self = s.reqs[i]!;
    const selfSer = self.kind === 'serialising-write';
    const out: number[] = [];
    s.reqs.forEach((req, j) => {
      if (j === i || !tracked(req)) return;
      const reqSer = req.kind === 'serialising-write';
      if (!selfSer && !reqSer) return;
      if (!selfSer && reqSer && variant.normalIgnoresSerialising) return;
      if (selfSer && !reqSer && variant.serialisingIgnoresNormal) return;
      if (!overlaps(self, req)) return;
      if (req.waitingFor !== -1 && !variant.noSkipWaiting) return; // already waiting: skip
      out.push(j);
    });
    return out;
  }

  const invariants: Invariant<SerializationState>[] = [
    {
      name: 'serialising-exclusive',
      check(s) {
        const running = s.reqs.map((r, i) => ({ r, i })).filter((x) => x.r.pc === 'run');
        for (const a of running) {
          if (a.r.kind !== 'serialising-write') continue;
          const [lo, hi] = specWindow(a.r.kind, a.r.off);
          for (const b of running) {
            if (b.i === a.i) continue;
            const [blo, bhi] = specWindow(b.r.kind, b.r.off);
            if (lo < bhi && blo < hi) {
              return (
                `serialising write ${names[a.i]} (cluster-aligned window ${lo}-${hi - 1}) runs concurrently ` +
                `with overlapping ${b.r.kind} ${names[b.i]} (sectors ${blo}-${bhi - 1})`
              );
            }
          }
        }
        return undefined;
      },
    },
  ];

  return {
    name: variant.name,
    params: { ...p },
    initial: () => [{ reqs: kinds.map((kind) => ({ kind, pc: 'idle', off: -1, lo: 0, hi: 0, waitingFor: -1 })) }],
    enabled(s) {
      const out: SerializationAction[] = [];
      s.reqs.forEach((r, i) => {
        match(r.pc)
          .with('idle', () => {
            for (let off = 0; off + p.length <= p.sectors; off++) out.push({ kind: 'begin', i, off });
          })
          .with('check', () => {
            const c = conflicts(s, i);
            if (c.length === 0) out.push({ kind: 'proceed', i });
            for (const on of c) out.push({ kind: 'wait', i, on });
          })
          .with('blocked', () => {
            if (s.reqs[r.waitingFor]!.pc === 'done') out.push({ kind: 'wake', i });
          })
          .with('run', () => out.push({ kind: 'end', i }))
          .with('done', () => {})
          .exhaustive();
      });
      return out;
    },
    step(s, a) {
      const reqs = s.reqs.slice();
      const r = reqs[a.i]!;
      reqs[a.i] = match(a)
        .returnType<Request>()
        .with({ kind: 'begin' }, ({ off }) => {
          // tracked_request_begin, then tracked_request_set_serialising for serialising writes.
          const [lo, hi] = variant.noWidening ? [off, off + p.length] : specWindow(r.kind, off);
          return { ...r, pc: 'check', off, lo, hi };
        })
        .with({ kind: 'wait' }, ({ on }) => ({ ...r, pc: 'blocked', waitingFor: on }))
        .with({ kind: 'proceed' }, () => ({ ...r, pc: 'run' }))
        .with({ kind: 'wake' }, () => ({ ...r, pc: 'check', waitingFor: -1 }))
        .with({ kind: 'end' }, () => ({ ...r, pc: 'done', off: -1, lo: 0, hi: 0 }))
        .exhaustive();
      return { reqs };
    },
    label(a): ActionLabel {
      const actor = names[a.i]!;
      return match(a)
        .returnType<ActionLabel>()
        .with({ kind: 'begin' }, ({ off }) => ({ actor, action: 'begin', args: { sector: off } }))
        .with({ kind: 'wait' }, ({ on }) => ({ actor, action: 'wait', args: { on: names[on]! } }))
        .with({ kind: 'proceed' }, { kind: 'wake' }, { kind: 'end' }, ({ kind }) => ({ actor, action: kind }))
        .exhaustive();
    },
    actionName: (a) => a.kind,
    // No symmetry: `waitingFor` names another request, and names are not renamed here.
    key: (s) => s.reqs.map((r) => `${r.pc[0]}${r.off},${r.lo},${r.hi},${r.waitingFor}`).join(';'),
    invariants,
    pending: (s) => s.reqs.some((r) => r.pc !== 'done'),
    actionNames: ['begin', 'proceed', 'wait', 'wake', 'end'],
    view(s) {
      const v: Record<string, string | number | boolean> = {};
      s.reqs.forEach((r, i) => {
        v[`${names[i]}.pc`] = r.pc;
        if (r.pc !== 'idle' && r.pc !== 'done') v[`${names[i]}.window`] = `${r.lo}-${r.hi - 1}`;
        if (r.waitingFor >= 0) v[`${names[i]}.waitingFor`] = names[r.waitingFor]!;
      });
      return v;
    },
  };
}
