/**
 * The arithmetic of the load benchmark: medians over rounds, percentiles over RTT samples, ratios
 * against the kernel and the goals they are held to. Pure, so the smoke test can check it.
 */

/** Median of the finite values; null when there are none (every run of that cell failed). */
export function median(values: readonly number[]): number | null {
  const xs = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (xs.length === 0) return null;
  const mid = xs.length >> 1;
  return xs.length % 2 === 1 ? xs[mid]! : (xs[mid - 1]! + xs[mid]!) / 2;
}

/**
 * The p-th percentile (0..100) by linear interpolation between closest ranks (Hyndman & Fan type 7,
 * what numpy and most spreadsheets use), so p50 of an even count is the mean of the middle two.
 */
export function percentile(values: readonly number[], p: number): number | null {
  if (!(p >= 0 && p <= 100)) throw new RangeError(`percentile must be in 0..100, got ${p}`);
  const xs = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (xs.length === 0) return null;
  const h = (xs.length - 1) * (p / 100);
  const lo = Math.floor(h);
  const hi = Math.ceil(h);
  return xs[lo]! + (xs[hi]! - xs[lo]!) * (h - lo);
}

/** a / b, or null when either is missing or b is not positive. */
export function ratio(a: number | null | undefined, b: number | null | undefined): number | null {
  if (a === null || a === undefined || b === null || b === undefined) return null;
  if (!Number.isFinite(a) || !Number.isFinite(b) || b <= 0) return null;
  return a / b;
}

/**
 * A performance goal (docs/benchmarks.md, "Against the performance goals"). `ratio-at-least`: userspace/kernel ≥ target (throughput);
 * `at-most`: the value itself ≤ target (RTT added, bytes per flow).
 */
export type Goal =
  | { kind: 'ratio-at-least'; target: number }
  /** userspace/kernel ≤ target (a cost, such as CPU per GB). */
  | { kind: 'ratio-at-most'; target: number }
  | { kind: 'at-most'; target: number; unit: string };

export function goalText(g: Goal): string {
  if (g.kind === 'ratio-at-least') return `≥ ${g.target}× kernel`;
  if (g.kind === 'ratio-at-most') return `≤ ${g.target}× kernel`;
  return `≤ ${g.target} ${g.unit}`;
}

/** Whether a goal is met by the ratio (ratio goals) or the value (at-most goals); null when unknown. */
export function goalMet(g: Goal, value: number | null, ratioToKernel: number | null): boolean | null {
  if (g.kind === 'ratio-at-least') return ratioToKernel === null ? null : ratioToKernel >= g.target;
  if (g.kind === 'ratio-at-most') return ratioToKernel === null ? null : ratioToKernel <= g.target;
  return value === null ? null : value <= g.target;
}

/**
 * Whole-machine CPU time from two /proc/stat "cpu" lines: seconds spent not idle (user, nice,
 * system, irq, softirq, steal; guest time is inside user), at USER_HZ = 100 (fixed for /proc/stat).
 */
export function busyCpuSeconds(before: readonly number[], after: readonly number[]): number {
  const busy = (f: readonly number[]) => (f[0] ?? 0) + (f[1] ?? 0) + (f[2] ?? 0) + (f[5] ?? 0) + (f[6] ?? 0) + (f[7] ?? 0);
  return (busy(after) - busy(before)) / 100;
}

/** The numbers of /proc/stat's aggregate "cpu" line (user nice system idle iowait irq softirq steal …). */
export function parseProcStatCpu(text: string): number[] {
  const line = text.split('\n').find((l) => /^cpu\s/.test(l));
  if (!line) throw new Error('/proc/stat has no aggregate cpu line');
  return line.trim().split(/\s+/).slice(1).map(Number);
}

/** Bytes per flow from two memory readings; null when nothing was added (no division by ~0). */
export function bytesPerFlow(before: number | null, after: number | null, flowsAdded: number | null): number | null {
  if (before === null || after === null || flowsAdded === null || flowsAdded <= 0) return null;
  return (after - before) / flowsAdded;
}
