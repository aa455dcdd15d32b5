/**
 * The six measurements. Each takes a running engine session and returns named numbers for one run;
 * each checks its own answer (the far side saw the translated address, the traffic really went
 * through, counts add up) and throws when it does not, so a wrong number never reaches a median.
 */
import { readFileSync } from 'node:fs';
import { run } from '../../src/util/exec.js';
import { spawnIn, type NsProcess } from '../../src/lab/process.js';
import type { BenchLab, EngineSession } from './engines.js';
import {
  parseIperfTcp,
  parseIperfUdp,
  parsePingRtts,
  parseResultLine,
  parseUdpMib,
  resultNumber,
  udpArrived,
  type UdpMib,
} from './parse.js';
import { connClientArgv, connServerArgv, flowOpenerArgv, flowSinkArgv, planFlows } from './programs.js';
import { busyCpuSeconds, bytesPerFlow, parseProcStatCpu, percentile } from './stats.js';

export const MEASUREMENTS = ['tcp-bulk-1', 'tcp-bulk-4', 'udp-64', 'conn-rate', 'flows', 'latency'] as const;
export type MeasurementName = (typeof MEASUREMENTS)[number];

export const MEASUREMENT_TEXT: Record<MeasurementName, string> = {
  'tcp-bulk-1': 'TCP bulk, 1 stream (iperf3, LAN → internet)',
  'tcp-bulk-4': 'TCP bulk, 4 streams (iperf3 -P 4)',
  'udp-64': 'UDP 64-byte datagrams (iperf3 -u -l 64 -b 0), counted where they arrive',
  'conn-rate': 'TCP connections per second (connect, one request, answer, close; bounded concurrency)',
  'flows': 'Concurrent UDP flows held, and the memory they cost',
  'latency': 'Round-trip time of ICMP echo (ping) through the engine, back to back and paced',
};

export interface MeasureConfig {
  tcpSeconds: number;
  udpSeconds: number;
  connSeconds: number;
  connConcurrency: number;
  flows: number;
  flowDestPorts: number;
  /** Datagrams per second the flow opener sends (each is a new flow). */
  flowRate: number;
  pings: number;
  pingIntervalS: number;
  /** Echoes sent back to back (ping -i 0) before the measured ones. */
  pingWarmup: number;
}

/** One run's numbers; null where the engine cannot say (slirp4netns has no flow count). */
export type RunValues = Record<string, number | null>;

const IPERF_PORT = 5201;
/**
 * The conn server listens on CONN_PORT_BASE + the run's sequence number: its TIME_WAIT sockets
 * from earlier runs (it closes first) then never share a 4-tuple with a later run's connections,
 * where a SYN that lands on one is answered with an ACK and stalls a second before it retries.
 */
const CONN_PORT_BASE = 10000;
const FLOW_PORT0 = 9000;
/** The opener sends every flow's datagram this many times (see programs.ts). */
const FLOW_PASSES = 2;

async function withIperfServer<T>(bl: BenchLab, body: () => Promise<T>): Promise<T> {
  // One test per server (-1): a client that failed half-way cannot leave it busy for the next run.
  const server = spawnIn(bl.lab.inet.netns, ['iperf3', '-s', '-1', '--forceflush', '-p', String(IPERF_PORT), '-B', bl.inetAddress], {
    label: 'iperf3 server',
    cleanup: bl.cleanup,
  });
  try {
    await server.waitForLine(/Server listening/, 10_000);
    return await body();
  } finally {
    await server.stop('SIGTERM', 2_000);
  }
}

async function iperfClient(s: EngineSession, bl: BenchLab, args: string[], seconds: number): Promise<string> {
  const argv = ['iperf3', '-c', bl.inetAddress, '-p', String(IPERF_PORT), '-B', s.client.addresses[0]!, '-t', String(seconds), '-J', ...args];
  const r = await run(argv, { netns: s.client.netns, allowFail: true, timeoutMs: (seconds + 20) * 1000 });
  if (r.stdout.trim() === '') throw new Error(`iperf3 printed nothing (exit ${r.exitCode}): ${r.stderr.trim()}`);
  return r.stdout;
}

