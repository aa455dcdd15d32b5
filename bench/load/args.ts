/** Command line and the two presets of `npm run bench:load`. Pure. */
import { ENGINES, type EngineName, type KernelChoice } from './engines.js';
import { FLOW_FIRST_PORT, FLOW_PORT_CEILING } from './programs.js';
import { MEASUREMENTS, type MeasureConfig, type MeasurementName } from './measure.js';

export const USAGE = `usage: node dist/bench/load.js [--quick] [--rounds N] [--only LIST] [--engines LIST]
                              [--kernel auto|tunnat|manual] [--flows N] [--seconds S]
                              [--json PATH] [--write-docs] [--svg PATH] [--render PATH]
  --quick          one round, short runs, 10 K flows (about a minute)
  --rounds N       interleaved rounds per measurement (default 3; --quick 1)
  --only LIST      measurements to run: ${MEASUREMENTS.join(',')}
  --engines LIST   engines to compare: ${ENGINES.join(',')} (default: all; slirp4netns only if installed)
  --tunnat-args A  extra flags for the userspace engine's \`tunnat run\`, space-separated (e.g. "--busy-poll 50")
  --kernel WHICH   kernel column: tunnat = \`tunnat run --engine kernel\`, manual = iptables MASQUERADE
                   stand-in, auto = tunnat's when it works here, else the stand-in (default)
  --flows N        concurrent UDP flows to open (default 100000; --quick 10000)
  --seconds S      duration of the TCP, UDP and connection runs (default 5; --quick 2)
  --json PATH      write the JSON report here (default bench/results/load-<timestamp>[-quick].json)
  --write-docs     replace the "Load" section of docs/benchmarks.md with this run
  --svg PATH       also write the chart to a file
  --render PATH    run nothing: print, and with --write-docs/--svg write, an earlier JSON report
Needs root (it builds network namespaces) and a built dist/ (npx tsc -p tsconfig.build.json).`;

export class UsageError extends Error {}

export interface LoadArgs {
  quick: boolean;
  rounds: number | null;
  only: MeasurementName[] | null;
  engines: EngineName[] | null;
  kernel: KernelChoice;
  flows: number | null;
  seconds: number | null;
  json: string | null;
  writeDocs: boolean;
  svg: string | null;
  /** Re-render this JSON report instead of running. */
  render: string | null;
  /** Extra \`tunnat run\` flags for the userspace engine. */
  tunnatArgs: string[];
  help: boolean;
}

function list<T extends string>(flag: string, value: string, known: readonly T[]): T[] {
  const names = value.split(',').map((s) => s.trim()).filter((s) => s !== '');
  const bad = names.filter((n) => !(known as readonly string[]).includes(n));
  if (names.length === 0 || bad.length > 0) throw new UsageError(`${flag}: unknown ${bad.join(', ') || '(empty list)'}; known: ${known.join(', ')}`);
  return [...new Set(names)] as T[];
}

function integer(flag: string, value: string, min: number, max: number): number {
  const n = /^\d+$/.test(value) ? Number(value) : NaN;
  if (!(Number.isInteger(n) && n >= min && n <= max)) throw new UsageError(`${flag}: expected an integer in ${min}..${max}, got ${JSON.stringify(value)}`);
  return n;
}

