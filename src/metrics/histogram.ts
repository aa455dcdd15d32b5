import type { Metric, Registry } from 'prom-client';

/**
 * A fixed-bucket histogram in typed arrays: observe() is a short loop over the bounds and two
 * additions, with no allocation and no label lookup, so the loop can call it once per batch.
 * prom-client's own Histogram hashes a label object on every observe(); this one is read only when
 * scraped, through a metric object registered by registerHistogram.
 */
export class FixedHistogram {
  readonly bounds: Float64Array;
  /** counts[i]: observations ≤ bounds[i] and > bounds[i-1]; the last slot is above every bound. */
  readonly counts: Float64Array;
  sum = 0;
  count = 0;

  constructor(bounds: readonly number[]) {
    for (let i = 1; i < bounds.length; i++) {
      if (!(bounds[i]! > bounds[i - 1]!)) throw new RangeError('histogram bounds must increase');
    }
    this.bounds = Float64Array.from(bounds);
    this.counts = new Float64Array(bounds.length + 1);
  }

  observe(v: number): void {
    const b = this.bounds;
    let i = 0;
    while (i < b.length && v > b[i]!) i++;
    this.counts[i]!++;
    this.sum += v;
    this.count++;
  }

  /** Cumulative counts per upper bound, +Inf last (Prometheus' `le` buckets). */
  cumulative(): { le: string; count: number }[] {
    const out: { le: string; count: number }[] = [];
    let acc = 0;
    for (let i = 0; i < this.bounds.length; i++) {
      acc += this.counts[i]!;
      out.push({ le: String(this.bounds[i]), count: acc });
    }
    out.push({ le: '+Inf', count: acc + this.counts[this.bounds.length]! });
    return out;
  }
}

/** Expose a FixedHistogram as a Prometheus histogram named `name` (`_bucket`, `_sum`, `_count`). */
export function registerHistogram(registry: Registry, name: string, help: string, h: FixedHistogram): void {
  const metric = {
    name,
    help,
    type: 'histogram',
    aggregator: 'sum',
    get: async () => ({
      name,
      help,
      type: 'histogram',
      aggregator: 'sum',
      values: [
        ...h.cumulative().map((b) => ({ metricName: `${name}_bucket`, labels: { le: b.le }, value: b.count })),
        { metricName: `${name}_sum`, labels: {}, value: h.sum },
        { metricName: `${name}_count`, labels: {}, value: h.count },
      ],
    }),
    reset: () => {},
  };
  // prom-client's Metric type is its own classes; a registry only needs name/help/type/get.
  registry.registerMetric(metric as unknown as Metric<string>);
}
