/**
 * Smoke test of the load benchmark's pure parts (bench/load/): readers of what iperf3, ping, /proc
 * and the helper programs print, the median/percentile/ratio arithmetic, the summary rows with
 * their goals, the text/markdown/SVG renderings and the splice into docs/benchmarks.md. No timing is
 * asserted and no namespace is built: `npm run bench:load` itself is the integration test.
 */
import { Script } from 'node:vm';
import { availableParallelism } from 'node:os';
import { describe, expect, it } from 'vitest';
import { parseLoadArgs, planFromArgs, resultsFileName, UsageError, DEFAULT_MEASURE, QUICK_MEASURE } from '../bench/load/args.js';
import { clientAddresses, floorQueues, maxFlowsArgs } from '../bench/load/engines.js';
import {
  parseConntrackCount,
  parseIperfTcp,
  parseIperfUdp,
  parsePingRtts,
  parseResultLine,
  parseSlabinfo,
  parseUdpMib,
  parseVmRss,
  resultNumber,
  sumMetric,
  udpArrived,
} from '../bench/load/parse.js';
import { connClientArgv, connServerArgv, flowOpenerArgv, flowSinkArgv, planFlows, FLOW_PORT_CEILING } from '../bench/load/programs.js';
import { columnsOf, DOCS_HEADING, formatText, markdownSection, markdownTable, renderSvg, spliceSection, chartPanels } from '../bench/load/render.js';
import { busyCpuSeconds, bytesPerFlow, goalMet, goalText, median, parseProcStatCpu, percentile, ratio } from '../bench/load/stats.js';
import { autoNotes, formatRatio, formatValue, goalCell, isAutoNote, summarize, type LoadReport, type RunRecord } from '../bench/load/summary.js';
import type { RunnerName } from '../bench/load/engines.js';
import type { MeasurementName, RunValues } from '../bench/load/measure.js';

// ---------------------------------------------------------------------------------------------
// Fixtures: what the tools print (trimmed to the fields that matter, shapes as iperf 3.12 prints them)

const IPERF_TCP = JSON.stringify({
  start: { connected: [{ socket: 5 }], test_start: { protocol: 'TCP', num_streams: 4 } },
  end: {
    streams: [{}, {}, {}, {}],
    sum_sent: { start: 0, end: 5, seconds: 5, bytes: 6_250_000_000, bits_per_second: 10e9, retransmits: 12, sender: true },
    sum_received: { start: 0, end: 5.0004, seconds: 5.0004, bytes: 6_240_000_000, bits_per_second: 9.98e9, sender: true },
  },
});

const IPERF_UDP = JSON.stringify({
  end: {
    sum: { seconds: 2.0006, packets: 431180, lost_packets: 152516, sender: true },
    sum_sent: { seconds: 2.000044, packets: 431180, lost_packets: 0, sender: true },
    sum_received: { seconds: 2.000655, packets: 431012, lost_packets: 152516, sender: false },
  },
});

const IPERF_UDP_OLD = JSON.stringify({ end: { sum: { seconds: 2, packets: 1000, lost_packets: 100 } } });

const SNMP = (inDatagrams: number, noPorts: number, inErrors: number, rcvbuf: number): string => `Ip: Forwarding DefaultTTL
Ip: 2 64
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: ${inDatagrams} ${noPorts} ${inErrors} 1 ${rcvbuf} 0 0 0 0
UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
UdpLite: 0 0 0 0 0 0 0 0 0
`;

const PING = `PING 203.0.113.2 (203.0.113.2) 56(84) bytes of data.
64 bytes from 203.0.113.2: icmp_seq=1 ttl=63 time=0.045 ms
64 bytes from 203.0.113.2: icmp_seq=2 ttl=63 time=0.061 ms
64 bytes from 203.0.113.2: icmp_seq=3 ttl=63 time=1.20 ms

--- 203.0.113.2 ping statistics ---
3 packets transmitted, 3 received, 0% packet loss, time 4ms
rtt min/avg/max/mdev = 0.045/0.435/1.200/0.541 ms
`;