export async function tcpBulk(bl: BenchLab, s: EngineSession, cfg: MeasureConfig, streams: number): Promise<RunValues> {
  return withIperfServer(bl, async () => {
    // The whole machine's CPU time over the transfer: the kernel's softirq work for either engine counts too.
    const cpuBefore = parseProcStatCpu(readFileSync('/proc/stat', 'utf8'));
    const out = parseIperfTcp(await iperfClient(s, bl, ['-P', String(streams)], cfg.tcpSeconds));
    const cpu = busyCpuSeconds(cpuBefore, parseProcStatCpu(readFileSync('/proc/stat', 'utf8')));
    if (out.streams !== streams) throw new Error(`iperf3 reported ${out.streams} streams, asked for ${streams}`);
    if (!(out.receivedBitsPerSecond > 0)) throw new Error('iperf3: nothing was received');
    const gigabytes = (out.receivedBitsPerSecond * out.seconds) / 8 / 1e9;
    return { gbps: out.receivedBitsPerSecond / 1e9, retransmits: out.retransmits, cpuSeconds: cpu, cpuSecPerGB: cpu / gigabytes };
  });
}

async function readUdpMib(netns: string): Promise<UdpMib> {
  return parseUdpMib((await run(['cat', '/proc/net/snmp'], { netns })).stdout);
}

export async function udp64(bl: BenchLab, s: EngineSession, cfg: MeasureConfig): Promise<RunValues> {
  return withIperfServer(bl, async () => {
    const before = await readUdpMib(bl.lab.inet.netns);
    const text = await iperfClient(s, bl, ['-u', '-l', '64', '-b', '0'], cfg.udpSeconds);
    const after = await readUdpMib(bl.lab.inet.netns);
    const out = parseIperfUdp(text);
    // Counted by the receiving host's UDP layer: what the NAT delivered, whether or not the
    // iperf3 server (one thread, one read per datagram) kept up with it.
    const arrived = udpArrived(before, after);
    if (out.sentPackets <= 0 || out.seconds <= 0) throw new Error('iperf3 sent nothing');
    if (arrived <= 0) throw new Error('no datagram reached the internet host');
    if (out.appReceivedPackets > arrived + 16) {
      throw new Error(`iperf3's server read ${out.appReceivedPackets} datagrams but the host's UDP layer counted only ${arrived}`);
    }
    return {
      pps: arrived / out.seconds,
      sentPps: out.sentPackets / out.seconds,
      lossPct: Math.max(0, 100 * (1 - arrived / out.sentPackets)),
      appPps: out.appReceivedPackets / out.seconds,
    };
  });
}

async function startServer(bl: BenchLab, argv: string[], label: string): Promise<NsProcess> {
  const p = spawnIn(bl.lab.inet.netns, argv, { label, cleanup: bl.cleanup });
  try {
    await p.waitForLine(/^ready$/, 10_000);
  } catch (err) {
    await p.stop('SIGKILL');
    throw err;
  }
  return p;
}

async function stopForResult(p: NsProcess, program: string): Promise<Record<string, unknown>> {
  await p.stop('SIGTERM', 5_000);
  return parseResultLine(p.output(), program);
}

export async function connRate(bl: BenchLab, s: EngineSession, cfg: MeasureConfig, seq: number): Promise<RunValues> {
  const port = CONN_PORT_BASE + (seq % 20000);
  const server = await startServer(bl, connServerArgv(bl.inetAddress, port, (s.allowedSources ?? [s.expectedSource]).join(',')), 'conn server');
  let client: Record<string, unknown>;
  try {
    const argv = connClientArgv(bl.inetAddress, port, cfg.connSeconds * 1000, cfg.connConcurrency, s.client.addresses);
    const r = await run(argv, { netns: s.client.netns, allowFail: true, timeoutMs: (cfg.connSeconds + 30) * 1000 });
    client = parseResultLine(r.stdout + r.stderr, 'conn client');
  } catch (err) {
    await server.stop('SIGKILL');
    throw err;
  }
  const serverResult = await stopForResult(server, 'conn server');
  const completed = resultNumber(client, 'completed', 'conn client');
  const errors = resultNumber(client, 'errors', 'conn client');
  const wrong = resultNumber(serverResult, 'wrongSource', 'conn server');
  const answered = resultNumber(serverResult, 'answered', 'conn server');
  if (wrong > 0) throw new Error(`the server saw ${wrong} connections from ${String(serverResult.lastWrong)}, not ${s.expectedSource}`);
  if (answered < completed) throw new Error(`the client counted ${completed} answers but the server answered ${answered}`);
  if (completed === 0) throw new Error(`no connection completed (${errors} errors, first: ${String(client.firstError)})`);
  return { connPerSec: completed / cfg.connSeconds, completed, errors };
}

