/**
 * Runs the microbenchmark suites in order and gathers one report. Suites build their fixtures
 * lazily (they are generators), so at most one large fixture is alive at a time.
 */
import { cpus, arch, loadavg, platform, release, totalmem } from 'node:os';
import { JIT_FLAGS, jitTuned } from '../../src/util/jit.js';
import { BenchVerifyError, measure, type BenchCase, type Measurement, type TimingOptions } from './harness.js';
import { checksumCases, type ChecksumOptions } from './checksum.js';
import { conntrackCases, GOAL_IMPL, IMPLS, LOOKUP_RATIO_GOAL, countLabel, lookupName, structureLabel, type ImplName } from './conntrack.js';
import { getGc, type MemoryRecord } from './memory.js';
import { latencyCases, type LatencyOptions } from './latency.js';
import { parseCases, type ParseOptions } from './parse.js';
import { TRANSLATE_GOAL_NS, translateCases, type TranslateOptions } from './translate.js';

export const SUITES = ['parse', 'checksum', 'latency', 'conntrack', 'translate'] as const;
export type SuiteName = (typeof SUITES)[number];

export interface BenchConfig {
  mode: string;
  timing: TimingOptions;
  parse: ParseOptions;
  checksum: ChecksumOptions;
  latency: LatencyOptions;
  conntrack: { sizes: number[]; probes: number; impls: ImplName[] };
  translate: TranslateOptions;
  /** Force GCs to measure memory per flow. */
  measureMemory: boolean;
  suites: SuiteName[];
}

export const DEFAULT_CONFIG: BenchConfig = {
  mode: 'default',
  timing: { runs: 7, minRunMs: 40, warmupMs: 150 },
  parse: { packets: 256 },
  checksum: { fullBuffers: 16, packets: 1024 },
  latency: { sizes: [256 * 1024, 128 * 1024 * 1024] },
  conntrack: { sizes: [1_000, 100_000, 1_000_000], probes: 1 << 17, impls: [...IMPLS] },
  translate: { newFlowBatch: 16384, batch: 1024, flowCounts: [1, 65536], pristinePackets: 65536 },
  measureMemory: true,
  suites: [...SUITES],
};

export const QUICK_CONFIG: BenchConfig = {
  mode: 'quick',
  timing: { runs: 5, minRunMs: 8, warmupMs: 30 },
  parse: { packets: 256 },
  checksum: { fullBuffers: 16, packets: 1024 },
  latency: { sizes: [256 * 1024, 32 * 1024 * 1024] },
  conntrack: { sizes: [1_000, 100_000], probes: 1 << 14, impls: [...IMPLS] },
  translate: { newFlowBatch: 4096, batch: 1024, flowCounts: [1, 4096], pristinePackets: 8192 },
  measureMemory: true,
  suites: [...SUITES],
};

export interface MachineInfo {
  cpuModel: string;
  cpuCount: number;
  node: string;
  v8: string;
  platform: string;
  release: string;
  arch: string;
  totalMemoryMiB: number;
  /** 1-minute load average when the run started and ended: a busy machine makes slower, noisier numbers. */
  loadAverageStart: number;
  /** V8 flags the process set for itself (src/util/jit.ts), or '' if none. */
  jitFlags: string;
  loadAverageEnd: number;
}

export interface Failure {
  suite: string;
  case?: string;
  message: string;
}

export interface LookupScaling {
  structure: string;
  kind: 'hit' | 'miss';
  smallFlows: number;
  largeFlows: number;
  ratio: number;
  /** Set where the lookup goal applies: the batched FlowTable, 1 M against 1 K flows. */
  goal?: number;
  goalMet?: boolean;
}

export interface Report {
  schema: 'tunnat-bench-micro/1';
  date: string;
  ok: boolean;
  durationSeconds: number;
  machine: MachineInfo;
  config: BenchConfig;
  results: Measurement[];
  lookupScaling: LookupScaling[];
  memory: MemoryRecord[];
  failures: Failure[];
}