const SLABINFO = `slabinfo - version: 2.1
# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : tunables <limit> <batchcount> <sharedfactor> : slabdata <active_slabs> <num_slabs> <sharedavail>
nf_conntrack_expect      0      0    208   19    1 : tunables    0    0    0 : slabdata      0      0      0
nf_conntrack        1234   1248    256   16    1 : tunables    0    0    0 : slabdata     78     78      0
`;

const METRICS = `# HELP tunnat_flows Flows in the connection-tracking table
# TYPE tunnat_flows gauge
tunnat_flows{protocol="icmp",state="UNREPLIED"} 0
tunnat_flows{protocol="udp",state="UNREPLIED"} 10000
tunnat_flows{protocol="udp",state="ASSURED"} 1
tunnat_flows_max 262144
tunnat_flows_created_total 10001
`;

describe('readers of tool output', () => {
  it('iperf3 TCP: the receiver\'s goodput, streams and retransmits', () => {
    const r = parseIperfTcp(IPERF_TCP);
    expect(r.receivedBitsPerSecond).toBe(9.98e9);
    expect(r.sentBitsPerSecond).toBe(10e9);
    expect(r.streams).toBe(4);
    expect(r.retransmits).toBe(12);
  });

  it('iperf3 errors and truncated output are refused with the cause', () => {
    expect(() => parseIperfTcp(JSON.stringify({ start: {}, error: 'unable to connect to server: Connection refused' }))).toThrow(/Connection refused/);
    expect(() => parseIperfTcp('{"end": {}}')).toThrow(/sum_received/);
    expect(() => parseIperfTcp('iperf3: error')).toThrow(/not JSON/);
    expect(() => parseIperfUdp('[]')).toThrow(/not a JSON object/);
  });

  it('iperf3 UDP: sent from the sender\'s view, read = span − lost; old single-sum output too', () => {
    expect(parseIperfUdp(IPERF_UDP)).toEqual({ sentPackets: 431180, seconds: 2.000044, appReceivedPackets: 431012 - 152516 });
    expect(parseIperfUdp(IPERF_UDP_OLD)).toEqual({ sentPackets: 1000, seconds: 2, appReceivedPackets: 900 });
  });

  it('UDP MIB: arrivals are InDatagrams + NoPorts + InErrors, RcvbufErrors being inside InErrors', () => {
    const before = parseUdpMib(SNMP(100, 5, 10, 10));
    const after = parseUdpMib(SNMP(158_141, 7, 142_703, 142_703));
    expect(after).toEqual({ inDatagrams: 158_141, noPorts: 7, inErrors: 142_703, rcvbufErrors: 142_703 });
    expect(udpArrived(before, after)).toBe(158_041 + 2 + 142_693);
    expect(() => parseUdpMib('Ip: x\nIp: 1\n')).toThrow(/no Udp/);
  });

  it('ping: every reply time in µs, including ones ≥ 1 ms', () => {
    expect(parsePingRtts(PING)).toEqual([45, 61, 1200]);
    expect(parsePingRtts('From 192.168.1.1 icmp_seq=1 Destination Host Unreachable\n')).toEqual([]);
  });

  it('/proc status, slabinfo, conntrack -C and Prometheus sums', () => {
    expect(parseVmRss('Name:\tnode\nVmRSS:\t   80848 kB\nRssAnon:\t 1 kB\n')).toBe(80848 * 1024);
    expect(() => parseVmRss('Name: node\n')).toThrow(/VmRSS/);
    expect(parseSlabinfo(SLABINFO, 'nf_conntrack')).toEqual({ activeObjs: 1234, numObjs: 1248, objSize: 256 });
    expect(parseSlabinfo(SLABINFO, 'nope')).toBeNull();
    expect(parseConntrackCount('10001\n')).toBe(10001);
    expect(() => parseConntrackCount('conntrack v1.4.7: Operation not permitted\n')).toThrow(/not a count/);
    expect(sumMetric(METRICS, 'tunnat_flows')).toBe(10001);
    expect(sumMetric(METRICS, 'tunnat_flows_max')).toBe(262144);
    expect(sumMetric(METRICS, 'tunnat_nothing')).toBeNull();
  });

  it('helper programs: the last RESULT line, and numbers checked by name', () => {
    const out = 'ready\nRESULT {"distinct": 3}\nnoise\nRESULT {"distinct": 10, "wrongSource": 0}\n';
    const r = parseResultLine(out, 'flow sink');
    expect(resultNumber(r, 'distinct', 'flow sink')).toBe(10);
    expect(() => resultNumber(r, 'datagrams', 'flow sink')).toThrow(/"datagrams"/);
    expect(() => parseResultLine('ready\n', 'flow sink')).toThrow(/no RESULT/);
  });
});

