#!/usr/bin/env node
// npm run mutate / npm run mutate:unit: run one mutation score with Stryker, then regenerate
// reports/mutation/summary.md from the JSON reports of both scores (scripts/mutation-summary.mjs).
// Usage: node scripts/mutate.mjs conform|unit [stryker options...], e.g.
//   npm run mutate -- --mutate reference/src/block/reqlist.ts
// A narrowed run's JSON report holds only what it mutated, and the summary says so (partial).
import { spawnSync } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';

const [score, ...rest] = process.argv.slice(2);
if (score !== 'conform' && score !== 'unit') {
  process.stderr.write('usage: node scripts/mutate.mjs conform|unit [stryker options...]\n');
  process.exit(2);
}
const dir = `reports/mutation/${score}`;
mkdirSync(dir, { recursive: true });
// One line per command run of this Stryker run (scripts/mutation-conform.mjs); mutant ids are per run.
rmSync(`${dir}/runs.jsonl`, { force: true });
// The case-to-mutant map of the conformance score is per run too (scripts/mutation-conform.mjs).
rmSync(`${dir}/coverage.json`, { force: true });
const started = new Date();
const stryker = spawnSync(
  process.execPath,
  ['node_modules/@stryker-mutator/core/bin/stryker.js', 'run', `stryker.${score}.config.mjs`, ...rest],
  { stdio: 'inherit' },
);
const finished = new Date();
if (stryker.signal || stryker.status === null || stryker.status >= 128) {
  // Stopped from outside: Stryker wrote no report and no incremental file, so the summary and the
  // last run's info stay those of the last run that finished.
  process.stderr.write(`mutate: stryker stopped (${stryker.signal ?? `exit ${stryker.status}`}); summary.md not regenerated\n`);
  process.exit(1);
}
writeFileSync(
  `${dir}/run-info.json`,
  JSON.stringify(
    { startedAt: started.toISOString(), finishedAt: finished.toISOString(), wallMs: finished - started, args: rest, exit: stryker.status, machine: `${process.platform} ${process.arch}, node ${process.version}` },
    null,
    2,
  ) + '\n',
);
const summary = spawnSync(process.execPath, ['scripts/mutation-summary.mjs'], { stdio: 'inherit' });
process.exit(stryker.status !== 0 ? (stryker.status ?? 1) : (summary.status ?? 1));
