// `fleece replay TRACE [--target T | --live URI --snapshot URI] [--attempts N] [--json]`
// (docs/verification.md §4 item 5): starts a fresh fleecing setup with the trace's configuration, sends the
// trace's batches the same way (same connections, same send offsets), re-judges every reply
// against the shadow copy, and says in plain words whether the failure reproduced.
// Exit codes: 0 the replay passed, 1 a violation was reproduced, 2 usage or harness error.
import type { Subcommand } from '../../cli/main.ts';
import { externalFlavor, findFlavor, FLAVORS, type FleeceFlavor } from '../fleecing/targets.ts';
import { replay } from '../fleecing/replay.ts';
import { readTrace, TraceError, type ReplayResult } from '../fleecing/trace.ts';

const USAGE = `usage: fleece replay TRACE.json [--target T | --live URI --snapshot URI --allow-writes] [--attempts N] [--json]

Replays a fleecing wire trace written by a failing 'fleece conform --suite fleecing' run and
judges it again. T defaults to the trace's own target; targets: ${FLAVORS.map((f) => f.name).join(', ')}.
A race needs the right timing: the replay keeps the trace's send offsets and tries up to N times
(default 3). A trace's guest writes go to the live export: a --live export of your own is written
only with --allow-writes. Exit 0: passed; 1: the violation reproduced; 2: usage or harness error.`;

export interface ReplayArgs {
  trace: string;
  target?: string;
  live?: string;
  snapshot?: string;
  allowWrites?: boolean;
  attempts: number;
  json: boolean;
}

export function parseReplayArgs(argv: readonly string[]): ReplayArgs | string {
  const a: Partial<ReplayArgs> & { attempts: number; json: boolean } = { attempts: 3, json: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const value = (): string | undefined => argv[++i];
    switch (arg) {
      case '--target':
        a.target = value();
        break;
      case '--live':
        a.live = value();
        break;
      case '--snapshot':
        a.snapshot = value();
        break;
      case '--allow-writes':
        a.allowWrites = true;
        break;
      case '--attempts': {
        const n = Number(value());
        if (!Number.isInteger(n) || n < 1) return '--attempts needs a positive integer';
        a.attempts = n;
        break;
      }
      case '--json':
        a.json = true;
        break;
      default:
        if (arg.startsWith('-')) return `unknown option ${arg}`;
        if (a.trace) return `more than one trace given (${a.trace}, ${arg})`;
        a.trace = arg;
    }
  }
  if (!a.trace) return 'no trace file given';
  if ((a.live === undefined) !== (a.snapshot === undefined)) return '--live and --snapshot go together';
  if (a.live && a.target) return 'give either --target or --live/--snapshot';
  if (a.live && !a.allowWrites) return `--live ${a.live}: the replay writes the trace's guest data into the live export, over what it holds; use a scratch setup and pass --allow-writes`;
  return a as ReplayArgs;
}

function describe(r: ReplayResult): string {
  if (!r.violations.length) return r.records.length ? `attempt ${r.attempt}: every reply agreed with the snapshot (${r.records.length} requests)` : `attempt ${r.attempt}: every check of the case passed`;
  return [`attempt ${r.attempt}: reproduced, ${r.violations.length} violation(s):`, ...r.violations.map((v) => `  - ${v.text}`), ...(r.exited ? [`  the server ended: ${r.exited}`] : [])].join('\n');
}

const command: Subcommand = {
  summary: 'replay a fleecing wire trace against a target and judge it again',
  async run(argv) {
    if (argv.includes('--help') || argv.includes('-h')) {
      process.stdout.write(USAGE + '\n');
      return 0;
    }
    const args = parseReplayArgs(argv);
    if (typeof args === 'string') {
      process.stderr.write(`fleece replay: ${args}\n\n${USAGE}\n`);
      return 2;
    }
    try {
      const trace = readTrace(args.trace);
      let flavor: FleeceFlavor | undefined;
      if (args.live && args.snapshot) flavor = externalFlavor(args.live, args.snapshot);
      else flavor = findFlavor(args.target ?? trace.target);
      if (!flavor) throw new TraceError(`unknown target '${args.target ?? trace.target}' (known: ${FLAVORS.map((f) => f.name).join(', ')}, or --live URI --snapshot URI)`);
      if (!args.json) {
        const what = trace.mode === 'case' ? 'a fixed-step case, run again' : `${trace.batches.length} batch(es) of ${trace.batches.reduce((n, b) => n + b.ops.length, 0)} requests`;
        process.stdout.write(`replaying ${args.trace}: case ${trace.case}, recorded on ${trace.target} with seed ${trace.seed}, ${what}\n`);
        if (trace.violations[0]) process.stdout.write(`recorded failure: ${trace.violations[0].text}\n`);
        process.stdout.write(`target: ${flavor.name}\n`);
      }
      const results = await replay(trace, flavor, {
        attempts: args.attempts,
        onAttempt: (r) => {
          if (!args.json) process.stdout.write(describe(r) + '\n');
        },
      });
      const reproduced = results.some((r) => r.violations.length > 0);
      if (args.json) process.stdout.write(JSON.stringify({ trace: args.trace, target: flavor.name, reproduced, attempts: results.map((r) => ({ attempt: r.attempt, violations: r.violations, exited: r.exited })) }, null, 1) + '\n');
      else process.stdout.write(reproduced ? 'FAIL: the recorded violation reproduced\n' : `PASS: no violation in ${results.length} attempt(s)\n`);
      return reproduced ? 1 : 0;
    } catch (e) {
      process.stderr.write(`fleece replay: ${(e as Error).message}\n`);
      return 2;
    }
  },
};
export default command;
