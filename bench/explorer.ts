// `npm run bench` explorer part (issue 4, outcome 5): our explorer against SPIN on the same
// fleecing scheme, in the same run. Our side is spec/explorer over spec/models/fleecing (S3, and
// S1 for the verdict check); SPIN's side is the Promela twin of that very model
// (spec/models/promela/twin.ts), so state counts are comparable, not just verdicts.
//
// Each of our runs happens in a child process, so its peak RSS is its own. SPIN runs are pan
// processes (spin -a, gcc -O2 -DSAFETY [-DNOREDUCE]); their peak RSS comes from GNU time.
// Targets (issue 4): (1) our distinct-states rate without symmetry >= SPIN's without reduction
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

function workerRun(c: Config, symmetry: boolean): Measurement {
  const model = fleecingModel(c.scheme === 'S1' ? S1 : S3, { clusters: c.clusters, writers: c.writers, readers: c.readers });
  const r = explore(model, { symmetry, timeLimitMs: OUR_TIME_LIMIT_MS });
  const verdict = r.verdict === 'ok' ? (r.exhaustive ? 'pass' : 'incomplete') : 'violation';
  return {
    tool: 'fleece',
    mode: symmetry ? 'symmetry' : 'plain',
    verdict,
    exhaustive: r.exhaustive,
    states: r.distinct,
    transitions: r.generated,
    seconds: r.seconds,
    statesPerSecond: r.statesPerSecond,
    peakMemoryMb: Math.max(r.peakRssBytes, vmHwmBytes()) / 2 ** 20,
    ...(r.stoppedBy !== undefined && r.stoppedBy !== 'violation' ? { note: `stopped by ${r.stoppedBy}` } : {}),
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

function spin(c: Config, noReduce: boolean): Measurement {
  const mode = noReduce ? '-DNOREDUCE' : 'POR (default)';
  try {
    const r: SpinResult = runSpin(explorerTwinPromela(c), { noReduce, timeoutMs: SPIN_TIME_LIMIT_MS, hashBits: 22, memLimitMb: 4096 });
    // pan's own search time (what its "rate" uses; 10 ms resolution). Only if it printed 0 do
    // we fall back to the pan process's wall time, which includes start-up and hash allocation.
    const seconds = r.seconds > 0 ? r.seconds : r.wallSeconds;
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
      note: `pan wall ${r.wallSeconds.toFixed(2)} s, compile ${r.compileSeconds.toFixed(2)} s${r.violation !== undefined ? `; ${r.violation}` : ''}`,
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
    fmt(r.states), fmt(r.transitions), fmt(r.seconds, 2), fmt(r.statesPerSecond), fmt(r.peakMemoryMb), r.note ?? '',
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
      what: `our distinct-states rate without symmetry / SPIN's without reduction, ${small} (target >= 1)`,
      ratio: ratio(plain?.statesPerSecond, spinNoRed?.statesPerSecond),
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
    note: 'SPIN runs the Promela twin of spec/models/fleecing (spec/models/promela/twin.ts); pan search time is used when >= 0.1 s, else pan wall time',
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
  process.stdout.write(`rate, ours plain / SPIN -DNOREDUCE (${small}): ${fmt(r1, 3)}  ${r1 >= 1 ? 'target met' : `target missed: SPIN is ${fmt(1 / r1, 1)}x faster`}\n`);
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
