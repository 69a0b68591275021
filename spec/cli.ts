// `fleece explore`: run a spec model through the explorer, list models, draw small state graphs,
// and replay trace files. Exit codes (cli/main.ts): 0 every invariant holds, 1 a violation or a
// deadlock (also: a replayed counterexample reproduces), 2 usage error or bad input file.

import { readFileSync, writeFileSync } from 'node:fs';
import type { Subcommand } from '../cli/main.ts';
import {
  allExecutions,
  explore,
  formatLabel,
  formatReport,
  parseTraceFile,
  replay,
  SpecError,
  toDot,
  toJson,
  toTraceFile,
  type Behaviour,
  type ExploreOptions,
} from './explorer/index.ts';
import { buildModel, findModel, flagName, listModels, parseParamValue, type ModelEntry, type ParamValue } from './models/index.ts';
import type { CbwRule } from './models/permissions/drivers.ts';
import { DEFAULT_SOUNDNESS, findRuleSet, RULE_SETS, soundness, soundnessJson, soundnessText, type RuleSet, type SoundnessReport } from './soundness/index.ts';

const USAGE = `usage: fleece explore --model NAME [model parameters] [options]
       fleece explore --list [--json]
       fleece explore --replay FILE [--json]
       fleece explore --soundness [--rules all|NAME,...] [--max-exports N] [--max-alias-exports N]
                              [--cbw-rule 7.2|9.1] [--json]
       fleece explore --model NAME --help      (the model's parameters)

Explores every reachable state of a bounded spec model breadth-first and checks its invariants;
a violation is printed as the shortest trace.

options:
  --model NAME        the model to run (see --list)
  --list              list the models, their verdict with default parameters, and parameters
  --symmetry          symmetry reduction for interchangeable actors (writers, readers)
  --max-states N      stop after N distinct states (the search is then not exhaustive)
  --max-depth N       do not expand states deeper than N steps
  --time-limit SEC    stop after SEC seconds
  --json              print the result as JSON (format "fleece-explore", trace included)
  --dot               print the state graph as GraphViz (small configurations only)
  --executions        print every complete execution (maximal path) of a small configuration,
                      one per line, with the invariant its final state violates if any
  --max-executions N  refuse to print more than N executions (default 10000)
  --trace-out FILE    write the counterexample as a trace file for --replay
  --replay FILE       re-check a trace file step by step
  --quiet             no progress line on long runs
  --help              this text

permission soundness: every block graph up to a bound (drivers of docs/requirements/qemu-fleecing.md §1,
copy-before-write edges, exports read-only or writable) is accepted or refused by the permission
model; each accepted graph with a snapshot reader is run through the data-plane model. Graphs the
permissions accept but whose snapshot can return post-snapshot data are listed by cause.
Aliasing graphs (a second node over the source's or the temp's image file) are part of it.
  --soundness         run it (exit 1 when some accepted graph is unsafe)
  --rules R           rule sets, comma-separated or 'all' (default): ${RULE_SETS.map((r) => r.name).join(', ')}
  --max-exports N     at most N exports per graph, 0..5 (default 3)
  --max-alias-exports N  at most N exports per aliasing graph, 0..5 (default min(3, --max-exports));
                      0 leaves aliasing graphs out
  --cbw-rule R        replace the copy-before-write child-permission rule of the rule sets: 7.2 or 9.1

exit status: 0 all invariants hold, 1 violation or deadlock, 2 usage error`;

class UsageError extends Error {}

interface Parsed {
  model?: string;
  list: boolean;
  help: boolean;
  symmetry: boolean;
  json: boolean;
  dot: boolean;
  executions: boolean;
  maxExecutions?: number;
  quiet: boolean;
  maxStates?: number;
  maxDepth?: number;
  timeLimit?: number;
  traceOut?: string;
  replay?: string;
  soundness: boolean;
  maxExports?: number;
  maxAliasExports?: number;
  rules?: RuleSet[];
  cbwRule?: CbwRule;
  params: Record<string, ParamValue>;
}

const BOOL_FLAGS = new Set(['--list', '--help', '-h', '--symmetry', '--json', '--dot', '--executions', '--quiet', '--soundness']);

