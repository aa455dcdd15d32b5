/**
 * `npm run bench:failover`: a gateway pair in a namespace lab (src/lab/ha-topology.ts) fails again and
 * again under traffic, and this measures what the LAN sees: the outage of a UDP stream (a datagram every
 * 10 ms, echoed by the remote), whether every TCP connection lived (one sending a line every 50 ms, and
 * `--idle` idle ones, all at least a second old), and whether the remote saw one UDP mapping throughout.
 *
 * Scenarios, each in its own lab:
 * - tunnat with its flow-state sync: kill -9 of the active tunnat (--reps times, the two gateways taking
 *   turns), the whole active gateway gone (its cables pulled, --reps times), the sync link cut for
 *   --cut-seconds then a failover, the standby restarted then a failover;
 * - tunnat without sync (roles only), and the kernel's NAT with conntrackd and keepalived, and without
 *   conntrackd: the same failures, --others times each (the kernel has no process to kill: gone only).
 *
 * Prints the table, writes bench/results/failover-<time>.json, and with --write-docs the measured section
 * of docs/ha.md. Exit code: 0 when every goal of the tunnat pair holds, 1 when one does not, 2 bad usage.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, release } from 'node:os';
import { join } from 'node:path';
import { Cleanup } from '../src/lab/cleanup.js';
import { buildHaLab, type HaLab } from '../src/lab/ha-topology.js';
import { failoverOnce, MAX_IDLE, startKernelPair, startPair, type FailureKind, type Pair } from '../src/lab/ha-pair.js';
import { repoRoot } from '../src/lab/router.js';
import { summarize, table, verdict, type Row } from './failover/report.js';

const USAGE = `usage: npm run bench:failover -- [--reps N] [--others N] [--idle N] [--cut-seconds S] [--workers N] [--only NAME] [--write-docs]
  --reps N          failovers of each kind for the tunnat pair with sync (default 20)
  --others N        failovers for each comparison (no sync; the kernel with and without conntrackd) (default 5)
  --idle N          idle TCP connections kept open through each failover (default 200, at most 480)
  --cut-seconds S   how long the sync link is cut before its failover (default 30)
  --workers N       --workers of each tunnat (default: tunnat's own)
  --only NAME       one scenario: tunnat, tunnat-nosync, kernel, kernel-nosync
  --write-docs      write the figures into docs/ha.md`;

interface Args {
  reps: number;
  others: number;
  idle: number;
  cutSeconds: number;
  workers: number | undefined;
  only: string | null;
  writeDocs: boolean;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { reps: 20, others: 5, idle: 200, cutSeconds: 30, workers: undefined, only: null, writeDocs: false };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]!;
    const num = (min: number, max: number): number => {
      const v = Number(argv[++i]);
      if (!Number.isInteger(v) || v < min || v > max) throw new Error(`${k}: expected an integer in ${min}..${max}`);
      return v;
    };
    if (k === '--reps') a.reps = num(1, 1000);
    else if (k === '--others') a.others = num(0, 1000);
    else if (k === '--idle') a.idle = num(0, MAX_IDLE);
    else if (k === '--cut-seconds') a.cutSeconds = num(2, 600);
    else if (k === '--workers') a.workers = num(1, 64);
    else if (k === '--only') a.only = argv[++i] ?? '';
    else if (k === '--write-docs') a.writeDocs = true;
    else if (k === '--help' || k === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else throw new Error(`unknown argument ${k}`);
  }
  if (a.only !== null && !['tunnat', 'tunnat-nosync', 'kernel', 'kernel-nosync'].includes(a.only)) throw new Error(`--only: unknown scenario ${a.only}`);
  return a;
}

const log = (l: string): void => void process.stderr.write(`${new Date().toISOString().slice(11, 23)} ${l}\n`);

/** One lab, one pair, a list of failures in order. */
async function scenario(
  name: string,
  make: (lab: HaLab, cleanup: Cleanup) => Promise<Pair>,
  plan: { failure: string; kind: FailureKind; count: number; before?: (lab: HaLab, pair: Pair) => Promise<void> }[],
  idle: number,
): Promise<Row[]> {
  const cleanup = new Cleanup((l) => log(`cleanup: ${l}`));
  const rows: Row[] = [];
  let current: Row | null = null;
  try {
    const lab = await buildHaLab({ cleanup, lanHosts: 1 });
    const pair = await make(lab, cleanup);
    let round = 0;
    for (const p of plan) {
      const row: Row = { scenario: name, engine: pair.engine === 'userspace' ? 'tunnat' : 'kernel', sync: pair.sync ? (pair.engine === 'userspace' ? 'tunnat sync' : 'conntrackd') : 'none', failure: p.failure, results: [] };
      rows.push(row);
      current = row;
      for (let k = 0; k < p.count; k++) {
        await p.before?.(lab, pair);
        const r = await failoverOnce(pair, lab, cleanup, p.kind, { idle, round: ++round, log: (l) => log(`${name} ${p.failure} ${k + 1}/${p.count}: ${l}`) });
        row.results.push(r);
      }
    }
  } catch (err) {
    // The scenario stops here; its row says so instead of reading as if every run had worked.
    const msg = (err as Error).message.split('\n').filter((l) => l.trim() !== '').slice(0, 3).join(' ');
    log(`${name}: stopped: ${msg}`);
    if (current) current.error = msg;
    else rows.push({ scenario: name, engine: name.startsWith('kernel') ? 'kernel' : 'tunnat', sync: '?', failure: '(setting up)', results: [], error: msg });
  } finally {
    await cleanup.run();
  }
  return rows;
}

