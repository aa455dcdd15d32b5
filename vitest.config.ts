import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Namespace tests build real labs; give them room but keep the suite bounded.
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Two cores: namespace test files each build their own labs; two at a time at most.
    maxWorkers: 2,
    minWorkers: 1,
    // The JSON report is what CI counts (.ci/run prints "N passed, N failed, N skipped" from it).
    reporters: ['default', 'json'],
    outputFile: { json: '.vitest/report.json' },
  },
});
