/**
 * A reader for the Prometheus text format (the `/metrics` body), enough for `tunnat stats` to print
 * the counters of any engine that serves tunnat's metric names.
 */
export interface Sample {
  labels: Record<string, string>;
  value: number;
}

const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(?:\s+\d+)?$/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?\s*/g;

function unescape(v: string): string {
  return v.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
}

function parseValue(v: string): number {
  if (v === '+Inf') return Infinity;
  if (v === '-Inf') return -Infinity;
  return Number(v);
}

/** Samples by metric name (histogram parts keep their `_bucket`/`_sum`/`_count` names). */
export function parsePromText(text: string): Map<string, Sample[]> {
  const out = new Map<string, Sample[]>();
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const m = LINE.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    if (m[3]) for (const l of m[3].matchAll(LABEL)) labels[l[1]!] = unescape(l[2]!);
    const list = out.get(m[1]!) ?? [];
    list.push({ labels, value: parseValue(m[4]!) });
    out.set(m[1]!, list);
  }
  return out;
}

/** The value of `name` whose labels include `match` (0 when absent). */
export function sampleValue(samples: Map<string, Sample[]>, name: string, match: Record<string, string> = {}): number {
  const list = samples.get(name) ?? [];
  let sum = 0;
  for (const s of list) if (Object.entries(match).every(([k, v]) => s.labels[k] === v)) sum += s.value;
  return sum;
}

/** label value → value, for a metric with one varying label. */
export function byLabel(samples: Map<string, Sample[]>, name: string, label: string, match: Record<string, string> = {}): Record<string, number> {
  const out: Record<string, number> = {};
  for (const s of samples.get(name) ?? []) {
    if (!Object.entries(match).every(([k, v]) => s.labels[k] === v)) continue;
    const key = s.labels[label];
    if (key !== undefined) out[key] = (out[key] ?? 0) + s.value;
  }
  return out;
}