describe('arithmetic', () => {
  it('median of odd and even counts, ignoring failed (NaN) runs', () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 3, 2])).toBe(2.5);
    expect(median([NaN, 5])).toBe(5);
    expect(median([])).toBeNull();
  });

  it('percentile interpolates between ranks (type 7)', () => {
    const xs = Array.from({ length: 101 }, (_, i) => i);
    expect(percentile(xs, 50)).toBe(50);
    expect(percentile(xs, 99)).toBe(99);
    expect(percentile([10, 20], 50)).toBe(15);
    expect(percentile([1, 2, 3, 4], 99)).toBeCloseTo(3.97);
    expect(percentile([], 50)).toBeNull();
    expect(() => percentile([1], 101)).toThrow(RangeError);
  });

  it('ratio and goals', () => {
    expect(ratio(8, 10)).toBeCloseTo(0.8);
    expect(ratio(1, 0)).toBeNull();
    expect(ratio(null, 1)).toBeNull();
    expect(goalMet({ kind: 'ratio-at-least', target: 0.8 }, 1, 0.8)).toBe(true);
    expect(goalMet({ kind: 'ratio-at-least', target: 0.8 }, 1, 0.79)).toBe(false);
    expect(goalMet({ kind: 'ratio-at-least', target: 0.8 }, 1, null)).toBeNull();
    expect(goalMet({ kind: 'at-most', target: 30, unit: 'µs' }, 30, null)).toBe(true);
    expect(goalMet({ kind: 'at-most', target: 256, unit: 'B' }, 300, 2)).toBe(false);
    expect(goalText({ kind: 'ratio-at-least', target: 0.5 })).toBe('≥ 0.5× kernel');
    expect(goalText({ kind: 'ratio-at-most', target: 1.5 })).toBe('≤ 1.5× kernel');
    expect(goalMet({ kind: 'ratio-at-most', target: 1.5 }, 9, 1.5)).toBe(true);
    expect(goalMet({ kind: 'ratio-at-most', target: 1.5 }, 9, 1.6)).toBe(false);
    // /proc/stat: user nice system idle iowait irq softirq steal; idle and iowait are not busy.
    const a = parseProcStatCpu('cpu  100 0 50 1000 7 5 20 0 0 0\ncpu0 1 2 3\n');
    const b = parseProcStatCpu('cpu  300 10 90 1500 9 5 60 0 0 0\n');
    expect(busyCpuSeconds(a, b)).toBeCloseTo((200 + 10 + 40 + 40) / 100);
    expect(() => parseProcStatCpu('intr 1 2')).toThrow(/cpu line/);
    expect(bytesPerFlow(1000, 5000, 10)).toBe(400);
    expect(bytesPerFlow(1000, 5000, 0)).toBeNull();
    expect(bytesPerFlow(null, 5000, 10)).toBeNull();
  });

  it('number formatting keeps three significant digits', () => {
    expect(formatValue(12345.6)).toBe('12,346');
    expect(formatValue(123.4)).toBe('123');
    expect(formatValue(12.34)).toBe('12.3');
    expect(formatValue(1.234)).toBe('1.23');
    expect(formatValue(0.01234)).toBe('0.012');
    expect(formatValue(null)).toBe('—');
  });
});

