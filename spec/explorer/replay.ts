// Replay: re-checks a trace file step by step against a model (fast-check's replay path and
// Coyote's `replay`, docs/verification.md §1.3, §3). Each step must be enabled where the trace says
// it is taken; invariants are checked after every step. A file that does not fit the model is
// refused with the step and the reason.

import type { ActionLabel, Behaviour, TraceStep } from './behaviour.ts';
import type { TraceFile } from './counterexample.ts';
import { SpecError } from './errors.ts';
import { formatLabel, sameLabel } from './label.ts';

export interface ReplayOutcome<S> {
  /** Steps executed (all of them unless a violation stopped the replay early). */
  readonly stepsRun: number;
  readonly final: S;
  /** The first violated invariant, with the 1-based step after which it failed (0: initial). */
  readonly violation: { readonly step: number; readonly invariant: string; readonly message: string } | undefined;
  /** The final state has pending work and nothing enabled. */
  readonly deadlock: boolean;
}

/** Parses and validates the JSON of a trace file; `where` names the file in errors. */
export function parseTraceFile(text: string, where: string): TraceFile {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new SpecError(`not valid JSON (${(e as Error).message})`, where);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new SpecError('expected a JSON object', where);
  const o = raw as Record<string, unknown>;
  if (o['format'] !== 'fleece-trace') throw new SpecError(`field "format" must be "fleece-trace"`, where);
  if (o['version'] !== 1) throw new SpecError(`unsupported version ${JSON.stringify(o['version'])} (expected 1)`, where);
  if (typeof o['model'] !== 'string') throw new SpecError('field "model" must be a string', where);
  const params = o['params'];
  if (typeof params !== 'object' || params === null || Array.isArray(params)) {
    throw new SpecError('field "params" must be an object', where);
  }
  for (const [k, v] of Object.entries(params)) {
    if (!['string', 'number', 'boolean'].includes(typeof v)) throw new SpecError(`params.${k} must be a string, number or boolean`, where);
  }
  const kind = o['kind'] ?? 'invariant';
  if (kind !== 'invariant' && kind !== 'deadlock') throw new SpecError('field "kind" must be "invariant" or "deadlock"', where);
  const initial = o['initial'] ?? 0;
  if (typeof initial !== 'number' || !Number.isInteger(initial) || initial < 0) {
    throw new SpecError('field "initial" must be a non-negative integer', where);
  }
  if (!Array.isArray(o['steps'])) throw new SpecError('field "steps" must be an array', where);
  const steps: ActionLabel[] = o['steps'].map((s: unknown, i: number) => checkLabel(s, `${where}: steps[${i}]`));
  return {
    format: 'fleece-trace',
    version: 1,
    model: o['model'],
    params: params as Record<string, string | number | boolean>,
    kind,
    invariant: typeof o['invariant'] === 'string' ? o['invariant'] : '',
    message: typeof o['message'] === 'string' ? o['message'] : '',
    initial,
    steps,
  };
}

function checkLabel(s: unknown, where: string): ActionLabel {
  if (typeof s !== 'object' || s === null || Array.isArray(s)) throw new SpecError('expected an object {actor, action, args}', where);
  const o = s as Record<string, unknown>;
  if (typeof o['actor'] !== 'string') throw new SpecError('"actor" must be a string', where);
  if (typeof o['action'] !== 'string') throw new SpecError('"action" must be a string', where);
  const args = o['args'];
  if (args === undefined) return { actor: o['actor'], action: o['action'] };
  if (typeof args !== 'object' || args === null || Array.isArray(args)) throw new SpecError('"args" must be an object', where);
  for (const [k, v] of Object.entries(args)) {
    if (!['string', 'number', 'boolean'].includes(typeof v)) throw new SpecError(`args.${k} must be a string, number or boolean`, where);
  }
  return { actor: o['actor'], action: o['action'], args: args as Record<string, string | number | boolean> };
}

/**
 * Runs `trace` on `model`. Throws SpecError naming the step when a step is not enabled (the
 * file was tampered with, or was made for other parameters).
 */
export function replay<S, A>(
  model: Behaviour<S, A>,
  trace: Pick<TraceFile, 'initial' | 'steps'> & Partial<Pick<TraceFile, 'model'>>,
  where = 'trace',
): ReplayOutcome<S> {
  if (trace.model !== undefined && trace.model !== model.name) {
    throw new SpecError(`trace is for model "${trace.model}", not "${model.name}"`, where);
  }
  const inits = model.initial();
  let state = inits[trace.initial];
  if (state === undefined) {
    throw new SpecError(`initial state #${trace.initial} does not exist (the model has ${inits.length})`, where);
  }
  const taken: TraceStep<S>[] = [];
  const check = (s: S, step: number) => {
    for (const inv of model.invariants) {
      const msg = inv.check(s);
      if (msg !== undefined) {
        return { step, invariant: inv.name, message: model.annotate ? model.annotate(msg, taken) : msg };
      }
    }
    return undefined;
  };
  let violation = check(state, 0);
  let stepsRun = 0;
  for (let i = 0; i < trace.steps.length && violation === undefined; i++) {
    const want = trace.steps[i]!;
    const enabled = model.enabled(state);
    const action = enabled.find((a) => sameLabel(model.label(a), want));
    if (action === undefined) {
      const offer = enabled.map((a) => formatLabel(model.label(a)));
      throw new SpecError(
        `step ${i + 1}: ${formatLabel(want)} is not enabled; enabled here: ${offer.length ? offer.join(', ') : '(nothing)'}`,
        where,
      );
    }
    state = model.step(state, action);
    taken.push({ label: model.label(action), state });
    stepsRun = i + 1;
    violation = check(state, i + 1);
  }
  const deadlock = violation === undefined && model.enabled(state).length === 0 && model.pending(state);
  return { stepsRun, final: state, violation, deadlock };
}
