// Small behaviours for testing the explorer itself: the classic lost update (two processes
// incrementing a shared counter with a non-atomic load/store) and two lock orders (the
// deadlocking one and the fixed one).

import type { Behaviour } from '../explorer/behaviour.ts';

export interface CounterState {
  readonly x: number;
  readonly procs: readonly { readonly pc: 'load' | 'store' | 'done'; readonly tmp: number }[];
}
export type CounterAction = { readonly kind: 'load' | 'store'; readonly p: number };

/** `atomic` makes load+store one step (the fix); `dead` adds an action that is never enabled. */
export function counterModel(n: number, opts: { atomic?: boolean; dead?: boolean } = {}): Behaviour<CounterState, CounterAction> {
  return {
    name: 'toy-counter',
    params: { procs: n, atomic: opts.atomic ?? false },
    initial: () => [{ x: 0, procs: Array.from({ length: n }, () => ({ pc: 'load' as const, tmp: 0 })) }],
    enabled(s) {
      const out: CounterAction[] = [];
      s.procs.forEach((p, i) => {
        if (p.pc === 'load') out.push({ kind: 'load', p: i });
        else if (p.pc === 'store') out.push({ kind: 'store', p: i });
      });
      return out;
    },
    step(s, a) {
      const procs = s.procs.slice();
      const p = procs[a.p]!;
      if (a.kind === 'load') {
        if (opts.atomic) return { x: s.x + 1, procs: Object.assign(procs, { [a.p]: { pc: 'done', tmp: 0 } }) };
        procs[a.p] = { pc: 'store', tmp: s.x };
        return { x: s.x, procs };
      }
      procs[a.p] = { pc: 'done', tmp: 0 };
      return { x: p.tmp + 1, procs };
    },
    label: (a) => ({ actor: `P${a.p}`, action: a.kind }),
    key(s, symmetric) {
      const ps = s.procs.map((p) => `${p.pc}:${p.tmp}`);
      if (symmetric) ps.sort();
      return `${s.x}|${ps.join(',')}`;
    },
    invariants: [
      {
        name: 'no-lost-update',
        check: (s) =>
          s.procs.every((p) => p.pc === 'done') && s.x !== s.procs.length
            ? `counter is ${s.x} after ${s.procs.length} increments: an update was lost`
            : undefined,
      },
    ],
    pending: (s) => s.procs.some((p) => p.pc !== 'done'),
    actionNames: opts.dead ? ['load', 'store', 'reset'] : ['load', 'store'],
  };
}

export interface LockState {
  readonly owner: readonly number[]; // per lock: -1 free, else process
  readonly pcs: readonly number[]; // 0: take first, 1: take second, 2: release, 3: done
}
export type LockAction = { readonly p: number };

/** Two processes, two locks. `crossed`: P1 takes the locks in the opposite order (deadlocks). */
export function lockModel(crossed: boolean): Behaviour<LockState, LockAction> {
  const order = (p: number): [number, number] => (crossed && p === 1 ? [1, 0] : [0, 1]);
  return {
    name: 'toy-locks',
    params: { crossed },
    initial: () => [{ owner: [-1, -1], pcs: [0, 0] }],
    enabled(s) {
      const out: LockAction[] = [];
      s.pcs.forEach((pc, p) => {
        if (pc === 3) return;
        if (pc === 2 || s.owner[order(p)[pc]!] === -1) out.push({ p });
      });
      return out;
    },
    step(s, a) {
      const owner = s.owner.slice();
      const pcs = s.pcs.slice();
      const pc = pcs[a.p]!;
      if (pc < 2) owner[order(a.p)[pc]!] = a.p;
      else owner.forEach((o, l) => (owner[l] = o === a.p ? -1 : o));
      pcs[a.p] = pc + 1;
      return { owner, pcs };
    },
    label: (a) => ({ actor: `P${a.p}`, action: 'next' }),
    key: (s) => `${s.owner.join(',')}|${s.pcs.join(',')}`,
    invariants: [],
    pending: (s) => s.pcs.some((pc) => pc !== 3),
    actionNames: ['next'],
  };
}