export function parseLoadArgs(argv: readonly string[]): LoadArgs {
  const a: LoadArgs = {
    quick: false, rounds: null, only: null, engines: null, kernel: 'auto', flows: null, seconds: null,
    json: null, writeDocs: false, svg: null, render: null, tunnatArgs: [], help: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined || v.startsWith('--')) throw new UsageError(`${arg} needs a value`);
      return v;
    };
    switch (arg) {
      case '--quick': a.quick = true; break;
      case '--write-docs': a.writeDocs = true; break;
      case '--help': case '-h': a.help = true; break;
      case '--rounds': a.rounds = integer(arg, value(), 1, 20); break;
      case '--only': a.only = list(arg, value(), MEASUREMENTS); break;
      case '--engines': a.engines = list(arg, value(), ENGINES); break;
      case '--flows': a.flows = integer(arg, value(), 100, 1_000_000); break;
      case '--seconds': a.seconds = integer(arg, value(), 1, 60); break;
      case '--json': a.json = value(); break;
      case '--svg': a.svg = value(); break;
      case '--render': a.render = value(); break;
      case '--tunnat-args': {
        // Its value is itself flags ("--busy-poll 50"), so it may start with "--".
        const v = argv[++i];
        if (v === undefined) throw new UsageError(`${arg} needs a value`);
        a.tunnatArgs = v.split(/\s+/).filter((w) => w !== '');
        break;
      }
      case '--kernel': {
        const v = value();
        if (v !== 'auto' && v !== 'tunnat' && v !== 'manual') throw new UsageError(`--kernel: expected auto, tunnat or manual, got ${JSON.stringify(v)}`);
        a.kernel = v;
        break;
      }
      default:
        throw new UsageError(`unknown argument ${arg}`);
    }
  }
  return a;
}

export interface Plan {
  mode: 'quick' | 'default';
  rounds: number;
  measurements: MeasurementName[];
  /** Requested engines; slirp4netns is dropped later when it is not installed and was not asked for by name. */
  engines: EngineName[];
  enginesExplicit: boolean;
  /** Source addresses per client (spreads flows and connections). */
  flowAddresses: number;
  measure: MeasureConfig;
  tunnatArgs: string[];
}

export const DEFAULT_MEASURE: MeasureConfig = {
  tcpSeconds: 5,
  udpSeconds: 5,
  connSeconds: 5,
  connConcurrency: 64,
  flows: 100_000,
  flowDestPorts: 2,
  flowRate: 25_000,
  pings: 1000,
  pingIntervalS: 0.005,
  pingWarmup: 2000,
};

export const QUICK_MEASURE: MeasureConfig = {
  tcpSeconds: 2,
  udpSeconds: 2,
  connSeconds: 2,
  connConcurrency: 32,
  flows: 10_000,
  flowDestPorts: 2,
  flowRate: 25_000,
  pings: 200,
  pingIntervalS: 0.005,
  pingWarmup: 2000,
};

export function planFromArgs(a: LoadArgs): Plan {
  const base = a.quick ? QUICK_MEASURE : DEFAULT_MEASURE;
  const measure: MeasureConfig = { ...base };
  if (a.flows !== null) measure.flows = a.flows;
  // Every LAN endpoint holds one public port (endpoint-independent mapping) and one public address has
  // about 54 K of them outside the gateway's own range, so more flows come from more destination ports
  // per endpoint, not from more endpoints (at most 50 K of them).
  measure.flowDestPorts = Math.max(measure.flowDestPorts, Math.ceil(measure.flows / 50_000));
  if (a.seconds !== null) {
    measure.tcpSeconds = a.seconds;
    measure.udpSeconds = a.seconds;
    measure.connSeconds = a.seconds;
  }
  return {
    mode: a.quick ? 'quick' : 'default',
    rounds: a.rounds ?? (a.quick ? 1 : 3),
    measurements: a.only ?? [...MEASUREMENTS],
    engines: a.engines ?? [...ENGINES],
    enginesExplicit: a.engines !== null,
    // Enough source addresses that every flow gets its own port below the ceiling (4 for 100 K flows).
    flowAddresses: Math.max(4, Math.ceil(measure.flows / ((FLOW_PORT_CEILING - FLOW_FIRST_PORT + 1) * measure.flowDestPorts))),
    measure,
    tunnatArgs: a.tunnatArgs,
  };
}

/** `load-2026-11-25T17-42-03[-quick].json`: sortable, one file per run. */
export function resultsFileName(date: Date, quick: boolean): string {
  const stamp = date.toISOString().slice(0, 19).replace(/:/g, '-');
  return `load-${stamp}${quick ? '-quick' : ''}.json`;
}