function parseArgs(argv: readonly string[]): Parsed {
  const out: Parsed = { list: false, help: false, symmetry: false, json: false, dot: false, executions: false, quiet: false, soundness: false, params: {} };
  // First pass: which model, so its parameters are known as flags.
  const pairs: [string, string | undefined][] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith('-')) throw new UsageError(`unexpected argument '${arg}'`);
    const eq = arg.indexOf('=');
    const flag = eq > 0 ? arg.slice(0, eq) : arg;
    let value = eq > 0 ? arg.slice(eq + 1) : undefined;
    if (value === undefined && !BOOL_FLAGS.has(flag) && i + 1 < argv.length && !argv[i + 1]!.startsWith('--')) {
      // A value flag, or a model parameter with its value (boolean parameters may omit it).
      value = argv[++i];
    }
    pairs.push([flag, value]);
  }
  for (const [flag, value] of pairs) if (flag === '--model') out.model = need(flag, value);
  const entry = out.model === undefined ? undefined : findModel(out.model);
  if (out.model !== undefined && !entry) {
    throw new UsageError(`unknown model '${out.model}'; known models: ${listModels().map((m) => m.name).join(', ')}`);
  }
  for (const [flag, value] of pairs) {
    if (BOOL_FLAGS.has(flag) && value !== undefined) throw new UsageError(`${flag} takes no value`);
    switch (flag) {
      case '--model':
        break;
      case '--list':
        out.list = true;
        break;
      case '--help':
      case '-h':
        out.help = true;
        break;
      case '--symmetry':
        out.symmetry = true;
        break;
      case '--json':
        out.json = true;
        break;
      case '--dot':
        out.dot = true;
        break;
      case '--executions':
        out.executions = true;
        break;
      case '--max-executions':
        out.maxExecutions = positiveInt(flag, value);
        break;
      case '--quiet':
        out.quiet = true;
        break;
      case '--max-states':
        out.maxStates = positiveInt(flag, value);
        break;
      case '--max-depth':
        out.maxDepth = positiveInt(flag, value);
        break;
      case '--time-limit':
        out.timeLimit = positiveInt(flag, value);
        break;
      case '--trace-out':
        out.traceOut = need(flag, value);
        break;
      case '--replay':
        out.replay = need(flag, value);
        break;
      case '--soundness':
        out.soundness = true;
        break;
      case '--max-exports': {
        const n = Number(need(flag, value));
        if (!Number.isInteger(n) || n < 0 || n > 5) throw new UsageError(`--max-exports takes an integer 0..5, not '${value}'`);
        out.maxExports = n;
        break;
      }
      case '--max-alias-exports': {
        const v = need(flag, value);
        const n = Number(v);
        if (!Number.isInteger(n) || n < 0 || n > 5) throw new UsageError(`--max-alias-exports takes an integer 0..5, not '${v}'`);
        out.maxAliasExports = n;
        break;
      }
      case '--rules': {
        const v = need(flag, value);
        out.rules =
          v === 'all'
            ? [...RULE_SETS]
            : v.split(',').map((name: string) => {
                const r = findRuleSet(name);
                if (r === undefined) throw new UsageError(`--rules takes 'all' or names from ${RULE_SETS.map((x) => x.name).join(', ')}, not '${name}'`);
                return r;
              });
        break;
      }
      case '--cbw-rule': {
        const r = need(flag, value);
        if (r !== '7.2' && r !== '9.1') throw new UsageError(`--cbw-rule takes 7.2 or 9.1, not '${r}'`);
        out.cbwRule = r;
        break;
      }
      default:
        modelParam(entry, flag, value, out.params);
    }
  }
  if (!out.soundness) {
    const stray = ([['--max-exports', out.maxExports], ['--max-alias-exports', out.maxAliasExports], ['--rules', out.rules], ['--cbw-rule', out.cbwRule]] as const).find(([, v]) => v !== undefined);
    if (stray !== undefined) throw new UsageError(`${stray[0]} belongs to --soundness`);
  }
  if (out.soundness && (out.model !== undefined || out.replay !== undefined || out.list)) {
    throw new UsageError('--soundness runs on its own: not with --model, --list or --replay');
  }
  return out;
}

