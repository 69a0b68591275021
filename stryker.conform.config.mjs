// Mutation score 1: the conformance suites as the judge. Each mutant runs
// scripts/mutation-conform.mjs, i.e. `fleece conform --target reference --target reference-legacy`
// from Stryker's sandbox, so the daemons it spawns load the mutated reference. Any non-zero exit
// kills the mutant (see that script for why exit 2 counts). About a minute per mutant: see README.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { shared } from './stryker.shared.mjs';

const root = path.dirname(fileURLToPath(import.meta.url));
const log = path.join(root, 'reports/mutation/conform/runs.jsonl');

/** @type {import('@stryker-mutator/api/core').PartialStrykerOptions} */
export default {
  ...shared('conform'),
  testRunner: 'command',
  commandRunner: { command: `node scripts/mutation-conform.mjs --log ${JSON.stringify(log)}` },
  // The command runner cannot tell which mutant a test covers: every mutant runs the whole command.
  coverageAnalysis: 'off',
  // Stryker's timeout is 1.5x the dry run plus this; a hung daemon is also caught by conform's
  // own silence timeouts (a failed MUST), so this only guards a wedged harness.
  timeoutMS: 30_000,
  dryRunTimeoutMinutes: 10,
};
