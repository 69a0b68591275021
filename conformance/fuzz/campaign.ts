// A fuzz campaign: fast-check generates cases, the driver runs each on a fresh connection, and
// after each the target is checked for being alive (its process, a new connection), for serving a
// healthy concurrent client and for its RSS. A failing case is shrunk by fast-check (every shrink
// step runs against the server again; a dead server is restarted first), so what is reported is
// the smallest case that still shows the finding. Rounds of fc.check with seeds seed, seed+1, ...
// run until the input or time budget is spent; each round stops at its first finding.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { open } from '../nbd/session.ts';
import { TF, flagNames } from '../nbd/constants.ts';
import { expectedContent } from '../targets/image.ts';
import type { RunningTarget, TargetDef } from '../targets/types.ts';
import { checkCase, inputCount, type FuzzCase, type ReplayFile } from './case.ts';
import { connectRaw, HealthClient, pidAlive, qmpServes, rssKiB, runNbdCase, runQmpCase, type CaseOutcome } from './driver.ts';
import { minimize } from './shrink.ts';
import { nbdCaseArb, qmpCaseArb, type GenContext } from './generate.ts';
import type { Finding } from './oracle.ts';

/** Findings that differ only in numbers (stream offsets, cookies, bytes) are one finding. */
export function signature(f: Finding): string {
  return `${f.kind}:${f.message.replace(/\(stream offset[^)]*\)/g, '').replace(/0x[0-9a-f]+|\d+/gi, 'N').split('\n')[0]}`;
}

/** The finding reported for a case when it shows several, most severe first. */
const KIND_ORDER = ['dead', 'hang', 'framing', 'model', 'qmp', 'health', 'rss'];

/** Wall time allowed to each of the two shrinking passes of one finding. */
const SHRINK_MS = 60_000;

export interface CampaignOptions {
  readonly target: TargetDef;
  readonly seed: number;
  /** Stop after this many inputs (messages), or this many seconds, whichever comes first. */
  readonly inputs?: number;
  readonly seconds?: number;
  readonly timeoutMs: number;
  /** Which protocols to fuzz ('qmp' needs a target with a monitor). */
  readonly protocols: readonly ('nbd' | 'qmp')[];
  /** Longest request pipeline per connection. */
  readonly maxRequests: number;
  /** Seed cases (replay files) run first. */
  readonly corpus?: readonly FuzzCase[];
  /** RSS above this many MiB is a finding. */
  readonly rssLimitMiB: number;
  /** Probe the healthy client every this many cases. */
  readonly healthEvery: number;
  /** Generate QMP texts of 64 KiB to 1 MiB and deep nesting (default true). */
  readonly qmpHugeTexts?: boolean;
  /** Keep going after a finding (a new round with the next seed) until the budget is spent. */
  readonly continueAfterFinding: boolean;
  readonly onProgress?: (p: Progress) => void;
}

export interface Progress {
  readonly cases: number;
  readonly inputs: number;
  readonly elapsedMs: number;
  readonly findings: number;
}

export interface ReportedFinding extends Finding {
  /** The shrunk case and how many shrink steps fast-check took. */
  readonly case: FuzzCase;
  readonly shrinks: number;
  readonly seed: number;
  /** The round's fast-check path, to regenerate the unshrunk case. */
  readonly path?: string;
  /** How many rounds found the same finding (same kind and message up to numbers). */
  occurrences: number;
  /** Whether running the shrunk case alone, on a fresh target, shows the finding again. */
  reproduced?: boolean;
}

export interface CampaignResult {
  readonly target: string;
  readonly description: string;
  readonly seed: number;
  readonly cases: number;
  readonly inputs: number;
  readonly transmissionCases: number;
  readonly qmpCases: number;
  readonly elapsedMs: number;
  readonly inputsPerSecond: number;
  readonly healthProbes: number;
  readonly restarts: number;
  readonly rss?: { readonly startKiB: number; readonly maxKiB: number; readonly endKiB: number };
  readonly findings: ReportedFinding[];
}

