/**
 * `npm run bench:compare -- REF`: the microbenchmarks of two builds side by side, to tell whether a
 * change made the hot path slower.
 *
 *   node dist/bench/compare.js --before DIR [--after DIR] [--only SUITE,…] [--rounds N] [--procs N] [--json PATH]
 *
 * DIR is a checkout whose dist/ is built (scripts/bench-compare.sh builds one from a git ref). Both
 * builds' cases run in the same process, their timed runs interleaved A B B A A B …, so a slow spell of
 * this shared machine hits both sides alike; each pair of neighbouring runs gives one after/before
 * ratio, and a case's figure is the median of those ratios. V8 may compile the same code a little
 * differently in another process, so the whole comparison is repeated in `--procs` fresh processes
 * and the figure reported is the median over them. A case whose name starts with "established" is
 * judged against the 5 % regression limit (ratio ≤ 1.05). Both builds run with the data plane's JIT
 * settings (src/util/jit.ts), as the router runs; `--default-jit` leaves V8's own.
 */
import { fork } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { median, timedRun, warmUp, type BenchCase, type TimingOptions } from './lib/harness.js';
import { DEFAULT_CONFIG, type BenchConfig } from './lib/run.js';
import { JIT_FLAGS, tuneJit } from '../src/util/jit.js';

/** Suites whose cases need nothing but their options, so two builds can be set up alike. */
const SUITES = ['parse', 'checksum', 'translate'] as const;
type Suite = (typeof SUITES)[number];
const MODULES: Record<Suite, [file: string, exported: string]> = {
  parse: ['parse.js', 'parseCases'],
  checksum: ['checksum.js', 'checksumCases'],
  translate: ['translate.js', 'translateCases'],
};

/** The regression limit for established-packet cases: after / before. */
export const REGRESSION_LIMIT = 1.05;

const USAGE = `usage: node dist/bench/compare.js --before DIR [--after DIR] [--only ${SUITES.join(',')}] [--rounds N] [--procs N] [--json PATH]
  --before DIR  checkout with a built dist/ to compare against
  --after DIR   the checkout under test (default: this one)
  --only LIST   suites to compare (default: translate)
  --rounds N    interleaved pairs of timed runs per case and process (default 15)
  --procs N     fresh processes, each a whole comparison (default 5)
  --json PATH   write the report as JSON
  --match TEXT  only the cases whose name or size contains TEXT
  --default-jit V8's own inlining budget instead of the data plane's (src/util/jit.ts)`;

interface Args {
  before: string;
  after: string;
  only: Suite[];
  rounds: number;
  procs: number;
  json: string | null;
  child: boolean;
  defaultJit: boolean;
  match: string | null;
}

class UsageError extends Error {}

function repoRoot(): string {
  // dist/bench/compare.js → the checkout's root.
  return resolve(fileURLToPath(new URL('.', import.meta.url)), '..', '..');
}

