// `fleece fuzz`: grammar-aware fuzzing of a target's NBD server (and its QMP monitor, when it has
// one), every reply judged by the session model. Exit: 0 no finding, 1 findings, 2 usage or
// harness error (as `fleece conform`).
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Subcommand } from '../../cli/main.ts';
import { HarnessError } from '../targets/errors.ts';
import { listTargets, resolveTarget } from '../targets/registry.ts';
import { NbdUriError, isNbdUri } from '../targets/uri.ts';
import { CommandTargetError, commandFromArgv, commandOwnsStorage, isCommandTarget, parseCommandTarget } from '../targets/command.ts';
import '../targets/builtin.ts';
import { CaseError, parseReplayFile, type FuzzCase } from './case.ts';
import { replayCase, runCampaign } from './campaign.ts';
import { renderResult, writeFuzzReport } from './report.ts';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

const USAGE = `usage: fleece fuzz --target T [--seconds N] [--inputs N] [--seed S] [--corpus DIR]
                   [--protocol nbd|qmp|both] [--pipeline N] [--timeout MS] [--rss-limit MIB]
                   [--keep-going] [--out DIR] [--allow-writes]
       fleece fuzz --target T --replay FILE

  --target T      a built-in target (%TARGETS%)
                  or an NBD URI (nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH)
                  or '[ CMD ARGS ]', a server it starts (see fleece conform --help: socket
                  activation, $unixsocket, $port, $image);
                  the fuzzer WRITES to the export, so a URI, or a command without $image,
                  needs --allow-writes
  --allow-writes  let the fuzzer write to a URI target's export (a scratch export), or to the
                  storage of a '[ CMD ]' target without $image
  --seconds N     stop after N seconds (default 60 unless --inputs is given)
  --inputs N      stop after N inputs (options, requests, QMP texts)
  --seed S        fast-check seed (default: random, printed)
  --corpus DIR    replay files in DIR run first; new findings are saved there too
  --protocol P    nbd, qmp (targets with a monitor) or both (default)
  --pipeline N    longest request pipeline per connection (default 32)
  --timeout MS    silence longer than this while an answer is owed is a hang (default 3000)
  --rss-limit MIB server RSS above this is a finding (default 1024)
  --keep-going    after a finding, go on with the next seed until the budget is spent
  --replay FILE   run one saved case (a findings/*.json file) on a fresh target
  --out DIR       reports directory (default reports/; results go to DIR/fuzz/)

exit: 0 no finding, 1 findings, 2 usage or harness error`;

class UsageError extends Error {}

export interface FuzzArgs {
  target?: string;
  seconds?: number;
  inputs?: number;
  seed?: number;
  corpus?: string;
  protocols: ('nbd' | 'qmp')[];
  pipeline: number;
  timeoutMs: number;
  rssLimitMiB: number;
  keepGoing: boolean;
  replay?: string;
  out: string;
  allowWrites: boolean;
  help: boolean;
}

function intArg(name: string, v: string, lo: number, hi: number): number {
  if (!/^\d+$/.test(v) || Number(v) < lo || Number(v) > hi) throw new UsageError(`${name} must be an integer between ${lo} and ${hi}, got '${v}'`);
  return Number(v);
}

export function parseFuzzArgs(argv: readonly string[]): FuzzArgs {
  const a: FuzzArgs = { protocols: ['nbd', 'qmp'], pipeline: 32, timeoutMs: 3000, rssLimitMiB: 1024, keepGoing: false, allowWrites: false, out: path.join(REPO, 'reports'), help: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const eq = arg.indexOf('=');
    const name = arg.startsWith('--') && eq > 0 ? arg.slice(0, eq) : arg;
    const inline = arg.startsWith('--') && eq > 0 ? arg.slice(eq + 1) : undefined;
    const value = (): string => {
      const v = inline ?? argv[++i];
      if (v === undefined || (inline === undefined && v.startsWith('--'))) throw new UsageError(`${name} needs a value`);
      return v;
    };
    switch (name) {
      case '--target':
      case '-t':
        if (a.target !== undefined) throw new UsageError('--target is given once (one target per campaign)');
        if (inline === undefined && argv[i + 1] === '[') {
          const c = commandFromArgv(argv, i + 1);
          a.target = c.spec;
          i = c.end;
          break;
        }
        a.target = value();
        if (isCommandTarget(a.target)) parseCommandTarget(a.target);
        break;
      case '--seconds':
        a.seconds = intArg('--seconds', value(), 1, 7 * 24 * 3600);
        break;
      case '--inputs':
        a.inputs = intArg('--inputs', value(), 1, 1e12);
        break;
      case '--seed':
        a.seed = intArg('--seed', value(), 0, 0xffffffff);
        break;
      case '--corpus':
        a.corpus = path.resolve(value());
        break;
      case '--protocol': {
        const v = value();
        if (v === 'both') a.protocols = ['nbd', 'qmp'];
        else if (v === 'nbd' || v === 'qmp') a.protocols = [v];
        else throw new UsageError(`--protocol must be nbd, qmp or both, got '${v}'`);
        break;
      }
      case '--pipeline':
        a.pipeline = intArg('--pipeline', value(), 1, 4096);
        break;
      case '--timeout':
        a.timeoutMs = intArg('--timeout', value(), 50, 600_000);
        break;
      case '--rss-limit':
        a.rssLimitMiB = intArg('--rss-limit', value(), 16, 1 << 20);
        break;
      case '--keep-going':
        a.keepGoing = true;
        break;
      case '--allow-writes':
        a.allowWrites = true;
        break;
      case '--replay':
        a.replay = path.resolve(value());
        break;
      case '--out':
        a.out = path.resolve(value());
        break;
      case '--help':
      case '-h':
        a.help = true;
        break;
      default:
        throw new UsageError(`unknown argument '${arg}'`);
    }
  }
  if (!a.help && a.target === undefined) throw new UsageError('--target is required');
  // A server the user runs is written by the fuzzer (WRITE, TRIM, WRITE_ZEROES): only if asked.
  if (a.target !== undefined && isNbdUri(a.target) && !a.allowWrites) throw new UsageError(`--target ${a.target}: the fuzzer writes to the export, over what it holds; point it at a scratch export and pass --allow-writes`);
  if (a.target !== undefined && isCommandTarget(a.target) && !commandOwnsStorage(a.target) && !a.allowWrites) throw new UsageError(`--target ${a.target}: the fuzzer writes to the export, over what it holds; serve the runner's scratch image ($image) or pass --allow-writes`);
  if (a.replay !== undefined && (a.seconds !== undefined || a.inputs !== undefined || a.corpus !== undefined)) throw new UsageError('--replay runs one case: it takes no --seconds, --inputs or --corpus');
  return a;
}

