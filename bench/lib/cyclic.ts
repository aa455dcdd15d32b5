/**
 * A benchmark case over a fixed cycle of inputs (packets, probe keys): the timed loop walks the
 * cycle from where the previous run stopped, so successive runs do not replay the same few inputs
 * from a warm cache, and its accumulator is checked against the expected results in O(1).
 */
import { CycleSum, verify, type BenchCase } from './harness.js';

export interface CyclicSpec {
  group: string;
  name: string;
  size: number;
  sizeLabel: string;
  goalNs?: number;
  notes?: (nsPerOp: number) => string;
  /** Expected result of the operation on each input of the cycle (wrapped to int32 by the sum). */
  expected: ArrayLike<number>;
  /**
   * The timed loop: performs n operations on inputs start, start+1, … (wrapping at the cycle's
   * length) and returns `acc` where `acc = (acc + result) | 0` after every operation.
   */
  loop: (start: number, n: number) => number;
  /** Names input j in a failure message. */
  describe: (j: number) => string;
}

/**
 * The case's precheck runs the loop input by input (n = 1 from every position), so a wrong answer is
 * reported with the input that produced it before any timing starts.
 */
export function cyclicCase(spec: CyclicSpec): BenchCase {
  const k = spec.expected.length;
  const sums = new CycleSum(spec.expected);
  let cursor = 0;
  let lastStart = 0;
  const c: BenchCase = {
    group: spec.group,
    name: spec.name,
    size: spec.size,
    sizeLabel: spec.sizeLabel,
    precheck(): void {
      for (let j = 0; j < k; j++) {
        const got = spec.loop(j, 1);
        const want = spec.expected[j]! | 0;
        verify(got === want, () => `${spec.name} (${spec.sizeLabel}): ${spec.describe(j)}: got ${got}, expected ${want}`);
      }
    },
    run(n: number): number {
      lastStart = cursor;
      const r = spec.loop(cursor, n);
      cursor = (cursor + n) % k;
      return r;
    },
    check(n: number, result: number): void {
      const want = sums.expect(lastStart, n);
      verify(result === want, () =>
        `${spec.name} (${spec.sizeLabel}): ${n} operations from input ${lastStart} summed to ${result}, expected ${want}`);
    },
  };
  if (spec.goalNs !== undefined) c.goalNs = spec.goalNs;
  if (spec.notes) c.notes = spec.notes;
  return c;
}
