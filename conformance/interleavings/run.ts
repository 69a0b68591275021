// The interleavings suite's engine (docs/design.md "Interleavings"): for each scenario, the model
// interleavings of the target's scheme; against a target with breakpoints, every one driven over
// real NBD connections and compared with the model (refinement); against a target without them
// (qemu-storage-daemon), every order of submission and pipelining the runner controls, with a
// delay under the source, and which model interleavings those runs reached.
import os from 'node:os';
import fs from 'node:fs';
import path from 'node:path';
import { S1, S3, S4, S4_QEMU_HBITMAP_STATUS, type Scheme } from '../../spec/models/fleecing/scheme.ts';
import { DEFAULT_SCENARIOS, predict, scenarioModel, snapshotBytes, writeBytes, writeData, type FleecingScenario, type ScenarioModel } from '../../spec/scenarios/fleecing.ts';
import type { NbdConnection } from '../nbd/client.ts';
import { Cmd, errnoName } from '../nbd/constants.ts';
import type { Reply } from '../nbd/reply.ts';
import { open } from '../nbd/session.ts';
import type { WireLog } from '../nbd/wirelog.ts';
import { BLOCKED_GRACE_MS, DEFAULT_MAPPING, HitWatcher, driveInterleaving, type BlockedSkip, type InterleavingResult, type Mapping } from './drive.ts';
import { INTERLEAVING_TARGETS, startSetup, type InterleavingTargetName, type Setup } from './setup.ts';

// Each target's scheme by name; a known-bad target refines the model variant with its bug.
export const SCHEMES_BY_NAME: Readonly<Record<string, Scheme>> = { s1: S1, s3: S3, s4: S4, [S4_QEMU_HBITMAP_STATUS.name]: S4_QEMU_HBITMAP_STATUS };

export interface ScenarioCounts {
  /** Maximal paths of the scenario in the scheme's model (offset-restricted, nothing reduced). */
  modelPaths: number;
  /** After fusing the implementation's atomic steps. */
  fusedPaths: number;
  /** After partial-order and symmetry reduction: the interleavings to drive. */
  enumerated: number;
  /** Interleavings driven on top, each through a waiting state no reduced one visits (for the
   * blocking check; ScenarioModel.blockingExecutions). */
  blockingExtra: number;
  executed: number;
  agreeing: number;
  disagreeing: number;
  /** Interleavings where the model violates the invariant. */
  modelViolations: number;
  /** Interleavings where the implementation returned post-snapshot data. */
  implViolations: number;
  /** The blocking check, summed over the executed interleavings: steps the model forbids that
   * were let go on the implementation, how many of them held (did not reach their event), how
   * many later states re-checked an already let-go request, and the ones not tried, by reason. */
  blockedTried: number;
  blockedHeld: number;
  blockedRechecked: number;
  blockedSkipped: Partial<Record<BlockedSkip, number>>;
}

export interface Coverage {
  /** Model actions taken over the executed interleavings, by name; the model's action names
   * never taken are listed apart (a vacuous scenario). */
  actions: Record<string, number>;
  neverTaken: string[];
  /** Breakpoint events hit. */
  events: Record<string, number>;
}

export interface ScenarioReport {
  id: string;
  title: string;
  note?: string;
  target: string;
  scheme: string;
  mapping: string;
  mode: 'breakpoints' | 'submission-orders';
  /** How the driven interleavings were chosen from the fused model's paths. */
  reduction: 'por' | 'none';
  counts: ScenarioCounts;
  coverage: Coverage;
  /** breakpoints mode: every interleaving driven. */
  interleavings: InterleavingResult[];
  /** submission-orders mode: what the runner controlled and what it reached. */
  exploration?: ExplorationReport;
  /** Replay one interleaving: append `--interleaving N`. */
  replay: string;
  durationMs: number;
  /** Set when the scenario does not apply or the harness failed. */
  skipped?: string;
  error?: string;
}

export interface RunInterleavingsOptions {
  target: InterleavingTargetName;
  scenarios?: readonly FleecingScenario[];
  /** Override the scheme (default: the target's); a mismatch is a test of the checker. */
  scheme?: Scheme;
  mapping?: Mapping;
  /** Only these interleaving indexes (replay). */
  only?: readonly number[];
  stepTimeoutMs?: number;
  /** The blocking check's grace period (default BLOCKED_GRACE_MS); 0: no blocking check. */
  blockedGraceMs?: number;
  /** Submission-orders mode: read delay under the source, ms (default 20). */
  sourceReadDelayMs?: number;
  /** Default: breakpoints when the target has them, else submission orders. */
  mode?: 'breakpoints' | 'submission-orders';
  /** Where the NBD connections log their bytes (the conform case's wire log). */
  wire?: WireLog;
  /** 'por' (default): one interleaving per Mazurkiewicz trace and symmetry class; 'none': every
   * path of the fused model (each atomic step of the implementation one model step). */
  reduction?: 'por' | 'none';
  onProgress?: (line: string) => void;
}

