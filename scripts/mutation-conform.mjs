#!/usr/bin/env node
// The command Stryker's command runner runs for the conformance score (stryker.conform.config.mjs):
// `fleece conform` against the reference's two fleecing graphs, from the sandbox copy Stryker made,
// so the `fleece serve` it spawns loads the mutated sources. The active mutant reaches that child
// through the environment (__STRYKER_ACTIVE_MUTANT__), which the conformance targets pass on.
//
// Exit codes are conform's own: 0 every MUST passed (the mutant survived), 1 a conformance failure,
// 2 a harness error (an `error` verdict or a target that could not start). Stryker counts any
// non-zero exit as killed. Exit 2 counts too: the dry run has already shown the unmutated
// reference passes with no harness error, so an error verdict or a daemon that no longer starts is
// the mutant's doing. The log below keeps which of the two it was, so the summary can tell a
// mutant caught by a MUST from one that only broke the daemon.
//
// `--fail-fast`: a mutant is killed by its first failure, so the run stops there; only survivors
// (and the dry run) pay for the whole catalogue. The log then names that first failure only.
//
// Coverage (`--coverage FILE`): the command runner cannot tell Stryker which test reaches which
// mutant, so this script does it itself, as Stryker's own runners do per test. The dry run (no
// active mutant) runs the whole catalogue once, then every case on its own with
// scripts/mutation-coverage-hook.mjs preloaded into the daemons, and writes FILE: for each mutant
// the cases whose daemons passed through it. A mutant run then runs only those cases (on both
// targets); a mutant no case reaches is not run at all and survives, logged as unreached. The
// mapping is of the unmutated reference, as Stryker's is: a mutant cannot change which code runs
// before it is reached. Code run when a daemon starts (module load, the graph's set-up) is reached
// by every case, so its mutants run the whole catalogue.
//
// Usage: node scripts/mutation-conform.mjs [--log FILE] [--coverage FILE] [--jobs N]
//   (log: one JSON line per run; jobs: cases mapped at once in the dry run, default 2)
import { spawn, spawnSync } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const argv = process.argv.slice(2);
const opt = (name) => {
  const at = argv.indexOf(name);
  return at >= 0 ? argv[at + 1] : undefined;
};
const logFile = opt('--log');
const coverageFile = opt('--coverage');
const jobs = Number(opt('--jobs') ?? 2);
const HOOK = pathToFileURL(path.resolve('scripts/mutation-coverage-hook.mjs')).href;
const TARGETS = ['--target', 'reference', '--target', 'reference-legacy'];

const mutant = process.env.__STRYKER_ACTIVE_MUTANT__ ?? null;
const started = Date.now();

/** conform's verdicts from its results.json: the failures and errors, `target id (verdict)`. */
function failingOf(out) {
  try {
    const results = JSON.parse(readFileSync(path.join(out, 'results.json'), 'utf8'));
    return results.results.filter((r) => r.verdict === 'fail' || r.verdict === 'error').map((r) => `${r.target} ${r.id} (${r.verdict})`);
  } catch {
    // No results.json: conform stopped before writing it (a target that did not start, a crash).
    return [];
  }
}

function log(entry) {
  if (logFile) appendFileSync(logFile, JSON.stringify({ mutant, ...entry, ms: Date.now() - started }) + '\n');
}

const tail = (s, n) => (s ?? '').split('\n').slice(-n).join('\n');

/** One synchronous `fleece conform` run over the given cases (all of them when none are given). */
function conform(cases) {
  const out = mkdtempSync(path.join(tmpdir(), 'fleece-mutant-'));
  const res = spawnSync(
    process.execPath,
    ['bin/fleece.mjs', 'conform', ...TARGETS, ...cases.flatMap((c) => ['--case', c]), '--fail-fast', '--no-color', '--out', out],
    { stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, env: { ...process.env, NO_COLOR: '1' } },
  );
  const failing = failingOf(out);
  rmSync(out, { recursive: true, force: true });
  return { code: res.status ?? 2, failing, stderr: res.stderr ?? '' };
}

/** The catalogue's case ids, from `fleece conform --list`. */
function caseIds() {
  const res = spawnSync(process.execPath, ['bin/fleece.mjs', 'conform', ...TARGETS, '--list', '--no-color'], { encoding: 'utf8' });
  if (res.status !== 0) throw new Error(`fleece conform --list exit ${res.status}: ${tail(res.stderr, 5)}`);
  return res.stdout.split('\n').flatMap((l) => /^(\S+\/\S+)\s+(MUST|SHOULD|MAY)\b/.exec(l)?.[1] ?? []);
}

