/**
 * `npm run bench`: tunnat's hot-path microbenchmarks (parse, checksums, conntrack lookups against
 * Map and lru-cache, new-flow set-up, established-packet translation).
 *
 *   node dist/bench/micro.js [--quick] [--json PATH] [--only SUITE[,SUITE…]]
 *
 * Prints a table on stdout (progress goes to stderr) and writes the report as JSON, by default to
 * bench/results/micro-<date>.json (micro-<date>-quick.json for --quick). Every benchmark checks its
 * own answers: any wrong one makes the exit code 1 and no default results file is written.
 */
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { formatNs, formatReport, writeReport } from './lib/report.js';
import { DEFAULT_CONFIG, QUICK_CONFIG, runAll, SUITES, type BenchConfig, type SuiteName } from './lib/run.js';
import { tuneJit } from '../src/util/jit.js';

const USAGE = `usage: node dist/bench/micro.js [--quick] [--json PATH] [--only ${SUITES.join(',')}]
  --quick       smaller tables, fewer and shorter runs (about 15 s)
  --json PATH   write the JSON report to PATH (default: bench/results/micro-<date>[-quick].json)
  --only LIST   run only these suites (comma-separated)`;

interface Args {
  quick: boolean;
  json: string | null;
  only: SuiteName[] | null;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { quick: false, json: null, only: null };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--quick') a.quick = true;
    else if (arg === '--json' || arg === '--only') {
      const v = argv[++i];
      if (v === undefined || v.startsWith('--')) throw new UsageError(`${arg} needs a value`);
      if (arg === '--json') a.json = v;
      else {
        const names = v.split(',').filter((s) => s !== '');
        const bad = names.filter((s) => !(SUITES as readonly string[]).includes(s));
        if (bad.length > 0 || names.length === 0) throw new UsageError(`--only: unknown suite ${bad.join(', ') || '(none)'}`);
        a.only = names as SuiteName[];
      }
    } else if (arg === '--help' || arg === '-h') {
      process.stdout.write(`${USAGE}\n`);
      process.exit(0);
    } else throw new UsageError(`unknown argument ${arg}`);
  }
  return a;
}

class UsageError extends Error {}

/** The checkout's root: the nearest directory above this file with a package.json (works from dist/ too). */
function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const up = dirname(dir);
    if (up === dir) return process.cwd();
    dir = up;
  }
  return dir;
}

function main(): number {
  let args: Args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    process.stderr.write(`${e.message}\n${USAGE}\n`);
    return 2;
  }
  const base = args.quick ? QUICK_CONFIG : DEFAULT_CONFIG;
  const cfg: BenchConfig = { ...base, suites: args.only ?? base.suites };
  const report = runAll(cfg, {
    onCase: (c) => process.stderr.write(`  ${c.group} · ${c.name} · ${c.sizeLabel} … `),
    onResult: (m) => process.stderr.write(`${formatNs(m.medianNs)} ns/op\n`),
    onFailure: (f) => process.stderr.write(`FAILED\n    ${f.message.split('\n')[0]}\n`),
  });
  process.stdout.write(`\n${formatReport(report)}\n`);

  const day = report.date.slice(0, 10);
  const path = args.json !== null
    ? resolve(args.json)
    : join(repoRoot(), 'bench', 'results', `micro-${day}${args.quick ? '-quick' : ''}.json`);
  if (report.ok || args.json !== null) {
    writeReport(path, report);
    process.stdout.write(`Results written to ${path}\n`);
  } else {
    process.stdout.write('No results file written: a benchmark failed.\n');
  }
  return report.ok ? 0 : 1;
}

// Measure the code as the data plane runs it: with the data plane's JIT settings (src/util/jit.ts).
tuneJit();
process.exitCode = main();
