// The one abstraction every spec model implements and every consumer (the explorer, shortest
// paths, replay, wire-trace scenario generation in conformance/) works over, in the spirit of
// xstate-graph's behaviour: a model is data plus pure functions, never I/O.
//
// Read it like TLA+: `initial` is Init, `enabled` + `step` are Next (each enabled action is one
// disjunct, already guarded), `invariants` are the safety properties checked in every state.

/** One transition label. `actor` names who acts ("R0", "W1", "job"), `action` the step. */
export interface ActionLabel {
  readonly actor: string;
  readonly action: string;
  /** Arguments that make the step readable: cluster numbers, offsets, values. */
  readonly args?: Readonly<Record<string, string | number | boolean>>;
}

export interface Invariant<S> {
  readonly name: string;
  /** Returns undefined when the invariant holds, or a one-sentence violation in domain terms
   * ("snapshot read R0 of cluster 2 returned data written by W0 at step 3, after the snapshot"). */
  check(state: S): string | undefined;
}

export interface Behaviour<S, A> {
  /** Model name as `fleece explore --model` accepts it. */
  readonly name: string;
  /** The parameters this instance was built with, for reports and replay files. */
  readonly params: Readonly<Record<string, string | number | boolean>>;
  initial(): readonly S[];
  /** Every action enabled in `state` (guards already applied), in a deterministic order. */
  enabled(state: S): readonly A[];
  /** The successor state; must not mutate `state`. */
  step(state: S, action: A): S;
  label(action: A): ActionLabel;
  /** Exact canonical key: equal keys iff the states are equal (after symmetry reduction when
   * `symmetric` is true). */
  key(state: S, symmetric: boolean): string;
  readonly invariants: readonly Invariant<S>[];
  /** True when some actor still has work to do: a state with no enabled action and pending work
   * is a deadlock. */
  pending(state: S): boolean;
  /** Every action name the model can ever take, for coverage (taken / enabled / never enabled). */
  readonly actionNames: readonly string[];

  // Optional members (added compatibly; the explorer has a fallback for each). A wrapper that
  // builds on a model by spreading it and changing enabled/step/key must leave out `writeKey` and
  // `packed`, which describe the wrapped model only.

  /** The coverage bucket of an action, one of `actionNames`. Called once per transition, so keep
   * it cheap; defaults to `label(action).action`. */
  actionName?(action: A): string;
  /** Flat, readable fields of a state ("W0.pc", "source[2]") for counterexample diffs; defaults
   * to flattening the state object. */
  view?(state: S): Readonly<Record<string, string | number | boolean>>;
  /** Refines a violation sentence with the trace that led to it, e.g. to add "at step 3". */
  annotate?(message: string, trace: readonly TraceStep<S>[]): string;
  /** Fast path of `key`: writes the same key as bytes into `out` from index 0 and returns how
   * many it wrote (at most `out.length`, which is at least 4096). Equal bytes iff equal `key`s.
   * When present, the explorer keeps its visited set as bytes (no string per state). */
  writeKey?(state: S, symmetric: boolean, out: Uint8Array): number;
  /** Fastest path, for searches without symmetry: the model over fixed-width byte vectors (see
   * PackedForm). When present, `explore` without symmetry runs on it and unpacks a state only to
   * check invariants (each new state) and `pending` (states without successors). */
  readonly packed?: PackedForm<S>;
}

/** A model over packed states: each state a fixed-width byte vector that is also its exact key
 * (equal vectors iff equal states). It must agree with `enabled`/`step` exactly: the successors of
 * a vector, in order, are the packed `step(s, a)` for each `a` of `enabled(s)`. */
export interface PackedForm<S> {
  /** Bytes per state, a multiple of 4 (the explorer hashes and compares 32-bit words). */
  readonly width: number;
  /** Upper bound on the successors of one state. */
  readonly maxSuccessors: number;
  /** Coverage bucket of each action code `successors` reports (names from `actionNames`). */
  readonly actionNames: readonly string[];
  pack(state: S, out: Uint8Array, at: number): void;
  unpack(buf: Uint8Array, at: number): S;
  /** Writes the successors of the state at `src[at..at+width)` back to back into `out` (from 0)
   * and the action code of the j-th into `codes[j]`; returns how many. */
  successors(src: Uint8Array, at: number, out: Uint8Array, codes: Int32Array): number;
  /** Optional cheap pre-check on the bytes: returns false only if every invariant holds in the
   * state (the explorer then skips unpacking it); true means "unpack and check the invariants". */
  mayViolate?(buf: Uint8Array, at: number): boolean;
}

/** One step of a concrete trace: the label taken and the state it led to. */
export interface TraceStep<S> {
  readonly label: ActionLabel;
  readonly state: S;
}
