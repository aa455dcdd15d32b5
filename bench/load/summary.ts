/**
 * The load benchmark's report: what ran (config, machine, engines), every run's raw numbers, and
 * the summary rows — medians per engine, the userspace/kernel ratio and the performance goals. Pure:
 * `summarize` turns runs into rows, so the smoke test checks the arithmetic on made-up runs.
 */
import type { EngineName, KernelVariant, RunnerName } from './engines.js';
import type { MeasureConfig, MeasurementName, RunValues } from './measure.js';
import { goalMet, goalText, median, ratio, type Goal } from './stats.js';

export interface MachineInfo {
  cpuModel: string;
  cores: number;
  kernel: string;
  node: string;
  totalMemoryMiB: number;
  loadAverageStart: number;
  loadAverageEnd: number;
  iperf3: string | null;
  slirp4netns: string | null;
}

export interface RunRecord {
  measurement: MeasurementName;
  runner: RunnerName;
  round: number;
  /** Position in the whole sequence of runs (interleaving order). */
  seq: number;
  startedAt: string;
  /** Wall time of the run, engine start and stop included. */
  seconds: number;
  values: RunValues | null;
  error: string | null;
}

export interface EngineInfo {
  name: EngineName;
  /** What actually ran in this column. */
  description: string;
}

export interface SummaryRow {
  metric: string;
  label: string;
  unit: string;
  better: 'higher' | 'lower';
  /** Median per runner over the successful rounds; absent where the runner did not run it. */
  medians: Partial<Record<RunnerName, number | null>>;
  /** Successful runs per runner. */
  runs: Partial<Record<RunnerName, number>>;
  /** Slowest and fastest run per runner, to show the spread. */
  range: Partial<Record<RunnerName, [number, number]>>;
  /** userspace / kernel (for "lower is better" rows too: a ratio above 1 is then worse). */
  ratio: number | null;
  /** userspace / TUN floor, when the floor ran for this measurement. */
  floorRatio?: number | null;
  goal: { text: string; met: boolean | null; note?: string } | null;
  /**
   * Where a kernel-ratio goal was missed and the TUN floor ran: whether tunnat reached the floor's share the
   * goal falls back to (≥ 0.9 × the floor; for "lower is better", at most 1 / 0.9 of it).
   */
  floorGoal?: { text: string; met: boolean } | null;
}

/** The share of the TUN floor a measure must reach when its kernel ratio is out of reach. */
export const FLOOR_SHARE = 0.9;

export interface LoadReport {
  kind: 'tunnat-load-benchmark';
  version: 1;
  date: string;
  mode: 'quick' | 'default';
  ok: boolean;
  durationSeconds: number;
  config: MeasureConfig & {
    rounds: number;
    measurements: MeasurementName[];
    engines: EngineName[];
    flowAddresses: number;
    restartPolicy: string;
    interleaving: string;
  };
  kernel: { variant: KernelVariant; description: string; reason: string; ruleset: string | null } | null;
  engines: EngineInfo[];
  notes: string[];
  machine: MachineInfo;
  runs: RunRecord[];
  summary: SummaryRow[];
}

export interface MetricDef {
  metric: string;
  measurement: MeasurementName;
  /** Field of the run's values. */
  field: string;
  label: string;
  unit: string;
  better: 'higher' | 'lower';
  goal?: Goal;
  goalNote?: string;
  /** Values are multiplied by this for display and the summary (e.g. pps → kpps). */
  scale?: number;
  /** No userspace/kernel ratio: it would divide by a number that is ~0 by design (loss). */
  noRatio?: boolean;
}

