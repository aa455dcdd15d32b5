/**
 * The long data-plane fuzz run (CI runs a bounded slice of it in test/fuzz/dataplane.test.ts).
 *
 *   npx vite-node scripts/fuzz.ts -- [--seconds 600] [--seed N] [--packets 50000] [--config NAME|all]
 *                                    [--strict] [--json FILE]
 *
 * Sessions of --packets packets run one after another, cycling through the configurations of
 * test/fuzz/lib/rig.ts with seeds N, N+1, …, until --seconds have passed. Each session prints one line;
 * a failure prints what broke, the packet and its batch as hex, and the exact command that replays it
 * (same config, seed and packet count). Exit code 1 if any session failed.
 *
 *   npx vite-node scripts/fuzz.ts -- --heap 3000000
 *
 * --heap N instead runs N packets of the same traffic through Translator, Dataplane, Observatory and the
 * metrics registry with a forced full garbage collection before each of 30 samples, and prints the heap
 * that is live (test/fuzz/lib/heap.ts): a flat line means no per-packet or per-flow leak.
 *
 * The residual cases of bug 7 (a refused new flow that had already evicted a live one; see
 * tolerateEvictThenRefuse in test/fuzz/lib/rig.ts) are counted, not failed; --strict makes them failures.
 *
 * vite-node runs the TypeScript directly (it ships with vitest; no build step, no test runner).
 */
import { writeFileSync } from 'node:fs';
import { FUZZ_CONFIGS, describeFailure, fuzzConfig, runFuzz, type RunResult } from '../test/fuzz/lib/rig.js';
import { heapRun } from '../test/fuzz/lib/heap.js';

interface Args {
  seconds: number;
  seed: number;
  packets: number;
  config: string;
  strict: boolean;
  json: string | null;
  heap: number;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { seconds: 600, seed: Date.now() % 1_000_000, packets: 50_000, config: 'all', strict: false, json: null, heap: 0 };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]!;
    const v = argv[i + 1];
    const num = (): number => {
      const n = Number(v);
      if (!Number.isFinite(n) || n < 0) throw new Error(`${k} needs a number, got ${v}`);
      i++;
      return n;
    };
    if (k === '--') continue;
    else if (k === '--seconds') a.seconds = num();
    else if (k === '--seed') a.seed = num();
    else if (k === '--packets') a.packets = num();
    else if (k === '--config') {
      a.config = v ?? 'all';
      i++;
    } else if (k === '--json') {
      a.json = v ?? null;
      i++;
    } else if (k === '--heap') a.heap = num();
    else if (k === '--strict') a.strict = true;
    else if (k === '--help' || k === '-h') {
      process.stdout.write('usage: npx vite-node scripts/fuzz.ts -- [--seconds N] [--seed N] [--packets N] [--config NAME|all] [--strict] [--json FILE] | --heap PACKETS\n');
      process.exit(0);
    } else throw new Error(`unknown argument ${k}`);
  }
  return a;
}

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  if (args.heap > 0) {
    const samples = await heapRun(args.heap, 30, args.seed, (s) => process.stdout.write(`${JSON.stringify(s)}\n`));
    const first = samples[1] ?? samples[0]!; // the first sample is taken before the table fills
    const last = samples[samples.length - 1]!;
    process.stdout.write(`heap live after full GC: ${first.heapLiveMiB} MiB at ${first.packets} packets → ${last.heapLiveMiB} MiB at ${last.packets} packets (${last.flowsCreated} flows created)\n`);
    return 0;
  }
  const configs = args.config === 'all' ? FUZZ_CONFIGS : [fuzzConfig(args.config)];
  const deadline = Date.now() + args.seconds * 1000;
  const results: RunResult[] = [];
  process.stdout.write(`fuzz: ${args.seconds} s, first seed ${args.seed}, ${args.packets} packets per session, configs ${configs.map((c) => c.name).join(', ')}\n`);
  let seed = args.seed;
  for (let i = 0; Date.now() < deadline; i++) {
    const config = configs[i % configs.length]!;
    const r = runFuzz({ config, seed, packets: args.packets, timeBudgetMs: deadline - Date.now(), tolerateEvictThenRefuse: !args.strict });
    results.push(r);
    process.stdout.write(
      `${r.failure ? 'FAIL' : 'ok  '} ${config.name.padEnd(22)} seed ${String(seed).padEnd(8)} ` +
      `${String(r.packets).padStart(7)} pkts ${String(r.elapsedMs).padStart(6)} ms  flows≤${r.peakFlows} maps≤${r.peakMappings}` +
      `${Object.keys(r.evictedForRefused).length ? `  evicted-for-refused ${JSON.stringify(r.evictedForRefused)}` : ''}\n`,
    );
    if (r.failure) process.stdout.write(describeFailure(r) + '\n');
    if (i % configs.length === configs.length - 1) seed++;
  }

  const total = results.reduce((n, r) => n + r.packets, 0);
  const ms = results.reduce((n, r) => n + r.elapsedMs, 0);
  const drops: Record<string, number> = {};
  const coverage: Record<string, number> = {};
  const evictedForRefused: Record<string, number> = {};
  const verdicts = { forward: 0, drop: 0, held: 0 };
  for (const r of results) {
    for (const [k, n] of Object.entries(r.drops)) drops[k] = (drops[k] ?? 0) + n;
    for (const [k, n] of Object.entries(r.coverage)) coverage[k] = (coverage[k] ?? 0) + n;
    for (const [k, n] of Object.entries(r.evictedForRefused)) evictedForRefused[k] = (evictedForRefused[k] ?? 0) + n;
    verdicts.forward += r.verdicts.forward;
    verdicts.drop += r.verdicts.drop;
    verdicts.held += r.verdicts.held;
  }
  const failures = results.filter((r) => r.failure);
  const summary = {
    sessions: results.length,
    failures: failures.length,
    packets: total,
    packetsPerSecond: ms > 0 ? Math.round((total / ms) * 1000) : 0,
    verdicts,
    drops,
    coverage,
    evictedForRefused,
    flowsCreated: results.reduce((n, r) => n + r.flowsCreated, 0),
    sentinelExchanges: results.reduce((n, r) => n + r.sentinelExchanges, 0),
  };
  process.stdout.write(`summary: ${JSON.stringify(summary, null, 2)}\n`);
  if (args.json) writeFileSync(args.json, JSON.stringify({ args, summary, results }, null, 2));
  return failures.length > 0 ? 1 : 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
    process.exitCode = 1;
  },
);