describe('traffic programs and plans', () => {
  it('planFlows spreads flows over addresses and destination ports, rounding up', () => {
    const p = planFlows(100_000, ['a', 'b', 'c', 'd'], [9000, 9001]);
    expect(p.portsPerAddress).toBe(12_500);
    expect(p.flows).toBe(100_000);
    const q = planFlows(10, ['a', 'b', 'c'], [1]);
    expect(q.portsPerAddress).toBe(4);
    expect(q.flows).toBe(12);
    expect(() => planFlows(200_000, ['a'], [1])).toThrow(new RegExp(`${FLOW_PORT_CEILING}`));
    expect(() => planFlows(0, ['a'], [1])).toThrow(RangeError);
  });

  it('every program is valid JavaScript and gets its arguments in order', () => {
    const plan = planFlows(1000, ['192.168.1.10', '192.168.1.121'], [9000, 9001]);
    const argvs = [
      connServerArgv('203.0.113.2', 8080, '203.0.113.1'),
      connClientArgv('203.0.113.2', 8080, 2000, 32, ['192.168.1.10']),
      flowSinkArgv('203.0.113.2', [9000, 9001], null, 500),
      flowOpenerArgv('203.0.113.2', plan, 25_000, 2),
    ];
    for (const argv of argvs) {
      expect(argv[0]).toBe(process.execPath);
      expect(argv[1]).toBe('-e');
      // Compiles without running: a syntax error would otherwise only show inside a namespace.
      expect(() => new Script(argv[2]!)).not.toThrow();
    }
    expect(argvs[0]!.slice(3)).toEqual(['203.0.113.2', '8080', '203.0.113.1']);
    expect(argvs[2]!.slice(3)).toEqual(['203.0.113.2', '9000,9001', '-', '500']);
    expect(argvs[3]!.slice(3)).toEqual(['203.0.113.2', '9000,9001', '192.168.1.10,192.168.1.121', '30000', '250', '25000', '2']);
    expect(() => connClientArgv('h', 1, 1000, 0, ['a'])).toThrow(RangeError);
    expect(() => connClientArgv('h', 1, 1000, 1, [])).toThrow(RangeError);
  });

  it('a --flows run sizes tunnat\'s table for its flows, unless the default holds them or --tunnat-args chose', () => {
    expect(maxFlowsArgs(undefined, [])).toEqual([]);
    expect(maxFlowsArgs(100_000, [])).toEqual([]);
    expect(maxFlowsArgs(1_000_000, [])).toEqual(['--max-flows', '1100000']);
    expect(maxFlowsArgs(1_000_000, ['--max-flows', '2000000'])).toEqual([]);
  });

  it('the TUN floor reads as many queues as tunnat has workers (one per core by default)', () => {
    const cores = Math.min(64, availableParallelism());
    expect(floorQueues([])).toBe(cores);
    expect(floorQueues(['--workers', 'auto'])).toBe(cores);
    expect(floorQueues(['--busy-poll', '0', '--workers', '2'])).toBe(2);
    expect(floorQueues(['--workers', '1'])).toBe(1);
    expect(floorQueues(['--workers', 'x'])).toBe(1);
  });

  it('client addresses: the host\'s own first, then .121, .122, …', () => {
    expect(clientAddresses('192.168.1.10', 3)).toEqual(['192.168.1.10', '192.168.1.121', '192.168.1.122']);
    expect(clientAddresses('192.168.2.100', 1)).toEqual(['192.168.2.100']);
  });
});

