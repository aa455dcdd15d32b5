import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FlowRecord } from '../../src/conntrack/listing.js';
import { ConfigError } from '../../src/config/config.js';
import { resolveConfig } from '../../src/config/resolve.js';
import { createKernelRegistry, parseConntrackEvent, parseConntrackListing } from '../../src/kernel/conntrack.js';
import { KernelObserver, KernelTable, TRACE_UNAVAILABLE, kernelLiveSnapshot } from '../../src/kernel/observe.js';
import { formatEvent } from '../../src/observe/events.js';
import { startHttp } from '../../src/observe/http.js';
import { sseConnect } from '../../src/observe/sse.js';
import type { CliIo } from '../../src/observe/cli.js';
import type { LiveSnapshot } from '../../src/observe/live.js';
import { cmdConntrack } from '../../src/cli/conntrack-cmd.js';
import { cmdStats, formatStats, summarize } from '../../src/cli/stats-cmd.js';
import { cmdTrace } from '../../src/cli/trace-cmd.js';
import { unixGet } from '../../src/lab/router.js';
import { parsePromText } from '../../src/observe/promtext.js';
import { createLogger } from '../../src/util/log.js';
import { parseCidr } from '../../src/wire/addr.js';

// Recorded from `conntrack -E -o timestamp,extended,id` (conntrack-tools 1.4.7, Linux 6.18), the
// addresses changed to the lab's. Accounting on: only DESTROY carries counters.
const EVENTS = `[1796459514.463605]\t    [NEW] ipv4     2 udp      17 30 src=192.168.1.10 dst=203.0.113.2 sport=40000 dport=7 [UNREPLIED] src=203.0.113.2 dst=203.0.113.1 sport=7 dport=40000 id=329323258
[1796459515.555948]\t    [NEW] ipv4     2 tcp      6 120 SYN_SENT src=192.168.1.10 dst=203.0.113.2 sport=37830 dport=80 [UNREPLIED] src=203.0.113.2 dst=203.0.113.1 sport=80 dport=37830 id=287273967
[1796459515.556012]\t [UPDATE] ipv4     2 tcp      6 60 SYN_RECV src=192.168.1.10 dst=203.0.113.2 sport=37830 dport=80 src=203.0.113.2 dst=203.0.113.1 sport=80 dport=37830 id=287273967
[1796459515.556020]\t [UPDATE] ipv4     2 tcp      6 432000 ESTABLISHED src=192.168.1.10 dst=203.0.113.2 sport=37830 dport=80 src=203.0.113.2 dst=203.0.113.1 sport=80 dport=37830 [ASSURED] id=287273967
[1796459516.938971]\t[DESTROY] ipv4     2 udp      17 src=192.168.1.10 dst=203.0.113.2 sport=40000 dport=7 packets=1 bytes=31 src=203.0.113.2 dst=203.0.113.1 sport=7 dport=40000 packets=1 bytes=49 [ASSURED] id=329323258
[1796459517.000001]\t[DESTROY] ipv4     2 icmp     1 src=192.168.1.11 dst=203.0.113.2 type=8 code=0 id=15041 packets=2 bytes=168 src=203.0.113.2 dst=203.0.113.1 type=0 code=0 id=15041 packets=2 bytes=168 id=4061321166
[1796459517.100000]\t[DESTROY] ipv4     2 tcp      6 src=203.0.113.1 dst=203.0.113.2 sport=5000 dport=80 src=203.0.113.2 dst=203.0.113.1 sport=80 dport=5000 [ASSURED] id=9
conntrack v1.4.7 (conntrack-tools): 7 flow events have been shown.
`;
// Accounting off, and without the timestamp option.
const PLAIN_DESTROY = '[DESTROY] udp      17 src=192.168.1.10 dst=203.0.113.2 sport=40001 dport=7 [UNREPLIED] src=203.0.113.2 dst=203.0.113.1 sport=7 dport=40001';

const LAN = [parseCidr('192.168.1.0/24')!];

