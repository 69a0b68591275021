// `npm run bench` explorer part (docs/verification.md §2): our explorer against SPIN on the same
// fleecing scheme, in the same run. Our side is spec/explorer over spec/models/fleecing (S3, and
// S1 for the verdict check); SPIN's side is the Promela twin of that very model
// (spec/models/promela/twin.ts), so state counts are comparable, not just verdicts.
//
// Each of our runs happens in a child process, so its peak RSS is its own. SPIN runs are pan
// processes (spin -a, gcc -O2 -DSAFETY [-DNOREDUCE]); their peak RSS comes from GNU time.
// Targets (docs/verification.md §2): (1) our distinct-states rate without symmetry >= SPIN's without reduction
// on S3 4x2x2; (2) with symmetry, fewer states than SPIN's reduced search; (3) S3 3 writers x 3
// readers exhaustive in under 60 s and 2 GB. Results: reports/bench/explorer.json and a table.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { explore } from '../spec/explorer/explore.ts';
import { fleecingModel, S1, S3 } from '../spec/models/fleecing/index.ts';
import { explorerTwinPromela } from '../spec/models/promela/twin.ts';
import { runSpin, SpinError, type SpinResult } from '../spec/models/promela/spin.ts';

interface Config {
  readonly scheme: 'S1' | 'S3';
  readonly clusters: number;
  readonly writers: number;
  readonly readers: number;
}

interface Measurement {
  readonly tool: string;
  readonly mode: string;
  readonly verdict: 'pass' | 'violation' | 'incomplete' | 'error';
  readonly exhaustive: boolean;
  readonly states: number;
  readonly transitions: number;
  readonly seconds: number;
  readonly statesPerSecond: number;
  readonly peakMemoryMb: number;
  /** Our short searches: the first run in a fresh process (V8 still compiling), s and states/s. */
  readonly coldSeconds?: number;
  readonly coldStatesPerSecond?: number;
  /** SPIN: pan's elapsed time of each run (10 ms ticks). */
  readonly runSeconds?: readonly number[];
  readonly note?: string;
}

const CONFIGS: readonly Config[] = [
  { scheme: 'S3', clusters: 4, writers: 2, readers: 2 },
  { scheme: 'S3', clusters: 4, writers: 3, readers: 3 },
  { scheme: 'S1', clusters: 4, writers: 2, readers: 2 },
];

/** Our explorer without symmetry gets this long on big configurations before it is cut. */
const OUR_TIME_LIMIT_MS = 60_000;
const SPIN_TIME_LIMIT_MS = 120_000;

const name = (c: Config) => `${c.scheme} ${c.clusters}c x ${c.writers}w x ${c.readers}r`;

// ------------------------------------------------------------------------------------------
// Worker: one explorer run, printed as JSON on stdout.

/** A search shorter than this is repeated for a steady-state rate (see workerRun). */
const WARM_UNDER_S = 1;
const WARMUP_RUNS = 20;
const MEASURED_RUNS = 10;

/**
 * One configuration in this fresh process. The first, cold run includes V8 compiling the search
 * loop as it goes (most of a 50 ms search); SPIN's compile (spin -a + gcc, seconds) is not in its
 * rate either. So a search shorter than WARM_UNDER_S is repeated: WARMUP_RUNS untimed, then the
 * mean of MEASURED_RUNS is the rate that is compared; every run starts from an empty visited set
 * (only compiled code carries over) and must find the same states. The cold run is reported too.
 */