/** Runs one case alone with the coverage hook preloaded; resolves to the mutant ids its daemons reached. */
function mapCase(id) {
  const out = mkdtempSync(path.join(tmpdir(), 'fleece-cover-'));
  const dir = path.join(out, 'coverage');
  mkdirSync(dir);
  const env = { ...process.env, NO_COLOR: '1', FLEECE_MUTANT_COVERAGE_DIR: dir, NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --import=${HOOK}`.trim() };
  delete env.__STRYKER_ACTIVE_MUTANT__;
  return new Promise((resolve) => {
    const p = spawn(process.execPath, ['bin/fleece.mjs', 'conform', ...TARGETS, '--case', id, '--no-color', '--out', path.join(out, 'report')], { stdio: ['ignore', 'ignore', 'pipe'], env });
    let stderr = '';
    p.stderr.on('data', (d) => (stderr += d));
    p.on('exit', (code) => {
      const failing = failingOf(path.join(out, 'report'));
      const ids = new Set();
      const records = readdirSync(dir);
      for (const f of records) for (const m of JSON.parse(readFileSync(path.join(dir, f), 'utf8'))) ids.add(m);
      rmSync(out, { recursive: true, force: true });
      resolve({ id, code: code ?? 2, failing, stderr, records: records.length, ids });
    });
  });
}

async function mapCoverage() {
  const ids = caseIds();
  if (ids.length === 0) throw new Error('fleece conform --list named no cases');
  const byMutant = {};
  const problems = [];
  let next = 0;
  const worker = async () => {
    while (next < ids.length) {
      const id = ids[next++];
      let r = await mapCase(id);
      // A case that fails alone on the unmutated reference is retried twice before it stops the
      // run: a mapping of 177 cases should not be lost to one slow start; the retry is logged.
      for (let retry = 1; r.code !== 0 && retry <= 2; retry++) {
        log({ mapRetry: id, retry, exit: r.code, failing: r.failing, stderr: tail(r.stderr, 5) });
        r = await mapCase(id);
      }
      if (r.code !== 0) problems.push(`${r.id}: exit ${r.code} alone on the unmutated reference${r.failing.length ? `: ${r.failing.join(', ')}` : `\n${tail(r.stderr, 5)}`}`);
      for (const m of r.ids) (byMutant[m] ??= []).push(r.id);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, jobs) }, worker));
  if (problems.length) throw new Error(`mapping coverage: ${problems.length} case(s) do not pass alone:\n${problems.join('\n')}`);
  if (Object.keys(byMutant).length === 0) throw new Error('mapping coverage: no daemon recorded any mutant (is the sandbox instrumented, and does the hook load?)');
  for (const v of Object.values(byMutant)) v.sort((a, b) => ids.indexOf(a) - ids.indexOf(b));
  writeFileSync(coverageFile, JSON.stringify({ cases: ids.length, mappedAt: new Date().toISOString(), byMutant }) + '\n');
  return { cases: ids.length, mutants: Object.keys(byMutant).length };
}

let code;
let why = '';
if (mutant === null) {
  // The dry run: the whole catalogue must pass on the unmutated reference, then the coverage map.
  // A map left from an earlier run names other mutants (ids are per run): never reuse it.
  if (coverageFile) rmSync(coverageFile, { force: true });
  const r = conform([]);
  code = r.code;
  log({ exit: r.code, failing: r.failing, stderr: r.code === 0 ? '' : tail(r.stderr, 20) });
  if (r.failing.length) why = `: ${r.failing.join(', ')}`;
  else if (r.code !== 0) why = `\n${tail(r.stderr.trim(), 5)}`;
  if (code === 0 && coverageFile) {
    try {
      const m = await mapCoverage();
      why = `; coverage: ${m.cases} cases alone reach ${m.mutants} mutants`;
      log({ coverage: m });
    } catch (e) {
      code = 2;
      why = `\n${e.message}`;
      log({ exit: 2, coverageError: e.message });
    }
  }
} else {
  const map = coverageFile && existsSync(coverageFile) ? JSON.parse(readFileSync(coverageFile, 'utf8')).byMutant : undefined;
  const cases = map ? (map[mutant] ?? []) : [];
  if (map && cases.length === 0) {
    // No case passes through this code: nothing to run, and nothing can kill it.
    code = 0;
    why = ': reached by no case';
    log({ exit: 0, reached: 0, failing: [] });
  } else {
    const r = conform(cases);
    code = r.code;
    log({ exit: r.code, reached: map ? cases.length : 'all', failing: r.failing, stderr: r.code === 0 ? '' : tail(r.stderr, 20) });
    if (r.failing.length) why = `: ${r.failing.join(', ')}`;
    else if (r.code !== 0) why = `\n${tail(r.stderr.trim(), 5)}`;
  }
}
// Stryker keeps this output as the mutant's status reason: the exit code and what failed, or, with
// no verdicts to name, the end of conform's stderr.
process.stdout.write(`fleece conform exit ${code}${why}\n`);
process.exit(code);