export function replayCommand(target: string, scenario: string, scheme?: string, noReduction = false): string {
  return `npx tsx conformance/interleavings/cli.ts --target ${target} --scenario ${scenario}${scheme ? ` --scheme ${scheme}` : ''}${noReduction ? ' --no-reduction' : ''}`;
}

export async function runInterleavings(o: RunInterleavingsOptions): Promise<ScenarioReport[]> {
  const target = INTERLEAVING_TARGETS[o.target];
  const scheme = o.scheme ?? SCHEMES_BY_NAME[target.scheme]!;
  const mapping = o.mapping ?? DEFAULT_MAPPING;
  const mode = o.mode ?? (target.breakpoints ? 'breakpoints' : 'submission-orders');
  if (mode === 'breakpoints' && !target.breakpoints) throw new Error(`${target.name} has no breakpoints; use submission orders`);
  const out: ScenarioReport[] = [];
  for (const sc of o.scenarios ?? DEFAULT_SCENARIOS) {
    const t0 = performance.now();
    const base: Omit<ScenarioReport, 'counts' | 'coverage' | 'interleavings' | 'durationMs'> = {
      id: sc.id, title: sc.title, ...(sc.note ? { note: sc.note } : {}), target: target.name, scheme: scheme.name, mapping: mapping.name,
      mode,
      reduction: o.reduction ?? 'por',
      replay: replayCommand(target.name, sc.id, o.scheme ? scheme.name : undefined, o.reduction === 'none'),
    };
    const skipWhy = sc.kinds && !sc.kinds.includes(scheme.kind)
      ? sc.note ?? `not for ${scheme.kind} graphs`
      : sc.failingCopies?.length && mode !== 'breakpoints'
        ? 'failing copies are injected at a breakpoint (x-breakpoint-resume errno), which this target does not have'
        : sc.discards?.length && !target.name.startsWith('reference')
          ? "the scenario's snapshot discard follows the reference's, which waits for reads of the target range (QEMU's cbw_co_pdiscard_snapshot does not)"
          : undefined;
    if (skipWhy) {
      out.push({ ...base, counts: zeroCounts(), coverage: { actions: {}, neverTaken: [], events: {} }, interleavings: [], durationMs: 0, skipped: skipWhy });
      continue;
    }
    const m = scenarioModel(scheme, sc);
    const reduced = o.reduction === 'none' ? m.executions({ por: false, symmetry: false }) : m.executions();
    // The blocking check also needs the waiting states the reduction skips (see
    // blockingExecutions): a few more interleavings, each through one of them.
    const blockingOn = mode === 'breakpoints' && (o.blockedGraceMs ?? BLOCKED_GRACE_MS) > 0;
    const extra = blockingOn ? m.blockingExecutions(reduced) : [];
    const all = [...reduced, ...extra];
    const counts: ScenarioCounts = { ...zeroCounts(), modelPaths: m.countModelPaths(), fusedPaths: m.countFusedPaths(), enumerated: reduced.length, blockingExtra: extra.length, modelViolations: all.filter((e) => e.violation).length };
    if (o.only && mode === 'breakpoints') counts.modelViolations = all.filter((e) => o.only!.includes(e.index) && e.violation).length;
    try {
      if (mode === 'breakpoints') {
        const chosen = o.only ? all.filter((e) => o.only!.includes(e.index)) : all;
        // A snapshot broken by a failed copy under break-snapshot is broken for the whole node
        // (snapshot_error), not per region: such a scenario gets one server per interleaving.
        const perServer = sc.onCbwError === 'break-snapshot' && sc.failingCopies?.length ? [...chosen.map((e) => [e])] : [chosen];
        const results: InterleavingResult[] = [];
        for (const batch of perServer) {
          results.push(...(await withSetup(target.name, sc, batch.length, { ...(o.wire ? { wire: o.wire } : {}) }, async (setup, conns) => {
            const hits = new HitWatcher(setup.qmp);
            const named = (await setup.qmp.ok('query-named-block-nodes', {})) as { 'node-name': string; drv: string }[];
            const cbw = named.find((n) => n.drv === 'copy-before-write')?.['node-name'];
            if (!cbw) throw new Error(`${target.name}: no copy-before-write node in the graph (${named.map((n) => `${n['node-name']}:${n.drv}`).join(', ')})`);
            const nodes = { cbw, temp: 'temp' };
            try {
              const rs: InterleavingResult[] = [];
              for (let i = 0; i < batch.length; i++) {
                const ex = batch[i]!;
                const r = await driveInterleaving({ model: m, qmp: setup.qmp, conns, mapping, stepTimeoutMs: o.stepTimeoutMs ?? 5000, hits, nodes, blockedGraceMs: o.blockedGraceMs ?? BLOCKED_GRACE_MS }, ex, i, i * sc.clusters * sc.clusterSize);
                rs.push(r);
                o.onProgress?.(`${target.name} ${sc.id} #${ex.index} ${r.agree ? 'agrees' : 'DISAGREES'}${r.implViolation ? ' (post-snapshot data)' : ''}`);
                const dead = setup.exited();
                if (dead) throw new Error(`${target.name} exited (${dead}) during interleaving ${ex.index}:\n${setup.logs()}`);
              }
              return rs;
            } finally {
              hits.stop();
            }
          })));
        }
        counts.executed = results.length;
        counts.agreeing = results.filter((r) => r.agree).length;
        counts.disagreeing = counts.executed - counts.agreeing;
        counts.implViolations = results.filter((r) => r.implViolation).length;
        for (const r of results) {
          counts.blockedTried += r.blocking.tried;
          counts.blockedHeld += r.blocking.held;
          counts.blockedRechecked += r.blocking.rechecked;
          for (const [k, n] of Object.entries(r.blocking.skipped) as [BlockedSkip, number][]) counts.blockedSkipped[k] = (counts.blockedSkipped[k] ?? 0) + n;
        }
        out.push({ ...base, counts, coverage: coverageOf(m, results), interleavings: results, durationMs: Math.round(performance.now() - t0) });
      } else {
        const exploration = await exploreSubmissionOrders(target.name, m, o.sourceReadDelayMs ?? 20, o.onProgress, o.wire);
        counts.executed = exploration.runs.length;
        counts.agreeing = exploration.runs.filter((r) => r.explained).length;
        counts.disagreeing = counts.executed - counts.agreeing;
        counts.implViolations = exploration.runs.filter((r) => r.postSnapshot).length;
        out.push({ ...base, counts, coverage: { actions: {}, neverTaken: [], events: {} }, interleavings: [], exploration, durationMs: Math.round(performance.now() - t0) });
      }
    } catch (e) {
      out.push({ ...base, counts, coverage: { actions: {}, neverTaken: [], events: {} }, interleavings: [], durationMs: Math.round(performance.now() - t0), error: (e as Error).message });
    }
  }
  return out;
}

