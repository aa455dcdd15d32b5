/**
 * The egress allowlist (`--allow-egress`) with real clients: what is listed passes, anything else
 * never reaches the WAN and is counted as an egress-policy drop; with `--egress-reject` the LAN
 * host is told at once (a TCP RST for TCP, ICMP "administratively prohibited" for the rest, RFC 5508
 * §6), which Linux reports as ECONNREFUSED and EHOSTUNREACH.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CapturedPacket } from '../../src/lab/capture.js';
import { httpSeenBy, ping } from '../../src/lab/probes.js';
import { startServices } from '../../src/lab/services.js';
import { captureOn, Cleanup, buildTestLab, isRoot, type Capture, type Lab } from './harness.js';
import { metricValue, startRfcRouter, startUdpEcho, tcpProbe, udpProbe, wanLeaks } from './fixtures/rfc-lab.js';

const SERVER = '203.0.113.2';
const PUBLIC = '203.0.113.1';
const ALLOW = 'tcp:80,udp:53,icmp';
const BLOCKED_TCP = 8443;
const BLOCKED_UDP = 7;
/** Source ports of the refused LAN connections, and of the gateway's own (unfiltered) control connection. */
const SPORT = { drop: 45443, reject: 46443, control: 21443 } as const;

const egressDrops = (metrics: string): number => metricValue(metrics, 'tunnat_drops_total', { reason: 'egress-policy' });

// Needs root: namespaces, veth pairs, a TUN device and tcpdump.
describe.skipIf(!isRoot)(`egress allowlist --allow-egress ${ALLOW}`, () => {
  const cleanup = new Cleanup((l) => console.error(l));
  let lab: Lab;
  let capture: Capture;
  let h0: string;

  beforeAll(async () => {
    lab = await buildTestLab(cleanup, { prefix: 'rfe', lanHosts: 1 });
    h0 = lab.lanHosts[0]!.netns;
    // HTTP on 80 (allowed) and 8443 (not allowed), UDP echo on 7 (not allowed) and 53 (allowed).
    await startServices({ netns: lab.inet.netns, addresses: [SERVER], httpPort: 80, udpPort: BLOCKED_UDP, cleanup });
    await startServices({ netns: lab.inet.netns, addresses: [SERVER], httpPort: BLOCKED_TCP, udpPort: 9007, cleanup });
    await startUdpEcho(lab.inet.netns, SERVER, 53, cleanup);
    capture = await captureOn(lab.inet.netns, lab.inet.dev, cleanup);
  }, 60_000);

  afterAll(async () => {
    await cleanup.run();
  }, 60_000);

  it('default (drop): HTTP, DNS-port UDP and ping pass; TCP 8443 and UDP 7 time out, counted as egress-policy drops', async () => {
    const router = await startRfcRouter(lab, cleanup, 'drop', ['--allow-egress', ALLOW]);
    try {
      expect((await httpSeenBy(h0, SERVER)).remoteAddress).toBe(PUBLIC);
      const dns = await udpProbe(h0, SERVER, 53, { text: 'allowed' });
      expect(dns.outcome).toBe('reply');
      expect(dns.endsWithPayload).toBe(true);
      expect((await ping(h0, SERVER, 2)).received).toBe(2);

      // The blocked service is there: the gateway's own connection (not subject to the policy) gets in.
      expect((await tcpProbe(lab.gw.netns, SERVER, BLOCKED_TCP, 3000, SPORT.control)).outcome).toBe('connected');

      const before = egressDrops(await router.metrics());
      const tcp = await tcpProbe(h0, SERVER, BLOCKED_TCP, 2500, SPORT.drop);
      expect(tcp.outcome).toBe('timeout');
      const udp = await udpProbe(h0, SERVER, BLOCKED_UDP, { text: 'blocked', timeoutMs: 1500 });
      expect(udp.outcome).toBe('timeout');
      // At least the SYN and the datagram; the SYN's retransmissions count too.
      expect(egressDrops(await router.metrics()) - before).toBeGreaterThanOrEqual(2);
      expect((await router.conntrack()).filter((f) => f.original.dstPort === BLOCKED_TCP || f.original.dstPort === BLOCKED_UDP)).toEqual([]);
    } finally {
      expect(await router.stop(), router.output()).toBe(0);
    }
  }, 45_000);

  it('--egress-reject: TCP 8443 is refused at once (RST → ECONNREFUSED), UDP 7 gets ICMP admin-prohibited (EHOSTUNREACH)', async () => {
    const router = await startRfcRouter(lab, cleanup, 'reject', ['--allow-egress', ALLOW, '--egress-reject']);
    try {
      expect((await httpSeenBy(h0, SERVER)).remoteAddress).toBe(PUBLIC);
      const before = egressDrops(await router.metrics());
      const tcp = await tcpProbe(h0, SERVER, BLOCKED_TCP, 3000, SPORT.reject);
      expect(tcp.outcome).toBe('error');
      expect(tcp.code).toBe('ECONNREFUSED');
      expect(tcp.ms).toBeLessThan(1000);
      const udp = await udpProbe(h0, SERVER, BLOCKED_UDP, { text: 'blocked', timeoutMs: 3000 });
      expect(udp.outcome).toBe('error');
      // Linux maps ICMP 3/13 (communication administratively prohibited) to EHOSTUNREACH.
      expect(udp.code).toBe('EHOSTUNREACH');
      expect(udp.ms).toBeLessThan(1000);
      expect(egressDrops(await router.metrics()) - before).toBeGreaterThanOrEqual(2);
    } finally {
      expect(await router.stop(), router.output()).toBe(0);
    }
  }, 45_000);

  it('nothing refused reached the WAN, and no 192.168.0.0/16 address left it', async () => {
    const { leaks } = await wanLeaks(capture);
    const ip = (await capture.packets()).filter((p): p is CapturedPacket & { kind: 'ip' } => p.kind === 'ip');
    // The allowed traffic and the control connection are there…
    expect(ip.some((p) => p.src === PUBLIC && p.dstPort === 80)).toBe(true);
    expect(ip.some((p) => p.src === PUBLIC && p.dstPort === 53 && p.protocol === 'udp')).toBe(true);
    expect(ip.some((p) => p.src === PUBLIC && p.dstPort === BLOCKED_TCP && p.srcPort === SPORT.control)).toBe(true);
    // …and nothing else went to the blocked ports.
    expect(ip.filter((p) => p.dstPort === BLOCKED_TCP && p.srcPort !== SPORT.control).map((p) => p.line)).toEqual([]);
    expect(ip.filter((p) => p.protocol === 'udp' && p.dstPort === BLOCKED_UDP).map((p) => p.line)).toEqual([]);
    expect(leaks).toEqual([]);
  });
});
