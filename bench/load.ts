/**
 * `npm run bench:load`: the same traffic through tunnat's userspace engine, the kernel's NAT and
 * (when installed) slirp4netns, in one namespace lab, runs interleaved, medians and the
 * userspace/kernel ratio. See bench/load/args.ts for the options and docs/benchmarks.md for the
 * method.
 *
 * Prints the table on stdout (progress on stderr), writes the JSON report (always; `ok` says whether
 * every run passed its checks) and, with --write-docs, the "Load" section of docs/benchmarks.md.
 * Exit code: 0 all runs passed, 1 some run failed a check or could not run, 2 bad usage or setup.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release, totalmem } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { DEFAULTS } from '../src/config/config.js';
import { Cleanup } from '../src/lab/cleanup.js';
import { repoRoot } from '../src/lab/router.js';
import { run } from '../src/util/exec.js';
import { parseLoadArgs, planFromArgs, resultsFileName, USAGE, UsageError, type LoadArgs, type Plan } from './load/args.js';
import {
  buildBenchLab,
  cliBuilt,
  decideKernelVariant,
  floorQueues,
  KERNEL_VARIANT_TEXT,
  probeTranslation,
  SLIRP_MTU,
  slirpVersion,
  startRunner,
  toolVersion,
  type BenchLab,
  type EngineName,
  type EngineSession,
  type KernelDecision,
  type RunnerName,
} from './load/engines.js';
import { MEASUREMENT_TEXT, runMeasurement, type MeasurementName, type RunValues } from './load/measure.js';
import { parseConntrackCount } from './load/parse.js';
import { DOCS_HEADING, formatText, markdownSection, renderSvg, spliceSection } from './load/render.js';
import { autoNotes, formatValue, isAutoNote, summarize, type EngineInfo, type LoadReport, type MachineInfo, type RunRecord } from './load/summary.js';

const log = (line: string): void => {
  process.stderr.write(`${line}\n`);
};

/** The number a progress line shows for a run. */
const HEADLINE: Record<MeasurementName, [string, string, number]> = {
  'tcp-bulk-1': ['gbps', 'Gbit/s', 1],
  'tcp-bulk-4': ['gbps', 'Gbit/s', 1],
  'udp-64': ['pps', 'kpps delivered', 1e-3],
  'conn-rate': ['connPerSec', 'conn/s', 1],
  'flows': ['held', 'flows held', 1],
  'latency': ['p50Us', 'µs p50', 1],
};

function openFilesLimit(): string | null {
  try {
    const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    return m ? m[1]! : null;
  } catch {
    return null;
  }
}

async function machineStart(): Promise<MachineInfo> {
  const c = cpus();
  return {
    cpuModel: c[0]?.model.trim() ?? 'unknown',
    cores: c.length,
    kernel: release(),
    node: process.version,
    totalMemoryMiB: Math.round(totalmem() / 2 ** 20),
    loadAverageStart: loadavg()[0] ?? 0,
    loadAverageEnd: 0,
    iperf3: await toolVersion(['iperf3', '--version']),
    slirp4netns: await slirpVersion(),
  };
}

interface Runner {
  plan: Plan;
  bl: BenchLab;
  kernel: KernelDecision | null;
  runs: RunRecord[];
  total: number;
}

async function oneRun(r: Runner, m: MeasurementName, runner: RunnerName, round: number): Promise<RunRecord> {
  const seq = r.runs.length + 1;
  const started = Date.now();
  const rec: RunRecord = { measurement: m, runner, round, seq, startedAt: new Date(started).toISOString(), seconds: 0, values: null, error: null };
  process.stderr.write(`[${seq}/${r.total}] ${m} · round ${round} · ${runner} … `);
  let session: EngineSession | null = null;
  try {
    session = await startRunner(r.bl, runner, {
      kernelVariant: r.kernel?.variant ?? 'kernel-manual',
      tunnatArgs: r.plan.tunnatArgs,
      ...(m === 'flows' ? { flows: r.plan.measure.flows } : {}),
    });
    await probeTranslation(r.bl, session);
    const values: RunValues = await runMeasurement(m, r.bl, session, r.plan.measure, seq);
    if (runner === 'userspace') {
      // Proof that the gateway's kernel did no connection tracking of its own under tunnat.
      const ct = await run(['conntrack', '-C'], { netns: r.bl.lab.gw.netns, allowFail: true });
      values.gatewayKernelFlows = ct.exitCode === 0 ? parseConntrackCount(ct.stdout) : null;
    }
    rec.values = values;
    const [field, unit, scale] = HEADLINE[m];
    const v = values[field];
    process.stderr.write(`${typeof v === 'number' ? formatValue(v * scale) : '—'} ${unit}`);
  } catch (err) {
    rec.error = (err as Error).message.split('\n').slice(0, 3).join(' / ');
    process.stderr.write(`FAILED: ${rec.error}`);
  } finally {
    if (session) {
      try {
        await session.stop();
      } catch (err) {
        const msg = `stopping ${runner} failed: ${(err as Error).message}`;
        rec.error = rec.error ? `${rec.error}; ${msg}` : msg;
      }
    }
  }
  rec.seconds = (Date.now() - started) / 1000;
  process.stderr.write(` (${rec.seconds.toFixed(1)} s)\n`);
  return rec;
}