function parseArgs(argv: string[]): Args {
  const a: Args = { before: '', after: repoRoot(), only: ['translate'], rounds: 15, procs: 5, json: null, child: false, defaultJit: false, match: null };
  const positive = (flag: string, v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new UsageError(`${flag} needs a positive integer, not ${v}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--child') {
      a.child = true;
      continue;
    }
    if (arg === '--default-jit') {
      a.defaultJit = true;
      continue;
    }
    if (arg === '--help' || arg === '-h') {
      process.stdout.write(`${USAGE}\n`);
      process.exit(0);
    }
    const v = argv[++i];
    if (v === undefined || v.startsWith('--')) throw new UsageError(`${arg} needs a value`);
    if (arg === '--before') a.before = resolve(v);
    else if (arg === '--after') a.after = resolve(v);
    else if (arg === '--rounds') a.rounds = positive(arg, v);
    else if (arg === '--procs') a.procs = positive(arg, v);
    else if (arg === '--json') a.json = v;
    else if (arg === '--match') a.match = v;
    else if (arg === '--only') {
      const names = v.split(',').filter((s) => s !== '');
      const bad = names.filter((s) => !(SUITES as readonly string[]).includes(s));
      if (bad.length > 0 || names.length === 0) throw new UsageError(`--only: unknown suite ${bad.join(', ') || '(none)'}`);
      a.only = names as Suite[];
    } else throw new UsageError(`unknown argument ${arg}`);
  }
  if (a.before === '') throw new UsageError('--before is required');
  return a;
}

/** One case compared in one process: every run's ns/op on each side, in order. */
interface PairRuns {
  key: string;
  beforeNs: number[];
  afterNs: number[];
}

type CaseSource = (cfg: BenchConfig) => Iterable<BenchCase>;

async function loadSuite(dir: string, suite: Suite): Promise<CaseSource> {
  const [file, name] = MODULES[suite];
  const mod = (await import(pathToFileURL(join(dir, 'dist', 'bench', 'lib', file)).href)) as Record<string, unknown>;
  const gen = mod[name];
  if (typeof gen !== 'function') throw new Error(`${dir}: dist/bench/lib/${file} has no ${name}`);
  return (cfg) => (gen as (o: unknown) => Iterable<BenchCase>)(cfg[suite]);
}

/** Child: one whole comparison, printed as JSON on stdout. */
async function runChild(a: Args, order: number): Promise<PairRuns[]> {
  const timing: TimingOptions = { ...DEFAULT_CONFIG.timing };
  const out: PairRuns[] = [];
  for (const suite of a.only) {
    // Which build is loaded and set up first alternates between processes.
    const dirs = order % 2 === 0 ? [a.before, a.after] : [a.after, a.before];
    const sources = await Promise.all(dirs.map((d) => loadSuite(d, suite)));
    const iters = sources.map((s) => s(DEFAULT_CONFIG)[Symbol.iterator]());
    for (;;) {
      const next = iters.map((it) => it.next());
      if (next.some((n) => n.done)) {
        if (!next.every((n) => n.done)) throw new Error(`${suite}: the two builds have different cases`);
        break;
      }
      const cases = next.map((n) => n.value as BenchCase);
      const [first, second] = cases as [BenchCase, BenchCase];
      if (first.name !== second.name || first.sizeLabel !== second.sizeLabel) {
        throw new Error(`${suite}: case ${first.name} (${first.sizeLabel}) against ${second.name} (${second.sizeLabel})`);
      }
      if (a.match !== null && !`${first.name} · ${first.sizeLabel}`.includes(a.match)) continue;
      const n = cases.map((c) => warmUp(c, timing));
      const ns: number[][] = [[], []];
      for (let r = 0; r < a.rounds; r++) {
        const seq = r % 2 === 0 ? [0, 1] : [1, 0];
        for (const s of seq) ns[s]!.push(timedRun(cases[s]!, n[s]!) / n[s]!);
      }
      const beforeIdx = dirs[0] === a.before ? 0 : 1;
      out.push({ key: `${first.group} · ${first.name} · ${first.sizeLabel}`, beforeNs: ns[beforeIdx]!, afterNs: ns[1 - beforeIdx]! });
    }
  }
  return out;
}

function runProcess(argv: string[], order: number): Promise<PairRuns[]> {
  return new Promise((res, rej) => {
    const child = fork(fileURLToPath(import.meta.url), [...argv, '--child'], {
      stdio: ['ignore', 'pipe', 'inherit', 'ipc'],
      env: { ...process.env, TUNNAT_COMPARE_ORDER: String(order) },
    });
    let text = '';
    child.stdout!.on('data', (d: Buffer) => (text += d.toString()));
    child.on('exit', (code) => {
      if (code !== 0) rej(new Error(`comparison process ${order} exited with ${code}`));
      else res(JSON.parse(text) as PairRuns[]);
    });
  });
}

interface Row {
  key: string;
  beforeNs: number;
  afterNs: number;
  /** Median over processes of each process's median pair ratio. */
  ratio: number;
  ratiosPerProcess: number[];
  judged: boolean;
  ok: boolean;
}

function summarise(all: PairRuns[][]): Row[] {
  const keys = all[0]!.map((p) => p.key);
  return keys.map((key) => {
    const per = all.map((runs) => runs.find((p) => p.key === key)!);
    const ratios = per.map((p) => median(p.afterNs.map((v, i) => v / p.beforeNs[i]!)));
    const ratio = median(ratios);
    const judged = key.split(' · ')[1]!.startsWith('established');
    return {
      key,
      beforeNs: median(per.flatMap((p) => p.beforeNs)),
      afterNs: median(per.flatMap((p) => p.afterNs)),
      ratio,
      ratiosPerProcess: ratios,
      judged,
      ok: !judged || ratio <= REGRESSION_LIMIT,
    };
  });
}

function format(rows: Row[], a: Args): string {
  const lines = [
    `before: ${a.before}`,
    `after:  ${a.after}`,
    `JIT: ${a.defaultJit ? "V8's defaults" : JIT_FLAGS} (both builds)`,
    `${a.procs} processes × ${a.rounds} interleaved pairs of ${DEFAULT_CONFIG.timing.minRunMs} ms runs per case; ratio = after / before (median of pair ratios, then of processes)`,
    '',
  ];
  const w = Math.max(...rows.map((r) => r.key.length));
  lines.push(`${'case'.padEnd(w)}  before ns  after ns  ratio  per process             verdict`);
  for (const r of rows) {
    const verdict = r.judged ? (r.ok ? `≤ ${REGRESSION_LIMIT} ok` : `> ${REGRESSION_LIMIT} REGRESSED`) : '';
    lines.push(`${r.key.padEnd(w)}  ${r.beforeNs.toFixed(1).padStart(9)}  ${r.afterNs.toFixed(1).padStart(8)}  ${r.ratio.toFixed(3)}  ${r.ratiosPerProcess.map((x) => x.toFixed(2)).join(' ').padEnd(22)}  ${verdict}`);
  }
  return lines.join('\n');
}

async function main(): Promise<number> {
  let a: Args;
  const argv = process.argv.slice(2);
  try {
    a = parseArgs(argv);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    process.stderr.write(`${e.message}\n${USAGE}\n`);
    return 2;
  }
  if (a.child) {
    // Both builds run with the data plane's JIT settings (src/util/jit.ts), unless --default-jit.
    if (!a.defaultJit) tuneJit();
    const runs = await runChild(a, Number(process.env['TUNNAT_COMPARE_ORDER'] ?? 0));
    process.stdout.write(JSON.stringify(runs));
    return 0;
  }
  const all: PairRuns[][] = [];
  for (let p = 0; p < a.procs; p++) {
    process.stderr.write(`process ${p + 1}/${a.procs} …\n`);
    all.push(await runProcess(argv, p));
  }
  const rows = summarise(all);
  if (rows.length === 0) {
    // Nothing was compared: that must not read as "no regression".
    process.stderr.write(`no case${a.match === null ? '' : ` matches --match ${a.match}`}\n`);
    return 2;
  }
  process.stdout.write(`${format(rows, a)}\n`);
  if (a.json !== null) writeFileSync(a.json, `${JSON.stringify({ schema: 'tunnat-bench-compare/1', date: new Date().toISOString(), before: a.before, after: a.after, rounds: a.rounds, procs: a.procs, jitFlags: a.defaultJit ? '' : JIT_FLAGS, rows }, null, 2)}\n`);
  return rows.every((r) => r.ok) ? 0 : 1;
}

main().then((code) => process.exit(code), (e: unknown) => {
  process.stderr.write(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});
