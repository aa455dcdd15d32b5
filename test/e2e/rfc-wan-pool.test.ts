/**
 * Masquerade over every IPv4 address of the WAN interface (`--masquerade all`) with the real router.
 * The gateway's WAN starts with three addresses (203.0.113.1, .20, .21): four LAN hosts are paired
 * with them by the documented hash over the sorted addresses, each keeping one address over 30 flows.
 * Then, while every host keeps sending, an address is added (.22) and one removed (.20): tunnat routes
 * the new one (its rules and proxy ARP entry appear, its port pools show in /metrics), lets the old one
 * go (its flows flushed, its rules gone), and the hosts that were on it come back on the addresses the
 * hash now names. Throughout, no private address shows on the WAN.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { poolSlot } from '../../src/nat/context.js';
import { parseIpv4 } from '../../src/wire/addr.js';
import { Cleanup, buildTestLab, captureOn, inNs, isRoot, type Capture, type Lab } from './harness.js';
import { UDP_FLOWS_CLIENT, echoLog, metricValue, startRfcRouter, startUdpEcho, wanLeaks } from './fixtures/rfc-lab.js';
import type { NsProcess } from '../../src/lab/process.js';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const ECHO = '203.0.113.2';
const ECHO_PORT = 7008;
const FLOWS = 30;


/** Keep sending for `secs` seconds, a datagram every 10 ms from a fresh socket; prints "sent got". */
const STREAM = `
import socket, sys, time
host, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
end = time.time() + secs
sent = got = 0
while time.time() < end:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.2)
    s.sendto(b'stream', (host, port))
    sent += 1
    try:
        s.recvfrom(2048)
        got += 1
    except socket.timeout:
        pass
    s.close()
    time.sleep(0.01)
print(sent, got)
`;

function sorted(addrs: string[]): string[] {
  return [...addrs].sort((a, b) => parseIpv4(a)! - parseIpv4(b)!);
}

