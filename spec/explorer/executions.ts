// Complete executions of a small bounded model, for driving each model interleaving through a
// real implementation (the interleavings suite, docs/design.md "Interleavings"; xstate-graph's simplePaths).
//
// Two views:
// - allExecutions: every maximal path (a sequence of steps after which nothing is enabled),
//   depth-first, no visited set: two different orders of the same steps are two executions.
// - terminalStates: each distinct final state once, with a shortest trace to it (BFS).
// Both refuse to run away: past `maxExecutions` / `maxStates` they throw a SpecError.

import type { ActionLabel, Behaviour } from './behaviour.ts';
import { SpecError } from './errors.ts';

export interface Execution<S, A> {
  /** Index into model.initial(). */
  readonly initialIndex: number;
  readonly actions: readonly A[];
  readonly labels: readonly ActionLabel[];
  /** The state after the last step. */
  readonly final: S;
  /** True when the final state still had pending work (a deadlock). */
  readonly deadlocked: boolean;
}

export interface ExecutionOptions {
  /** Throw past this many executions (default 100 000). */
  readonly maxExecutions?: number;
  /** Throw when a path gets longer than this (default 1 000): the model is not bounded. */
  readonly maxDepth?: number;
}

/** Every maximal path of the model, lazily, in a deterministic order. */
export function* allExecutions<S, A>(model: Behaviour<S, A>, options: ExecutionOptions = {}): Generator<Execution<S, A>> {
  const maxExecutions = options.maxExecutions ?? 100_000;
  const maxDepth = options.maxDepth ?? 1_000;
  let count = 0;
  const inits = model.initial();
  for (let initialIndex = 0; initialIndex < inits.length; initialIndex++) {
    // Explicit stack of (state, enabled actions, next index) frames keeps deep models safe.
    const actions: A[] = [];
    const frames: { state: S; enabled: readonly A[]; next: number }[] = [];
    const first = inits[initialIndex]!;
    frames.push({ state: first, enabled: model.enabled(first), next: 0 });
    while (frames.length > 0) {
      const top = frames[frames.length - 1]!;
      if (top.enabled.length === 0) {
        if (++count > maxExecutions) {
          throw new SpecError(`more than ${maxExecutions} executions; shrink the parameters or raise maxExecutions`, model.name);
        }
        yield {
          initialIndex,
          actions: [...actions],
          labels: actions.map((a) => model.label(a)),
          final: top.state,
          deadlocked: model.pending(top.state),
        };
      }
      if (top.next >= top.enabled.length) {
        frames.pop();
        actions.pop();
        continue;
      }
      const a = top.enabled[top.next++]!;
      if (frames.length > maxDepth) {
        throw new SpecError(`an execution is longer than ${maxDepth} steps; the model is not bounded`, model.name);
      }
      const t = model.step(top.state, a);
      actions.push(a);
      frames.push({ state: t, enabled: model.enabled(t), next: 0 });
    }
  }
}

export interface TerminalState<S> {
  readonly state: S;
  readonly initialIndex: number;
  /** A shortest trace from the initial state to `state`. */
  readonly labels: readonly ActionLabel[];
  readonly deadlocked: boolean;
}

/** Each distinct final state (exact key, no symmetry) with a shortest trace to it. */
export function terminalStates<S, A>(model: Behaviour<S, A>, options: { maxStates?: number } = {}): TerminalState<S>[] {
  const maxStates = options.maxStates ?? 1_000_000;
  const seen = new Set<string>();
  const out: TerminalState<S>[] = [];
  type Node = { state: S; initialIndex: number; labels: ActionLabel[] };
  let level: Node[] = [];
  model.initial().forEach((state, initialIndex) => {
    const k = model.key(state, false);
    if (!seen.has(k)) {
      seen.add(k);
      level.push({ state, initialIndex, labels: [] });
    }
  });
  while (level.length > 0) {
    const next: Node[] = [];
    for (const n of level) {
      const acts = model.enabled(n.state);
      if (acts.length === 0) {
        out.push({ state: n.state, initialIndex: n.initialIndex, labels: n.labels, deadlocked: model.pending(n.state) });
        continue;
      }
      for (const a of acts) {
        const t = model.step(n.state, a);
        const k = model.key(t, false);
        if (seen.has(k)) continue;
        seen.add(k);
        if (seen.size > maxStates) throw new SpecError(`more than ${maxStates} states; shrink the parameters`, model.name);
        next.push({ state: t, initialIndex: n.initialIndex, labels: [...n.labels, model.label(a)] });
      }
    }
    level = next;
  }
  return out;
}
