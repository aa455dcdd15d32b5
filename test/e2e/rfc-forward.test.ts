/**
 * Port forwards (DNAT) with real servers on a LAN host: reached from the internet through the
 * public address, the server sees the real client; reached from another LAN host by hairpinning
 * (RFC 4787 REQ-9, RFC 5382 REQ-8), the server sees the public address, as an outside host would.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { httpSeenBy } from '../../src/lab/probes.js';
import { startServices } from '../../src/lab/services.js';
import { captureOn, Cleanup, buildTestLab, isRoot, type Capture, type Lab, type TestRouter } from './harness.js';
import { re, startRfcRouter, tcpProbe, udpProbe, wanLeaks } from './fixtures/rfc-lab.js';

const PUBLIC = '203.0.113.1';
const CLIENT = '203.0.113.2';
const LAN_SERVER = '192.168.1.10';

// Needs root: namespaces, veth pairs, a TUN device and tcpdump.
describe.skipIf(!isRoot)('port forwards to a LAN server', () => {
  const cleanup = new Cleanup((l) => console.error(l));
  let lab: Lab;
  let router: TestRouter;
  let capture: Capture;
  let inet: string;
  let h1: string;

  beforeAll(async () => {
    lab = await buildTestLab(cleanup, { prefix: 'rff', lanHosts: 2 });
    inet = lab.inet.netns;
    h1 = lab.lanHosts[1]!.netns;
    // The lab's HTTP and UDP echo services, run on the LAN host: both report the client they saw.
    await startServices({ netns: lab.lanHosts[0]!.netns, addresses: [LAN_SERVER], cleanup });
    capture = await captureOn(inet, lab.inet.dev, cleanup);
    router = await startRfcRouter(lab, cleanup, 'fwd', ['--forward', `tcp:8080=${LAN_SERVER}:80`, '--forward', `udp:5353=${LAN_SERVER}:7`]);
  }, 60_000);

  afterAll(async () => {
    await cleanup.run();
  }, 60_000);

  it('TCP from the internet to 203.0.113.1:8080 reaches the LAN server, which sees the real client', async () => {
    const seen = await httpSeenBy(inet, PUBLIC, { port: 8080 });
    expect(seen.remoteAddress).toBe(CLIENT);
    expect(seen.localAddress).toBe(LAN_SERVER);
    expect(seen.localPort).toBe(80);
    const flows = (await router.conntrack()).filter((f) => f.protocol === 'tcp' && f.original.src === CLIENT && f.original.dstPort === 8080);
    expect(flows).toHaveLength(1);
    expect(flows[0]!.original).toMatchObject({ src: CLIENT, srcPort: seen.remotePort, dst: PUBLIC, dstPort: 8080 });
    expect(flows[0]!.reply).toMatchObject({ src: LAN_SERVER, srcPort: 80, dst: CLIENT, dstPort: seen.remotePort });
  });

  it('UDP from the internet to 203.0.113.1:5353 reaches the LAN echo; the reply comes back from 203.0.113.1:5353', async () => {
    // A connected socket accepts the reply only from the address and port it sent to.
    const r = await udpProbe(inet, PUBLIC, 5353, { text: 'forwarded datagram' });
    expect(r.outcome).toBe('reply');
    expect(r.endsWithPayload).toBe(true);
    expect(r.prefix).toMatch(new RegExp(`^${re(CLIENT)}:\\d+ $`));
  });

  it('from another LAN host by hairpin: TCP and UDP reach the server, which sees the public address', async () => {
    const seen = await httpSeenBy(h1, PUBLIC, { port: 8080 });
    expect(seen.remoteAddress).toBe(PUBLIC);
    expect(seen.localAddress).toBe(LAN_SERVER);
    const r = await udpProbe(h1, PUBLIC, 5353, { text: 'hairpinned datagram' });
    expect(r.outcome).toBe('reply');
    expect(r.endsWithPayload).toBe(true);
    expect(r.prefix).toMatch(new RegExp(`^${re(PUBLIC)}:\\d+ $`));
    const hairpins = (await router.conntrack()).filter((f) => f.original.src === lab.lanHosts[1]!.address && f.original.dst === PUBLIC);
    expect(hairpins.map((f) => f.protocol).sort()).toEqual(['tcp', 'udp']);
    for (const f of hairpins) expect(f.reply.src).toBe(LAN_SERVER);
  });

  it('a port that is not forwarded stays closed from the internet', async () => {
    const r = await tcpProbe(inet, PUBLIC, 8081, 1500);
    expect(r.outcome).not.toBe('connected');
  });

  it('no 192.168.0.0/16 address left on the WAN, not even quoted inside an ICMP error', async () => {
    const { text, leaks } = await wanLeaks(capture);
    expect(text).toMatch(new RegExp(`${re(CLIENT)}\\.\\d+ > ${re(PUBLIC)}\\.8080: Flags \\[S\\]`));
    expect(text).toMatch(new RegExp(`${re(PUBLIC)}\\.8080 > ${re(CLIENT)}\\.\\d+: Flags \\[S\\.\\]`));
    expect(leaks).toEqual([]);
  });
});