export const METRICS: readonly MetricDef[] = [
  { metric: 'tcp1', measurement: 'tcp-bulk-1', field: 'gbps', label: 'TCP bulk, 1 stream', unit: 'Gbit/s', better: 'higher', goal: { kind: 'ratio-at-least', target: 0.8 } },
  { metric: 'tcp4', measurement: 'tcp-bulk-4', field: 'gbps', label: 'TCP bulk, 4 streams', unit: 'Gbit/s', better: 'higher', goal: { kind: 'ratio-at-least', target: 0.8 } },
  {
    metric: 'tcp4-cpu', measurement: 'tcp-bulk-4', field: 'cpuSecPerGB', label: 'CPU per GB forwarded, TCP 4 streams (whole machine)', unit: 'CPU s/GB',
    better: 'lower', goal: { kind: 'ratio-at-most', target: 1.5 },
  },
  { metric: 'udp64', measurement: 'udp-64', field: 'pps', label: 'UDP 64 B delivered', unit: 'kpps', better: 'higher', scale: 1e-3, goal: { kind: 'ratio-at-least', target: 0.9 } },
  { metric: 'udp64-loss', measurement: 'udp-64', field: 'lossPct', label: 'UDP 64 B lost on the way', unit: '%', better: 'lower', noRatio: true },
  { metric: 'connrate', measurement: 'conn-rate', field: 'connPerSec', label: 'TCP connections', unit: 'conn/s', better: 'higher', goal: { kind: 'ratio-at-least', target: 1.0 } },
  { metric: 'flows', measurement: 'flows', field: 'held', label: 'UDP flows held (the engine\'s own count)', unit: 'flows', better: 'higher' },
  { metric: 'flows-delivered', measurement: 'flows', field: 'delivered', label: 'UDP flows that reached the internet host', unit: 'flows', better: 'higher', noRatio: true },
  {
    metric: 'flow-bytes', measurement: 'flows', field: 'bytesPerFlow', label: 'Memory per flow', unit: 'B', better: 'lower',
    goal: { kind: 'at-most', target: 256, unit: 'B' }, goalNote: 'the goal is for 1 M flows',
  },
  { metric: 'rtt-b2b-p50', measurement: 'latency', field: 'b2bP50Us', label: 'RTT p50, back to back', unit: 'µs', better: 'lower' },
  { metric: 'rtt-b2b-p99', measurement: 'latency', field: 'b2bP99Us', label: 'RTT p99, back to back', unit: 'µs', better: 'lower' },
  { metric: 'rtt-p50', measurement: 'latency', field: 'p50Us', label: 'RTT p50, paced', unit: 'µs', better: 'lower' },
  { metric: 'rtt-p99', measurement: 'latency', field: 'p99Us', label: 'RTT p99, paced', unit: 'µs', better: 'lower' },
  { metric: 'idle-cpu', measurement: 'latency', field: 'idleCpuPct', label: 'CPU of the engine\'s process, no traffic for 3 s', unit: '% of a core', better: 'lower', noRatio: true },
];

/**
 * Derived "RTT added over kernel NAT" rows: each engine's median p50 minus the kernel's, for echoes
 * back to back (the engine is awake) and paced (each echo has to wake a sleeping engine up).
 */
export const RTT_ADDED_ROWS: readonly { metric: string; from: string; label: string }[] = [
  { metric: 'rtt-added-b2b', from: 'rtt-b2b-p50', label: 'RTT p50 added over kernel NAT, back to back' },
  { metric: 'rtt-added', from: 'rtt-p50', label: 'RTT p50 added over kernel NAT, paced' },
];
export const RTT_ADDED_GOAL: Goal = { kind: 'at-most', target: 30, unit: 'µs' };

export const RUNNER_ORDER: readonly RunnerName[] = ['userspace', 'kernel', 'slirp4netns', 'route', 'tun-floor'];

function valuesOf(runs: readonly RunRecord[], def: MetricDef, runner: RunnerName): number[] {
  const out: number[] = [];
  for (const r of runs) {
    if (r.measurement !== def.measurement || r.runner !== runner || r.values === null) continue;
    const v = r.values[def.field];
    if (typeof v === 'number' && Number.isFinite(v)) out.push(v * (def.scale ?? 1));
  }
  return out;
}

/** Runners that have at least one run (successful or not) of a measurement. */
function runnersOf(runs: readonly RunRecord[], m: MeasurementName): RunnerName[] {
  return RUNNER_ORDER.filter((n) => runs.some((r) => r.measurement === m && r.runner === n));
}

export function summarize(runs: readonly RunRecord[]): SummaryRow[] {
  const rows: SummaryRow[] = [];
  for (const def of METRICS) {
    const runners = runnersOf(runs, def.measurement);
    if (runners.length === 0) continue;
    const row: SummaryRow = {
      metric: def.metric, label: def.label, unit: def.unit, better: def.better,
      medians: {}, runs: {}, range: {}, ratio: null, goal: null,
    };
    for (const n of runners) {
      const xs = valuesOf(runs, def, n);
      // Every run of it succeeded and said null (the kernel has no process of its own to measure): no
      // figure by design, which is not a failure.
      const mine = runs.filter((r) => r.measurement === def.measurement && r.runner === n);
      if (xs.length === 0 && mine.length > 0 && mine.every((r) => r.values !== null && r.values[def.field] === null)) continue;
      row.medians[n] = median(xs);
      row.runs[n] = xs.length;
      if (xs.length > 0) row.range[n] = [Math.min(...xs), Math.max(...xs)];
    }
    row.ratio = def.noRatio ? null : ratio(row.medians.userspace, row.medians.kernel);
    // Against the TUN floor (the same TUN path, nothing translated): what any TUN reader could reach.
    if (!def.noRatio && row.medians['tun-floor'] !== undefined) row.floorRatio = ratio(row.medians.userspace, row.medians['tun-floor']);
    if (def.goal) {
      const met = goalMet(def.goal, row.medians.userspace ?? null, row.ratio);
      row.goal = { text: goalText(def.goal), met, ...(def.goalNote ? { note: def.goalNote } : {}) };
      const fr = row.floorRatio;
      if (met === false && fr !== undefined && fr !== null && (def.goal.kind === 'ratio-at-least' || def.goal.kind === 'ratio-at-most')) {
        row.floorGoal = def.better === 'higher'
          ? { text: `≥ ${FLOOR_SHARE}× TUN floor`, met: fr >= FLOOR_SHARE }
          : { text: `≤ ${(1 / FLOOR_SHARE).toFixed(2)}× TUN floor`, met: fr <= 1 / FLOOR_SHARE };
      }
    }
    rows.push(row);
  }

  for (const d of RTT_ADDED_ROWS) {
    const p50 = rows.find((r) => r.metric === d.from);
    const kernel = p50?.medians.kernel;
    if (!p50 || kernel === undefined || kernel === null) continue;
    const added: SummaryRow = {
      metric: d.metric, label: d.label, unit: 'µs', better: 'lower',
      medians: {}, runs: {}, range: {}, ratio: null, goal: null,
    };
    for (const n of RUNNER_ORDER) {
      const v = p50.medians[n];
      if (v === undefined) continue;
      added.medians[n] = v === null ? null : v - kernel;
      added.runs[n] = p50.runs[n] ?? 0;
    }
    added.goal = { text: goalText(RTT_ADDED_GOAL), met: goalMet(RTT_ADDED_GOAL, added.medians.userspace ?? null, null) };
    rows.push(added);
  }
  return rows;
}