const DOCS_BEGIN = '<!-- bench:failover begin (written by npm run bench:failover -- --write-docs) -->';
const DOCS_END = '<!-- bench:failover end -->';

async function main(): Promise<number> {
  let args: Args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (err) {
    console.error(`${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  if (process.getuid?.() !== 0) {
    console.error('bench:failover needs root (namespaces, TUN devices, keepalived)');
    return 2;
  }
  const workers = args.workers !== undefined ? { workers: args.workers } : {};
  const want = (n: string) => args.only === null || args.only === n;
  const started = new Date();
  const rows: Row[] = [];
  if (want('tunnat')) {
    rows.push(
      ...(await scenario('tunnat', (lab, cleanup) => startPair({ lab, cleanup, log, ...workers }), [
        { failure: 'kill -9 of the active tunnat', kind: 'kill', count: args.reps },
        { failure: 'gateway gone (cables pulled)', kind: 'gone', count: args.reps },
        {
          failure: `after the sync link was cut ${args.cutSeconds} s (then kill -9)`,
          kind: 'kill',
          count: 1,
          before: async (lab, pair) => {
            const active = (await pair.active())!;
            const standby = pair.gateways[1 - active]!;
            const before = (await standby.status()).sync!.stats.resyncsApplied;
            log(`cutting the sync link for ${args.cutSeconds} s`);
            await lab.cutSync(true);
            await new Promise((r) => setTimeout(r, args.cutSeconds * 1000));
            await lab.cutSync(false);
            const t0 = Date.now();
            while ((await standby.status()).sync!.stats.resyncsApplied === before) {
              if (Date.now() - t0 > 20_000) throw new Error('the standby applied no full resync after the sync link came back');
              await new Promise((r) => setTimeout(r, 50));
            }
            log(`full resync applied ${Date.now() - t0} ms after the link came back`);
            await pair.waitSynced(active, 30_000);
          },
        },
        {
          failure: 'after the standby was restarted (then kill -9)',
          kind: 'kill',
          count: 1,
          before: async (_lab, pair) => {
            const active = (await pair.active())!;
            const standby = pair.gateways[1 - active]!;
            await standby.stopRouter();
            await standby.startRouter();
            await pair.waitSynced(active, 30_000);
            log(`standby restarted; full resyncs applied: ${(await standby.status()).sync!.stats.resyncsApplied}`);
          },
        },
      ], args.idle)),
    );
  }
  if (want('tunnat-nosync') && args.others > 0) {
    rows.push(
      ...(await scenario('tunnat-nosync', (lab, cleanup) => startPair({ lab, cleanup, log, sync: false, ...workers }), [
        { failure: 'kill -9 of the active tunnat', kind: 'kill', count: args.others },
        { failure: 'gateway gone (cables pulled)', kind: 'gone', count: args.others },
      ], args.idle)),
    );
  }
  if (want('kernel') && args.others > 0) {
    rows.push(...(await scenario('kernel', (lab, cleanup) => startKernelPair({ lab, cleanup, log }), [{ failure: 'gateway gone (cables pulled)', kind: 'gone', count: args.others }], args.idle)));
  }
  if (want('kernel-nosync') && args.others > 0) {
    rows.push(...(await scenario('kernel-nosync', (lab, cleanup) => startKernelPair({ lab, cleanup, log, sync: false }), [{ failure: 'gateway gone (cables pulled)', kind: 'gone', count: args.others }], args.idle)));
  }

  const sums = rows.map(summarize);
  const lines = table(sums);
  console.log(lines.join('\n'));
  const machine = `${cpus().length} × ${cpus()[0]?.model ?? 'CPU'}, Linux ${release()}, Node ${process.version}`;
  const dir = join(repoRoot(), 'bench', 'results');
  mkdirSync(dir, { recursive: true });
  const stamp = started.toISOString().slice(0, 19).replace(/:/g, '-');
  const file = join(dir, `failover-${stamp}.json`);
  writeFileSync(file, JSON.stringify({ started: started.toISOString(), machine, args, summary: sums, rows }, null, 1));
  log(`report: ${file}`);
  const ok = sums.every((s) => !verdict(s).startsWith('missed'));
  if (args.writeDocs) {
    const docs = join(repoRoot(), 'docs', 'ha.md');
    const text = readFileSync(docs, 'utf8');
    const section = [
      DOCS_BEGIN,
      `Run of ${started.toISOString().slice(0, 16).replace('T', ' ')} UTC on ${machine}; \`npm run bench:failover -- ${process.argv.slice(2).join(' ')}\`, report \`bench/results/failover-${stamp}.json\`.`,
      `Each run: a UDP stream (a datagram every 10 ms, echoed), one TCP connection sending a line every 50 ms and ${args.idle} idle ones, all opened at least 1.2 s before the failure; the outage is the stream's longest silence.`,
      '',
      ...lines,
      DOCS_END,
    ].join('\n');
    const a = text.indexOf(DOCS_BEGIN);
    const b = text.indexOf(DOCS_END);
    const next = a >= 0 && b > a ? text.slice(0, a) + section + text.slice(b + DOCS_END.length) : `${text.trimEnd()}\n\n${section}\n`;
    writeFileSync(docs, next);
    log('docs/ha.md updated');
  }
  return ok ? 0 : 1;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    console.error((err as Error).stack ?? String(err));
    process.exitCode = 1;
  },
);
