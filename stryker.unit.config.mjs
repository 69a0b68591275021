// Mutation score 2: the reference's own unit tests (reference/test) through the vitest runner,
// with per-test coverage so each mutant runs only the tests that reach it. Mutants are active in
// the test process only: tests that spawn `fleece serve` as a child exercise the unmutated code
// there (that path is what the conformance score measures).
import { shared } from './stryker.shared.mjs';

/** @type {import('@stryker-mutator/api/core').PartialStrykerOptions} */
export default {
  ...shared('unit'),
  testRunner: 'vitest',
  vitest: { configFile: 'vitest.stryker.config.ts', related: true },
  coverageAnalysis: 'perTest',
};