/** A started target that can be restarted after it died. */
export class TargetHandle {
  running: RunningTarget | undefined;
  restarts = 0;
  private dirs: string[] = [];
  constructor(readonly def: TargetDef) {}

  async start(): Promise<RunningTarget> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fleece-fuzz-'));
    this.dirs.push(dir);
    this.running = await this.def.start({ workDir: dir, startTimeoutMs: 15_000 });
    return this.running;
  }

  async restart(): Promise<RunningTarget> {
    await this.running?.stop();
    this.restarts++;
    return this.start();
  }

  async stop(): Promise<void> {
    await this.running?.stop();
    this.running = undefined;
    for (const d of this.dirs) fs.rmSync(d, { recursive: true, force: true });
    this.dirs = [];
  }
}

export async function genContext(t: RunningTarget, timeoutMs: number, maxRequests: number): Promise<GenContext & { readOnlyRo: boolean }> {
  const rw = t.exports.rw!;
  const ro = t.exports.ro ?? rw;
  const { conn, session } = await open(rw.address, { exportName: rw.name, timeoutMs });
  conn.close();
  const size = Number(session.size);
  const scratch = t.image?.scratch ?? { offset: Math.floor(size / 2), length: Math.max(512, Math.floor(size / 4)) };
  return { exports: { rw: rw.name, ro: ro.name }, size, scratch, maxRequests, readOnlyRo: (session.transmissionFlags & TF.READ_ONLY) === 0 && ro !== rw };
}

/** Runs one case against the running target and adds the target-level checks. */
export async function runCase(t: RunningTarget, c: FuzzCase, timeoutMs: number): Promise<CaseOutcome> {
  let out: CaseOutcome;
  if (c.proto === 'qmp') {
    if (!t.qmp) return { findings: [{ kind: 'qmp', message: `target ${t.name} has no QMP monitor` }], transmission: false };
    out = await runQmpCase(t.qmp, c, timeoutMs);
  } else {
    const ref = t.exports[c.role] ?? t.exports.rw!;
    const names = [...new Set(Object.values(t.exports).map((e) => e.name))];
    out = await runNbdCase(ref.address, c, names, timeoutMs);
  }
  const findings = [...out.findings];
  let gone = (t.pids?.() ?? []).filter((p) => !pidAlive(p));
  let died = t.died?.() ?? (gone.length ? `process ${gone.join(', ')} exited` : undefined);
  // A server that aborted refuses connections a moment before its exit is seen (on a loaded
  // machine, long enough to blame the refusal): give the exit up to a second to arrive.
  for (let i = 0; i < 20 && !died && out.connectError && t.pids; i++) {
    await new Promise((r) => setTimeout(r, 50));
    gone = (t.pids?.() ?? []).filter((p) => !pidAlive(p));
    died = t.died?.() ?? (gone.length ? `process ${gone.join(', ')} exited` : undefined);
  }
  if (died || gone.length) {
    const tail = t.logs().trim().split('\n').slice(-12).join('\n    ');
    const flags = out.transmissionFlags !== undefined ? ` (the export's transmission flags: ${flagNames(out.transmissionFlags)})` : '';
    findings.push({ kind: 'dead', message: `the server died: ${died ?? `process ${gone.join(', ')} exited`}${flags}\n    ${tail}` });
  }
  else if (out.connectError) findings.push({ kind: 'dead', message: `a new connection was refused: ${out.connectError}` });
  else if (t.pids === undefined && c.proto === 'nbd') {
    // No process to watch (a URI): whether the server still accepts connections is the sign.
    const ref = t.exports[c.role] ?? t.exports.rw!;
    try {
      (await connectRaw(ref.address, timeoutMs)).destroy();
    } catch (e) {
      findings.push({ kind: 'dead', message: `after the case the server refuses connections: ${(e as Error).message}` });
    }
  }
  else if (c.proto === 'nbd' && findings.some((f) => f.kind === 'hang' || f.kind === 'framing')) {
    // After a hang or garbage, see whether the server still serves anyone at all.
    const rw = t.exports.rw!;
    try {
      const { conn } = await open(rw.address, { exportName: rw.name, timeoutMs });
      conn.close();
    } catch (e) {
      findings.push({ kind: 'dead', message: `after the case a new connection is not served: ${(e as Error).message}` });
    }
  }
  return { ...out, findings };
}

