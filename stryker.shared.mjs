// Settings both mutation scores share (stryker.conform.config.mjs, stryker.unit.config.mjs).
// `npm run mutate` / `npm run mutate:unit` run them (scripts/mutate.mjs); neither is part of npm test.

/** The reference's block layer and NBD session: what the conformance suites are meant to judge. */
export const mutate = [
  'reference/src/block/drivers/copy-before-write.ts',
  'reference/src/block/drivers/snapshot-access.ts',
  'reference/src/block/block-copy.ts',
  'reference/src/block/backup.ts',
  'reference/src/block/tracked-requests.ts',
  'reference/src/block/reqlist.ts',
  'reference/src/block/drivers/overlay.ts',
  'reference/src/block/bitmap.ts',
  'reference/src/nbd/session.ts',
];

/** @param {'conform' | 'unit'} score */
export function shared(score) {
  const dir = `reports/mutation/${score}`;
  return {
    mutate,
    // The machine is shared and every conformance mutant starts two daemons: one at a time.
    concurrency: 1,
    // Reruns test only mutants whose code (or, for the unit score, whose tests) changed.
    incremental: true,
    incrementalFile: `${dir}/stryker-incremental.json`,
    reporters: ['clear-text', 'progress', 'json', 'html'],
    jsonReporter: { fileName: `${dir}/mutation.json` },
    htmlReporter: { fileName: `${dir}/index.html` },
    tempDirName: '.stryker-tmp',
    cleanTempDir: true,
    // Nothing the tests or the daemon need: keep the sandbox copy small.
    ignorePatterns: ['reports', 'bench/results', '.stryker-tmp', '*.log'],
    // Type errors the mutants introduce are the point; tsx and vitest strip types without checking.
    disableTypeChecks: 'reference/src/**/*.ts',
    clearTextReporter: { allowColor: false, logTests: false },
    thresholds: { high: 80, low: 60, break: null },
  };
}