/** Three significant digits, no exponent; integers above 1000 with thousands separators. */
export function formatValue(v: number | null | undefined): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return '—';
  const a = Math.abs(v);
  if (a >= 1000) return Math.round(v).toLocaleString('en-US');
  if (a >= 100) return v.toFixed(0);
  if (a >= 10) return v.toFixed(1);
  if (a >= 1) return v.toFixed(2);
  if (a === 0) return '0';
  return v.toFixed(3);
}

/** Two decimals, or three where two would round across the floor share (0.895 must not read 0.90). */
export function formatRatio(r: number | null): string {
  if (r === null) return '—';
  const two = r.toFixed(2);
  // Rounding must not move the ratio to the other side of (or onto) a threshold a reader compares it with.
  const crosses = (x: number) => Math.sign(r - x) !== Math.sign(Number(two) - x);
  return `${crosses(FLOOR_SHARE) || crosses(1 / FLOOR_SHARE) || crosses(1) ? r.toFixed(3) : two}×`;
}

export function goalCell(row: SummaryRow): string {
  if (!row.goal) return '';
  const verdict = row.goal.met === null ? 'n/a' : row.goal.met ? 'met' : 'MISSED';
  const floor = row.floorGoal ? `; ${row.floorGoal.text}: ${row.floorGoal.met ? 'met' : 'MISSED'}` : '';
  return `${row.goal.text}: ${verdict}${floor}${row.goal.note ? ` (${row.goal.note})` : ''}`;
}

function runValues(runs: readonly RunRecord[], m: MeasurementName, runner: RunnerName, field: string): number[] {
  const out: number[] = [];
  for (const r of runs) {
    const v = r.measurement === m && r.runner === runner && r.values ? r.values[field] : undefined;
    if (typeof v === 'number' && Number.isFinite(v)) out.push(v);
  }
  return out;
}

/** How each of autoNotes' remarks begins (so a re-render can replace them with fresh ones). */
export const AUTO_NOTE_PREFIXES = ['UDP 64 B: the kernel delivered', 'Flows:', 'The gateway\'s kernel tracked connections'] as const;

export function isAutoNote(note: string): boolean {
  return AUTO_NOTE_PREFIXES.some((p) => note.startsWith(p));
}

/** Remarks the numbers call for, so a reader does not take a bounded number for a limit. */
export function autoNotes(runs: readonly RunRecord[]): string[] {
  const notes: string[] = [];
  const kernelLoss = median(runValues(runs, 'udp-64', 'kernel', 'lossPct'));
  if (kernelLoss !== null && kernelLoss < 1) {
    notes.push(
      `${AUTO_NOTE_PREFIXES[0]} nearly everything iperf3 sent (median loss ${formatValue(kernelLoss)} %). Over veth links the kernel forwards and translates in softirq on the CPU that sent the packet, so sender and kernel NAT share one core: the kernel column is their joint limit, not the NAT's, and the userspace/kernel ratio is an upper bound.`,
    );
  }
  for (const n of RUNNER_ORDER) {
    const attempted = median(runValues(runs, 'flows', n, 'attempted'));
    const held = median(runValues(runs, 'flows', n, 'held'));
    const delivered = median(runValues(runs, 'flows', n, 'delivered'));
    if (attempted !== null && held !== null && held < attempted) {
      notes.push(
        `${AUTO_NOTE_PREFIXES[1]} ${n} held a median ${formatValue(held)} of the ${formatValue(attempted)} flows offered at once by its own count` +
          (delivered !== null ? ` (${formatValue(delivered)} reached the internet host).` : '.'),
      );
    }
  }
  const leaked = runs.filter((r) => r.runner === 'userspace' && (r.values?.gatewayKernelFlows ?? 0) > 0);
  if (leaked.length > 0) {
    notes.push(`${AUTO_NOTE_PREFIXES[2]} during ${leaked.length} userspace run(s): those runs paid for kernel conntrack too.`);
  }
  return notes;
}