function workerRun(c: Config, symmetry: boolean): Measurement {
  const model = fleecingModel(c.scheme === 'S1' ? S1 : S3, { clusters: c.clusters, writers: c.writers, readers: c.readers });
  const once = () => explore(model, { symmetry, timeLimitMs: OUR_TIME_LIMIT_MS });
  const r = once();
  const peakMemoryMb = Math.max(r.peakRssBytes, vmHwmBytes()) / 2 ** 20;
  const verdict = r.verdict === 'ok' ? (r.exhaustive ? 'pass' : 'incomplete') : 'violation';
  let seconds = r.seconds;
  let note = r.stoppedBy !== undefined && r.stoppedBy !== 'violation' ? `stopped by ${r.stoppedBy}` : undefined;
  let coldSeconds: number | undefined;
  if (r.seconds < WARM_UNDER_S && note === undefined) {
    for (let i = 0; i < WARMUP_RUNS; i++) once();
    let total = 0;
    for (let i = 0; i < MEASURED_RUNS; i++) {
      const w = once();
      if (w.distinct !== r.distinct || w.verdict !== r.verdict) throw new Error(`${name(c)}: run ${i + 2} found ${w.distinct} states (${w.verdict}), the first ${r.distinct} (${r.verdict})`);
      total += w.seconds;
    }
    coldSeconds = r.seconds;
    seconds = total / MEASURED_RUNS;
    note = `warm: mean of ${MEASURED_RUNS} runs after ${WARMUP_RUNS}; cold first run ${r.seconds.toFixed(3)} s = ${fmt(r.distinct / r.seconds)} states/s`;
  }
  return {
    tool: 'fleece',
    mode: symmetry ? 'symmetry' : 'plain',
    verdict,
    exhaustive: r.exhaustive,
    states: r.distinct,
    transitions: r.generated,
    seconds,
    statesPerSecond: seconds > 0 ? r.distinct / seconds : 0,
    peakMemoryMb,
    ...(coldSeconds !== undefined ? { coldSeconds, coldStatesPerSecond: r.distinct / coldSeconds } : {}),
    ...(note !== undefined ? { note } : {}),
  };
}

/** The kernel's peak resident set of this process (VmHWM), 0 where /proc is missing. */
function vmHwmBytes(): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync('/proc/self/status', 'utf8'));
    return m?.[1] === undefined ? 0 : Number(m[1]) * 1024;
  } catch {
    return 0;
  }
}

function ours(c: Config, symmetry: boolean): Measurement {
  const self = fileURLToPath(import.meta.url);
  const r = spawnSync(process.execPath, ['--max-old-space-size=3072', '--import', 'tsx', self, '--worker', JSON.stringify({ c, symmetry })], {
    encoding: 'utf8',
    timeout: OUR_TIME_LIMIT_MS + 60_000,
    maxBuffer: 16 * 2 ** 20,
  });
  const line = (r.stdout ?? '').trim().split('\n').pop() ?? '';
  try {
    return JSON.parse(line) as Measurement;
  } catch {
    const why = r.signal !== null ? `killed by ${r.signal}` : `exit ${r.status}: ${(r.stderr ?? '').trim().split('\n').slice(-3).join(' / ')}`;
    return { tool: 'fleece', mode: symmetry ? 'symmetry' : 'plain', verdict: 'error', exhaustive: false, states: 0, transitions: 0, seconds: 0, statesPerSecond: 0, peakMemoryMb: 0, note: why };
  }
}

/** pan runs shorter than this are repeated SPIN_REPEATS times (see SpinOptions.repeats). */
const SPIN_REPEAT_UNDER_S = 1;
const SPIN_REPEATS = 10;

function spin(c: Config, noReduce: boolean): Measurement {
  const mode = noReduce ? '-DNOREDUCE' : 'POR (default)';
  try {
    const opts = { noReduce, timeoutMs: SPIN_TIME_LIMIT_MS, hashBits: 22, memLimitMb: 4096 };
    let r: SpinResult = runSpin(explorerTwinPromela(c), opts);
    // pan's own search time (what its "rate" uses) is counted in 10 ms ticks: a short search is
    // repeated and the mean taken. Only if pan printed 0 every time do we fall back to the pan
    // process's wall time, which includes start-up and hash-table allocation.
    if (r.seconds < SPIN_REPEAT_UNDER_S) r = runSpin(explorerTwinPromela(c), { ...opts, repeats: SPIN_REPEATS });
    const seconds = r.seconds > 0 ? r.seconds : r.wallSeconds;
    const timing = r.runSeconds.length > 1 ? `mean of ${r.runSeconds.length} pan runs (${r.runSeconds.join(', ')} s)` : 'one pan run';
    return {
      tool: 'spin',
      mode,
      verdict: r.verdict,
      exhaustive: r.exhaustive,
      states: r.statesStored,
      transitions: r.transitions,
      seconds,
      statesPerSecond: seconds > 0 ? r.statesStored / seconds : 0,
      peakMemoryMb: r.peakRssMb,
      runSeconds: r.runSeconds,
      note: `${timing}${r.seconds > 0 ? '' : ', pan printed 0 s: pan wall time used'}; pan wall ${r.wallSeconds.toFixed(2)} s, compile ${r.compileSeconds.toFixed(2)} s${r.violation !== undefined ? `; ${r.violation}` : ''}`,
    };
  } catch (e) {
    if (e instanceof SpinError && /not found/.test(e.message)) throw e;
    return { tool: 'spin', mode, verdict: 'error', exhaustive: false, states: 0, transitions: 0, seconds: 0, statesPerSecond: 0, peakMemoryMb: 0, note: (e as Error).message.split('\n')[0] ?? '' };
  }
}

