/**
 * The multi-core data plane (--workers 2): every flow lives on the worker that owns its ports, in both
 * directions; packets that the kernel put on the other worker's queue are handed over and counted; one
 * inside endpoint keeps one public port whatever it talks to (RFC 4787 REQ-1) and hairpinning works
 * between hosts whose flows sit on different workers; a worker that dies is restarted and says what it lost.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NsProcess, spawnIn } from '../../src/lab/process.js';
import { defaultCliPath } from '../../src/lab/router.js';
import { sliceOwner } from '../../src/nat/ports.js';
import { buildTestLab, Cleanup, captureOn, inNs, isRoot, waitUntil, type Capture, type Lab, type TestRouter } from './harness.js';
import { metricValue, startRfcRouter, wanLeaks } from './fixtures/rfc-lab.js';

const PY = '/usr/bin/python3';
const PORT = 7300;

/** Answers each datagram with the address and port it came from: "a.b.c.d:port". */
const REFLECTOR = `
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print('ready', flush=True)
while True:
    data, peer = s.recvfrom(65536)
    seen = ('%s:%d' % peer).encode()
    # A big datagram is answered with one as big (it comes back in fragments too).
    s.sendto(seen.ljust(len(data), b'.') if len(data) > 1400 else seen, peer)
`;

/** n sockets, each sending one datagram of \`size\` bytes (fragmented on the way) and awaiting its echo. */
const BIG_CLIENT = `
import socket, sys
host, port, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ok = 0
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(('0.0.0.0', 0))
    s.settimeout(3)
    s.sendto(b'x' * size, (host, port))
    try:
        data = s.recvfrom(65536)[0]
        ok += len(data) == size
    except socket.timeout:
        pass
    s.close()
print(ok)
`;

/** n sockets, each sending to two servers; one JSON line per socket with what each server saw. */
const EIM_CLIENT = `
import socket, sys, json
a, b, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(('0.0.0.0', 0))
    s.settimeout(3)
    seen = []
    for host in (a, b):
        s.sendto(b'eim', (host, port))
        try:
            seen.append(s.recvfrom(2048)[0].decode())
        except socket.timeout:
            seen.append(None)
    print(json.dumps({'local': s.getsockname()[1], 'seen': seen}), flush=True)
    s.close()
`;

/** A hairpin target: learn its public endpoint from the reflector, then answer one datagram. */
const HAIRPIN_TARGET = `
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('0.0.0.0', 0))
s.settimeout(10)
s.sendto(b'who', (sys.argv[1], int(sys.argv[2])))
print('mapped', s.recvfrom(2048)[0].decode(), flush=True)
data, peer = s.recvfrom(2048)
s.sendto(b'pong', peer)
print('from %s:%d' % peer, flush=True)
`;

/** A hairpin sender: one datagram to the public endpoint, and the answer's source. */
const HAIRPIN_SENDER = `
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(b'ping', (sys.argv[1], int(sys.argv[2])))
data, peer = s.recvfrom(2048)
print('%s %s:%d %d' % (data.decode(), peer[0], peer[1], s.getsockname()[1]), flush=True)
`;

interface FlowWithWorker {
  protocol: string;
  worker: number;
  original: { src: string; srcPort: number; dst: string; dstPort: number };
  reply: { dst: string; dstPort: number };
  counters?: { original?: { packets: number }; reply?: { packets: number } };
}