// Needs root: namespaces, a TUN, tcpdump.
describe.skipIf(!isRoot)('--masquerade all pairs hosts with every WAN address and follows them as they come and go', () => {
  const cleanup = new Cleanup((l) => console.error(l));
  let lab: Lab;
  let capture: Capture;
  let echo: NsProcess;

  beforeAll(async () => {
    lab = await buildTestLab(cleanup, { prefix: 'rwp', lanHosts: 4 });
    for (const a of ['203.0.113.20', '203.0.113.21']) await inNs(lab.gw.netns, ['ip', 'addr', 'add', `${a}/24`, 'dev', lab.gw.wanDev]);
    echo = await startUdpEcho(lab.inet.netns, ECHO, ECHO_PORT, cleanup);
    capture = await captureOn(lab.inet.netns, lab.inet.dev, cleanup, ['udp']);
  }, 60_000);

  afterAll(async () => {
    await cleanup.run();
  }, 60_000);

  /**
   * Each host's 30 flows, from source ports below the ephemeral range (so no other socket's mapping holds
   * them and port preservation keeps them); returns the one public address each host's flows arrived from.
   */
  async function roundOfFlows(base: number): Promise<string[]> {
    const hosts = lab.lanHosts;
    const inRange = (port: number, i: number) => port >= base + i * 100 && port < base + i * 100 + FLOWS;
    const entries = () =>
      echoLog(echo).map((e) => {
        const [addr, port] = e.from.split(':');
        return { addr: addr!, port: Number(port) };
      });
    const earlier = entries();
    const replies = await Promise.all(
      hosts.map((h, i) => inNs(h.netns, ['python3', '-c', UDP_FLOWS_CLIENT, ECHO, String(ECHO_PORT), String(base + i * 100), String(FLOWS)], { timeoutMs: 60_000 })),
    );
    expect(replies.map((r) => Number(r.stdout.trim()))).toEqual(hosts.map(() => FLOWS));
    // Every datagram was answered, so the echo has logged it; but its output reaches this process through
    // a pipe that may not have been read yet when the clients exit. Wait for the lines (briefly).
    for (const end = Date.now() + 5000; entries().length - earlier.length < hosts.length * FLOWS && Date.now() < end; ) {
      await new Promise((r) => setTimeout(r, 50));
    }
    const seen = entries().slice(earlier.length);
    const stray = seen.filter((s) => !hosts.some((_, i) => inRange(s.port, i)));
    return hosts.map((h, i) => {
      const mine = seen.filter((s) => inRange(s.port, i));
      const addrs = [...new Set(mine.map((s) => s.addr))];
      expect(addrs, h.address).toHaveLength(1);
      // A port is preserved unless an earlier mapping already holds it on that address: the streams' sockets
      // come from random ports, and one the gateway had to move (its host was re-paired) may have been given
      // a port of this round's range. Such a flow arrives from another port of the same address.
      const missing = Array.from({ length: FLOWS }, (_, k) => base + i * 100 + k).filter((p) => !mine.some((s) => s.port === p));
      for (const p of missing) {
        const why = `${h.address}: port ${p} not preserved (seen ${JSON.stringify(mine.map((s) => s.port))}, stray ${JSON.stringify(stray)})`;
        expect(earlier.some((e) => e.addr === addrs[0] && e.port === p), why).toBe(true);
        const k = stray.findIndex((s) => s.addr === addrs[0]);
        expect(k, why).toBeGreaterThanOrEqual(0);
        stray.splice(k, 1);
      }
      // No flow of the round was seen twice (each socket sent one datagram).
      expect(new Set(mine.map((s) => s.port)).size, h.address).toBe(mine.length);
      return addrs[0]!;
    });
  }

  async function rulesAndProxies(): Promise<string> {
    const rules = await inNs(lab.gw.netns, ['ip', 'rule', 'list']);
    const proxies = await inNs(lab.gw.netns, ['ip', 'neigh', 'show', 'proxy']);
    return rules.stdout + proxies.stdout;
  }

  async function waitFor(what: string, ok: () => Promise<boolean>, ms = 15_000): Promise<void> {
    const end = Date.now() + ms;
    while (Date.now() < end) {
      if (await ok()) return;
      await new Promise((r) => setTimeout(r, 250));
    }
    throw new Error(`timed out waiting for ${what}`);
  }

  it('spreads hosts over the WAN addresses, then follows an address added and one removed under traffic', async () => {
    const router = await startRfcRouter(lab, cleanup, 'wanpool', ['--masquerade', 'all']);
    try {
      const first = ['203.0.113.1', '203.0.113.20', '203.0.113.21'];
      const placed = await roundOfFlows(12000);
      lab.lanHosts.forEach((h, i) => expect(placed[i], h.address).toBe(sorted(first)[poolSlot(parseIpv4(h.address)!, 3)]));
      let routing = await rulesAndProxies();
      for (const a of first) expect(routing).toContain(`to ${a} lookup`);
      const metrics = await router.metrics();
      for (const a of first) expect(metricValue(metrics, 'tunnat_port_pool_size', { protocol: 'udp', address: a })).toBeGreaterThan(0);

      // Every host keeps sending while the WAN's addresses change.
      const streams = lab.lanHosts.map((h) => inNs(h.netns, ['python3', '-c', STREAM, ECHO, String(ECHO_PORT), '12'], { timeoutMs: 60_000 }));
      await new Promise((r) => setTimeout(r, 1500));
      await inNs(lab.gw.netns, ['ip', 'addr', 'add', '203.0.113.22/24', 'dev', lab.gw.wanDev]);
      await waitFor('203.0.113.22 in the pool', async () => metricValue(await router.metrics(), 'tunnat_port_pool_size', { protocol: 'udp', address: '203.0.113.22' }) > 0);
      await inNs(lab.gw.netns, ['ip', 'addr', 'del', '203.0.113.20/24', 'dev', lab.gw.wanDev]);
      await waitFor('203.0.113.20 out of the pool', async () => !(await router.metrics()).includes('address="203.0.113.20"'));
      await waitFor('the routing of 203.0.113.20 removed', async () => !(await rulesAndProxies()).includes('203.0.113.20'));
      const streamed = (await Promise.all(streams)).map((r) => r.stdout.trim().split(' ').map(Number));
      // The streams went on through the changes: most datagrams of every host were answered.
      for (const [sent, got] of streamed) {
        expect(sent).toBeGreaterThan(100);
        expect(got!).toBeGreaterThan(sent! * 0.8);
      }

      routing = await rulesAndProxies();
      expect(routing).toContain('to 203.0.113.22 lookup');
      expect(routing).toContain('203.0.113.22 dev');
      expect(routing).not.toContain('203.0.113.20');
      expect(router.output()).toMatch(/external address changed/);

      // Let the streams' and the first round's UDP flows go, so each host pairs afresh.
      const now = ['203.0.113.1', '203.0.113.21', '203.0.113.22'];
      const after = await roundOfFlows(13000);
      lab.lanHosts.forEach((h, i) => {
        const expected = sorted(now)[poolSlot(parseIpv4(h.address)!, 3)]!;
        // A host still holding a mapping keeps its address (paired pooling); one whose address went is re-paired.
        expect(now, h.address).toContain(after[i]);
        if (placed[i] === '203.0.113.20') expect(after[i], h.address).not.toBe('203.0.113.20');
        else expect([placed[i], expected], h.address).toContain(after[i]);
      });
      const flows = await router.conntrack();
      expect(flows.every((f) => !JSON.stringify(f).includes('203.0.113.20'))).toBe(true);
    } finally {
      await router.stop();
    }
    const { leaks } = await wanLeaks(capture);
    expect(leaks).toEqual([]);
    // Nothing of tunnat's is left in the gateway's routing.
    const left = await rulesAndProxies();
    for (const a of ['203.0.113.21', '203.0.113.22']) expect(left).not.toContain(`to ${a} lookup`);
  }, 240_000);

  it('restarts with --state while an address went and another came: adopts the routing, restores the flows that can be', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tunnat-wanpool-'));
    cleanup.defer({ label: `remove ${dir}`, sync: () => rmSync(dir, { recursive: true, force: true }) });
    const cap = await captureOn(lab.inet.netns, lab.inet.dev, cleanup, ['udp']);
    const state = join(dir, 'flows.json');
    const args = ['--masquerade', 'all', '--state', state];
    const first = await startRfcRouter(lab, cleanup, 'wanpool-a', args);
    const placed = await roundOfFlows(14000);
    expect(await first.stop()).toBe(0); // SIGTERM: flows saved, the gateway left failed closed
    expect(existsSync(state)).toBe(true);

    // While it is down the WAN changes: one address goes, another comes.
    const gone = placed.includes('203.0.113.22') ? '203.0.113.22' : '203.0.113.21';
    await inNs(lab.gw.netns, ['ip', 'addr', 'del', `${gone}/24`, 'dev', lab.gw.wanDev]);
    await inNs(lab.gw.netns, ['ip', 'addr', 'add', '203.0.113.23/24', 'dev', lab.gw.wanDev]);

    const second = await startRfcRouter(lab, cleanup, 'wanpool-b', args);
    try {
      expect(second.output()).toMatch(/adopted the routing/);
      expect(second.output()).toMatch(/flows restored/);
      const routing = await rulesAndProxies();
      expect(routing).toContain('to 203.0.113.23 lookup');
      expect(routing).not.toContain(gone);
      const flows = JSON.stringify(await second.conntrack());
      expect(flows).not.toContain(gone);
      // The flows of hosts on an address that stayed came back.
      const kept = placed.filter((a) => a !== gone);
      expect(kept.length).toBeGreaterThan(0);
      for (const a of kept) expect(flows).toContain(a);
    } finally {
      await second.process!.stop('SIGINT');
    }
    const left = await inNs(lab.gw.netns, ['ip', 'rule', 'list']);
    expect(left.stdout).not.toMatch(/lookup 730[12]/);
    const { leaks } = await wanLeaks(cap);
    expect(leaks).toEqual([]);
  }, 240_000);
});