export async function runCampaign(o: CampaignOptions): Promise<CampaignResult> {
  const handle = new TargetHandle(o.target);
  let t = await handle.start();
  const started = Date.now();
  const findings: ReportedFinding[] = [];
  let cases = 0;
  let inputs = 0;
  let transmissionCases = 0;
  let qmpCases = 0;
  let ctx: GenContext;
  try {
    ctx = await genContext(t, o.timeoutMs, o.maxRequests);
  } catch (e) {
    await handle.stop();
    throw e;
  }
  const roRef = t.exports.ro ?? t.exports.rw!;
  const expected = t.image && t.exports.ro ? expectedContent(t.image, 0, 4096) : undefined;
  let health = new HealthClient(roRef.address, roRef.name, o.timeoutMs, expected);
  const pid = t.pids?.()[0];
  const rss = pid !== undefined ? { startKiB: rssKiB(pid) ?? 0, maxKiB: 0, endKiB: 0 } : undefined;
  let rssPid = pid;
  const sampleRss = (): number | undefined => {
    if (rssPid === undefined || !rss) return undefined;
    const k = rssKiB(rssPid);
    if (k !== undefined) rss.maxKiB = Math.max(rss.maxKiB, k);
    return k;
  };
  const healthProbe = await health.probe();
  if (healthProbe) {
    await handle.stop();
    throw new Error(`the healthy client is not served before fuzzing starts: ${healthProbe}`);
  }

  /** Set when the server died and cannot be restarted (a URI: a server the user runs). */
  let stopped = false;
  const budgetLeft = () => !stopped && (o.inputs === undefined || inputs < o.inputs) && (o.seconds === undefined || Date.now() - started < o.seconds * 1000);
  const arbs: fc.Arbitrary<FuzzCase>[] = [];
  if (o.protocols.includes('nbd')) arbs.push(nbdCaseArb(ctx));
  if (o.protocols.includes('qmp') && t.qmp) arbs.push(qmpCaseArb(o.qmpHugeTexts ?? true));
  if (arbs.length === 0) throw new Error(`target ${t.name} has nothing to fuzz for ${o.protocols.join(', ')} (no QMP monitor)`);
  const arb = arbs.length === 1 ? arbs[0]! : fc.oneof({ weight: 4, arbitrary: arbs[0]! }, { weight: 1, arbitrary: arbs[1]! });
  let failures = new Map<string, Finding[]>();
  /** The round's first failing case, before shrinking. */
  let firstFailure: FuzzCase | undefined;
  let shrinkStarted = 0;
  let shrinking = false;

  const property = async (c: FuzzCase): Promise<boolean> => {
    // Out of budget: pass the rest of the round at once (the time limit of fast-check would cut
    // shrinking short, so the budget is enforced here and never while shrinking).
    if (!shrinking && !budgetLeft()) return true;
    // Shrinking is bounded in time too: past the limit every run passes, so fast-check stops
    // with the smallest failing case it has.
    if (shrinking && Date.now() - shrinkStarted > SHRINK_MS) return true;
    await revive();
    cases++;
    inputs += inputCount(c);
    if (c.proto === 'qmp') qmpCases++;
    const out = await confirmDeath(c, await runCase(t, c, o.timeoutMs));
    if (out.transmission) transmissionCases++;
    const fs_ = [...out.findings];
    if (fs_.length === 0 && (shrinking || cases % o.healthEvery === 0)) {
      const h = await health.probe();
      if (h) fs_.push({ kind: 'health', message: h });
      const k = sampleRss();
      if (k !== undefined && k > o.rssLimitMiB * 1024) fs_.push({ kind: 'rss', message: `server RSS ${Math.round(k / 1024)} MiB is above the ${o.rssLimitMiB} MiB limit` });
    }
    if (cases % 200 === 0) o.onProgress?.({ cases, inputs, elapsedMs: Date.now() - started, findings: findings.length });
    if (fs_.length && !shrinking && fs_.every((f) => findings.some((g) => signature(g) === signature(f)))) {
      // Already reported (and shrunk): count it and explore on instead of shrinking it again.
      for (const g of findings) if (fs_.some((f) => signature(f) === signature(g))) g.occurrences++;
      await revive();
      return true;
    }
    if (fs_.length) {
      if (!shrinking) {
        firstFailure = c;
        shrinkStarted = Date.now();
      }
      const seen = new Set<string>();
      failures.set(JSON.stringify(c), fs_.filter((f) => !seen.has(f.kind) && seen.add(f.kind)));
      shrinking = true;
      return false;
    }
    return true;
  };

  try {
    // Seeds from the corpus first, each on its own.
    for (const c of o.corpus ?? []) {
      if (!budgetLeft()) break;
      failures = new Map();
      shrinking = false;
      const r = await fc.check(fc.asyncProperty(arb, property), { seed: o.seed, numRuns: 1, examples: [[c]], endOnFailure: false });
      if (r.failed && r.counterexample) await record(r.counterexample[0]!, r.numShrinks, o.seed, r.counterexamplePath ?? undefined);
      else if (r.failed) await record(c, 0, o.seed);
    }
    for (let round = 0; budgetLeft(); round++) {
      failures = new Map();
      firstFailure = undefined;
      shrinking = false;
      const seed = (o.seed + round) >>> 0;
      const r = await fc.check(fc.asyncProperty(arb, property), {
        seed,
        numRuns: 500,
      });
      if (r.failed && r.counterexample) {
        if (failures.size === 0 && r.errorInstance) throw r.errorInstance; // the harness threw
        await record(r.counterexample[0]!, r.numShrinks, seed, r.counterexamplePath ?? undefined);
        if (!o.continueAfterFinding) break;
      }
    }
  } finally {
    o.onProgress?.({ cases, inputs, elapsedMs: Date.now() - started, findings: findings.length });
    if (rss) rss.endKiB = sampleRss() ?? 0;
    health.close();
    await handle.stop();
  }
  const elapsedMs = Date.now() - started;
  return {
    target: t.name,
    description: t.description,
    seed: o.seed,
    cases,
    inputs,
    transmissionCases,
    qmpCases,
    elapsedMs,
    inputsPerSecond: Math.round(inputs / (elapsedMs / 1000)),
    healthProbes: health.probes,
    restarts: handle.restarts,
    ...(rss ? { rss } : {}),
    findings,
  };

  async function record(c: FuzzCase, shrinks: number, seed: number, p?: string): Promise<void> {
    let fs_ = failures.get(JSON.stringify(c)) ?? [{ kind: 'model' as const, message: 'the case failed (findings not captured)' }];
    fs_ = [...fs_].sort((a, b) => KIND_ORDER.indexOf(a.kind) - KIND_ORDER.indexOf(b.kind));
    let primary = fs_[0]!.kind;
    let best = c;
    let steps = shrinks;
    if (t.pids === undefined && firstFailure && (failures.get(JSON.stringify(firstFailure)) ?? []).some((f) => f.kind === 'dead')) {
      // A server the user runs cannot be restarted: after its death every shrink step "fails",
      // so the case reported is the one that killed it, unshrunk.
      best = firstFailure;
      steps = 0;
      fs_ = failures.get(JSON.stringify(firstFailure))!;
      primary = 'dead';
      fs_ = [...fs_].sort((a, b) => KIND_ORDER.indexOf(a.kind) - KIND_ORDER.indexOf(b.kind));
    } else if (primary !== 'health' && primary !== 'rss') {
      const until = Date.now() + SHRINK_MS;
      const m = await minimize(c, async (cand) => {
        if (Date.now() > until) return false;
        await revive();
        const out = await confirmDeath(cand, await runCase(t, cand, o.timeoutMs));
        const hit = out.findings.some((f) => f.kind === primary);
        if (hit) failures.set(JSON.stringify(cand), [...out.findings].sort((a, b) => KIND_ORDER.indexOf(a.kind) - KIND_ORDER.indexOf(b.kind)));
        return hit;
      });
      best = m.case;
      steps += m.steps;
      fs_ = failures.get(JSON.stringify(best)) ?? fs_;
    }
    const sig = signature(fs_[0]!);
    const same = findings.find((f) => signature(f) === sig);
    if (primary === 'dead' && t.pids === undefined) stopped = true;
    if (same) same.occurrences++;
    else findings.push({ ...fs_[0]!, case: best, shrinks: steps, seed, occurrences: 1, ...(p ? { path: p } : {}) });
    await revive();
  }

  /**
   * A death is blamed on a case only if the case kills a fresh server too. A server that aborted
   * on the previous case can still accept the next connection before its exit is seen (nbdkit's
   * listener outlives the thread that asserted), and the next case, a shrink candidate say, would
   * then be blamed: a shrink that drops the one flag that mattered. So: restart, run the case
   * again, watch its processes as a replay does, and keep what that run finds.
   */
  async function confirmDeath(c: FuzzCase, out: CaseOutcome): Promise<CaseOutcome> {
    if (!t.pids || !out.findings.some((f) => f.kind === 'dead')) return out;
    t = await handle.restart();
    resetClients();
    const again = await runCase(t, c, o.timeoutMs);
    const findings = [...again.findings];
    const death = await watchDeath(t);
    if (death && !findings.some((f) => f.kind === 'dead')) findings.push(death);
    return { ...again, findings };
  }

  function resetClients(): void {
    health.close();
    const ref = t.exports.ro ?? t.exports.rw!;
    health = new HealthClient(ref.address, ref.name, o.timeoutMs, expected);
    rssPid = t.pids?.()[0];
  }

  /** Restarts a dead target, with a new healthy client (the old connection died with it). */
  async function revive(): Promise<void> {
    const isDead = () => Boolean(t.died?.() || (t.pids?.() ?? []).some((x) => !pidAlive(x)));
    if (!isDead() && t.pids) {
      // A server that just aborted refuses connections before its exit is seen: make sure the
      // next case (a shrink candidate, say) does not run against a corpse and get the blame.
      const ref = t.exports.rw ?? t.exports.ro;
      if (ref) {
        const refused = await connectRaw(ref.address, o.timeoutMs).then((s) => (s.destroy(), false), () => true);
        for (let i = 0; refused && i < 40 && !isDead(); i++) await new Promise((r) => setTimeout(r, 50));
      }
    }
    if (!isDead()) return;
    t = await handle.restart();
    resetClients();
  }
}

