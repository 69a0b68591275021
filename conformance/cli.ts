// `fleece conform`: run conformance suites against targets and write reports.
// Exit codes (docs/verification.md §4 item 7): 0 every MUST passed (and every SHOULD with
// --strict); 1 a conformance failure; 2 a harness or usage error.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Subcommand } from '../cli/main.ts';
import { writeReports } from './report/index.ts';
import { countLine, progressLine, renderSummary } from './report/terminal.ts';
import { exitCode } from './runner/model.ts';
import { getSuite, listSuites } from './runner/registry.ts';
import { run, selectCases } from './runner/run.ts';
import { HarnessError } from './targets/errors.ts';
import { listTargets, resolveTarget } from './targets/registry.ts';
import { NbdUriError } from './targets/uri.ts';
import { peerPathsFromEnv, setPeerPath } from './targets/peers.ts';
import './suites.ts';
import { externalFlavor, fleeceTargetDef } from './fleecing/targets.ts';
import { CommandTargetError, commandFromArgv, commandOwnsStorage, isCommandTarget, parseCommandTarget } from './targets/command.ts';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** --out must be a directory we can create and write a file in. */
function checkOutDir(dir: string): void {
  try {
    mkdirs(path.resolve(dir));
    const probe = path.join(dir, `.fleece-write-test-${process.pid}`);
    fs.writeFileSync(probe, '');
    fs.rmSync(probe);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new UsageError(`--out ${dir}: cannot write reports there (${code ?? (e as Error).message})`);
  }
}

/** mkdir -p, one level at a time: Node's recursive mkdirSync spins for ever where a parent exists
 * but refuses children (/proc). */
function mkdirs(dir: string): void {
  if (fs.existsSync(dir)) return;
  const parent = path.dirname(dir);
  if (parent !== dir) mkdirs(parent);
  fs.mkdirSync(dir);
}

/** Colour on a terminal, unless NO_COLOR is set and not empty (no-color.org). */
const colorByDefault = (): boolean => process.stdout.isTTY === true && !process.env.NO_COLOR;

const USAGE = `usage: fleece conform [--target T]... [--suite S]... [--filter PREFIX]... [--case ID]... [--strict]
                      [--fail-fast] [--list] [--seed N] [--json] [--out DIR] [--timeout MS] [--no-color]

  --target T      a built-in target (${'%TARGETS%'})
                  or an NBD URI: nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH
                  or '[ CMD ARGS ]': a server the runner starts, stops after the run, and
                  reaches by systemd socket activation (fd 3, LISTEN_FDS=1), or where the
                  arguments say: $unixsocket (a socket path it picks), $port (a TCP port on
                  127.0.0.1). $image is a scratch raw image it writes with known content;
                  without $image the storage is yours and is not written unless
                  --allow-writes. The export: the one NBD_OPT_LIST lists, else "".
                  It stays in the foreground and serves many clients at once (qemu-nbd:
                  --persistent --shared=N); the nbd suite runs on it, the others build
                  their own graphs and do not apply.
                  Also as separate words: --target [ CMD ARGS ] (quote '$image' in sh)
                  (repeatable; default: reference)
  --live URI --snapshot URI  a fleecing setup you run yourself (fleecing suite); it writes
                  guest data into the live export, so it needs --allow-writes
  --allow-writes  let the suites write to exports you run yourself: the --live export, an
                  NBD URI target's export, and a '[ CMD ]' target's without $image (without
                  it, cases that would write there are skipped, saying so)
  --suite S       suite to run (repeatable; default: every suite: %SUITES%)
  --filter PREFIX run only cases whose id starts with PREFIX (repeatable)
  --case ID       run exactly the case ID (repeatable; beside --filter)
  --strict        SHOULD violations (non-strict) fail the run too
  --fail-fast     stop at the first failure (a failed MUST, a harness error; with --strict
                  also a failed SHOULD): the cases after it are skipped, saying so
  --list          list the selected cases and exit
  --seed N        seed for randomised cases (printed with every run)
  --json          print results.json to stdout (progress goes to stderr)
  --out DIR       where results.json, junit.xml and html/ go (default: reports/)
  --timeout MS    silence longer than this means hang or desync (default 1500)
  --no-color      plain terminal output
  --qemu-storage-daemon PATH, --qemu-nbd PATH, --qemu-img PATH, --qemu-io PATH
                  the QEMU build to test (default: the command on PATH; also from
                  FLEECE_QEMU_STORAGE_DAEMON, FLEECE_QEMU_NBD, FLEECE_QEMU_IMG, FLEECE_QEMU_IO;
                  the option wins); every suite that starts one uses it, and the reports
                  name its version, path and command lines

exit: 0 every MUST passed (and every SHOULD with --strict), 1 conformance failure, 2 harness or usage error`;