function zeroCounts(): ScenarioCounts {
  return { modelPaths: 0, fusedPaths: 0, enumerated: 0, blockingExtra: 0, executed: 0, agreeing: 0, disagreeing: 0, modelViolations: 0, implViolations: 0, blockedTried: 0, blockedHeld: 0, blockedRechecked: 0, blockedSkipped: {} };
}

function coverageOf(m: ScenarioModel, results: readonly InterleavingResult[]): Coverage {
  // copyFail is in the model's actions only when the scenario fails copies.
  const actions: Record<string, number> = Object.fromEntries(m.base.actionNames.map((n) => [n, 0]));
  const events: Record<string, number> = {};
  for (const r of results) {
    for (const a of r.actions) actions[a] = (actions[a] ?? 0) + 1;
    for (const e of r.events) events[e] = (events[e] ?? 0) + 1;
  }
  return { actions, neverTaken: Object.entries(actions).filter(([, n]) => n === 0).map(([k]) => k), events };
}

/** One server per scenario with `regions` fresh regions, one NBD connection per actor. */
async function withSetup<T>(
  name: InterleavingTargetName,
  sc: FleecingScenario,
  regions: number,
  extra: { sourceReadDelayMs?: number; wire?: WireLog },
  f: (setup: Setup, conns: Map<string, NbdConnection>) => Promise<T>,
): Promise<T> {
  const regionSize = sc.clusters * sc.clusterSize;
  const n = Math.max(1, regions);
  const content = Buffer.concat(Array.from({ length: n }, (_, g) => snapshotBytes(g, regionSize)));
  const parent = fs.mkdtempSync(path.join(os.tmpdir(), 'fleece-interleavings-'));
  let setup: Setup | undefined;
  const conns = new Map<string, NbdConnection>();
  try {
    setup = await startSetup(INTERLEAVING_TARGETS[name], { size: content.length, content, ...(sc.onCbwError ? { onCbwError: sc.onCbwError } : {}), ...(sc.discards?.length ? { snapshotDiscard: true } : {}), ...(extra.sourceReadDelayMs ? { sourceReadDelayMs: extra.sourceReadDelayMs } : {}) }, parent);
    const log = extra.wire ? { log: extra.wire } : {};
    for (let i = 0; i < sc.writes.length; i++) conns.set(`W${i}`, (await open(setup.nbd, { exportName: 'live', timeoutMs: 60_000, ...log })).conn);
    for (let i = 0; i < sc.reads.length; i++) conns.set(`R${i}`, (await open(setup.nbd, { exportName: 'fleece', timeoutMs: 60_000, ...log })).conn);
    for (let i = 0; i < (sc.discards ?? []).length; i++) conns.set(`D${i}`, (await open(setup.nbd, { exportName: 'fleece', timeoutMs: 60_000, ...log })).conn);
    return await f(setup, conns);
  } finally {
    for (const c of conns.values()) c.close();
    await setup?.stop();
    fs.rmSync(parent, { recursive: true, force: true });
  }
}

