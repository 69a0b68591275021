// Runs SPIN as an external checker: `spin -a model.pml` writes pan.c, gcc compiles it with
// -DSAFETY (and -DNOREDUCE to switch partial-order reduction off, -DBFS for shortest trails),
// ./pan searches, and we parse its summary (docs/verification.md §2). SPIN is a peer: when it or gcc
// is missing we fail and say how to install it, never skip.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { SpecError } from '../../explorer/errors.ts';

/** The spec layer's error (SpecError) for a SPIN run that could not be carried out. */
export class SpinError extends SpecError {
  constructor(
    message: string,
    readonly context: Readonly<{ step?: string; command?: string; output?: string }> = {},
  ) {
    super(message);
    this.name = 'SpinError';
  }
}

export interface SpinOptions {
  /** -DNOREDUCE: no partial-order reduction (SPIN's default is on). */
  readonly noReduce?: boolean;
  /** -DBFS: breadth-first, so a counterexample is shortest. */
  readonly bfs?: boolean;
  /** -DCOLLAPSE state compression. */
  readonly collapse?: boolean;
  /** -DMEMLIM in MB (pan's own bound). Default 2048. */
  readonly memLimitMb?: number;
  /** pan -w: log2 of the hash table size. Default 20 (small, quick to allocate). */
  readonly hashBits?: number;
  /** Wall-clock bound for pan, ms. Default 120 000. */
  readonly timeoutMs?: number;
  /** Directory to work in; default a fresh temp dir, removed afterwards. */
  readonly workDir?: string;
  /** gcc optimisation level for pan.c: 2 (default, for measurements) or 0 (compiles twice as
   * fast: for small models in tests). */
  readonly optimize?: 0 | 2;
  /** Environment for the child processes (tests use it to hide a peer). */
  readonly env?: NodeJS.ProcessEnv;
  /** Run the compiled pan this many times (default 1) and report the mean of its elapsed times:
   * pan times its search with times(), in 10 ms ticks, so a search of a few ticks is only known
   * to within one tick; the tick boundary falls at a random point of each run, so the mean of
   * several runs converges on the true duration. */
  readonly repeats?: number;
}

export type SpinVerdict = 'pass' | 'violation' | 'incomplete';

export interface SpinResult {
  readonly verdict: SpinVerdict;
  /** pan's error count (it stops at the first by default). */
  readonly errors: number;
  /** The first error line, e.g. "assertion violated (v==0)" or "invalid end state". */
  readonly violation?: string;
  readonly statesStored: number;
  readonly statesMatched: number;
  /** stored + matched, as pan prints it. */
  readonly transitions: number;
  readonly depth: number;
  readonly stateVectorBytes: number;
  /** pan's elapsed search time, s (pan prints 0 for very short runs); with `repeats`, the mean. */
  readonly seconds: number;
  /** pan's elapsed time of each run (one entry unless `repeats` > 1). */
  readonly runSeconds: readonly number[];
  /** Wall time of the pan process, s (with `repeats`, the mean). */
  readonly wallSeconds: number;
  /** spin -a + gcc, s. */
  readonly compileSeconds: number;
  /** pan's "total actual memory usage", MB. */
  readonly memoryMb: number;
  /** Peak resident set of pan (from /proc when it can be read, else memoryMb). */
  readonly peakRssMb: number;
  readonly exhaustive: boolean;
  readonly flags: readonly string[];
  readonly output: string;
}

function need(cmd: string, env: NodeJS.ProcessEnv | undefined): void {
  const r = spawnSync('/bin/sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8', env: env ?? process.env });
  if (r.status !== 0) {
    throw new SpinError(`command '${cmd}' not found: run \`npm run peers\` to install SPIN and gcc`, { command: cmd });
  }
}

function run(cmd: string, args: string[], cwd: string, timeoutMs: number, step: string, env?: NodeJS.ProcessEnv) {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(cmd, args, { cwd, env: env ?? process.env, encoding: 'utf8', timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 });
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.error !== undefined) throw new SpinError(`${step}: ${r.error.message}`, { step, command: cmd });
  return { ...r, seconds, out: `${r.stdout ?? ''}${r.stderr ?? ''}` };
}

const num = (out: string, re: RegExp): number => {
  const m = re.exec(out);
  return m?.[1] === undefined ? 0 : Number(m[1]);
};