function loadCorpus(dir: string): FuzzCase[] {
  if (!fs.existsSync(dir)) return [];
  if (!fs.statSync(dir).isDirectory()) throw new UsageError(`--corpus ${dir}: not a directory`);
  return fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .sort()
    .map((f) => parseReplayFile(fs.readFileSync(path.join(dir, f), 'utf8'), path.join(dir, f)).case);
}

const usage = (): string => USAGE.replace('%TARGETS%', listTargets().map((t) => t.name).join(', '));

const command: Subcommand = {
  summary: 'fuzz a target (NBD handshake, transmission, QMP), every reply judged by the session model',
  async run(argv) {
    let args: FuzzArgs;
    try {
      args = parseFuzzArgs(argv);
    } catch (e) {
      process.stderr.write(`fleece fuzz: ${(e as Error).message}\n\n${usage()}\n`);
      return 2;
    }
    if (args.help) {
      process.stdout.write(usage() + '\n');
      return 0;
    }
    const rel = (f: string) => (path.relative(process.cwd(), f).startsWith('..') ? f : path.relative(process.cwd(), f));
    try {
      const def = resolveTarget(args.target!);
      if (args.replay !== undefined) {
        if (!fs.existsSync(args.replay)) throw new UsageError(`--replay ${args.replay}: no such file`);
        const file = parseReplayFile(fs.readFileSync(args.replay, 'utf8'), args.replay);
        const r = await replayCase(def, file, args.timeoutMs);
        process.stdout.write(`fleece fuzz: replay of ${rel(args.replay)} on ${def.name} (${r.description})\n`);
        if (file.finding) process.stdout.write(`  recorded: [${file.finding.kind}] ${file.finding.message}\n`);
        if (r.findings.length === 0) process.stdout.write('  now: no finding\n');
        for (const f of r.findings) process.stdout.write(`  now: [${f.kind}] ${f.message}\n`);
        return r.findings.length ? 1 : 0;
      }
      const corpus = args.corpus ? loadCorpus(args.corpus) : [];
      const seed = args.seed ?? Math.floor(Math.random() * 0xffffffff);
      const seconds = args.seconds ?? (args.inputs === undefined ? 60 : undefined);
      process.stderr.write(`fleece fuzz: ${def.name}, seed ${seed}${seconds ? `, ${seconds} s` : ''}${args.inputs ? `, ${args.inputs} inputs` : ''}${corpus.length ? `, ${corpus.length} corpus case(s)` : ''}\n`);
      const result = await runCampaign({
        target: def,
        seed,
        ...(args.inputs !== undefined ? { inputs: args.inputs } : {}),
        ...(seconds !== undefined ? { seconds } : {}),
        timeoutMs: args.timeoutMs,
        protocols: args.protocols,
        maxRequests: args.pipeline,
        corpus,
        rssLimitMiB: args.rssLimitMiB,
        healthEvery: 20,
        continueAfterFinding: args.keepGoing,
        onProgress: (p) => process.stderr.write(`  ${p.cases} cases, ${p.inputs} inputs, ${Math.round(p.inputs / Math.max(0.001, p.elapsedMs / 1000))} inputs/s, ${p.findings} finding(s)\r`),
      });
      process.stderr.write('\n');
      // Each finding once more, alone, on a fresh target: says whether it needs the run's history.
      for (const f of result.findings) {
        if (f.kind === 'health' || f.kind === 'rss') continue;
        const again = await replayCase(def, { fleeceFuzz: 1, target: def.name, case: f.case }, args.timeoutMs);
        f.reproduced = again.findings.some((g) => g.kind === f.kind);
      }
      const files = writeFuzzReport(args.out, result, args.corpus);
      process.stdout.write(renderResult(result, files, rel));
      return result.findings.length ? 1 : 0;
    } catch (e) {
      if (e instanceof UsageError || e instanceof HarnessError || e instanceof NbdUriError || e instanceof CaseError || e instanceof CommandTargetError) {
        process.stderr.write(`fleece fuzz: ${e.message}\n`);
        return 2;
      }
      throw e;
    }
  },
};
export default command;