describe('command line', () => {
  it('defaults, --quick and overrides', () => {
    const d = planFromArgs(parseLoadArgs([]));
    expect(d).toMatchObject({ mode: 'default', rounds: 3, engines: ['userspace', 'kernel', 'slirp4netns'], enginesExplicit: false });
    expect(d.measure).toEqual(DEFAULT_MEASURE);
    expect(d.measure.tcpSeconds).toBe(5);
    const q = planFromArgs(parseLoadArgs(['--quick']));
    expect(q.rounds).toBe(1);
    expect(q.measure).toEqual(QUICK_MEASURE);
    expect(q.measure.tcpSeconds).toBe(2);
    const o = planFromArgs(parseLoadArgs(['--quick', '--rounds', '2', '--only', 'latency,flows', '--engines', 'kernel,userspace', '--flows', '500', '--seconds', '3']));
    expect(o.rounds).toBe(2);
    expect(o.measurements).toEqual(['latency', 'flows']);
    expect(o.engines).toEqual(['kernel', 'userspace']);
    expect(o.enginesExplicit).toBe(true);
    expect(o.measure).toMatchObject({ flows: 500, tcpSeconds: 3, udpSeconds: 3, connSeconds: 3 });
    const a = parseLoadArgs(['--json', 'x.json', '--write-docs', '--svg', 'c.svg', '--kernel', 'manual']);
    expect(a).toMatchObject({ json: 'x.json', writeDocs: true, svg: 'c.svg', kernel: 'manual' });
    expect(parseLoadArgs(['--render', 'bench/results/load-x.json']).render).toBe('bench/results/load-x.json');
    // Its value is flags itself.
    expect(planFromArgs(parseLoadArgs(['--tunnat-args', '--busy-poll 50  --max-flows 9'])).tunnatArgs).toEqual(['--busy-poll', '50', '--max-flows', '9']);
    expect(d.tunnatArgs).toEqual([]);
  });

  it('scales destination ports, then addresses, with the flows asked for', () => {
    expect(planFromArgs(parseLoadArgs([]))).toMatchObject({ flowAddresses: 4, measure: { flows: 100_000, flowDestPorts: 2 } });
    // 1 M flows: at most 50 K LAN endpoints (one public port each), so 20 destination ports.
    const m = planFromArgs(parseLoadArgs(['--flows', '1000000']));
    expect(m.measure.flowDestPorts).toBe(20);
    expect(m.flowAddresses * 35_001 * m.measure.flowDestPorts).toBeGreaterThanOrEqual(1_000_000);
    expect(m.flowAddresses).toBe(4);
  });

  it('refuses what it does not know', () => {
    expect(() => parseLoadArgs(['--only', 'tcp'])).toThrow(UsageError);
    expect(() => parseLoadArgs(['--engines', 'pf'])).toThrow(/known: userspace, kernel, slirp4netns/);
    expect(() => parseLoadArgs(['--rounds', '0'])).toThrow(UsageError);
    expect(() => parseLoadArgs(['--kernel', 'nft'])).toThrow(UsageError);
    expect(() => parseLoadArgs(['--json'])).toThrow(/needs a value/);
    expect(() => parseLoadArgs(['--fast'])).toThrow(/unknown argument/);
  });

  it('results files sort by time and say when they are quick', () => {
    const d = new Date('2026-11-25T17:42:03.123Z');
    expect(resultsFileName(d, false)).toBe('load-2026-11-25T17-42-03.json');
    expect(resultsFileName(d, true)).toBe('load-2026-11-25T17-42-03-quick.json');
  });
});

// ---------------------------------------------------------------------------------------------
// Summary and renderings on made-up runs

let seq = 0;
function runOf(measurement: MeasurementName, runner: RunnerName, round: number, values: RunValues | null, error: string | null = null): RunRecord {
  return { measurement, runner, round, seq: ++seq, startedAt: '2026-11-25T00:00:00.000Z', seconds: 1, values, error };
}

function madeUpRuns(): RunRecord[] {
  const runs: RunRecord[] = [];
  const tcp: Record<string, number[]> = { userspace: [6, 8, 7], kernel: [10, 10, 9], slirp4netns: [2, 3, 2.5] };
  for (let round = 1; round <= 3; round++) {
    for (const n of ['userspace', 'kernel', 'slirp4netns'] as const) {
      runs.push(runOf('tcp-bulk-1', n, round, { gbps: tcp[n]![round - 1]!, retransmits: 0 }));
    }
  }
  runs.push(runOf('udp-64', 'userspace', 1, { pps: 100_000, sentPps: 200_000, lossPct: 50, appPps: 90_000 }));
  runs.push(runOf('udp-64', 'kernel', 1, { pps: 150_000, sentPps: 150_010, lossPct: 0.005, appPps: 140_000 }));
  runs.push(runOf('udp-64', 'slirp4netns', 1, null, 'iperf3: boom'));
  runs.push(runOf('flows', 'userspace', 1, { attempted: 1000, delivered: 1000, held: 1000, bytesPerFlow: 200, gatewayKernelFlows: 0 }));
  runs.push(runOf('flows', 'kernel', 1, { attempted: 1000, delivered: 1000, held: 700, bytesPerFlow: 256 }));
  runs.push(runOf('flows', 'slirp4netns', 1, { attempted: 1000, delivered: 400, bytesPerFlow: 2000 }));
  for (const [n, p50] of [['userspace', 40], ['kernel', 9], ['slirp4netns', 45], ['route', 8]] as const) {
    runs.push(runOf('latency', n, 1, { b2bP50Us: p50 / 2, b2bP99Us: p50, p50Us: p50, p99Us: p50 * 3, meanUs: p50, answered: 400, idleCpuPct: n === 'userspace' ? 0.5 : null }));
  }
  return runs;
}