describe('parseConntrackEvent', () => {
  const events = EVENTS.split('\n').map(parseConntrackEvent);

  it('NEW: the state, both tuples, the entry id and the kernel\'s timestamp; no counters yet', () => {
    expect(events[0]).toEqual({
      type: 'new',
      time: new Date(1796459514463).toISOString(),
      flow: {
        id: 329323258,
        protocol: 'udp',
        original: { src: '192.168.1.10', dst: '203.0.113.2', srcPort: 40000, dstPort: 7 },
        reply: { src: '203.0.113.2', dst: '203.0.113.1', srcPort: 7, dstPort: 40000 },
        state: 'UNREPLIED',
        secondsLeft: 30,
        packets: { original: 0, reply: 0 },
        bytes: { original: 0, reply: 0 },
      },
    });
    expect(events[1]?.flow.state).toBe('SYN_SENT');
  });

  it('UPDATE: the TCP state it moved to, the same id', () => {
    expect(events.slice(2, 4).map((e) => [e?.type, e?.flow.state, e?.flow.secondsLeft, e?.flow.id])).toEqual([
      ['update', 'SYN_RECV', 60, 287273967],
      ['update', 'ESTABLISHED', 432000, 287273967],
    ]);
  });

  it('DESTROY with accounting: no timeout word, the final counters, the entry id (an ICMP identifier kept apart from it)', () => {
    const udp = events[4]!;
    expect(udp.type).toBe('destroy');
    expect(udp.flow.secondsLeft).toBe(0);
    expect(udp.flow.state).toBe('ASSURED');
    expect(udp.flow.packets).toEqual({ original: 1, reply: 1 });
    expect(udp.flow.bytes).toEqual({ original: 31, reply: 49 });
    expect(udp.flow.id).toBe(329323258);
    const icmp = events[5]!;
    expect(icmp.flow.id).toBe(4061321166);
    expect(icmp.flow.original.srcPort).toBe(15041);
    expect(icmp.flow.reply.dstPort).toBe(15041);
    expect(icmp.flow.bytes).toEqual({ original: 168, reply: 168 });
    expect(formatEvent(udp)).toMatch(/^ *\[DESTROY\] udp +0 ASSURED +src=192\.168\.1\.10 .* packets=1 bytes=31 /);
  });

  it('DESTROY without accounting or timestamp: zero counters, the time of reading', () => {
    const before = Date.now();
    const e = parseConntrackEvent(PLAIN_DESTROY)!;
    expect(e.type).toBe('destroy');
    expect(e.flow.state).toBe('UNREPLIED');
    expect(e.flow.packets).toEqual({ original: 0, reply: 0 });
    expect(e.flow.original.srcPort).toBe(40001);
    expect(Date.parse(e.time)).toBeGreaterThanOrEqual(before - 1000);
  });

  it('the tool\'s summary, IPv6 and blank lines are not events', () => {
    expect(events[7]).toBeNull();
    expect(events[8]).toBeNull();
    expect(parseConntrackEvent('[NEW] ipv6 10 udp 17 30 src=fd00::1 dst=fd00::2 sport=1 dport=2 src=fd00::2 dst=fd00::1 sport=2 dport=1')).toBeNull();
  });
});

function flow(id: number, src: string, out: [number, number], inb: [number, number], replyDst = '203.0.113.1'): FlowRecord {
  return {
    id,
    protocol: 'udp',
    original: { src, dst: '203.0.113.2', srcPort: 40000 + id, dstPort: 7 },
    reply: { src: '203.0.113.2', dst: replyDst, srcPort: 7, dstPort: 50000 + id },
    state: 'REPLIED',
    secondsLeft: 30,
    packets: { original: out[0], reply: inb[0] },
    bytes: { original: out[1], reply: inb[1] },
  };
}