// ------------------------------------------------------------------------------------------
// Targets without breakpoints: orders of submission and pipelining

export interface ExplorationRun {
  /** Submission order of the actors, e.g. `R0 W0 W1 R1`. */
  order: string;
  mode: 'sequential' | 'pipelined';
  /** Per read: where each byte came from, as runs (`[0, 65536) snapshot`). */
  observed: string[];
  /** Some model interleaving predicts exactly these replies. */
  explained: boolean;
  /** A snapshot read returned post-snapshot data. */
  postSnapshot: boolean;
  /** Indexes of the model interleavings whose predicted replies these are. */
  reaches: number[];
  errors: string[];
}

export interface ExplorationReport {
  sourceReadDelayMs: number;
  runs: ExplorationRun[];
  /** Distinct predicted outcomes of the model (classes of interleavings with equal replies). */
  outcomeClasses: number;
  outcomeClassesReached: number;
  /** Model interleavings whose predicted replies some run produced. */
  interleavingsReached: number[];
  statement: string;
}

export const originKey = (o: Int8Array): string => {
  const runs: string[] = [];
  let start = 0;
  for (let i = 1; i <= o.length; i++) {
    if (i === o.length || o[i] !== o[start]) {
      runs.push(`[${start}, ${i}) ${o[start] === -1 ? 'snapshot' : o[start] === -2 ? 'other' : `W${o[start]}`}`);
      start = i;
    }
  }
  return runs.join(', ');
};

function permutations<T>(xs: readonly T[]): T[][] {
  if (xs.length <= 1) return [[...xs]];
  return xs.flatMap((x, i) => permutations([...xs.slice(0, i), ...xs.slice(i + 1)]).map((p) => [x, ...p]));
}

/** The model's outcome classes: predicted replies (where each read byte comes from, per read)
 * -> the interleavings predicting them. */
export function outcomeClasses(m: ScenarioModel): Map<string, number[]> {
  const classes = new Map<string, number[]>();
  for (const ex of m.executions()) {
    const k = predict(m, ex).origins.map(originKey).join(' | ');
    classes.set(k, [...(classes.get(k) ?? []), ex.index]);
  }
  return classes;
}

/** Which model interleavings predict the observed replies (`observed`: one origin description
 * per read, as `originKey` prints it); empty: the model cannot explain them. */
export function explain(classes: ReadonlyMap<string, number[]>, observed: readonly string[]): number[] {
  return classes.get(observed.join(' | ')) ?? [];
}

/** Where each byte of a read came from: -1 snapshot, k guest write Wk, -2 anything else.
 * `at` is the read's offset in the region; with `sc`, a byte equal to what a write covering it
 * put there (zeroes of a WRITE_ZEROES included) is that write's. */