function madeUpReport(runs: RunRecord[]): LoadReport {
  return {
    kind: 'tunnat-load-benchmark',
    version: 1,
    date: '2026-11-25T17:42:03.123Z',
    mode: 'quick',
    ok: runs.every((r) => r.error === null),
    durationSeconds: 42,
    config: {
      ...QUICK_MEASURE, rounds: 3, measurements: ['tcp-bulk-1', 'udp-64', 'flows', 'latency'], engines: ['userspace', 'kernel', 'slirp4netns'],
      flowAddresses: 4, restartPolicy: 'every run starts its engine afresh', interleaving: 'A B C, A B C',
    },
    kernel: { variant: 'kernel-manual', description: 'iptables <MASQUERADE> stand-in', reason: 'chosen with --kernel manual', ruleset: null },
    engines: [],
    notes: autoNotes(runs),
    machine: {
      cpuModel: 'Test CPU', cores: 2, kernel: '6.1.0', node: 'v20.0.0', totalMemoryMiB: 4096,
      loadAverageStart: 1, loadAverageEnd: 2, iperf3: 'iperf 3.12', slirp4netns: 'slirp4netns version 1.2.0',
    },
    runs,
    summary: summarize(runs),
  };
}

describe('summary', () => {
  const runs = madeUpRuns();
  const rows = summarize(runs);
  const row = (id: string) => rows.find((r) => r.metric === id)!;

  it('medians per engine over rounds, the userspace/kernel ratio and the goal verdict', () => {
    const tcp = row('tcp1');
    expect(tcp.medians).toEqual({ userspace: 7, kernel: 10, slirp4netns: 2.5 });
    expect(tcp.runs).toEqual({ userspace: 3, kernel: 3, slirp4netns: 3 });
    expect(tcp.range.userspace).toEqual([6, 8]);
    expect(tcp.ratio).toBeCloseTo(0.7);
    expect(tcp.goal).toEqual({ text: '≥ 0.8× kernel', met: false });
    // Measurements that did not run have no row.
    expect(rows.find((r) => r.metric === 'tcp4')).toBeUndefined();
  });

  it('a missed kernel goal falls back to 0.9 × the TUN floor, judged on the unrounded ratio', () => {
    const withFloor: RunRecord[] = [];
    // TCP: 8.97 against a floor of 10 is 0.897 × (missed, though two decimals would say 0.90).
    for (const [n, gbps, cpu] of [['userspace', 8.97, 1.2], ['kernel', 20, 0.5], ['tun-floor', 10, 1.07]] as const) {
      withFloor.push(runOf('tcp-bulk-4', n, 1, { gbps, retransmits: 0, cpuSeconds: 1, cpuSecPerGB: cpu }));
      withFloor.push(runOf('tcp-bulk-1', n, 1, { gbps: n === 'userspace' ? 9.2 : gbps, retransmits: 0 }));
    }
    const sum = summarize(withFloor);
    const get = (id: string) => sum.find((r) => r.metric === id)!;
    expect(get('tcp4').floorGoal).toEqual({ text: '≥ 0.9× TUN floor', met: false });
    expect(formatRatio(get('tcp4').floorRatio ?? null)).toBe('0.897×');
    expect(goalCell(get('tcp4'))).toBe('≥ 0.8× kernel: MISSED; ≥ 0.9× TUN floor: MISSED');
    expect(get('tcp1').floorGoal).toEqual({ text: '≥ 0.9× TUN floor', met: true });
    // CPU per GB is lower-is-better: at most 1 / 0.9 of the floor's (1.2 / 1.07 = 1.12 ×: missed).
    expect(get('tcp4-cpu').floorGoal).toEqual({ text: '≤ 1.11× TUN floor', met: false });
    expect(formatRatio(get('tcp4-cpu').floorRatio ?? null)).toBe('1.12×');
    expect(formatRatio(1.1118)).toBe('1.112×');
    // A goal met against the kernel needs no fallback; ordinary ratios keep two decimals.
    expect(formatRatio(0.7)).toBe('0.70×');
    expect(formatRatio(0.999)).toBe('0.999×');
  });

  it('scales pps to kpps, keeps a failed engine as null, and gives loss no ratio', () => {
    const udp = row('udp64');
    expect(udp.medians.userspace).toBe(100);
    expect(udp.medians.slirp4netns).toBeNull();
    expect(udp.runs.slirp4netns).toBe(0);
    expect(udp.ratio).toBeCloseTo(100 / 150);
    expect(row('udp64-loss').ratio).toBeNull();
  });

  it('flows held is the engine\'s own count; what reached the internet host is a row of its own', () => {
    expect(row('flows').medians).toEqual({ userspace: 1000, kernel: 700, slirp4netns: null });
    expect(row('flows-delivered').medians).toEqual({ userspace: 1000, kernel: 1000, slirp4netns: 400 });
    expect(row('flows-delivered').ratio).toBeNull();
  });

  it('idle CPU: a figure for an engine with a process, none (not "failed") for one without', () => {
    expect(row('idle-cpu').medians).toEqual({ userspace: 0.5 });
    expect(row('idle-cpu').ratio).toBeNull();
  });

  it('memory per flow is held to ≤ 256 B on the userspace value', () => {
    expect(row('flow-bytes').goal?.met).toBe(true);
    expect(row('flow-bytes').ratio).toBeCloseTo(200 / 256);
  });

  it('RTT added over the kernel, paced and back to back: each engine\'s median p50 minus the kernel\'s, goal ≤ 30 µs', () => {
    const paced = row('rtt-added');
    expect(paced.medians).toEqual({ userspace: 31, kernel: 0, slirp4netns: 36, route: -1 });
    expect(paced.goal).toEqual({ text: '≤ 30 µs', met: false });
    const busy = row('rtt-added-b2b');
    expect(busy.medians).toEqual({ userspace: 15.5, kernel: 0, slirp4netns: 18, route: -0.5 });
    expect(busy.goal).toEqual({ text: '≤ 30 µs', met: true });
    // The derived rows come after the measured ones, back to back first.
    expect(rows.slice(-2).map((r) => r.metric)).toEqual(['rtt-added-b2b', 'rtt-added']);
  });

  it('notes a sender-bound kernel UDP column and flows an engine did not hold', () => {
    const notes = autoNotes(runs);
    expect(notes.some((n) => /joint limit/.test(n))).toBe(true);
    // Held is the engine's own count: the kernel passed all 1,000 but held 700 at once.
    expect(notes.some((n) => /kernel held a median 700 of the 1,000 flows offered at once by its own count \(1,000 reached the internet host\)/.test(n))).toBe(true);
    // An engine that keeps no count is not said to hold what merely passed through it.
    expect(notes.some((n) => /slirp4netns held/.test(n))).toBe(false);
    expect(notes.some((n) => /tracked connections/.test(n))).toBe(false);
    // A re-render recognises them, and nothing else, as its own.
    expect(notes.every(isAutoNote)).toBe(true);
    expect(isAutoNote('slirp4netns is a different kind of NAT')).toBe(false);
  });
});