/**
 * One case, so time is cheap: a server that aborted on it may not have been seen exiting yet (a
 * loaded machine); watch its processes for two seconds before saying it survived.
 */
async function watchDeath(t: RunningTarget): Promise<Finding | undefined> {
  for (let i = 0; i < 40 && t.pids; i++) {
    const gone = t.pids().filter((pid) => !pidAlive(pid));
    const died = t.died?.() ?? (gone.length ? `process ${gone.join(', ')} exited` : undefined);
    if (died) return { kind: 'dead', message: `the server died: ${died}\n    ${t.logs().trim().split('\n').slice(-12).join('\n    ')}` };
    await new Promise((r) => setTimeout(r, 50));
  }
  return undefined;
}

/** Runs one saved case on a freshly started target: the replay of a finding. */
export async function replayCase(def: TargetDef, file: ReplayFile, timeoutMs: number): Promise<{ findings: Finding[]; description: string }> {
  const handle = new TargetHandle(def);
  const t = await handle.start();
  try {
    checkCase(file.case);
    const out = await runCase(t, file.case, timeoutMs);
    const findings = [...out.findings];
    if (!findings.some((f) => f.kind === 'dead')) {
      const death = await watchDeath(t);
      if (death) findings.push(death);
    }
    if (findings.length === 0 && file.case.proto === 'qmp' && t.qmp) {
      const alive = await qmpServes(t.qmp, timeoutMs);
      if (alive) findings.push({ kind: 'dead', message: alive });
    }
    return { findings, description: t.description };
  } finally {
    await handle.stop();
  }
}
