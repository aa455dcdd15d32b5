/**
 * A pool of public addresses (RFC 4787 REQ-2, paired pooling) with the real router: three public
 * addresses (203.0.113.10-12, answered for on the WAN by proxy ARP) and four LAN hosts. Each of the first
 * three keeps one public address over 100 UDP flows from 100 source ports, as the internet host sees
 * them, and the hosts land on the addresses the documented hash picks; the fourth is covered by a static
 * SNAT entry (`--snat 192.168.1.13/32=203.0.113.12`) and leaves through that address. Every flow gets
 * its reply back, and no private address shows on the WAN.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { poolSlot } from '../../src/nat/context.js';
import { parseIpv4 } from '../../src/wire/addr.js';
import { Cleanup, buildTestLab, captureOn, inNs, isRoot, type Capture, type Lab } from './harness.js';
import { UDP_FLOWS_CLIENT, echoLog, startRfcRouter, startUdpEcho, udpProbe, wanLeaks } from './fixtures/rfc-lab.js';
import type { NsProcess } from '../../src/lab/process.js';

const POOL = ['203.0.113.10', '203.0.113.11', '203.0.113.12'];
const ECHO = '203.0.113.2';
const ECHO_PORT = 7007;
const FLOWS = 100;


// Needs root: namespaces, a TUN, tcpdump.
describe.skipIf(!isRoot)('a pool of three public addresses pairs each LAN host with one of them', () => {
  const cleanup = new Cleanup((l) => console.error(l));
  let lab: Lab;
  let capture: Capture;
  let echo: NsProcess;

  beforeAll(async () => {
    lab = await buildTestLab(cleanup, { prefix: 'rpl', lanHosts: 4 });
    echo = await startUdpEcho(lab.inet.netns, ECHO, ECHO_PORT, cleanup);
    capture = await captureOn(lab.inet.netns, lab.inet.dev, cleanup, ['udp']);
  }, 60_000);

  afterAll(async () => {
    await cleanup.run();
  }, 60_000);

  it('keeps every host on one address over 100 flows, spreads hosts as documented, honours a static entry', async () => {
    const router = await startRfcRouter(lab, cleanup, 'pool', ['--public-ip', '203.0.113.10-203.0.113.12', '--snat', '192.168.1.13/32=203.0.113.12']);
    try {
      const hosts = lab.lanHosts;
      const replies = await Promise.all(
        hosts.map((h, i) => inNs(h.netns, ['python3', '-c', UDP_FLOWS_CLIENT, ECHO, String(ECHO_PORT), String(41000 + i * 200), String(FLOWS)], { timeoutMs: 60_000 })),
      );
      // Every flow got its reply back through the NAT.
      expect(replies.map((r) => Number(r.stdout.trim()))).toEqual(hosts.map(() => FLOWS));
      // The internet host's view: which public address each source port range arrived from.
      const seen = echoLog(echo).map((e) => {
        const [addr, port] = e.from.split(':');
        return { addr: addr!, port: Number(port) };
      });
      expect(seen.length).toBeGreaterThanOrEqual(hosts.length * FLOWS);
      for (let i = 0; i < hosts.length; i++) {
        // Port preservation keeps each host's source ports, so its flows are the ones in its range.
        const mine = seen.filter((s) => s.port >= 41000 + i * 200 && s.port < 41000 + i * 200 + FLOWS);
        expect(mine.length, hosts[i]!.address).toBe(FLOWS);
        const addrs = new Set(mine.map((s) => s.addr));
        expect([...addrs], hosts[i]!.address).toHaveLength(1);
        const expected = hosts[i]!.address === '192.168.1.13' ? '203.0.113.12' : POOL[poolSlot(parseIpv4(hosts[i]!.address)!, POOL.length)]!;
        expect([...addrs][0], hosts[i]!.address).toBe(expected);
      }
      const flows = await router.conntrack();
      expect(flows.length).toBeGreaterThanOrEqual(hosts.length * FLOWS);
    } finally {
      await router.stop();
    }
    const { leaks } = await wanLeaks(capture);
    expect(leaks).toEqual([]);
  }, 180_000);

  it('a forward on a pool address (--forward udp:203.0.113.11:7100=…) answers there and nowhere else', async () => {
    const server = lab.lanHosts[0]!;
    const lanEcho = await startUdpEcho(server.netns, server.address, 7100, cleanup);
    const router = await startRfcRouter(lab, cleanup, 'poolfwd', ['--public-ip', '203.0.113.10-203.0.113.12', '--forward', `udp:203.0.113.11:7100=${server.address}`]);
    try {
      const hit = await udpProbe(lab.inet.netns, '203.0.113.11', 7100, { text: 'to the forward' });
      expect(hit.outcome).toBe('reply');
      expect(hit.endsWithPayload).toBe(true);
      // The LAN server saw the internet host itself (DNAT keeps the source).
      expect(echoLog(lanEcho).map((e) => e.from.split(':')[0])).toEqual(['203.0.113.2']);
      for (const other of ['203.0.113.10', '203.0.113.12']) {
        const miss = await udpProbe(lab.inet.netns, other, 7100, { text: 'not here', timeoutMs: 1000 });
        expect(miss.outcome, other).not.toBe('reply');
      }
    } finally {
      await router.stop();
    }
  }, 60_000);
});