export function machineInfo(): Omit<MachineInfo, 'loadAverageEnd'> {
  const c = cpus();
  return {
    cpuModel: c[0]?.model.trim() ?? 'unknown',
    cpuCount: c.length,
    node: process.version,
    v8: process.versions.v8,
    platform: platform(),
    release: release(),
    arch: arch(),
    totalMemoryMiB: Math.round(totalmem() / 2 ** 20),
    loadAverageStart: loadavg()[0] ?? 0,
    jitFlags: jitTuned() ? JIT_FLAGS : '',
  };
}

export interface RunHooks {
  /** A case is about to be measured, or has been (progress output). */
  onCase?: (c: BenchCase) => void;
  onResult?: (m: Measurement) => void;
  onFailure?: (f: Failure) => void;
}

function failureOf(suite: string, caseName: string | undefined, e: unknown): Failure {
  // A wrong answer is reported by its message; anything else is a bug, so keep its stack.
  const message = e instanceof BenchVerifyError ? e.message : e instanceof Error ? (e.stack ?? e.message) : String(e);
  const f: Failure = { suite, message };
  if (caseName !== undefined) f.case = caseName;
  return f;
}

export function lookupScaling(results: readonly Measurement[]): LookupScaling[] {
  const out: LookupScaling[] = [];
  for (const impl of IMPLS) {
    for (const kind of ['hit', 'miss'] as const) {
      const rows = results.filter((r) => r.group === 'conntrack' && r.name === lookupName(impl, kind));
      if (rows.length < 2) continue;
      const small = rows.reduce((a, b) => (b.size < a.size ? b : a));
      const large = rows.reduce((a, b) => (b.size > a.size ? b : a));
      const s: LookupScaling = {
        structure: structureLabel(impl),
        kind,
        smallFlows: small.size,
        largeFlows: large.size,
        ratio: large.medianNs / small.medianNs,
      };
      if (impl === GOAL_IMPL && small.size === 1_000 && large.size === 1_000_000) {
        s.goal = LOOKUP_RATIO_GOAL;
        s.goalMet = s.ratio <= LOOKUP_RATIO_GOAL;
      }
      out.push(s);
    }
  }
  return out;
}

export function runAll(cfg: BenchConfig, hooks: RunHooks = {}): Report {
  const started = performance.now();
  const machineStart = machineInfo();
  const gc = cfg.measureMemory ? getGc() : null;
  const results: Measurement[] = [];
  const failures: Failure[] = [];
  const memory: MemoryRecord[] = [];
  const suites: Record<SuiteName, () => Iterable<BenchCase>> = {
    parse: () => parseCases(cfg.parse),
    checksum: () => checksumCases(cfg.checksum),
    latency: () => latencyCases(cfg.latency),
    conntrack: () => conntrackCases({ ...cfg.conntrack, gc, memory }),
    translate: () => translateCases(cfg.translate),
  };
  for (const suite of cfg.suites) {
    let current: string | undefined;
    try {
      for (const c of suites[suite]()) {
        current = `${c.name} (${c.sizeLabel})`;
        hooks.onCase?.(c);
        try {
          const m = measure(c, cfg.timing);
          results.push(m);
          hooks.onResult?.(m);
        } catch (e) {
          const f = failureOf(suite, current, e);
          failures.push(f);
          hooks.onFailure?.(f);
        }
        current = undefined;
        // Leave the next case a clean heap: garbage from this one's fixture must not be collected
        // inside the next one's timed loop.
        gc?.();
      }
    } catch (e) {
      // Thrown while building a fixture (the generator is finished): the rest of this suite is lost.
      const f = failureOf(suite, current ?? 'fixture', e);
      failures.push(f);
      hooks.onFailure?.(f);
    }
  }
  return {
    schema: 'tunnat-bench-micro/1',
    date: new Date().toISOString(),
    ok: failures.length === 0,
    durationSeconds: Math.round((performance.now() - started) / 100) / 10,
    machine: { ...machineStart, loadAverageEnd: machineInfo().loadAverageStart },
    config: cfg,
    results,
    lookupScaling: lookupScaling(results),
    memory,
    failures,
  };
}

export { countLabel, GOAL_IMPL, LOOKUP_RATIO_GOAL, structureLabel, TRANSLATE_GOAL_NS };