/** `--soundness`: the permission-soundness enumeration (spec/soundness), once per rule set. */
function runSoundness(args: Parsed): number {
  const bound = { maxExports: args.maxExports ?? 3, ...(args.maxAliasExports !== undefined ? { maxAliasExports: args.maxAliasExports } : {}) };
  const sets = (args.rules ?? [...RULE_SETS]).map((r) =>
    args.cbwRule === undefined ? r : { ...r, name: `${r.name}+cbw-${args.cbwRule}`, options: { ...r.options, cbwRule: args.cbwRule } },
  );
  const runs: Array<{ set: RuleSet; report: SoundnessReport }> = sets.map((set) => ({
    set,
    report: soundness(bound, { ...DEFAULT_SOUNDNESS, permissions: set.options }),
  }));
  const unsafe = runs.reduce((n, r) => n + r.report.counts['accepted-unsafe'], 0);
  if (args.json) {
    const doc = {
      format: 'fleece-soundness',
      version: 2,
      ruleSets: runs.map(({ set, report }) => ({ name: set.name, summary: set.summary, options: set.options, ...(soundnessJson(report) as object) })),
    };
    process.stdout.write(`${JSON.stringify(doc, null, 2)}\n`);
    return unsafe > 0 ? 1 : 0;
  }
  for (const { set, report } of runs) {
    process.stdout.write(`== rules ${set.name}: ${set.summary}\n${soundnessText(report)}\n\n`);
  }
  const pad = (x: string | number, n: number) => String(x).padStart(n);
  const w = Math.max(9, ...runs.map((r) => r.set.name.length));
  process.stdout.write(`${'rule set'.padEnd(w)}  ${pad('graphs', 7)} ${pad('refused', 8)} ${pad('no reader', 9)} ${pad('safe', 6)} ${pad('UNSAFE', 7)}   aliasing graphs: ${pad('safe', 5)} ${pad('UNSAFE', 6)}   s\n`);
  for (const { set, report: r } of runs) {
    const al = r.verdicts.filter((v) => v.id.includes(' alias='));
    const n = (k: string) => al.filter((v) => v.verdict === k).length;
    process.stdout.write(
      `${set.name.padEnd(w)}  ${pad(r.graphs, 7)} ${pad(r.counts.refused, 8)} ${pad(r.counts['no-snapshot-reader'], 9)} ${pad(r.counts['accepted-safe'], 6)} ${pad(r.counts['accepted-unsafe'], 7)}   ${' '.repeat(16)} ${pad(n('accepted-safe'), 5)} ${pad(n('accepted-unsafe'), 6)}   ${r.seconds.toFixed(1)}\n`,
    );
  }
  process.stdout.write('\n');
  for (const { set, report: r } of runs) {
    const k = r.counts['accepted-unsafe'];
    process.stdout.write(
      k > 0
        ? `verdict (${set.name}): the permission model accepts ${k} graph(s) whose snapshot can return post-snapshot data\n`
        : `verdict (${set.name}): every graph the permission model accepts is safe (within the bound)\n`,
    );
  }
  return unsafe > 0 ? 1 : 0;
}