describe('KernelTable: traffic per inside host', () => {
  it('sums translated flows per host, folds a flow that left the table, and never goes down', async () => {
    let listing: FlowRecord[] = [
      flow(1, '192.168.1.10', [2, 200], [2, 300]),
      flow(2, '192.168.1.10', [1, 50], [0, 0]),
      flow(3, '192.168.1.11', [5, 500], [5, 700]),
      // Not translated (to the gateway itself: the reply comes back to the sender) and not from the LAN.
      flow(4, '192.168.1.12', [9, 900], [9, 900], '192.168.1.12'),
      flow(5, '10.0.0.1', [9, 900], [9, 900]),
    ];
    const table = new KernelTable(LAN, () => Promise.resolve(listing));
    const first = await table.look();
    expect(first.flows.map((f) => f.id)).toEqual([1, 2, 3, 4]);
    expect(first.hosts).toEqual([
      { host: '192.168.1.10', packets: { outbound: 3, inbound: 2 }, bytes: { outbound: 250, inbound: 300 }, flows: 2, flowsCreated: 2 },
      { host: '192.168.1.11', packets: { outbound: 5, inbound: 5 }, bytes: { outbound: 500, inbound: 700 }, flows: 1, flowsCreated: 1 },
    ]);
    expect(first.bytes).toEqual({ outbound: 750, inbound: 1000 });
    await new Promise((r) => setImmediate(r));

    // Flow 1 grew and then ended; flow 2 grew; a new one appeared.
    listing = [flow(2, '192.168.1.10', [3, 150], [1, 60]), flow(3, '192.168.1.11', [5, 500], [5, 700]), flow(6, '192.168.1.10', [1, 10], [1, 20])];
    const second = await table.look();
    const h10 = second.hosts.find((h) => h.host === '192.168.1.10')!;
    expect(h10).toEqual({ host: '192.168.1.10', packets: { outbound: 2 + 3 + 1, inbound: 2 + 1 + 1 }, bytes: { outbound: 200 + 150 + 10, inbound: 300 + 60 + 20 }, flows: 2, flowsCreated: 3 });
    await new Promise((r) => setImmediate(r));

    listing = [];
    const third = await table.look();
    expect(third.hosts.find((h) => h.host === '192.168.1.10')!.bytes).toEqual(h10.bytes);
    expect(third.hosts.every((h) => h.flows === 0)).toBe(true);
  });

  it('looks at the same moment share one listing; hosts past the limit are summed as "other"', async () => {
    let calls = 0;
    const table = new KernelTable(
      LAN,
      () => {
        calls++;
        return Promise.resolve([flow(1, '192.168.1.10', [1, 1], [1, 1]), flow(2, '192.168.1.11', [1, 2], [1, 2]), flow(3, '192.168.1.12', [1, 3], [1, 3])]);
      },
      2,
    );
    const [a, b] = await Promise.all([table.look(), table.look()]);
    expect(calls).toBe(1);
    expect(a).toBe(b);
    expect(a.hosts.map((h) => [h.host, h.bytes.outbound])).toEqual([
      ['192.168.1.10', 1],
      ['192.168.1.11', 2],
      ['other', 3],
    ]);
  });

  it('the registry serves packets, bytes, translations and per-host counters from it', async () => {
    const listing = parseConntrackListing(
      'ipv4     2 udp      17 2 src=192.168.1.10 dst=203.0.113.2 sport=40000 dport=7 packets=3 bytes=93 src=203.0.113.2 dst=203.0.113.1 sport=7 dport=40000 packets=2 bytes=98 mark=0 use=1 id=44\n',
    );
    const registry = createKernelRegistry(
      {
        backend: 'nft',
        internal: LAN,
        ruleCounters: () => Promise.resolve({ natPackets: 1, invalidDrops: 0 }),
        stats: () => Promise.resolve({}),
        table: new KernelTable(LAN, () => Promise.resolve(listing)),
      },
      { defaultMetrics: false },
    );
    const text = await registry.metrics();
    expect(text).toContain('tunnat_packets_total{path="outbound"} 3');
    expect(text).toContain('tunnat_bytes_total{path="inbound"} 98');
    expect(text).toContain('tunnat_translations_total{direction="inbound"} 2');
    expect(text).toContain('tunnat_host_bytes_total{host="192.168.1.10",direction="outbound"} 93');
    expect(text).toContain('tunnat_host_flows{host="192.168.1.10"} 1');
    expect(text).toContain('tunnat_flows{protocol="udp"} 1');

    const lines = formatStats(summarize(parsePromText(text)));
    expect(lines).toContainEqual('packets      outbound=3 inbound=2');
    expect(lines).toContainEqual('host 192.168.1.10    packets=3/2 bytes=93/98 flows=1  (out/in)');
    // No port pools in the kernel: that row is left out rather than printed empty.
    expect(lines.some((l) => /^ports/.test(l))).toBe(false);
    expect(lines.every((l) => !/^\S+ +$/.test(l))).toBe(true);
  });
});