class UsageError extends Error {}

interface Args {
  live?: string;
  snapshot?: string;
  allowWrites: boolean;
  targets: string[];
  suites: string[];
  filter: string[];
  cases: string[];
  strict: boolean;
  failFast: boolean;
  list: boolean;
  seed?: number;
  json: boolean;
  out: string;
  timeoutMs: number;
  color: boolean;
  help: boolean;
  /** --qemu-nbd PATH and the like: peer name -> path. */
  peerPaths: Record<string, string>;
}

export function parseArgs(argv: readonly string[]): Args {
  const a: Args = { targets: [], suites: [], filter: [], cases: [], strict: false, failFast: false, allowWrites: false, list: false, json: false, out: path.join(REPO, 'reports'), timeoutMs: 1500, color: colorByDefault(), help: false, peerPaths: {} };
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
      case '-t': {
        if (inline === undefined && argv[i + 1] === '[') {
          const c = commandFromArgv(argv, i + 1);
          a.targets.push(c.spec);
          i = c.end;
          break;
        }
        const v = value();
        if (isCommandTarget(v)) parseCommandTarget(v);
        a.targets.push(v);
        break;
      }
      case '--suite':
        a.suites.push(value());
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
      case '--filter':
        a.filter.push(value());
        break;
      case '--case':
        a.cases.push(value());
        break;
      case '--strict':
        a.strict = true;
        break;
      case '--fail-fast':
        a.failFast = true;
        break;
      case '--list':
        a.list = true;
        break;
      case '--json':
        a.json = true;
        break;
      case '--no-color':
        a.color = false;
        break;
      case '--out':
        a.out = path.resolve(value());
        break;
      case '--seed': {
        const v = value();
        if (!/^\d+$/.test(v) || Number(v) > 0xffffffff) throw new UsageError(`--seed must be an integer between 0 and 4294967295, got '${v}'`);
        a.seed = Number(v);
        break;
      }
      case '--timeout': {
        const v = value();
        if (!/^\d+$/.test(v) || Number(v) < 50) throw new UsageError(`--timeout must be a number of milliseconds (>= 50), got '${v}'`);
        a.timeoutMs = Number(v);
        break;
      }
      case '--help':
      case '-h':
        a.help = true;
        break;
      case '--qemu-storage-daemon':
      case '--qemu-nbd':
      case '--qemu-img':
      case '--qemu-io':
        a.peerPaths[name.slice(2)] = value();
        break;
      default:
        throw new UsageError(`unknown argument '${arg}'`);
    }
  }
  return a;
}

function usage(): string {
  return USAGE.replace('%TARGETS%', listTargets().map((t) => t.name).join(', ')).replace('%SUITES%', listSuites().map((s) => s.name).join(', '));
}

