// Counterexamples: rebuilt as concrete traces, printed as numbered `actor.action(args)` steps with
// only the fields that changed (TLC's -difftrace, docs/verification.md §1.6), and serialised as the
// trace files `fleece explore --replay` re-checks (replay.ts).

import type { ActionLabel, Behaviour, TraceStep } from './behaviour.ts';
import { SpecError } from './errors.ts';
import { formatLabel } from './label.ts';

export interface Counterexample<S, A> {
  readonly kind: 'invariant' | 'deadlock';
  /** Name of the violated invariant ("deadlock" for a deadlock). */
  readonly invariant: string;
  /** One sentence in domain terms. */
  readonly message: string;
  /** Index into `model.initial()` of the state the trace starts from. */
  readonly initialIndex: number;
  readonly initial: S;
  readonly steps: readonly (TraceStep<S> & { readonly action: A })[];
}

/** The JSON form of a counterexample: what `--replay` reads. Labels only, never states, so a
 * file stays valid across refactorings of the state layout. */
export interface TraceFile {
  readonly format: 'fleece-trace';
  readonly version: 1;
  readonly model: string;
  readonly params: Readonly<Record<string, string | number | boolean>>;
  readonly kind: 'invariant' | 'deadlock';
  readonly invariant: string;
  readonly message: string;
  readonly initial: number;
  readonly steps: readonly ActionLabel[];
}

/**
 * Follows a chain of canonical keys from an initial state, picking at each step an enabled
 * action whose successor has the next key. Under symmetry the chain was stored with canonical
 * representatives; re-running from a concrete initial state yields a concrete, replayable trace.
 */
export function rebuildTrace<S, A>(
  model: Behaviour<S, A>,
  keyPath: readonly string[],
  symmetric: boolean,
  kind: 'invariant' | 'deadlock',
  invariantName: string | undefined,
): Counterexample<S, A> {
  return rebuildTraceBy(model, keyPath.length, (s, i) => model.key(s, symmetric) === keyPath[i], kind, invariantName);
}

/** rebuildTrace over any key representation: `matches(state, i)` says whether `state` has the
 * i-th key of the path (the explorer's byte keys use this). */
export function rebuildTraceBy<S, A>(
  model: Behaviour<S, A>,
  length: number,
  matches: (state: S, i: number) => boolean,
  kind: 'invariant' | 'deadlock',
  invariantName: string | undefined,
): Counterexample<S, A> {
  const inits = model.initial();
  const initialIndex = inits.findIndex((s) => matches(s, 0));
  if (initialIndex < 0) throw new SpecError('internal: trace start is not an initial state', model.name);
  const initial = inits[initialIndex] as S;
  let state: S = initial;
  const steps: (TraceStep<S> & { action: A })[] = [];
  for (let i = 1; i < length; i++) {
    let found = false;
    for (const action of model.enabled(state)) {
      const t = model.step(state, action);
      if (matches(t, i)) {
        steps.push({ action, label: model.label(action), state: t });
        state = t;
        found = true;
        break;
      }
    }
    if (!found) throw new SpecError(`internal: cannot rebuild trace step ${i}; key() is not symmetric-closed`, model.name);
  }
  let message: string;
  let invariant: string;
  if (kind === 'deadlock') {
    invariant = 'deadlock';
    message = 'deadlock: work is pending but no action is enabled';
  } else {
    const inv = model.invariants.find((v) => v.name === invariantName) ?? model.invariants[0];
    invariant = inv?.name ?? 'unknown';
    message = inv?.check(state) ?? `invariant ${invariant} violated`;
  }
  if (model.annotate) message = model.annotate(message, steps);
  return { kind, invariant, message, initialIndex, initial, steps };
}

/** The replayable JSON form. */
export function toTraceFile<S, A>(
  model: Pick<Behaviour<S, A>, 'name' | 'params'>,
  cx: Counterexample<S, A>,
): TraceFile {
  return {
    format: 'fleece-trace',
    version: 1,
    model: model.name,
    params: model.params,
    kind: cx.kind,
    invariant: cx.invariant,
    message: cx.message,
    initial: cx.initialIndex,
    steps: cx.steps.map((s) => s.label),
  };
}

/** Flat readable fields of a state: the model's view, or a generic flattening. */
export function viewOf<S>(model: Pick<Behaviour<S, unknown>, 'view'>, state: S): Record<string, string | number | boolean> {
  if (model.view) return { ...model.view(state) };
  const out: Record<string, string | number | boolean> = {};
  flatten(state, '', out);
  return out;
}

function flatten(v: unknown, path: string, out: Record<string, string | number | boolean>): void {
  if (v === null || v === undefined) {
    out[path || '.'] = String(v);
  } else if (Array.isArray(v)) {
    if (v.every((x) => typeof x !== 'object' || x === null)) out[path] = `[${v.join(',')}]`;
    else v.forEach((x, i) => flatten(x, `${path}[${i}]`, out));
  } else if (typeof v === 'object') {
    for (const [k, x] of Object.entries(v)) flatten(x, path ? `${path}.${k}` : k, out);
  } else if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') {
    out[path || '.'] = v;
  } else {
    out[path || '.'] = String(v);
  }
}

/** Numbered steps with only the changed fields, then the one-sentence explanation. */
export function formatCounterexample<S, A>(model: Behaviour<S, A>, cx: Counterexample<S, A>): string {
  const lines: string[] = [];
  const head = cx.kind === 'deadlock' ? 'Deadlock' : `Invariant ${cx.invariant} violated`;
  lines.push(`${head} after ${cx.steps.length} step${cx.steps.length === 1 ? '' : 's'}:`);
  let prev = viewOf(model, cx.initial);
  lines.push(`  0. initial state: ${Object.entries(prev).map(([k, v]) => `${k}=${v}`).join(' ')}`);
  const width = String(cx.steps.length).length;
  cx.steps.forEach((step, i) => {
    const cur = viewOf(model, step.state);
    const changed: string[] = [];
    for (const k of new Set([...Object.keys(prev), ...Object.keys(cur)])) {
      if (prev[k] !== cur[k]) changed.push(`${k}: ${prev[k] ?? '-'} -> ${cur[k] ?? '-'}`);
    }
    lines.push(`  ${String(i + 1).padStart(width)}. ${formatLabel(step.label)}`);
    if (changed.length > 0) lines.push(`     ${' '.repeat(width)}${changed.join('; ')}`);
    prev = cur;
  });
  lines.push(`  => ${cx.message}`);
  return lines.join('\n');
}