function runnersFor(m: MeasurementName, engines: readonly EngineName[]): RunnerName[] {
  // Plain routing is the floor under every engine's RTT; it means nothing for the other measurements.
  // The TUN floor is the limit of any TUN reader, for everything but flows (it keeps no state).
  const floor: RunnerName[] = engines.includes('userspace') && m !== 'flows' ? ['tun-floor'] : [];
  return m === 'latency' ? [...engines, 'route', ...floor] : [...engines, ...floor];
}

function engineInfo(name: EngineName, kernel: KernelDecision | null): EngineInfo {
  switch (name) {
    case 'userspace':
      return { name, description: '`tunnat run` (userspace engine on tunnat0), default settings' };
    case 'kernel':
      return { name, description: kernel ? KERNEL_VARIANT_TEXT[kernel.variant] : 'kernel NAT' };
    case 'slirp4netns':
      return { name, description: `slirp4netns --mtu=${SLIRP_MTU} --disable-host-loopback, run in the gateway namespace for a guest namespace of its own` };
  }
}

/** --svg and --write-docs for a finished report. */
function writeOutputs(root: string, report: LoadReport, jsonPath: string, args: LoadArgs): void {
  if (args.svg !== null) {
    writeFileSync(resolve(args.svg), `${renderSvg(report)}\n`);
    process.stdout.write(`Chart written to ${resolve(args.svg)}\n`);
  }
  if (args.writeDocs) {
    const docPath = join(root, 'docs', 'benchmarks.md');
    let doc: string | null = null;
    try {
      doc = readFileSync(docPath, 'utf8');
    } catch {
      // first section of a new file
    }
    mkdirSync(dirname(docPath), { recursive: true });
    writeFileSync(docPath, spliceSection(doc, DOCS_HEADING, markdownSection(report, relative(root, jsonPath))));
    process.stdout.write(`Updated "${DOCS_HEADING.slice(3)}" in ${docPath}\n`);
  }
}

/** --render: an earlier report, re-rendered (after a change to the renderings, or to publish another run). */
function renderOnly(root: string, path: string, args: LoadArgs): number {
  const jsonPath = resolve(path);
  let report: LoadReport;
  try {
    const v = JSON.parse(readFileSync(jsonPath, 'utf8')) as Partial<LoadReport>;
    if (v.kind !== 'tunnat-load-benchmark' || v.version !== 1 || !Array.isArray(v.runs)) throw new Error('not a version 1 load benchmark report');
    report = v as LoadReport;
  } catch (err) {
    process.stderr.write(`--render ${path}: ${(err as Error).message}\n`);
    return 2;
  }
  // Rows and derived notes come from the raw runs, so a report rendered again gets today's arithmetic.
  report = { ...report, summary: summarize(report.runs), notes: [...report.notes.filter((n) => !isAutoNote(n)), ...autoNotes(report.runs)] };
  process.stdout.write(`${formatText(report)}\n`);
  writeOutputs(root, report, jsonPath, args);
  return 0;
}

