import { defineConfig } from 'vitest/config';
import { BaseSequencer, type TestSpecification } from 'vitest/node';

/**
 * Test files that take longest (minutes, in CI), in the order they should start. On a fresh clone
 * vitest knows no durations and starts the largest files first, so a small file that runs for
 * minutes could start last and hold the whole run up; these start first instead.
 */
const SLOW_FIRST = ['fail-closed-userspace', 'ha-pair', 'fail-closed-kernel', 'dns-storm', 'alg-ftp', 'kernel-engine', 'lab', 'hostile-flood', 'rfc-wan-pool', 'routing', 'restart'];

class SlowFirst extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const base = await super.sort(files);
    const rank = (f: TestSpecification): number => {
      const i = SLOW_FIRST.findIndex((n) => f.moduleId.endsWith(`/${n}.test.ts`));
      return i < 0 ? SLOW_FIRST.length : i;
    };
    // A stable sort: everything else keeps vitest's own order.
    return [...base].sort((a, b) => rank(a) - rank(b));
  }
}

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Namespace tests build real labs; give them room but keep the suite bounded.
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Two cores: namespace test files each build their own labs; two at a time at most.
    maxWorkers: 2,
    minWorkers: 1,
    sequence: { sequencer: SlowFirst },
    // The JSON report is what CI counts (.ci/run prints "N passed, N failed, N skipped" from it).
    reporters: ['default', 'json'],
    outputFile: { json: '.vitest/report.json' },
  },
});