export async function flows(bl: BenchLab, s: EngineSession, cfg: MeasureConfig): Promise<RunValues> {
  const destPorts = Array.from({ length: cfg.flowDestPorts }, (_, i) => FLOW_PORT0 + i);
  const plan = planFlows(cfg.flows, s.client.addresses, destPorts);
  const sink = await startServer(bl, flowSinkArgv(bl.inetAddress, destPorts, (s.allowedSources ?? [s.expectedSource]).join(','), plan.addresses.length * plan.portsPerAddress), 'flow sink');
  // An engine whose table cannot hold the flows asked for is refused, not measured at its limit and
  // reported as if that were the offer (tunnat is started with --max-flows sized for them; see engines.ts).
  const capacity = await s.flowCapacity();
  if (capacity !== null && capacity < plan.flows) {
    await sink.stop('SIGKILL');
    throw new Error(`${s.runner}'s flow table holds ${capacity} entries, fewer than the ${plan.flows} flows asked for${s.capacityHint ? ` (${s.capacityHint})` : ''}`);
  }
  let opener: Record<string, unknown>;
  const countBefore = await settledFlowCount(s);
  const memBefore = await s.memory();
  try {
    const seconds = (FLOW_PASSES * plan.flows) / cfg.flowRate;
    const r = await run(flowOpenerArgv(bl.inetAddress, plan, cfg.flowRate, FLOW_PASSES), {
      netns: s.client.netns,
      allowFail: true,
      timeoutMs: (seconds * 3 + 30) * 1000,
    });
    opener = parseResultLine(r.stdout + r.stderr, 'flow opener');
    // Let the last datagrams through the engine's queues before counting.
    await new Promise((res) => setTimeout(res, 1000));
  } catch (err) {
    await sink.stop('SIGKILL');
    throw err;
  }
  const sinkResult = await stopForResult(sink, 'flow sink');
  const countAfter = await s.flowCount();
  const memAfter = await s.memory();

  const wrong = resultNumber(sinkResult, 'wrongSource', 'flow sink');
  if (wrong > 0) throw new Error(`the sink saw ${wrong} datagrams from ${String(sinkResult.lastWrong)}, not ${s.expectedSource}`);
  const delivered = resultNumber(sinkResult, 'distinct', 'flow sink');
  const datagrams = resultNumber(opener, 'datagrams', 'flow opener');
  // Flows are counted by the number each datagram carries, so this cannot exceed what was opened.
  if (delivered > plan.flows) throw new Error(`the sink counted ${delivered} flows, more than the ${plan.flows} opened`);
  if (delivered === 0) throw new Error(`no flow reached the sink (opener: ${JSON.stringify(opener)})`);
  // Held: the engine's own count of the concurrent flows this run added (an engine that evicts to make
  // room holds fewer than passed through it). Null for an engine that keeps no count.
  const engineFlows = countBefore !== null && countAfter !== null ? countAfter - countBefore : null;
  const held = engineFlows === null ? null : Math.min(engineFlows, plan.flows);

  // Memory per flow over the flows held, never over flows that merely passed.
  const rssPerFlow = bytesPerFlow(memBefore.rss, memAfter.rss, held);
  // The slab holds every namespace's entries; count whole objects allocated (num_objs), which is
  // memory taken from the system, and divide by the flows this run added.
  const slabBefore = memBefore.slab ? memBefore.slab.numObjs * memBefore.slab.objSize : null;
  const slabAfter = memAfter.slab ? memAfter.slab.numObjs * memAfter.slab.objSize : null;
  const slabPerFlow = bytesPerFlow(slabBefore, slabAfter, held);
  return {
    attempted: plan.flows,
    delivered,
    held,
    tuples: resultNumber(sinkResult, 'tuples', 'flow sink'),
    engineFlows,
    datagramsSent: datagrams,
    openerErrors: resultNumber(opener, 'bindErrors', 'flow opener') + resultNumber(opener, 'sendErrors', 'flow opener'),
    openSeconds: resultNumber(opener, 'elapsedMs', 'flow opener') / 1000,
    rssBefore: memBefore.rss,
    rssAfter: memAfter.rss,
    slabObjSize: memAfter.slab?.objSize ?? null,
    slabBytesAdded: slabBefore !== null && slabAfter !== null ? slabAfter - slabBefore : null,
    bytesPerFlow: rssPerFlow ?? slabPerFlow,
  };
}

