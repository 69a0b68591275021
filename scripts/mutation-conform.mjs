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
// Usage: node scripts/mutation-conform.mjs [--log FILE]   (FILE: one JSON line per run)
import { spawnSync } from 'node:child_process';
import { appendFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

const argv = process.argv.slice(2);
const logAt = argv.indexOf('--log');
const logFile = logAt >= 0 ? argv[logAt + 1] : undefined;

const out = mkdtempSync(path.join(tmpdir(), 'fleece-mutant-'));
const started = Date.now();
const res = spawnSync(
  process.execPath,
  ['bin/fleece.mjs', 'conform', '--target', 'reference', '--target', 'reference-legacy', '--fail-fast', '--no-color', '--out', out],
  { stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, env: { ...process.env, NO_COLOR: '1' } },
);
const code = res.status ?? 2;

let failing = [];
try {
  const results = JSON.parse(readFileSync(path.join(out, 'results.json'), 'utf8'));
  failing = results.results
    .filter((r) => r.verdict === 'fail' || r.verdict === 'error')
    .map((r) => `${r.target} ${r.id} (${r.verdict})`);
} catch {
  // No results.json: conform stopped before writing it (a target that did not start, a crash).
}
rmSync(out, { recursive: true, force: true });

const mutant = process.env.__STRYKER_ACTIVE_MUTANT__ ?? null;
if (logFile) {
  const tail = (s) => (s ?? '').split('\n').slice(-20).join('\n');
  const entry = { mutant, exit: code, ms: Date.now() - started, failing, stderr: code === 0 ? '' : tail(res.stderr) };
  appendFileSync(logFile, JSON.stringify(entry) + '\n');
}
// Stryker keeps this output as the mutant's status reason: the exit code and what failed, or, with
// no verdicts to name, the end of conform's stderr.
const why = failing.length ? `: ${failing.join(', ')}` : code !== 0 ? `\n${(res.stderr ?? '').trim().split('\n').slice(-5).join('\n')}` : '';
process.stdout.write(`fleece conform exit ${code}${why}\n`);
process.exit(code);
