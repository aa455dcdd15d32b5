import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Namespace tests build real labs; give them room but keep the suite bounded.
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Two cores: e2e files each build their own namespaces, so run files in parallel at most two at a time.
    maxWorkers: 2,
    minWorkers: 1,
  },
});