export function origins(data: Buffer, snapshot: Buffer, sc?: FleecingScenario, at = 0): Int8Array {
  const o = new Int8Array(data.length);
  const writes = sc?.writes.map((w, k) => ({ w, d: writeData(w, k) })) ?? [];
  for (let j = 0; j < data.length; j++) {
    const b = data[j]!;
    if (b === snapshot[j]) {
      o[j] = -1;
      continue;
    }
    const pos = at + j;
    const k = writes.findIndex(({ w, d }) => pos >= w.offset && pos < w.offset + w.length && d[pos - w.offset] === b);
    o[j] = k >= 0 ? k : sc ? -2 : (b & 0x80) !== 0 ? (b >> 4) & 7 : -2;
  }
  return o;
}

async function exploreSubmissionOrders(name: InterleavingTargetName, m: ScenarioModel, delayMs: number, progress?: (l: string) => void, wire?: WireLog): Promise<ExplorationReport> {
  const sc = m.scenario;
  const all = m.executions();
  const classes = outcomeClasses(m);
  const orders = permutations(m.actors);
  const modes: ('sequential' | 'pipelined')[] = ['sequential', 'pipelined'];
  const plan = orders.flatMap((order) => modes.map((mode) => ({ order, mode })));
  const regionSize = sc.clusters * sc.clusterSize;
  const runs = await withSetup(name, sc, plan.length, { sourceReadDelayMs: delayMs, ...(wire ? { wire } : {}) }, async (_setup, conns) => {
    const rs: ExplorationRun[] = [];
    for (let g = 0; g < plan.length; g++) {
      const { order, mode } = plan[g]!;
      const base = g * regionSize;
      const replies = new Map<string, Promise<Reply>>();
      for (const actor of order) {
        const i = Number(actor.slice(1));
        const conn = conns.get(actor)!;
        const w = sc.writes[i];
        const p = !actor.startsWith('W')
          ? conn.request({ type: Cmd.READ, offset: base + sc.reads[i]!.offset, length: sc.reads[i]!.length })
          : w!.zeroes
            ? conn.request({ type: Cmd.WRITE_ZEROES, offset: base + w!.offset, length: w!.length })
            : conn.request({ type: Cmd.WRITE, offset: base + w!.offset, payload: writeBytes(i, w!.length) });
        replies.set(actor, p);
        if (mode === 'sequential') await p.catch(() => undefined);
      }
      const errors: string[] = [];
      const observed: string[] = [];
      const snap = snapshotBytes(g, regionSize);
      for (let i = 0; i < sc.reads.length; i++) {
        const r = await replies.get(`R${i}`)!.catch((e: Error) => e);
        const rr = sc.reads[i]!;
        if (r instanceof Error || r.error !== 0 || !r.data) {
          errors.push(`R${i}: ${r instanceof Error ? r.message : errnoName(r.error)}`);
          observed.push('error');
          continue;
        }
        observed.push(originKey(origins(r.data, snap.subarray(rr.offset, rr.offset + rr.length), sc, rr.offset)));
      }
      for (let i = 0; i < sc.writes.length; i++) {
        const r = await replies.get(`W${i}`)!.catch((e: Error) => e);
        if (r instanceof Error || r.error !== 0) errors.push(`W${i}: ${r instanceof Error ? r.message : errnoName(r.error)}`);
      }
      const key = observed.join(' | ');
      const reaches = explain(classes, observed);
      rs.push({ order: order.join(' '), mode, observed, explained: errors.length === 0 && reaches.length > 0, postSnapshot: observed.some((x) => /W\d/.test(x)), reaches, errors });
      progress?.(`${name} ${sc.id} ${mode} ${order.join(' ')}: ${key}`);
    }
    return rs;
  });
  const reached = new Set(runs.flatMap((r) => r.reaches));
  const classesReached = new Set(runs.filter((r) => r.reaches.length).map((r) => r.observed.join(' | '))).size;
  const unexplained = runs.filter((r) => !r.explained).length;
  return {
    sourceReadDelayMs: delayMs,
    runs,
    outcomeClasses: classes.size,
    outcomeClassesReached: classesReached,
    interleavingsReached: [...reached].sort((a, b) => a - b),
    statement:
      `${runs.length} runs (${orders.length} submission orders x sequential/pipelined, ${delayMs} ms read delay under the source) ` +
      `reached ${classesReached} of the ${classes.size} distinct outcomes the ${m.scheme.name} model predicts, covering ${reached.size} of its ${all.length} interleavings` +
      (classes.size < all.length ? ` (interleavings with the same predicted replies cannot be told apart without breakpoints)` : '') +
      (unexplained ? `; ${unexplained} runs produced replies no model interleaving predicts` : '; every run produced replies some model interleaving predicts'),
  };
}