const command: Subcommand = {
  summary: 'run the conformance suites (nbd, ...) against a target and write reports',
  async run(argv) {
    let args: Args;
    try {
      args = parseArgs(argv);
    } catch (e) {
      process.stderr.write(`fleece conform: ${(e as Error).message}\n\n${usage()}\n`);
      return 2;
    }
    if (args.help) {
      process.stdout.write(usage() + '\n');
      return 0;
    }
    try {
      // The QEMU build under test: options first, then the environment for the rest.
      for (const [peer, file] of Object.entries(args.peerPaths)) setPeerPath(peer, file, `--${peer}`);
      peerPathsFromEnv(process.env);
      const suites = args.suites.length
        ? args.suites.map((n) => {
            const s = getSuite(n);
            if (!s) throw new UsageError(`unknown suite '${n}' (known: ${listSuites().map((x) => x.name).join(', ')})`);
            return s;
          })
        : listSuites();
      const known = new Set(suites.flatMap((s) => s.cases.map((c) => c.id)));
      const unknownCase = args.cases.find((id) => !known.has(id));
      if (unknownCase) throw new UsageError(`unknown case '${unknownCase}' in the selected suites (fleece conform --list shows them)`);
      const selected = suites.flatMap((s) => selectCases(s, args.filter, args.cases));
      if (selected.length === 0) throw new UsageError(`no case matches --filter ${args.filter.join(' ')}`);
      if (args.list) {
        for (const c of selected) process.stdout.write(`${c.id.padEnd(52)} ${c.level.padEnd(6)} ${c.title}\n    ${c.section}\n`);
        process.stdout.write(`${selected.length} case(s)\n`);
        return 0;
      }
      if ((args.live === undefined) !== (args.snapshot === undefined)) throw new UsageError('--live and --snapshot go together');
      // Where the reports go is checked before the run, not found unwritable after it.
      checkOutDir(args.out);
      // Traces of failing fleecing cases go with the other reports (unless told otherwise).
      process.env.FLEECE_TRACE_DIR ??= path.join(path.resolve(args.out), 'traces');
      // A user's own export is never written unless they say so: the fleecing cases write guest
      // data over what the live export holds.
      if (args.live && !args.allowWrites) {
        throw new UsageError(`--live ${args.live}: the fleecing suite writes guest data into the live export, over what it holds; run it on a scratch setup and pass --allow-writes`);
      }
      const external = args.live && args.snapshot ? [fleeceTargetDef(externalFlavor(args.live, args.snapshot))] : [];
      if (args.live) (args.json ? process.stderr : process.stdout).write(`fleece conform: the fleecing suite will write to the live export ${args.live} (--allow-writes)\n`);
      for (const t of args.targets) if (args.allowWrites && isCommandTarget(t) && !commandOwnsStorage(t)) (args.json ? process.stderr : process.stdout).write(`fleece conform: the suites will write to the export of ${t}, over your storage (--allow-writes)\n`);
      const targets = [...(args.targets.length || !external.length ? (args.targets.length ? args.targets : ['reference']).map((t) => resolveTarget(t, { allowWrites: args.allowWrites })) : []), ...external];
      const log = args.json ? process.stderr : process.stdout;
      const result = await run({
        targets,
        suites,
        filter: args.filter,
        cases: args.cases,
        strict: args.strict,
        failFast: args.failFast,
        timeoutMs: args.timeoutMs,
        ...(args.seed !== undefined ? { seed: args.seed } : {}),
        onProgress: (e) => {
          const l = progressLine(e, args.color && !args.json);
          if (l) log.write(l + '\n');
        },
      });
      const files = writeReports(args.out, result);
      if (args.json) {
        process.stdout.write(JSON.stringify(result, null, 2) + '\n');
        process.stderr.write(countLine(result) + '\n');
      } else {
        const rel = (f: string) => (path.relative(process.cwd(), f).startsWith('..') ? f : path.relative(process.cwd(), f));
        process.stdout.write(renderSummary(result, args.color, [`reports: ${rel(files.json)}, ${rel(files.junit)}, ${rel(files.html)}`]));
      }
      return exitCode(result.results, args.strict, result.targets.filter((t) => t.error).length);
    } catch (e) {
      if (e instanceof UsageError || e instanceof HarnessError || e instanceof NbdUriError || e instanceof CommandTargetError) {
        process.stderr.write(`fleece conform: ${e.message}\n`);
        return 2;
      }
      throw e;
    }
  },
};
export default command;
