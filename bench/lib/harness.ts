/**
 * The timing harness shared by every microbenchmark.
 *
 * A benchmark case owns its timed loop (`run`): the harness never calls an operation per iteration
 * through a closure, so each loop stays monomorphic and V8 can inline the code under test into it, as
 * it would in the data plane. The harness only times whole runs and checks every one of them: a case
 * whose answer is wrong throws BenchVerifyError and the benchmark fails (STYLE.md item 12).
 *
 * One measured run is `iters` operations, split into batches of `batch` operations when a case needs
 * untimed work between them (restoring packets that were rewritten in place, emptying a table). Only
 * `run` is inside the clock; `prepare` and `check` are outside it.
 */

/** A wrong answer from the code under test, or a fixture that does not hold what it should. */
export class BenchVerifyError extends Error {
  override name = 'BenchVerifyError';
}

/** Throws BenchVerifyError unless `cond`; `what` is only built on failure. */
export function verify(cond: boolean, what: () => string): asserts cond {
  if (!cond) throw new BenchVerifyError(what());
}

export interface TimingOptions {
  /** Measured runs; the reported figure is their median. */
  runs: number;
  /** Timed length of one measured run, in ms (the harness sizes `iters` to reach it). */
  minRunMs: number;
  /** Warm-up before measuring, in ms of wall time (at least three runs whatever this says). */
  warmupMs: number;
}

export interface BenchCase {
  group: string;
  name: string;
  /** Numeric size (flows, bytes, packets) for ratios; `sizeLabel` is what the table prints. */
  size: number;
  sizeLabel: string;
  /** The target for this case, in ns per operation, where there is one (docs/benchmarks.md lists the goals). */
  goalNs?: number;
  /**
   * Untimed, once before anything else: checks that need no timing (e.g. every input's answer one by
   * one). A failure here fails this case only; the rest of its suite still runs.
   */
  precheck?(): void;
  /** Operations per timed batch; default: the whole run is one batch. */
  batch?: number;
  /** Untimed, before each batch of `iters` operations. */
  prepare?(iters: number): void;
  /** Timed: performs `iters` operations and returns a running checksum of their results. */
  run(iters: number): number;
  /** Untimed, after each batch: throws BenchVerifyError unless `result` (and any state) is right. */
  check(iters: number, result: number): void;
  /** Free-form remark printed after the table and kept in the JSON (e.g. throughput). */
  notes?: (nsPerOp: number) => string;
}

export interface Measurement {
  group: string;
  name: string;
  size: number;
  sizeLabel: string;
  medianNs: number;
  opsPerSec: number;
  minNs: number;
  maxNs: number;
  /** ns/op of each measured run, in order. */
  runsNs: number[];
  itersPerRun: number;
  goalNs?: number;
  goalMet?: boolean;
  notes?: string;
}

/**
 * Everything `run` returns ends up here, so no result is ever provably unused and V8 cannot
 * eliminate the work even where `check` would not need the value.
 */
export let blackhole = 0;

function nowNs(): bigint {
  return process.hrtime.bigint();
}

/** Performs `iters` operations in batches; returns the timed nanoseconds. */
export function timedRun(c: BenchCase, iters: number): number {
  const batch = c.batch ?? iters;
  let left = iters;
  let total = 0;
  while (left > 0) {
    const n = left < batch ? left : batch;
    c.prepare?.(n);
    const t0 = nowNs();
    const r = c.run(n);
    const t1 = nowNs();
    total += Number(t1 - t0);
    blackhole = (blackhole + r) | 0;
    c.check(n, r);
    left -= n;
  }
  return total;
}

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

function itersFor(minRunNs: number, nsPerOp: number): number {
  return Math.max(1, Math.ceil(minRunNs / Math.max(nsPerOp, 0.01)));
}

/**
 * Warm up in two phases; returns the operations per run that last about minRunMs. Every run is verified.
 *
 * 1. Grow `iters` geometrically until one run lasts minRunMs. The first runs execute unoptimised
 *    code, whose speed says nothing about the optimised loop, so sizing stops only at a full run.
 * 2. Keep running full-size runs, re-sized from the last one's speed, for warmupMs and at least
 *    twice: V8 tiers a loop up, and may deoptimise and re-optimise it once a new path is taken.
 */
export function warmUp(c: BenchCase, t: TimingOptions): number {
  c.precheck?.();
  const minRunNs = t.minRunMs * 1e6;
  let iters = 1;
  let nsPerOp: number;
  for (;;) {
    const ns = timedRun(c, iters);
    nsPerOp = ns / iters;
    if (ns >= minRunNs) break;
    iters = Math.min(iters * 4, Math.max(iters + 1, itersFor(minRunNs, nsPerOp)));
  }
  const warmEnd = performance.now() + t.warmupMs;
  for (let warm = 0; warm < 2 || performance.now() < warmEnd; warm++) {
    iters = itersFor(minRunNs, nsPerOp);
    nsPerOp = timedRun(c, iters) / iters;
  }
  return itersFor(minRunNs, nsPerOp);
}

/** Warms up (warmUp), then takes `runs` measured runs and reports their median. */
export function measure(c: BenchCase, t: TimingOptions): Measurement {
  const iters = warmUp(c, t);
  const runsNs: number[] = [];
  for (let r = 0; r < t.runs; r++) runsNs.push(timedRun(c, iters) / iters);
  const med = median(runsNs);
  const m: Measurement = {
    group: c.group,
    name: c.name,
    size: c.size,
    sizeLabel: c.sizeLabel,
    medianNs: med,
    opsPerSec: 1e9 / med,
    minNs: Math.min(...runsNs),
    maxNs: Math.max(...runsNs),
    runsNs,
    itersPerRun: iters,
  };
  if (c.goalNs !== undefined) {
    m.goalNs = c.goalNs;
    m.goalMet = med <= c.goalNs;
  }
  if (c.notes) m.notes = c.notes(med);
  return m;
}

/**
 * Running sums over a cyclic sequence of expected per-operation results, so a run of n operations
 * starting anywhere in the cycle can be checked in O(1): timed loops keep `acc = (acc + r) | 0` and
 * `expect(start, n)` is what that accumulator must be. 32-bit wrap-around on both sides keeps the
 * loops in small-integer arithmetic.
 */
export class CycleSum {
  private readonly prefix: Int32Array;
  private readonly total: number;
  readonly length: number;

  constructor(expected: ArrayLike<number>) {
    this.length = expected.length;
    if (this.length === 0) throw new RangeError('CycleSum needs at least one expected value');
    this.prefix = new Int32Array(this.length + 1);
    for (let i = 0; i < this.length; i++) this.prefix[i + 1] = (this.prefix[i]! + expected[i]!) | 0;
    this.total = this.prefix[this.length]!;
  }

  /** Wrapped sum of the first m values of the endless cycle. */
  private upTo(m: number): number {
    const laps = Math.floor(m / this.length);
    return (Math.imul(laps, this.total) + this.prefix[m - laps * this.length]!) | 0;
  }

  /** Wrapped sum of n values starting at cycle position `start` (0 ≤ start < length). */
  expect(start: number, n: number): number {
    return (this.upTo(start + n) - this.upTo(start)) | 0;
  }
}
