// The runner: for each target, start it in a private temp dir, prepare each suite, run the
// selected cases one by one, judge each from its checks, stop the target, clean up.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { NbdClientError, NbdProtocolError } from '../nbd/errors.ts';
import { WireLog } from '../nbd/wirelog.ts';
import { HarnessError } from '../targets/errors.ts';
import { peerCommand, startedMark, startedSince } from '../targets/peers.ts';
import type { RunningTarget, TargetDef } from '../targets/types.ts';
import {
  SkipSignal,
  countVerdicts,
  type CaseContext,
  type CaseDef,
  type CaseResult,
  type Check,
  type Level,
  type RunResult,
  type Suite,
  type TargetSummary,
  type Verdict,
} from './model.ts';

export interface RunOptions {
  targets: readonly TargetDef[];
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  suites: readonly Suite<any>[];
  /** Id prefixes; a case runs if it matches any (empty = all). */
  filter?: readonly string[];
  /** Case ids selected exactly (beside `filter`'s prefixes). */
  cases?: readonly string[];
  strict?: boolean;
  seed?: number;
  /** Per expected reply. */
  timeoutMs?: number;
  startTimeoutMs?: number;
  /** Cases run at once against one target (each case uses its own connections and scratch). */
  concurrency?: number;
  /** Stop at the first failed MUST or harness error: the cases after it are skipped, saying why
   * (a CI job that only needs to know whether anything fails; the mutation judge). */
  failFast?: boolean;
  onProgress?: (e: ProgressEvent) => void;
}

export type ProgressEvent =
  | { kind: 'target-start'; target: string; cases: number }
  | { kind: 'target-error'; target: string; error: string }
  | { kind: 'not-applicable'; target: string; suite: string; reason: string }
  | { kind: 'case'; result: CaseResult; index: number; total: number };

/** The cases a run selects: those whose id starts with a `filter` prefix, and those named exactly
 * in `cases`; every case when both are empty. */
export function selectCases<Env>(suite: Suite<Env>, filter: readonly string[] = [], cases: readonly string[] = []): CaseDef<Env>[] {
  if (filter.length === 0 && cases.length === 0) return [...suite.cases];
  return suite.cases.filter((c) => cases.includes(c.id) || filter.some((f) => c.id === f || c.id.startsWith(f.endsWith('/') ? f : `${f}/`) || c.id.startsWith(f)));
}

