// The vitest configuration of the unit mutation score (stryker.unit.config.mjs): the reference's
// own tests only, without the suite-wide summary reporter.
import { defineConfig } from 'vitest/config';
import base from './vitest.config.ts';

export default defineConfig({
  ...base,
  test: {
    ...base.test,
    include: ['reference/test/**/*.test.ts'],
    reporters: ['default'],
  },
});