describe('--pcap with the kernel engine', () => {
  it('is a configuration error naming the reason', () => {
    const cfg = { internal: '192.168.1.0/24', external: 'wan0', engine: 'kernel', pcap: '/tmp/x.pcapng' };
    expect(() => resolveConfig(cfg)).toThrow(ConfigError);
    expect(() => resolveConfig(cfg)).toThrow(/--pcap needs the userspace engine \(--engine userspace\): the kernel translates packets without showing them to tunnat/);
    expect(resolveConfig({ ...cfg, engine: 'userspace' }).pcap).toBe('/tmp/x.pcapng');
  });
});

describe('the kernel engine\'s HTTP routes', () => {
  let dir: string;
  let sock: string;
  let target: string;
  let observer: KernelObserver;
  let close: () => Promise<void>;
  const logLines: string[] = [];

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tunnat-kobs-'));
    sock = join(dir, 'k.sock');
    target = `unix:${sock}`;
    const events = join(dir, 'events.txt');
    writeFileSync(events, EVENTS);
    const listing = [flow(1, '192.168.1.10', [2, 200], [2, 300]), flow(2, '192.168.1.11', [1, 10], [1, 20])];
    const table = new KernelTable(LAN, () => Promise.resolve(listing));
    const ruleCounters = () => Promise.resolve({ natPackets: 7, invalidDrops: 1 });
    const stats = () => Promise.resolve({ drop: 0, early_drop: 2 });
    observer = new KernelObserver(
      // The kernel's event stream replayed from a recording, then held open as `conntrack -E` is.
      { table, internal: LAN, ruleCounters, stats, publicAddress: '203.0.113.1', eventsArgv: ['sh', '-c', `cat '${events}'; exec sleep 30`] },
      createLogger('debug', (l) => logLines.push(l)),
    );
    const registry = createKernelRegistry({ backend: 'nft', internal: LAN, ruleCounters, stats, table }, { defaultMetrics: false });
    close = await startHttp({ registry, conntrack: () => listing, handlers: observer.handlers() }, { tcp: null, unixPath: sock });
  });

  afterEach(async () => {
    observer.close();
    await close();
    rmSync(dir, { recursive: true, force: true });
  });

  const io = () => {
    const out: string[] = [];
    const err: string[] = [];
    const cli: CliIo = { out: (l) => out.push(l), err: (l) => err.push(l) };
    return { out, err, cli };
  };

  it('/trace answers 501 with why, and `tunnat trace` prints it and exits 1', async () => {
    const answer = await unixGet(sock, '/trace');
    expect(answer).toEqual({ status: 501, body: `${TRACE_UNAVAILABLE}\n` });
    const t = io();
    expect(await cmdTrace(['--http', target], t.cli)).toBe(1);
    expect(t.err).toEqual(['tunnat: the per-packet trace needs the userspace engine (--engine userspace): the kernel translates packets without showing them to tunnat']);
  });

  it('`tunnat conntrack --events` shows the kernel\'s events of --internal flows, filtered as for userspace', async () => {
    const t = io();
    expect(await cmdConntrack(['--events', '--count', '2', '--http', target, '--proto', 'udp'], t.cli)).toBe(0);
    expect(t.out).toHaveLength(2);
    expect(t.out[0]).toMatch(/^ +\[NEW\] udp .*src=192\.168\.1\.10 dst=203\.0\.113\.2 sport=40000 dport=7/);
    expect(t.out[1]).toMatch(/^\[DESTROY\] udp .*packets=1 bytes=31 src=203\.0\.113\.2/);
  });

  it('events of all protocols; the gateway\'s own flow (not from --internal) is left out', async () => {
    const t = io();
    expect(await cmdConntrack(['--events', '--count', '6', '--http', target, '--json'], t.cli)).toBe(0);
    const evs = t.out.map((l) => JSON.parse(l) as { type: string; flow: FlowRecord });
    expect(evs.map((e) => `${e.type} ${e.flow.protocol}`)).toEqual(['new udp', 'new tcp', 'update tcp', 'update tcp', 'destroy udp', 'destroy icmp']);
    expect(evs.every((e) => e.flow.original.src.startsWith('192.168.1.'))).toBe(true);
  });

  it('the stream ends when the last reader leaves (no conntrack -E left running)', async () => {
    const conn = await sseConnect(target, '/events', () => {});
    await new Promise((r) => setTimeout(r, 100));
    expect(observer.events.subscribers).toBe(1);
    conn.close();
    const end = Date.now() + 3000;
    while (observer.events.subscribers > 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    expect(observer.events.subscribers).toBe(0);
    expect(observer.events.running).toBe(false);
  });

  it('GET / is the live page; /live sends a kernel snapshot with flows, hosts and what it lacks', async () => {
    const page = (await unixGet(sock, '/')).body;
    expect(page).toMatch(/<title>tunnat — live<\/title>/);
    let snap: LiveSnapshot | null = null;
    const conn = await sseConnect(target, '/live', (event, data) => {
      if (event === 'snapshot') snap = JSON.parse(data) as LiveSnapshot;
    });
    const end = Date.now() + 3000;
    while (!snap && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    conn.close();
    const s = snap as LiveSnapshot | null;
    expect(s?.engine).toBe('kernel');
    expect(s?.flows.map((f) => f.id)).toEqual([1, 2]);
    expect(s?.hosts.map((h) => h.host)).toEqual(['192.168.1.10', '192.168.1.11']);
    expect(s?.counters.flowsCreated).toBe(7);
    expect(s?.counters.flowsRemoved).toEqual({ 'early-drop': 2 });
    expect(s?.counters.packets).toEqual({ outbound: 3, inbound: 3 });
    expect(s?.unavailable).toContain(TRACE_UNAVAILABLE);
  });

  it('`tunnat stats` prints per-host rows and the kernel\'s conntrack statistics', async () => {
    const t = io();
    expect(await cmdStats(['--http', target], t.cli)).toBe(0);
    expect(t.out).toContainEqual('host 192.168.1.10    packets=2/2 bytes=200/300 flows=1  (out/in)');
    expect(t.out).toContainEqual('conntrack    drop=0 early_drop=2');
  });
});

describe('kernelLiveSnapshot', () => {
  it('keeps the busiest flows when there are more than the limit', async () => {
    const listing = [flow(1, '192.168.1.10', [1, 10], [1, 10]), flow(2, '192.168.1.10', [1, 900], [1, 900]), flow(3, '192.168.1.10', [1, 50], [1, 50])];
    const s = await kernelLiveSnapshot(
      {
        table: new KernelTable(LAN, () => Promise.resolve(listing)),
        publicAddress: 'x',
        ruleCounters: () => Promise.resolve({ natPackets: 0, invalidDrops: 0 }),
        stats: () => Promise.resolve({}),
      },
      2,
    );
    expect(s.flows.map((f) => f.id)).toEqual([2, 3]);
    expect(s.flowsTotal).toBe(3);
  });
});