async function main(): Promise<number> {
  let plan: Plan;
  let args: ReturnType<typeof parseLoadArgs>;
  try {
    args = parseLoadArgs(process.argv.slice(2));
    plan = planFromArgs(args);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    process.stderr.write(`${e.message}\n${USAGE}\n`);
    return 2;
  }
  if (args.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const root = repoRoot();
  if (args.render !== null) return renderOnly(root, args.render, args);
  if (process.getuid?.() !== 0) {
    process.stderr.write('bench:load needs root: it builds network namespaces and runs NAT engines inside them.\n');
    return 2;
  }
  const cliPath = join(root, 'dist', 'src', 'cli', 'main.js');
  if (!cliBuilt(cliPath)) {
    process.stderr.write(`${cliPath} is missing: build first (npx tsc -p tsconfig.build.json).\n`);
    return 2;
  }

  const machine = await machineStart();
  const notes: string[] = [];
  let engines = plan.engines;
  if (engines.includes('slirp4netns') && machine.slirp4netns === null) {
    if (plan.enginesExplicit) {
      process.stderr.write('--engines slirp4netns: slirp4netns is not installed (apt-get install slirp4netns).\n');
      return 2;
    }
    engines = engines.filter((e) => e !== 'slirp4netns');
    notes.push('slirp4netns is not installed here, so its column was left out.');
  }
  if (engines.includes('slirp4netns')) {
    const nofile = openFilesLimit();
    notes.push(
      `slirp4netns is a different kind of NAT: it terminates the guest's TCP connections and re-sends its UDP from host sockets, one per guest UDP endpoint, so its TCP numbers are those of a proxy and it can hold at most as many UDP endpoints as its open-files limit (${nofile ?? 'unknown'} here, inherited) allows. Its guest link has MTU ${SLIRP_MTU} (what rootless Podman gives it); the other engines' LAN has 1500.`,
    );
  }
  plan = { ...plan, engines };

  const started = new Date();
  const cleanup = new Cleanup(log);
  const trap = cleanup.trapSignals();
  const runs: RunRecord[] = [];
  let kernel: KernelDecision | null = null;
  let setupError: unknown = null;
  let seen = new Set<string>();
  try {
    log(`bench:load (${plan.mode}): engines ${engines.join(', ')}; ${plan.rounds} round(s); ${plan.measurements.join(', ')}`);
    const bl = await buildBenchLab({ addresses: plan.flowAddresses, withSlirp: engines.includes('slirp4netns'), cleanup, log, cliPath });
    seen = bl.notes;
    if (plan.tunnatArgs.length > 0) bl.notes.add(`the userspace engine ran as \`tunnat run … ${plan.tunnatArgs.join(' ')}\` (not the defaults)`);
    else bl.notes.add(`the userspace engine ran with its defaults: ${floorQueues([])} data-plane worker(s), one per core (\`--workers auto\`), and an adaptive busy poll of up to ${DEFAULTS.busyPoll} µs (\`--busy-poll ${DEFAULTS.busyPoll}\`)`);
    if (engines.includes('kernel')) {
      kernel = await decideKernelVariant(bl, args.kernel);
      log(`kernel column: ${KERNEL_VARIANT_TEXT[kernel.variant]} (${kernel.reason})`);
    }
    const total = plan.measurements.reduce((n, m) => n + runnersFor(m, engines).length * plan.rounds, 0);
    const r: Runner = { plan, bl, kernel, runs, total };
    for (const m of plan.measurements) {
      log(`— ${MEASUREMENT_TEXT[m]}`);
      for (let round = 1; round <= plan.rounds; round++) {
        for (const runner of runnersFor(m, engines)) runs.push(await oneRun(r, m, runner, round));
      }
    }
  } catch (err) {
    setupError = err;
  } finally {
    await cleanup.run();
    trap.release();
  }
  if (setupError !== null) {
    log(`bench:load could not run: ${(setupError as Error).stack ?? String(setupError)}`);
    return 2;
  }

  machine.loadAverageEnd = loadavg()[0] ?? 0;
  const report: LoadReport = {
    kind: 'tunnat-load-benchmark',
    version: 1,
    date: started.toISOString(),
    mode: plan.mode,
    ok: runs.every((x) => x.error === null),
    durationSeconds: (Date.now() - started.getTime()) / 1000,
    config: {
      ...plan.measure,
      rounds: plan.rounds,
      measurements: plan.measurements,
      engines,
      flowAddresses: plan.flowAddresses,
      restartPolicy: 'every run starts its engine afresh and stops it afterwards (after a kernel run the gateway\'s ruleset is flushed and its conntrack table emptied), so no run inherits flows, JIT state or netfilter hooks from another',
      interleaving: 'per measurement: round 1 runs each engine once in column order, then round 2, …',
    },
    kernel: kernel ? { variant: kernel.variant, description: KERNEL_VARIANT_TEXT[kernel.variant], reason: kernel.reason, ruleset: kernel.ruleset } : null,
    engines: engines.map((e) => engineInfo(e, kernel)),
    notes: [...notes, ...seen, ...autoNotes(runs)],
    machine,
    runs,
    summary: summarize(runs),
  };

  process.stdout.write(`\n${formatText(report)}\n`);
  const jsonPath = args.json !== null ? resolve(args.json) : join(root, 'bench', 'results', resultsFileName(started, plan.mode === 'quick'));
  mkdirSync(dirname(jsonPath), { recursive: true });
  writeFileSync(jsonPath, `${JSON.stringify(report, null, 2)}\n`);
  process.stdout.write(`Results written to ${jsonPath}\n`);
  writeOutputs(root, report, jsonPath, args);
  return report.ok ? 0 : 1;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`bench:load: ${(err as Error).stack ?? String(err)}\n`);
    process.exitCode = 1;
  },
);