describe('renderings', () => {
  const report = madeUpReport(madeUpRuns());

  it('the text table has a column per runner that ran, the ratio and the goal', () => {
    expect(columnsOf(report.summary)).toEqual(['userspace', 'kernel', 'slirp4netns', 'route']);
    const text = formatText(report);
    expect(text).toMatch(/TCP bulk, 1 stream \(Gbit\/s\)\s+7\.00\s+10\.0\s+2\.50\s+0\.70×\s+≥ 0\.8× kernel: MISSED/);
    expect(text).toMatch(/UDP 64 B delivered \(kpps\)\s+100\s+150\s+failed/);
    expect(text).toMatch(/FAILED runs \(1\):\n {2}udp-64 \/ slirp4netns \/ round 1: iperf3: boom/);
    expect(text).toContain('Test CPU × 2 cores');
  });

  it('the markdown table has one line per summary row and escapes pipes', () => {
    const md = markdownTable(report).split('\n');
    expect(md).toHaveLength(2 + report.summary.length);
    expect(md[0]).toBe('| Measurement | tunnat (userspace) | kernel NAT | slirp4netns | no NAT (routing) | userspace / kernel | Goal |');
    expect(md[1]).toBe('| --- | ---: | ---: | ---: | ---: | ---: | --- |');
    for (const line of md) expect(line.split(/(?<!\\)\|/).length).toBe(9);
  });

  it('the chart: throughput relative to the kernel with goal marks, RTT in µs, text escaped', () => {
    const panels = chartPanels(report);
    expect(panels.map((p) => p.groups.map((g) => g.label))).toEqual([
      ['TCP bulk, 1 stream', 'UDP 64 B delivered'],
      ['RTT p50, back to back', 'RTT p50, paced'],
    ]);
    const tcp = panels[0]!.groups[0]!;
    expect(tcp.bars.map((b) => [b.series, b.value])).toEqual([['userspace', 0.7], ['slirp4netns', 0.25]]);
    expect(tcp.goal?.at).toBe(0.8);
    expect(panels[0]!.groups[1]!.bars[1]).toMatchObject({ series: 'slirp4netns', value: null, text: 'failed' });

    const svg = renderSvg(report);
    expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
    expect(svg.endsWith('</svg>')).toBe(true);
    // One bar per value: 2 + 1 throughput bars (slirp4netns's UDP failed), 2 × 4 RTT bars.
    expect((svg.match(/<rect x="200"/g) ?? []).length).toBe(3 + 8);
    expect(svg).not.toMatch(/<(?!\/?(svg|rect|text|line|title)\b)/);
    expect(svg).toContain('Test CPU');
  });

  it('the docs section starts with its heading and tells which kernel ran', () => {
    const section = markdownSection(report, 'bench/results/load-x.json');
    expect(section.startsWith(`${DOCS_HEADING}\n`)).toBe(true);
    expect(section).toContain('Kernel column: iptables <MASQUERADE> stand-in — chosen with --kernel manual.');
    expect(section).toContain('`bench/results/load-x.json`');
    expect(section).toContain('<svg');
    expect(section.split('\n').filter((l) => /^## /.test(l))).toEqual([DOCS_HEADING]);
  });

  it('shows the kernel engine\'s ruleset when tunnat set it up, and nothing when the stand-in ran', () => {
    const withRules = madeUpReport(madeUpRuns());
    withRules.kernel = { variant: 'tunnat-kernel', description: 'tunnat run --engine kernel', reason: 'probe ok', ruleset: 'table ip tunnat {\n\tchain post { masquerade }\n}' };
    const section = markdownSection(withRules, 'r.json');
    expect(section).toContain('<details><summary>');
    expect(section).toContain('```\ntable ip tunnat {\n\tchain post { masquerade }\n}\n```');
    expect(markdownSection(report, 'r.json')).not.toContain('<details>');
  });
});

describe('spliceSection', () => {
  const mine = `${DOCS_HEADING}\n\nnew table\n`;

  it('creates the file with a title', () => {
    expect(spliceSection(null, DOCS_HEADING, mine)).toBe(`# Benchmarks\n\n${mine}`);
  });

  it('appends after the other sections when absent', () => {
    const doc = '# Benchmarks\n\n## Microbenchmarks\n\nmicro table\n';
    expect(spliceSection(doc, DOCS_HEADING, mine)).toBe(`# Benchmarks\n\n## Microbenchmarks\n\nmicro table\n\n${mine}`);
  });

  it('replaces only its own section, leaving the others byte for byte, and is idempotent', () => {
    const doc = `# Benchmarks\n\n## Microbenchmarks\n\nmicro\n\n${DOCS_HEADING}\n\nold table\n\n### How\n\nold\n\n## Later\n\nkept\n`;
    const once = spliceSection(doc, DOCS_HEADING, mine);
    expect(once).toBe(`# Benchmarks\n\n## Microbenchmarks\n\nmicro\n\n${mine}\n## Later\n\nkept\n`);
    expect(spliceSection(once, DOCS_HEADING, mine)).toBe(once);
  });

  it('does not end the section at a "## " line inside a code fence', () => {
    const doc = `${DOCS_HEADING}\n\n\`\`\`\n## not a heading\n\`\`\`\n\n## Next\n`;
    expect(spliceSection(doc, DOCS_HEADING, mine)).toBe(`${mine}\n## Next\n`);
  });
});
