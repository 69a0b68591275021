// The result model shared by every suite (nbd now; fleecing, permissions, interleavings later):
// cases with stable ids, spec sections and levels; verdicts in the vocabulary of h2spec/Autobahn
// (docs/verification.md §4): pass, fail (a MUST), non-strict (a SHOULD), info (the spec leaves
// it open), skipped (with the reason), error (a harness fault, kept apart from fail).
import type { WireEntry, WireLog } from '../nbd/wirelog.ts';
import type { RunningTarget } from '../targets/types.ts';

export type Level = 'MUST' | 'SHOULD' | 'MAY';
export type Verdict = 'pass' | 'fail' | 'non-strict' | 'info' | 'skipped' | 'error';
export const VERDICTS: readonly Verdict[] = ['pass', 'fail', 'non-strict', 'info', 'skipped', 'error'];

export interface Check {
  level: Level;
  ok: boolean;
  /** The requirement, phrased as what should hold. */
  what: string;
  /** What was seen. */
  observed?: string;
}

export interface CaseDef<Env> {
  /** Stable id: `<suite>/<section>/<name>`, e.g. `nbd/handshake/unknown-client-flags`. */
  readonly id: string;
  /** The spec section(s) it comes from, e.g. `proto.md "Newstyle negotiation"; docs/requirements/nbd.md A2`. */
  readonly section: string;
  /** The strongest requirement the case checks. MAY means "the spec leaves it open": verdict info. */
  readonly level: Level;
  readonly title: string;
  readonly description: string;
  readonly expectation: string;
  /** Run alone, never alongside other cases (timing-sensitive cases). */
  readonly exclusive?: boolean;
  run(ctx: CaseContext<Env>): Promise<void>;
}

export interface CaseContext<Env> {
  readonly env: Env;
  readonly target: RunningTarget;
  readonly caseId: string;
  /** Per-case seed (derived from the run seed and the case id) and a PRNG from it. */
  readonly seed: number;
  random(): number;
  /** Default timeout for one expected reply: silence longer than this means hang or desync. */
  readonly timeoutMs: number;
  readonly wire: WireLog;
  /** Records a requirement; returns `ok` so cases can branch on it. `observed` says what was seen
   * instead, and is kept only when the check fails. */
  check(level: Level, ok: boolean, what: string, observed?: string): boolean;
  must(ok: boolean, what: string, observed?: string): boolean;
  should(ok: boolean, what: string, observed?: string): boolean;
  /** Records an observation that is not a requirement (shown in reports). */
  observe(text: string): void;
  /** Ends the case as skipped. */
  skip(reason: string): never;
  /** Registers cleanup run after the case, whatever its outcome. */
  defer(fn: () => void | Promise<void>): void;
}

export interface Suite<Env> {
  readonly name: string;
  readonly description: string;
  readonly cases: readonly CaseDef<Env>[];
  /** Export roles the suite needs from a target ('rw', 'live', ...). */
  readonly roles: readonly string[];
  /** Why the suite does not apply to this target (a suite that starts its own daemon, or needs a
   * fleecing graph), or undefined when it does. A suite that does not apply is listed once with
   * the reason, never run and never an error. */
  appliesTo?(target: RunningTarget): string | undefined;
  /** Per-target preparation (capability probe...). Throwing here is a harness error for every case. */
  setup(target: RunningTarget, opts: { timeoutMs: number; seed: number }): Promise<Env>;
  teardown?(env: Env): Promise<void>;
  /** Facts about the target to show in reports (capabilities). */
  describeEnv?(env: Env): Record<string, unknown>;
}

export interface CaseResult {
  suite: string;
  id: string;
  section: string;
  level: Level;
  title: string;
  description: string;
  expectation: string;
  target: string;
  verdict: Verdict;
  /** One line: the first violated requirement, the skip reason, or the harness error. */
  reason: string;
  checks: Check[];
  observations: string[];
  wire: WireEntry[];
  durationMs: number;
  seed: number;
}

export interface TargetSummary {
  name: string;
  description: string;
  facts: Record<string, unknown>;
  /** Set when the target could not be started or prepared. */
  error?: string;
  /** Selected suites that do not apply to this target, with the reason. */
  notApplicable?: { suite: string; reason: string }[];
}

export interface RunResult {
  tool: 'fleece conform';
  version: 1;
  startedAt: string;
  finishedAt: string;
  seed: number;
  strict: boolean;
  suites: string[];
  filter: string[];
  targets: TargetSummary[];
  results: CaseResult[];
  counts: Record<Verdict, number>;
}

/** Thrown by ctx.skip(). */
export class SkipSignal extends Error {
  override readonly name = 'SkipSignal';
}

export function countVerdicts(results: readonly CaseResult[]): Record<Verdict, number> {
  const c = Object.fromEntries(VERDICTS.map((v) => [v, 0])) as Record<Verdict, number>;
  for (const r of results) c[r.verdict]++;
  return c;
}

/** Exit code (docs/verification.md §4 item 7): 2 harness error, 1 MUST (or with strict, SHOULD) failure, else 0. */
export function exitCode(results: readonly CaseResult[], strict: boolean, targetErrors = 0): number {
  const c = countVerdicts(results);
  if (c.error > 0 || targetErrors > 0) return 2;
  if (c.fail > 0 || (strict && c['non-strict'] > 0)) return 1;
  return 0;
}