/**
 * The engine's flow count before a flows run, once the flows of its start-up probe have gone. Held is
 * after − before, so a probe flow that expires during a long run would make the run's own flows read one
 * short (tunnat ends an answered UDP query after 5 s). Waits at most PROBE_SETTLE_MS; an engine whose
 * leftovers live longer (the kernel keeps the probe for 30 s) is counted as it is, which can only make
 * "held" read lower than what happened, never higher.
 */
async function settledFlowCount(s: EngineSession): Promise<number | null> {
  const deadline = performance.now() + PROBE_SETTLE_MS;
  let n = await s.flowCount();
  while (n !== null && n > 0 && performance.now() < deadline) {
    await new Promise((r) => setTimeout(r, 500));
    n = await s.flowCount();
  }
  return n;
}

const PROBE_SETTLE_MS = 8000;

export async function latency(bl: BenchLab, s: EngineSession, cfg: MeasureConfig): Promise<RunValues> {
  const ping = async (count: number, interval: number): Promise<string> => {
    const r = await run(['ping', '-n', '-c', String(count), '-i', String(interval), '-W', '1', bl.inetAddress], {
      netns: s.client.netns,
      allowFail: true,
      timeoutMs: (count * interval + 15) * 1000,
    });
    return r.stdout;
  };
  // Warm-up, not counted: sets the flow up and lets a JIT-compiled engine reach its optimised
  // code, so the samples measure a router that has been running, not one starting up.
  await ping(cfg.pingWarmup, 0);
  // Then nothing for a while: what the engine's own process costs with no traffic (busy polling
  // must stop spinning once packets stop). The kernel has no process: it works only per packet.
  let idleCpuPct: number | null = null;
  if (s.pid !== null) {
    const before = processCpuSeconds(s.pid);
    const t0 = performance.now();
    await new Promise((r) => setTimeout(r, IDLE_WINDOW_MS));
    idleCpuPct = ((processCpuSeconds(s.pid) - before) / ((performance.now() - t0) / 1000)) * 100;
  }
  // -i 0 sends the next echo as soon as the reply is in (one in flight): the engine stays awake.
  const busy = parsePingRtts(await ping(cfg.pings, 0));
  // Paced echoes find a userspace engine asleep in poll(): each RTT includes its wake-up.
  const paced = parsePingRtts(await ping(cfg.pings, cfg.pingIntervalS));
  for (const [what, rtts] of [['back-to-back', busy], ['paced', paced]] as const) {
    if (rtts.length < cfg.pings * 0.9) throw new Error(`only ${rtts.length} of ${cfg.pings} ${what} echoes answered`);
  }
  return {
    b2bP50Us: percentile(busy, 50),
    b2bP99Us: percentile(busy, 99),
    p50Us: percentile(paced, 50),
    p99Us: percentile(paced, 99),
    meanUs: paced.reduce((a, b) => a + b, 0) / paced.length,
    answered: busy.length + paced.length,
    idleCpuPct,
  };
}

/** How long latency() leaves the engine without traffic to measure its idle CPU. */
const IDLE_WINDOW_MS = 3000;

/** utime + stime of a process (/proc/<pid>/stat, fields 14 and 15, in USER_HZ = 100 ticks). */
export function processCpuSeconds(pid: number): number {
  const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) may hold spaces: the fields counted from after its closing parenthesis.
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return (Number(rest[11]) + Number(rest[12])) / 100;
}

export function runMeasurement(name: MeasurementName, bl: BenchLab, s: EngineSession, cfg: MeasureConfig, seq: number): Promise<RunValues> {
  switch (name) {
    case 'tcp-bulk-1':
      return tcpBulk(bl, s, cfg, 1);
    case 'tcp-bulk-4':
      return tcpBulk(bl, s, cfg, 4);
    case 'udp-64':
      return udp64(bl, s, cfg);
    case 'conn-rate':
      return connRate(bl, s, cfg, seq);
    case 'flows':
      return flows(bl, s, cfg);
    case 'latency':
      return latency(bl, s, cfg);
  }
}