/** 32-bit FNV-1a, to derive a per-case seed from the run seed and the case id. */
function hashSeed(seed: number, id: string): number {
  let h = 0x811c9dc5 ^ seed;
  for (let i = 0; i < id.length; i++) h = Math.imul(h ^ id.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function judge(level: Level, checks: readonly Check[], observations: readonly string[]): { verdict: Verdict; reason: string } {
  const failedMust = checks.find((c) => !c.ok && c.level === 'MUST');
  if (failedMust) return { verdict: 'fail', reason: describeCheck(failedMust) };
  const failedShould = checks.find((c) => !c.ok && c.level === 'SHOULD');
  if (failedShould) return { verdict: 'non-strict', reason: describeCheck(failedShould) };
  const failedMay = checks.find((c) => !c.ok);
  if (failedMay) return { verdict: 'info', reason: describeCheck(failedMay) };
  if (level === 'MAY') return { verdict: 'info', reason: observations.join('; ') };
  return { verdict: 'pass', reason: '' };
}

function describeCheck(c: Check): string {
  return `${c.level}: ${c.what}${c.observed !== undefined ? ` - observed: ${c.observed}` : ''}`;
}

export async function runCase<Env>(
  def: CaseDef<Env>,
  suite: string,
  target: RunningTarget,
  env: Env,
  opts: { seed: number; timeoutMs: number },
): Promise<CaseResult> {
  const checks: Check[] = [];
  const observations: string[] = [];
  const wire = new WireLog();
  const cleanups: (() => void | Promise<void>)[] = [];
  const seed = hashSeed(opts.seed, def.id);
  const ctx: CaseContext<Env> = {
    env,
    target,
    caseId: def.id,
    seed,
    random: mulberry32(seed),
    timeoutMs: opts.timeoutMs,
    wire,
    check(level, ok, what, observed) {
      // `observed` describes a violation ("still open"): on a check that held it would read as the
      // opposite of what happened, so it is kept only when the check fails. Facts go to observe().
      checks.push({ level, ok, what, ...(observed !== undefined && !ok ? { observed } : {}) });
      return ok;
    },
    must(ok, what, observed) {
      return this.check('MUST', ok, what, observed);
    },
    should(ok, what, observed) {
      return this.check('SHOULD', ok, what, observed);
    },
    observe(text) {
      observations.push(text);
    },
    skip(reason) {
      throw new SkipSignal(reason);
    },
    defer(fn) {
      cleanups.push(fn);
    },
  };
  const started = performance.now();
  let verdict: Verdict;
  let reason: string;
  // A case must finish on its own (every wait has a timeout); this guards against runner bugs.
  const guardMs = Math.max(opts.timeoutMs * 8, 30_000) + 30_000;
  let guard: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      def.run(ctx),
      new Promise((_, reject) => {
        guard = setTimeout(() => reject(new HarnessError(`case did not finish within ${guardMs} ms`)), guardMs);
      }),
    ]);
    ({ verdict, reason } = judge(def.level, checks, observations));
  } catch (e) {
    if (e instanceof SkipSignal) {
      verdict = 'skipped';
      reason = e.message;
    } else if (e instanceof NbdProtocolError) {
      // The server sent bytes the spec forbids: a MUST violation whatever the case's level.
      checks.push({ level: 'MUST', ok: false, what: 'every reply is well-formed (proto.md framing rules)', observed: e.message });
      verdict = 'fail';
      reason = `protocol error: ${e.message}`;
    } else if (e instanceof NbdClientError && e.kind === 'not-allowed') {
      verdict = 'skipped';
      reason = e.message;
    } else if (e instanceof NbdClientError && e.kind === 'unreachable') {
      // Nothing to judge: the target did not take the connection. The runner stops there.
      verdict = 'error';
      reason = `${UNREACHABLE}: ${e.message}`;
    } else if (e instanceof NbdClientError && (e.kind === 'timeout' || e.kind === 'closed' || e.kind === 'tls')) {
      // Silence where a reply was due, or a drop where the spec does not allow one, or a TLS
      // server refusing the credentials it was started with.
      const what = e.kind === 'timeout' ? 'the server answers (no hang, no desync)' : e.kind === 'tls' ? 'STARTTLS and the TLS handshake succeed with the credentials the target was started with' : 'the server keeps the connection open';
      checks.push({ level: 'MUST', ok: false, what, observed: e.message });
      const j = judge(def.level, checks, observations);
      verdict = j.verdict;
      reason = j.reason;
    } else {
      verdict = 'error';
      reason = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
    }
  } finally {
    clearTimeout(guard);
    for (const fn of cleanups.reverse()) {
      try {
        await fn();
      } catch {
        /* cleanup failures must not hide the verdict */
      }
    }
  }
  return {
    suite,
    id: def.id,
    section: def.section,
    level: def.level,
    title: def.title,
    description: def.description,
    expectation: def.expectation,
    target: target.name,
    verdict,
    reason,
    checks,
    observations,
    wire: wire.entries,
    durationMs: Math.round(performance.now() - started),
    seed,
  };
}

const versions = new Map<string, string>();
/** The first line `CMD --version` prints (cached per run of the process). */
export function peerVersion(cmd: string): string {
  let v = versions.get(cmd);
  if (v === undefined) {
    const r = spawnSync(cmd, ['--version'], { encoding: 'utf8', timeout: 5000 });
    v = `${r.stdout ?? ''}\n${r.stderr ?? ''}`.split('\n').map((l) => l.trim()).find(Boolean) ?? `no version (${r.error?.message ?? `exit ${r.status}`})`;
    versions.set(cmd, v);
  }
  return v;
}

/** The reason of a case that could not connect at all; the target's remaining cases are not run. */
export const UNREACHABLE = 'target unreachable';

function harnessResults<Env>(cases: readonly CaseDef<Env>[], suite: string, target: string, reason: string, verdict: Verdict = 'error'): CaseResult[] {
  return cases.map((c) => ({
    suite,
    id: c.id,
    section: c.section,
    level: c.level,
    title: c.title,
    description: c.description,
    expectation: c.expectation,
    target,
    verdict,
    reason,
    checks: [],
    observations: [],
    wire: [],
    durationMs: 0,
    seed: 0,
  }));
}

/** Targets running right now, so an interrupted run (Ctrl-C) still stops its servers. */
const live = new Set<RunningTarget>();
let signalsHooked = false;
function hookSignals(): void {
  if (signalsHooked) return;
  signalsHooked = true;
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      void Promise.allSettled([...live].map((t) => t.stop())).then(() => process.exit(sig === 'SIGINT' ? 130 : 143));
    });
  }
}

