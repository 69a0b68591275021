// Mutation score 1: the conformance suites as the judge. Each mutant runs
// scripts/mutation-conform.mjs, i.e. `fleece conform --target reference --target reference-legacy`
// from Stryker's sandbox, so the daemons it spawns load the mutated reference. Any non-zero exit
// kills the mutant (see that script for why exit 2 counts). About a minute per mutant: see README.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { shared } from './stryker.shared.mjs';

const root = path.dirname(fileURLToPath(import.meta.url));
const log = path.join(root, 'reports/mutation/conform/runs.jsonl');
// Which case reaches which mutant, mapped by the dry run (ids are per Stryker run).
const coverage = path.join(root, 'reports/mutation/conform/coverage.json');

/** @type {import('@stryker-mutator/api/core').PartialStrykerOptions} */
export default {
  ...shared('conform'),
  testRunner: 'command',
  commandRunner: { command: `node scripts/mutation-conform.mjs --log ${JSON.stringify(log)} --coverage ${JSON.stringify(coverage)}` },
  // The command runner cannot tell Stryker which mutant a test covers; the script maps it itself
  // (each case alone, in the dry run) and runs a mutant's reaching cases only.
  coverageAnalysis: 'off',
  // Stryker's timeout is 1.5x the dry run plus this; a hung daemon is also caught by conform's
  // own silence timeouts (a failed MUST), so this only guards a wedged harness.
  timeoutMS: 30_000,
  // The dry run is the whole catalogue plus each case alone (the coverage map): several minutes.
  dryRunTimeoutMinutes: 45,
};