/** Parse pan's summary. Exported for tests on canned output. */
export function parsePan(out: string): Omit<SpinResult, 'wallSeconds' | 'runSeconds' | 'compileSeconds' | 'peakRssMb' | 'flags' | 'output'> {
  const errors = num(out, /errors:\s*(\d+)/);
  const violationLine = /pan:\d+:\s*(.+?)(?:\s*\(at depth \d+\))?\s*$/m.exec(out)?.[1];
  const incomplete = /Search not completed|max search depth too small|out of memory|pan: reached -DMEMLIM/i.test(out);
  const verdict: SpinVerdict = errors > 0 ? 'violation' : incomplete ? 'incomplete' : 'pass';
  const base = {
    verdict,
    errors,
    statesStored: num(out, /([\d.e+]+)\s+states, stored/),
    statesMatched: num(out, /([\d.e+]+)\s+states, matched/),
    transitions: num(out, /([\d.e+]+)\s+transitions \(= stored\+matched\)/),
    depth: num(out, /depth reached (\d+)/),
    stateVectorBytes: num(out, /State-vector (\d+) byte/),
    seconds: num(out, /pan: elapsed time ([\d.e+-]+) seconds/),
    memoryMb: num(out, /([\d.]+)\s+total actual memory usage/),
    exhaustive: errors === 0 && !incomplete,
  };
  return violationLine === undefined ? base : { ...base, violation: violationLine };
}

/** Verify a Promela model with SPIN; throws SpinError when a step fails to run. */
export function runSpin(model: string, opts: SpinOptions = {}): SpinResult {
  need('spin', opts.env);
  need('gcc', opts.env);
  const dir = opts.workDir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'fleece-spin-'));
  const cleanup = opts.workDir === undefined;
  try {
    fs.writeFileSync(path.join(dir, 'model.pml'), model);
    const t0 = process.hrtime.bigint();
    const a = run('spin', ['-a', 'model.pml'], dir, 60_000, 'spin -a', opts.env);
    if (a.status !== 0 || !fs.existsSync(path.join(dir, 'pan.c'))) {
      throw new SpinError(`spin -a failed:\n${a.out}`, { step: 'spin -a', output: a.out });
    }
    const flags = ['-DSAFETY', `-DMEMLIM=${opts.memLimitMb ?? 2048}`];
    if (opts.noReduce === true) flags.push('-DNOREDUCE');
    if (opts.bfs === true) flags.push('-DBFS');
    if (opts.collapse === true) flags.push('-DCOLLAPSE');
    const cc = run('gcc', [`-O${opts.optimize ?? 2}`, '-w', ...flags, '-o', 'pan', 'pan.c'], dir, 120_000, 'gcc', opts.env);
    if (cc.status !== 0) throw new SpinError(`gcc pan.c failed:\n${cc.out}`, { step: 'gcc', output: cc.out });
    const compileSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
    // GNU time gives pan's peak RSS; GNU timeout kills pan's whole process group on expiry,
    // so a long search never outlives us.
    const hasTime = fs.existsSync('/usr/bin/time');
    const panArgs = [`-w${opts.hashBits ?? 20}`, '-m100000'];
    const limitMs = opts.timeoutMs ?? 120_000;
    const repeats = Math.max(1, Math.floor(opts.repeats ?? 1));
    const runs: Array<{ parsed: ReturnType<typeof parsePan>; wall: number; rssKb: number; out: string }> = [];
    for (let i = 0; i < repeats; i++) {
      const p = run(
        'timeout',
        ['-s', 'KILL', `${Math.ceil(limitMs / 1000)}`, ...(hasTime ? ['/usr/bin/time', '-f', 'FLEECE_MAXRSS_KB=%M'] : []), './pan', ...panArgs],
        dir,
        limitMs + 10_000,
        'pan',
        opts.env,
      );
      if (p.status === 137 || p.status === 124) {
        throw new SpinError(`pan did not finish within ${limitMs} ms`, { step: 'pan', output: p.out });
      }
      if (p.signal !== null) throw new SpinError(`pan was stopped by ${p.signal} (timeout ${opts.timeoutMs ?? 120_000} ms?)`, { step: 'pan', output: p.out });
      const parsed = parsePan(p.out);
      if (parsed.statesStored === 0) throw new SpinError(`pan printed no summary:\n${p.out}`, { step: 'pan', output: p.out });
      if (runs.length > 0 && parsed.statesStored !== runs[0]!.parsed.statesStored) {
        throw new SpinError(`pan stored ${parsed.statesStored} states in run ${i + 1} but ${runs[0]!.parsed.statesStored} in run 1`, { step: 'pan', output: p.out });
      }
      runs.push({ parsed, wall: p.seconds, rssKb: num(p.out, /FLEECE_MAXRSS_KB=(\d+)/), out: p.out });
    }
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    const first = runs[0]!;
    const runSeconds = runs.map((r) => r.parsed.seconds);
    const rssKb = Math.max(...runs.map((r) => r.rssKb));
    return {
      ...first.parsed,
      seconds: mean(runSeconds),
      runSeconds,
      wallSeconds: mean(runs.map((r) => r.wall)),
      compileSeconds,
      peakRssMb: rssKb > 0 ? rssKb / 1024 : first.parsed.memoryMb,
      flags,
      output: first.out,
    };
  } finally {
    if (cleanup) fs.rmSync(dir, { recursive: true, force: true });
  }
}