export async function run(opts: RunOptions): Promise<RunResult> {
  hookSignals();
  const startedAt = new Date().toISOString();
  const seed = opts.seed ?? Math.floor(Math.random() * 2 ** 31);
  const timeoutMs = opts.timeoutMs ?? 1500;
  const filter = opts.filter ?? [];
  const results: CaseResult[] = [];
  const targets: TargetSummary[] = [];
  const selected = opts.suites.map((s) => ({ suite: s, cases: selectCases(s, filter, opts.cases) })).filter((s) => s.cases.length > 0);
  const total = selected.reduce((a, s) => a + s.cases.length, 0);
  /** Set by the first failure under failFast: why everything after it is not run. */
  let stopped: string | undefined;
  for (const def of opts.targets) {
    if (stopped) {
      targets.push({ name: def.name, description: def.summary, facts: {} });
      for (const { suite, cases } of selected) results.push(...harnessResults(cases, suite.name, def.name, `not run: ${stopped}`, 'skipped'));
      continue;
    }
    const summary: TargetSummary = { name: def.name, description: def.summary, facts: {} };
    targets.push(summary);
    const workDirs: string[] = [];
    const mark = startedMark();
    let target: RunningTarget | undefined;
    const start = async (): Promise<RunningTarget> => {
      const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'fleece-conform-'));
      workDirs.push(workDir);
      target = await def.start({ workDir, startTimeoutMs: opts.startTimeoutMs ?? 10_000 });
      const t = target;
      live.add(t);
      const stop = t.stop.bind(t);
      target = { ...t, stop: async () => { live.delete(t); await stop(); } };
      summary.description = target.description;
      // What was tested, exactly: the peers' versions and the command lines started.
      // A peer given by path (--qemu-nbd PATH) is named with its path.
      if (def.peers.length) {
        summary.facts.peers = Object.fromEntries(def.peers.map((p) => [p, peerCommand(p) === p ? peerVersion(p) : `${peerVersion(peerCommand(p))} (${peerCommand(p)})`]));
      }
      if (t.commands) summary.facts.commands = t.commands();
      return target;
    };
    let index = 0;
    let targetTotal = total;
    let unreachable: string | undefined;
    const emit = (r: CaseResult) => {
      results.push(r);
      opts.onProgress?.({ kind: 'case', result: r, index: ++index, total: targetTotal });
    };
    try {
      await start().catch((e) => {
        opts.onProgress?.({ kind: 'target-start', target: def.name, cases: total });
        throw e;
      });
      // Suites that do not apply are said once, before the count of what will run.
      const notApplicable = new Set<string>();
      for (const { suite, cases } of selected) {
        const na = suite.appliesTo?.(target!);
        if (na === undefined) continue;
        notApplicable.add(suite.name);
        (summary.notApplicable ??= []).push({ suite: suite.name, reason: na });
        targetTotal -= cases.length;
      }
      opts.onProgress?.({ kind: 'target-start', target: def.name, cases: targetTotal });
      for (const x of summary.notApplicable ?? []) opts.onProgress?.({ kind: 'not-applicable', target: def.name, suite: x.suite, reason: x.reason });
      for (const { suite, cases } of selected) {
        if (notApplicable.has(suite.name)) continue;
        if (stopped) {
          harnessResults(cases, suite.name, def.name, `not run: ${stopped}`, 'skipped').forEach(emit);
          continue;
        }
        const missing = suite.roles.filter((r) => !target!.exports[r]);
        if (missing.length) {
          harnessResults(cases, suite.name, def.name, `target has no '${missing.join("', '")}' export for suite ${suite.name}`, 'skipped').forEach(emit);
          continue;
        }
        let env: unknown;
        try {
          env = await suite.setup(target!, { timeoutMs, seed });
          if (suite.describeEnv) Object.assign(summary.facts, suite.describeEnv(env));
        } catch (e) {
          const msg = `suite ${suite.name} setup failed: ${(e as Error).message}`;
          summary.error = msg;
          // One line for the suite, not one per case it could not run.
          opts.onProgress?.({ kind: 'target-error', target: def.name, error: `${msg} (${cases.length} cases not run)` });
          harnessResults(cases, suite.name, def.name, `not run: ${msg}`).forEach(emit);
          continue;
        }
        try {
          const jobs = Math.max(1, opts.concurrency ?? 4);
          const restart = async () => {
            await suite.teardown?.(env);
            await target!.stop().catch(() => undefined);
            await start();
            env = await suite.setup(target!, { timeoutMs, seed });
          };
          // A server that crashed closes its sockets before its exit is reported: give it a moment.
          const settle = async (rs: CaseResult[]) => {
            if (target!.died && rs.some((r) => r.wire.some((w) => w.dir === 'note' && /closed|socket error/.test(w.note)))) await new Promise((res) => setTimeout(res, 60));
            return target!.died?.();
          };
          const runSequentially = async (batch: CaseDef<unknown>[]) => {
            for (const c of batch) {
              if (unreachable || stopped) return;
              const r = await runCase(c, suite.name, target!, env, { seed, timeoutMs });
              const death = await settle([r]);
              if (death) {
                // The server crashed during this case: say so on the case, restart for the next ones.
                r.observations.push(`the server process died during this case: ${death}`);
                r.reason = `${r.reason ? `${r.reason}; ` : ''}server died: ${death}`;
                if (r.verdict === 'pass' || r.verdict === 'info') r.verdict = 'fail';
                emitHere(r);
                await restart();
                continue;
              }
              emitHere(r);
            }
          };
          // Batches of up to `jobs` cases; an exclusive case is a batch of its own.
          const batches: CaseDef<unknown>[][] = [];
          for (const c of cases) {
            const last = batches[batches.length - 1];
            if (c.exclusive || !last || last.length >= jobs || last[0]!.exclusive) batches.push([c]);
            else last.push(c);
          }
          const ran = new Set<string>();
          const emitHere = (r: CaseResult) => {
            ran.add(r.id);
            if (!unreachable && r.verdict === 'error' && r.reason.startsWith(UNREACHABLE)) unreachable = `${r.reason} (in ${r.id})`;
            if (opts.failFast && !stopped && (r.verdict === 'fail' || r.verdict === 'error' || (opts.strict && r.verdict === 'non-strict'))) stopped = `--fail-fast: stopped after ${r.id} on ${def.name} (${r.verdict})`;
            emit(r);
          };
          for (const batch of batches) {
            if (unreachable || stopped) break;
            if (batch.length === 1) {
              await runSequentially(batch);
              continue;
            }
            const rs = await Promise.all(batch.map((c) => runCase(c, suite.name, target!, env, { seed, timeoutMs })));
            if (await settle(rs)) {
              // Which case killed it is unknown: restart and replay the batch one case at a time.
              await restart();
              await runSequentially(batch);
              continue;
            }
            rs.forEach(emitHere);
          }
          // A target that stopped taking connections fails nothing more: one harness error says so.
          if (unreachable) harnessResults(cases.filter((c) => !ran.has(c.id)), suite.name, def.name, `not run: ${unreachable}`).forEach(emit);
          else if (stopped) harnessResults(cases.filter((c) => !ran.has(c.id)), suite.name, def.name, `not run: ${stopped}`, 'skipped').forEach(emit);
        } finally {
          await suite.teardown?.(env);
        }
      }
    } catch (e) {
      const msg = e instanceof Error ? e.message : String(e);
      summary.error = msg;
      opts.onProgress?.({ kind: 'target-error', target: def.name, error: msg });
      const done = new Set(results.filter((r) => r.target === def.name).map((r) => r.id));
      const na = new Set((summary.notApplicable ?? []).map((x) => x.suite));
      for (const { suite, cases } of selected) if (!na.has(suite.name)) harnessResults(cases.filter((c) => !done.has(c.id)), suite.name, def.name, `not run: target ${def.name} could not be started: ${msg}`).forEach(emit);
    } finally {
      // Processes the suites started for this target (the fleecing, permissions and
      // interleavings daemons) and the QMP that set them up, beside the target's own.
      const more = startedSince(mark).filter((l) => !(summary.facts.commands as string[] | undefined)?.some((c) => l.endsWith(`: ${c}`)));
      if (more.length) summary.facts.started = more;
      await target?.stop().catch(() => undefined);
      for (const d of workDirs) fs.rmSync(d, { recursive: true, force: true });
    }
  }
  return {
    tool: 'fleece conform',
    version: 1,
    startedAt,
    finishedAt: new Date().toISOString(),
    seed,
    strict: opts.strict ?? false,
    suites: selected.map((s) => s.suite.name),
    filter: [...filter, ...(opts.cases ?? [])],
    targets,
    results,
    counts: countVerdicts(results),
  };
}
