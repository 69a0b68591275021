import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['{reference,spec,conformance,cli}/test/**/*.test.ts'],
    // Tests spawn real servers (qemu-storage-daemon, nbdkit, our own daemon): give them room,
    // but keep a hang visible instead of waiting forever.
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: 'forks',
    reporters: ['default', './cli/vitest-summary.ts'],
    coverage: {
      provider: 'v8',
      include: ['reference/src/**', 'spec/**', 'conformance/**', 'cli/**'],
      exclude: ['**/test/**'],
      reportsDirectory: 'reports/coverage/unit',
      reporter: ['text-summary', 'html', 'json-summary'],
    },
  },
});