// Needs root (namespaces, a multi-queue TUN, tcpdump). CI runs as root.
describe.skipIf(!isRoot)('tunnat run --workers 2', () => {
  const cleanup = new Cleanup((l) => console.error(l));
  let lab: Lab;
  let router: TestRouter;
  let capture: Capture;
  let h0: string;
  let h1: string;
  let servers: string[];
  let publicIp: string;

  beforeAll(async () => {
    lab = await buildTestLab(cleanup, { prefix: 'wk', lanHosts: 2, inetExtraAddresses: ['203.0.113.3'] });
    h0 = lab.lanHosts[0]!.netns;
    h1 = lab.lanHosts[1]!.netns;
    servers = lab.inet.addresses.slice(0, 2);
    publicIp = lab.gw.wanAddress;
    for (const s of servers) {
      const p: NsProcess = spawnIn(lab.inet.netns, [PY, '-c', REFLECTOR, s, String(PORT)], { label: `reflector ${s}`, cleanup });
      await p.waitForLine(/^ready$/, 10_000);
    }
    capture = await captureOn(lab.inet.netns, lab.inet.dev, cleanup);
    process.env.TUNNAT_TEST_HOOKS = '1';
    router = await startRfcRouter(lab, cleanup, 'workers', ['--workers', '2']);
  }, 60_000);

  afterAll(async () => {
    delete process.env.TUNNAT_TEST_HOOKS;
    await cleanup.run();
  }, 60_000);

  it('keeps one public port per inside endpoint across destinations, and each flow on the worker that owns its port', async () => {
    const r = await inNs(h0, [PY, '-c', EIM_CLIENT, servers[0]!, servers[1]!, String(PORT), '40'], { timeoutMs: 60_000 });
    const rows = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { local: number; seen: (string | null)[] });
    expect(rows).toHaveLength(40);
    for (const row of rows) {
      expect(row.seen[0], JSON.stringify(row)).not.toBeNull();
      // Endpoint-independent mapping: both servers saw the same public endpoint.
      expect(row.seen[1]).toBe(row.seen[0]);
      expect(row.seen[0]!.split(':')[0]).toBe(publicIp);
    }
    const flows = (await router.conntrack()) as unknown as FlowWithWorker[];
    const mine = flows.filter((f) => f.protocol === 'udp' && f.original.src === lab.lanHosts[0]!.address && f.original.srcPort !== 0);
    // One flow per (inside port, server): a closed socket's port may be given to the next one, whose
    // flows are then the same as its predecessor's.
    expect(mine.length).toBeGreaterThanOrEqual(new Set(rows.map((row) => row.local)).size * 2);
    const workers = new Set<number>();
    for (const f of mine) {
      workers.add(f.worker);
      // The public port is in the slice of the worker that holds the flow, and so is the inside port
      // (kept when it could be): both directions are steered to that one worker.
      expect(sliceOwner(f.reply.dstPort, 2), JSON.stringify(f)).toBe(f.worker);
      // Each flow is listed once: no worker holds a copy of another's.
      const same = (g: FlowWithWorker) => g.original.srcPort === f.original.srcPort && g.original.dst === f.original.dst && g.original.dstPort === f.original.dstPort;
      expect(mine.filter(same), JSON.stringify(f)).toHaveLength(1);
    }
    expect([...workers].sort()).toEqual([0, 1]);
  });

  it("the kernel puts both directions of every flow on its owner's queue: nothing to hand off", async () => {
    const m = await router.metrics();
    // The steering program (steer-bpf.ts) is attached, and the 80 endpoints' TCP and UDP packets, both ways,
    // were each read by the worker that owns them.
    expect(metricValue(m, 'tunnat_queue_steering')).toBe(1);
    expect(metricValue(m, 'tunnat_worker_handoffs_total', { direction: 'out' })).toBe(0);
    // Every worker translated packets, and the totals are the sum of the workers'.
    expect(metricValue(m, 'tunnat_worker_packets_total', { worker: '0' })).toBeGreaterThan(0);
    expect(metricValue(m, 'tunnat_worker_packets_total', { worker: '1' })).toBeGreaterThan(0);
    expect(metricValue(m, 'tunnat_flows')).toBe(metricValue(m, 'tunnat_worker_flows'));
  });

  it("flow events and the trace gather every worker's flows into one stream", async () => {
    const target = `unix:${router.socketPath!}`;
    const events = new NsProcess(null, [process.execPath, defaultCliPath(), 'conntrack', '--events', '--http', target, '--proto', 'udp', '--src', lab.lanHosts[1]!.address], { cleanup, label: 'events' });
    const trace = new NsProcess(null, [process.execPath, defaultCliPath(), 'trace', 'udp', 'and', 'host', lab.lanHosts[1]!.address, '--count', '64', '--rate', '1000', '--http', target], { cleanup, label: 'trace' });
    await events.waitForLine(/following flow events/);
    await trace.waitForLine(/tracing /);
    // 16 sockets, each a datagram to two servers and their answers: 64 packets to trace. The chance that
    // all 16 ports fall in one worker's slice is 1 in 32,768.
    const r = await inNs(h1, [PY, '-c', EIM_CLIENT, servers[0]!, servers[1]!, String(PORT), '16'], { timeoutMs: 60_000 });
    const ports = r.stdout.trim().split('\n').map((l) => (JSON.parse(l) as { local: number }).local);
    expect(ports).toHaveLength(16);
    // Every flow's birth is in the one event stream, whichever worker holds it.
    for (const p of ports) await events.waitForLine(new RegExp(`\\[NEW\\] udp .*sport=${p} `), 10_000);
    expect(new Set(ports.map((p) => sliceOwner(p, 2))).size).toBe(2);
    // The trace (every one of those packets, the rate shared by the workers) has both workers' flows.
    expect(await trace.exited).toBe(0);
    const traced = [...trace.output().matchAll(/OUTBOUND +udp [\d.]+:(\d+) →/g)].map((m) => Number(m[1]));
    expect(traced.length).toBeGreaterThan(0);
    expect(new Set(traced.map((p) => sliceOwner(p, 2))).size, trace.output()).toBe(2);
    await events.stop();
  }, 120_000);

  it('hairpins between LAN hosts whose mappings are on either worker', async () => {
    let across = 0;
    for (let i = 0; i < 12; i++) {
      const target = spawnIn(h0, [PY, '-c', HAIRPIN_TARGET, servers[0]!, String(PORT)], { label: 'hairpin target', cleanup });
      const line = await target.waitForLine(/^mapped /, 10_000);
      const [addr, port] = line.slice('mapped '.length).trim().split(':');
      expect(addr).toBe(publicIp);
      const r = await inNs(h1, [PY, '-c', HAIRPIN_SENDER, publicIp, port!], { timeoutMs: 20_000, allowFail: true });
      const m = new RegExp(`^pong ${publicIp.replace(/\./g, '\\.')}:${port} (\\d+)$`, 'm').exec(r.stdout);
      expect(m, `sender: ${r.stdout}${r.stderr}\ntunnat: ${router.output()}`).not.toBeNull();
      // The sender's own flows belong to the slice of its port: a hairpin across workers when it differs.
      if (sliceOwner(Number(m![1]), 2) !== sliceOwner(Number(port), 2)) across++;
      await waitUntil('the target to answer', async () => /^from /m.test(target.output()), 5000);
      // The target saw the sender at the public address, as an outside host would.
      const from = /^from (\S+):(\d+)$/m.exec(target.output())!;
      expect(from[1]).toBe(publicIp);
    }
    // Random ports: the chance that none of 12 pairs crossed is 1 in 4096.
    expect(across).toBeGreaterThan(0);
  });

  it('fragmented datagrams both ways, whichever worker their fragments meet at', async () => {
    const r = await inNs(h1, [PY, '-c', BIG_CLIENT, servers[0]!, String(PORT), '24', '4000'], { timeoutMs: 120_000 });
    expect(Number(r.stdout.trim())).toBe(24);
    const m = await router.metrics();
    // Fragments did cross between workers (24 datagrams of 3 fragments each way, two workers: later
    // fragments carry no ports, and the kernel puts them on queue 0), each hand-off counted on both sides.
    const out = metricValue(m, 'tunnat_worker_handoffs_total', { direction: 'out' });
    expect(out).toBeGreaterThan(0);
    // Taken in: everything handed out, plus held fragments a worker passed to itself through its own ring.
    expect(metricValue(m, 'tunnat_worker_handoffs_total', { direction: 'in' })).toBeGreaterThanOrEqual(out);
    expect(metricValue(m, 'tunnat_worker_handoff_drops_total')).toBe(0);
    expect(metricValue(m, 'tunnat_worker_fragments_total', { event: 'dropped' })).toBe(0);
    expect(metricValue(m, 'tunnat_drops_total', { reason: 'fragment' })).toBe(0);
  });

  it('restarts a worker that died, counts the flows it held, and goes on forwarding', async () => {
    const before = await router.metrics();
    expect(metricValue(before, 'tunnat_worker_restarts_total')).toBe(0);
    process.kill(router.process!.pid!, 'SIGUSR2');
    await waitUntil('worker 0 to be restarted', async () => metricValue(await router.metrics(), 'tunnat_worker_restarts_total', { worker: '0' }) === 1, 15_000);
    const m = await router.metrics();
    expect(metricValue(m, 'tunnat_worker_flows_lost_total')).toBeGreaterThan(0);
    expect(router.output()).toMatch(/restarting data-plane worker/);
    const r = await inNs(h0, [PY, '-c', EIM_CLIENT, servers[0]!, servers[1]!, String(PORT), '10'], { timeoutMs: 60_000 });
    const rows = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { seen: (string | null)[] });
    expect(rows.every((row) => row.seen[0] !== null && row.seen[0] === row.seen[1])).toBe(true);
  });

  it('leaves no private address on the WAN', async () => {
    const { leaks } = await wanLeaks(capture);
    expect(leaks).toEqual([]);
  });
});