// ------------------------------------------------------------------------------------------

const fmt = (x: number, d = 0) => (Number.isFinite(x) ? x.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d }) : '-');

function table(rows: Array<{ config: string } & Measurement>): string {
  const head = ['configuration', 'tool', 'mode', 'verdict', 'states', 'transitions', 's', 'states/s', 'peak MB', 'note'];
  const body = rows.map((r) => [
    r.config, r.tool, r.mode, r.verdict + (r.exhaustive || r.verdict === 'violation' ? '' : ' (not exhaustive)'),
    fmt(r.states), fmt(r.transitions), fmt(r.seconds, 3), fmt(r.statesPerSecond), fmt(r.peakMemoryMb), r.note ?? '',
  ]);
  const width = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i >= 4 && i <= 8 ? c.padStart(width[i]!) : c.padEnd(width[i]!))).join('  ');
  return [line(head), line(width.map((w) => '-'.repeat(w))), ...body.map(line)].join('\n');
}

export async function run(argv: string[]): Promise<number> {
  const quick = argv.includes('--quick'); // only the small configuration (for a smoke run)
  const configs = quick ? CONFIGS.filter((c) => c.writers === 2) : CONFIGS;
  const rows: Array<{ config: string } & Measurement> = [];
  const problems: string[] = [];
  for (const c of configs) {
    process.stderr.write(`bench explorer: ${name(c)} ...\n`);
    const ms: Measurement[] = [ours(c, false), ours(c, true), spin(c, true), spin(c, false)];
    for (const m of ms) rows.push({ config: name(c), ...m });
    // Same verdicts required (a search cut short has no verdict to compare).
    const verdicts = new Set(ms.filter((m) => m.verdict === 'pass' || m.verdict === 'violation').map((m) => m.verdict));
    if (verdicts.size > 1) problems.push(`${name(c)}: verdicts differ (${ms.map((m) => `${m.tool} ${m.mode}: ${m.verdict}`).join(', ')})`);
    const expected = c.scheme === 'S1' ? 'violation' : 'pass';
    if (verdicts.size === 1 && !verdicts.has(expected)) problems.push(`${name(c)}: expected ${expected}`);
  }

  const find = (cfg: string, tool: string, mode: string) => rows.find((r) => r.config === cfg && r.tool === tool && r.mode === mode);
  const small = name(CONFIGS[0]!);
  const big = name(CONFIGS[1]!);
  const plain = find(small, 'fleece', 'plain');
  const sym = find(small, 'fleece', 'symmetry');
  const spinNoRed = find(small, 'spin', '-DNOREDUCE');
  const spinPor = find(small, 'spin', 'POR (default)');
  const bigSym = find(big, 'fleece', 'symmetry');
  const ratio = (a?: number, b?: number) => (a !== undefined && b !== undefined && b > 0 ? a / b : Number.NaN);
  const targets = {
    rateVsSpinNoReduce: {
      what: `our distinct-states rate without symmetry (warm) / SPIN's without reduction, ${small} (target >= 1)`,
      ratio: ratio(plain?.statesPerSecond, spinNoRed?.statesPerSecond),
    },
    rateVsSpinNoReduceCold: {
      what: `the same with our cold first run (V8 compiling as it searches; SPIN's gcc time is not counted), ${small} (for information)`,
      ratio: ratio(plain?.coldStatesPerSecond, spinNoRed?.statesPerSecond),
    },
    statesSymmetryVsSpinPor: {
      what: `our states with symmetry / SPIN's states with partial-order reduction, ${small} (target < 1)`,
      ratio: ratio(sym?.states, spinPor?.states),
    },
    rateVsSpinNoReduceBig: {
      what: `the same rate ratio on ${big} (a longer run, so less timer noise)`,
      ratio: ratio(find(big, 'fleece', 'plain')?.statesPerSecond, find(big, 'spin', '-DNOREDUCE')?.statesPerSecond),
    },
    statesPlainVsSpinNoReduce: {
      what: `our states without symmetry / SPIN's without reduction, ${small} (same model: expect ~1)`,
      ratio: ratio(plain?.states, spinNoRed?.states),
    },
    bigExhaustive: quick
      ? undefined
      : {
          what: `${big} with symmetry: exhaustive, under 60 s and 2048 MB`,
          exhaustive: bigSym?.exhaustive ?? false,
          seconds: bigSym?.seconds ?? Number.NaN,
          peakMemoryMb: bigSym?.peakMemoryMb ?? Number.NaN,
          met: (bigSym?.exhaustive ?? false) && (bigSym?.seconds ?? Infinity) < 60 && (bigSym?.peakMemoryMb ?? Infinity) < 2048,
        },
  };

  const out = {
    part: 'explorer',
    date: new Date().toISOString(),
    host: { cpus: os.cpus().length, node: process.version, loadavg: os.loadavg() },
    note:
      'SPIN runs the Promela twin of spec/models/fleecing (spec/models/promela/twin.ts). Times: SPIN, pan\'s own elapsed search time (10 ms ticks), ' +
      `the mean of ${SPIN_REPEATS} runs of the same pan when one run is under ${SPIN_REPEAT_UNDER_S} s; ours, explore()'s wall time, the mean of ${MEASURED_RUNS} runs ` +
      `after ${WARMUP_RUNS} warm-up runs in the same process when one run is under ${WARM_UNDER_S} s (the cold first run is reported as coldSeconds). ` +
      'Compile time is in neither (spin -a + gcc for SPIN, V8 tiering for ours, which the warm-up absorbs).',
    results: rows,
    targets,
    problems,
  };
  const dir = path.join(process.cwd(), 'reports', 'bench');
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'explorer.json'), `${JSON.stringify(out, null, 2)}\n`);

  process.stdout.write(`\nexplorer vs SPIN (same model, same run)\n${table(rows)}\n\n`);
  const r1 = targets.rateVsSpinNoReduce.ratio;
  const r2 = targets.statesSymmetryVsSpinPor.ratio;
  process.stdout.write(`rate, ours plain (warm) / SPIN -DNOREDUCE (${small}): ${fmt(r1, 3)}  ${r1 >= 1 ? 'target met' : `target missed: SPIN is ${fmt(1 / r1, 1)}x faster`}\n`);
  process.stdout.write(`rate, ours plain (cold first run) / SPIN -DNOREDUCE (${small}): ${fmt(targets.rateVsSpinNoReduceCold.ratio, 3)}  (for information)\n`);
  process.stdout.write(`states, ours symmetry / SPIN POR (${small}): ${fmt(r2, 3)}  ${r2 < 1 ? 'target met' : 'target missed'}\n`);
  process.stdout.write(`states, ours plain / SPIN -DNOREDUCE (${small}): ${fmt(targets.statesPlainVsSpinNoReduce.ratio, 3)}\n`);
  if (!quick) process.stdout.write(`rate, ours plain / SPIN -DNOREDUCE (${big}): ${fmt(targets.rateVsSpinNoReduceBig.ratio, 3)}\n`);
  if (targets.bigExhaustive !== undefined) {
    const b = targets.bigExhaustive;
    process.stdout.write(`${big} symmetry: exhaustive=${b.exhaustive} ${fmt(b.seconds, 1)} s ${fmt(b.peakMemoryMb)} MB  ${b.met ? 'target met' : 'target missed'}\n`);
  }
  for (const p of problems) process.stdout.write(`PROBLEM: ${p}\n`);
  process.stdout.write(`written: reports/bench/explorer.json\n`);
  return problems.length > 0 ? 1 : 0;
}

// Worker entry: `node --import tsx bench/explorer.ts --worker '{"c":...,"symmetry":...}'`.
if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url) && process.argv[2] === '--worker') {
  const { c, symmetry } = JSON.parse(process.argv[3] ?? '{}') as { c: Config; symmetry: boolean };
  process.stdout.write(`${JSON.stringify(workerRun(c, symmetry))}\n`);
}