function modelParam(entry: ModelEntry | undefined, flag: string, value: string | undefined, into: Record<string, ParamValue>): void {
  const negated = flag.startsWith('--no-');
  const name = negated ? flag.slice(5) : flag.slice(2);
  const spec = entry?.params.find((p) => flagName(p.name) === name);
  if (!entry || !spec || (negated && spec.type !== 'bool')) {
    const hint = entry
      ? `; parameters of ${entry.name}: ${entry.params.map((p) => `--${flagName(p.name)}`).join(' ') || '(none)'}`
      : ' (model parameters need --model first)';
    throw new UsageError(`unknown option '${flag}'${hint}`);
  }
  if (spec.type === 'bool' && (value === undefined || negated)) {
    if (value !== undefined) throw new UsageError(`${flag} takes no value`);
    into[spec.name] = !negated;
    return;
  }
  try {
    into[spec.name] = parseParamValue(entry.name, spec, need(flag, value));
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

function need(flag: string, value: string | undefined): string {
  if (value === undefined || value === '') throw new UsageError(`${flag} needs a value`);
  return value;
}

function positiveInt(flag: string, value: string | undefined): number {
  const v = need(flag, value);
  if (!/^\d+$/.test(v) || Number(v) < 1) throw new UsageError(`${flag} expects a positive integer, got '${v}'`);
  return Number(v);
}

function listText(json: boolean): string {
  const models = listModels();
  if (json) {
    return JSON.stringify(
      models.map((m) => ({ name: m.name, family: m.family, summary: m.summary, expect: m.expect, params: m.params })),
      null,
      2,
    );
  }
  const w = Math.max(...models.map((m) => m.name.length));
  return models.map((m) => `${m.name.padEnd(w)}  ${m.expect.padEnd(9)}  ${m.summary}`).join('\n');
}

function modelHelp(entry: ModelEntry): string {
  const lines = [`${entry.name}: ${entry.summary}`, `expected verdict with defaults: ${entry.expect}`, '', 'parameters:'];
  for (const p of entry.params) {
    const range = p.type === 'int' ? ` [${p.min ?? ''}..${p.max ?? ''}]` : p.type === 'enum' ? ` {${p.choices?.join('|')}}` : '';
    const flag = p.type === 'bool' ? `--${flagName(p.name)} / --no-${flagName(p.name)}` : `--${flagName(p.name)} ${p.type.toUpperCase()}`;
    lines.push(`  ${flag.padEnd(34)} ${p.help}${range} (default ${p.default})`);
  }
  return lines.join('\n');
}

function runReplay(file: string, json: boolean): number {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new SpecError(`cannot read the trace file (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, file);
  }
  const trace = parseTraceFile(text, file);
  const model = buildModel(trace.model, trace.params, file);
  const out = replay(model, trace, file);
  const verdict = out.violation ? 'violation' : out.deadlock ? 'deadlock' : 'ok';
  if (json) {
    process.stdout.write(
      JSON.stringify({ format: 'fleece-replay', version: 1, file, model: trace.model, params: model.params, verdict, stepsRun: out.stepsRun, violation: out.violation ?? null }, null, 2) + '\n',
    );
  } else {
    process.stdout.write(`replayed ${out.stepsRun} of ${trace.steps.length} steps of ${file} on model ${trace.model}\n`);
    if (out.violation) {
      process.stdout.write(`invariant ${out.violation.invariant} violated after step ${out.violation.step}: ${out.violation.message}\n`);
    } else if (out.deadlock) {
      process.stdout.write('deadlock: work is pending but no action is enabled\n');
    } else {
      process.stdout.write('every invariant holds along the trace' + (trace.kind === 'invariant' && trace.message ? ` (the file recorded: ${trace.message})` : '') + '\n');
    }
  }
  return verdict === 'ok' ? 0 : 1;
}

/** Every maximal path, one per line (or a JSON array); exit 1 if any ends in a violation. */
function printExecutions(model: Behaviour<unknown, unknown>, maxExecutions: number, json: boolean): number {
  const rows: { labels: string[]; violated: string | null; deadlocked: boolean }[] = [];
  for (const e of allExecutions(model, { maxExecutions })) {
    const violated = model.invariants.find((inv) => inv.check(e.final) !== undefined)?.name ?? null;
    rows.push({ labels: e.labels.map(formatLabel), violated, deadlocked: e.deadlocked });
  }
  if (json) {
    process.stdout.write(JSON.stringify({ model: model.name, params: model.params, executions: rows }, null, 2) + '\n');
  } else {
    const w = String(rows.length).length;
    rows.forEach((r, i) => {
      const end = r.violated ? `  => violates ${r.violated}` : r.deadlocked ? '  => deadlock' : '';
      process.stdout.write(`${String(i + 1).padStart(w)}. ${r.labels.join(' ')}${end}\n`);
    });
    process.stdout.write(`${rows.length} executions, ${rows.filter((r) => r.violated).length} end in a violation\n`);
  }
  return rows.some((r) => r.violated || r.deadlocked) ? 1 : 0;
}

const command: Subcommand = {
  summary: 'explore a spec model exhaustively, or replay a trace file',
  async run(argv) {
    let args: Parsed;
    try {
      args = parseArgs(argv);
    } catch (e) {
      if (e instanceof UsageError || e instanceof SpecError) {
        process.stderr.write(`fleece explore: ${e.message}\n(run 'fleece explore --help' for usage)\n`);
        return 2;
      }
      throw e;
    }
    try {
      if (args.help) {
        const entry = args.model === undefined ? undefined : findModel(args.model);
        process.stdout.write((entry ? modelHelp(entry) : USAGE) + '\n');
        return 0;
      }
      if (args.list) {
        process.stdout.write(listText(args.json) + '\n');
        return 0;
      }
      if (args.replay !== undefined) return runReplay(args.replay, args.json);
      if (args.soundness) return runSoundness(args);
      if (args.model === undefined) {
        process.stderr.write(`fleece explore: --model NAME, --list, --replay FILE or --soundness is required\n\n${USAGE}\n`);
        return 2;
      }
      const model = buildModel(args.model, args.params, 'command line');
      if (args.dot) {
        process.stdout.write(toDot(model, { symmetry: args.symmetry }));
        return 0;
      }
      if (args.executions) return printExecutions(model, args.maxExecutions ?? 10_000, args.json);
      const options: ExploreOptions = {
        symmetry: args.symmetry,
        ...(args.maxStates !== undefined ? { maxStates: args.maxStates } : {}),
        ...(args.maxDepth !== undefined ? { maxDepth: args.maxDepth } : {}),
        ...(args.timeLimit !== undefined ? { timeLimitMs: args.timeLimit * 1000 } : {}),
        progress: !args.quiet && !args.json,
      };
      const result = explore(model, options);
      if (result.counterexample && args.traceOut !== undefined) {
        writeFileSync(args.traceOut, JSON.stringify(toTraceFile(model, result.counterexample), null, 2) + '\n');
      }
      if (args.json) {
        process.stdout.write(JSON.stringify(toJson(model, result), null, 2) + '\n');
      } else {
        process.stdout.write(formatReport(model, result) + '\n');
        if (result.counterexample) {
          process.stdout.write(
            args.traceOut !== undefined
              ? `trace written to ${args.traceOut}; re-check it with: fleece explore --replay ${args.traceOut}\n`
              : 'save it with --trace-out FILE, re-check it with: fleece explore --replay FILE\n',
          );
        }
      }
      return result.verdict === 'ok' ? 0 : 1;
    } catch (e) {
      if (e instanceof SpecError) {
        process.stderr.write(`fleece explore: ${e.message}\n`);
        return 2;
      }
      throw e;
    }
  },
};
export default command;
