/**
 * Hostile traffic from the internet, against `tunnat run` in a namespace lab, while a LAN host keeps an
 * established TCP connection busy: unsolicited packets and scans of the public address, odd TCP flags,
 * a stranger aiming at the live connection's public port, broken headers, spoofed ICMP errors quoting
 * the live connection and invented ones, overlapping and stray fragments, other protocols, an RST out of
 * the connection's window. Each moves exactly the drop counter it should (or the gateway kernel's, for
 * what never reaches the TUN). Afterwards: the connection never stalled or reset, the idle LAN host
 * received nothing, memory stayed bounded, and nothing left on the WAN named a 192.168 address. Packets
 * from the WAN to LAN addresses, and WAN packets with LAN sources, never get past the gateway's rules.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnIn, type NsProcess } from '../../src/lab/process.js';
import { metricValue } from './fixtures/rfc-lab.js';
import { Cleanup, captureOn, isRoot, type Capture } from './harness.js';
import {
  KEEPALIVE, KEEPALIVE_PORT, SERVER, delta, dropsByReason, ipCounters, keepaliveSummary, type KeepaliveSummary, rssKiB, sendRaw, setupHostileLab, sleep, wanLeakLines,
  type HostileLab,
} from './fixtures/hostile-lab.js';
import { addr, wanAttacks, type Attack, type WanContext } from './fixtures/hostile-packets.js';
import { tcpPacket, udpPacket } from '../../src/wire/build.js';
import { TCP_FLAGS } from '../../src/wire/tcp.js';

const PUB = addr('203.0.113.1');
const RSS_GROWTH_LIMIT_KIB = 48 * 1024;
/** Closed flows (after a RST) linger this long: short, so the RST test below fits in the file's budget. */
const TCP_CLOSE_SECONDS = 2;
const paths = (m: string): Record<string, number> =>
  Object.fromEntries(['outbound', 'inbound', 'local', 'hairpin'].map((p) => [p, metricValue(m, 'tunnat_packets_total', { path: p })]));

// Needs root: namespaces, veth pairs, a TUN device, raw sockets and tcpdump. CI runs as root.
describe.skipIf(!isRoot)('hostile traffic from the internet (tunnat run in a lab)', () => {
  const cleanup = new Cleanup((l) => console.error(l));
  let h: HostileLab;
  let inet: string;
  let idleLan: Capture;
  let rssBefore = 0;
  let rssPeak = 0;
  let keepaliveSeen: KeepaliveSummary | null = null;
  let attacks: Attack[] = [];

  beforeAll(async () => {
    h = await setupHostileLab({ cleanup, prefix: 'hw', config: { timeouts: { tcpClose: TCP_CLOSE_SECONDS } } });
    inet = h.lab.inet.netns;
    const flow = (await h.router.conntrack()).find((f) => f.protocol === 'tcp' && f.original.srcPort === h.keepaliveLocalPort);
    if (!flow) throw new Error('the live connection has no flow');
    const c: WanContext = {
      from: addr(SERVER),
      stranger: addr('198.51.100.77'),
      publicIp: PUB,
      server: addr(SERVER),
      serverPort: KEEPALIVE_PORT,
      publicPort: flow.reply.dstPort,
      lanHost: addr(h.lab.lanHosts[0]!.address),
      lanPort: h.keepaliveLocalPort,
    };
    attacks = wanAttacks(c);
    // The second LAN host has no flows: whatever reaches it during the attacks came from the attacks.
    // Only what is addressed to it (the bridge's IGMP reports to 224.0.0.22 are no attack).
    idleLan = await captureOn(h.lab.lanHosts[1]!.netns, 'eth0', cleanup, ['ip', 'and', 'dst', 'host', h.lab.lanHosts[1]!.address]);
    rssBefore = rssKiB(h.router.process!.pid);
  }, 60_000);

  afterAll(async () => {
    // Figures for docs/reliability.md.
    console.log(`hostile-wan figures: ${JSON.stringify({ rssBeforeKiB: rssBefore, rssPeakKiB: rssPeak, keepalive: keepaliveSeen })}`);
    await cleanup.run();
  }, 60_000);

  const send = async (packets: Buffer[]): Promise<void> => {
    expect(await sendRaw(inet, 'eth0', h.gwWanMac, packets)).toBe(packets.length);
    await sleep(250);
    rssPeak = Math.max(rssPeak, rssKiB(h.router.process!.pid));
  };

  it('every attack moves exactly the drop counter it should', async () => {
    const results: { name: string; drops: Record<string, number>; want: Record<string, number>; kernel: number; wantKernel: number }[] = [];
    for (const a of attacks) {
      const before = dropsByReason(await h.router.metrics());
      const k0 = await ipCounters(h.lab.gw.netns);
      await send(a.packets);
      const k = delta(await ipCounters(h.lab.gw.netns), k0);
      results.push({
        name: a.name,
        drops: delta(dropsByReason(await h.router.metrics()), before),
        want: a.drops,
        // What tunnat never saw, the gateway's kernel counted as a header error (checksum, TTL expiry).
        kernel: a.kernel ? (k.InHdrErrors ?? 0) + (k.InTruncatedPkts ?? 0) : 0,
        wantKernel: a.kernel ? a.packets.length : 0,
      });
    }
    for (const r of results) {
      expect(r.drops, r.name).toEqual(r.want);
      expect(r.kernel, `${r.name}: counted by the gateway's kernel`).toBe(r.wantKernel);
    }
  }, 40_000);

  it('the live connection kept its round trips going, and was never reset', async () => {
    const s = await keepaliveSummary(h.keepalive);
    keepaliveSeen = s;
    expect(s.errors).toEqual([]);
    expect(s.open).toBe(true);
    expect(s.late).toBe(0);
    expect(s.rounds).toBeGreaterThan(10);
  });

  it('the idle LAN host received nothing', async () => {
    await idleLan.stop();
    expect((await idleLan.packets()).map((p) => p.line)).toEqual([]);
  });

  it('the router\'s memory stayed bounded', () => {
    expect(Math.max(rssPeak, rssKiB(h.router.process!.pid)) - rssBefore).toBeLessThan(RSS_GROWTH_LIMIT_KIB);
  });

  it('no packet on the WAN carried or quoted a 192.168.0.0/16 address', async () => {
    const { text, leaks } = await wanLeakLines(h.wan);
    expect(text).toMatch(/203\.0\.113\.1\.\d+ > 203\.0\.113\.2\.7000/);
    expect(leaks).toEqual([]);
  });

  // A packet arriving on the WAN addressed straight to a LAN address: the rule `iif WAN to <LAN> blackhole`
  // (pref 6) drops it (before it, the gateway's kernel routed it into the LAN).
  let direct: { atGateway: number; reached: string[] } | null = null;
  it('a datagram from the WAN addressed straight to a LAN host (setup of the next test)', async () => {
    const atGateway = await captureOn(h.lab.gw.netns, h.lab.gw.wanDev, cleanup, ['udp', 'and', 'dst', 'host', '192.168.1.11', 'and', 'dst', 'port', '9']);
    const cap = await captureOn(h.lab.lanHosts[1]!.netns, 'eth0', cleanup, ['udp', 'port', '9']);
    await send([udpPacket({ src: addr(SERVER), dst: addr('192.168.1.11'), srcPort: 5, dstPort: 9, payload: Buffer.from('direct') })]);
    await Promise.all([cap.stop(), atGateway.stop()]);
    direct = { atGateway: (await atGateway.packets()).length, reached: (await cap.packets()).map((p) => p.line) };
  });

  it('a packet from the WAN addressed straight to a LAN host never reaches it', () => {
    // It did arrive at the gateway's WAN side: stopped there, not lost before.
    expect(direct?.atGateway).toBe(1);
    expect(direct?.reached).toEqual([]);
  });

  // The anti-spoofing rule (iif WAN from <LAN> blackhole, pref 5) comes before the rule that sends
  // everything for the public address into the TUN. When it came after, a WAN packet claiming a LAN source
  // reached tunnat, which took it for LAN traffic to the gateway and handed it to the gateway's own stack;
  // the gateway then answered the real LAN host (port unreachable), a reflection into the LAN.
  let spoof: { atGateway: number; local: number; hairpin: number; reached: string[] } | null = null;
  it('a WAN packet claiming a LAN source, to the public address (setup of the next test)', async () => {
    const atGateway = await captureOn(h.lab.gw.netns, h.lab.gw.wanDev, cleanup, ['udp', 'and', 'src', 'host', '192.168.1.11', 'and', 'dst', 'port', '9']);
    const cap = await captureOn(h.lab.lanHosts[1]!.netns, 'eth0', cleanup, ['icmp', 'or', 'udp']);
    const before = paths(await h.router.metrics());
    await send([udpPacket({ src: addr('192.168.1.11'), dst: PUB, srcPort: 5353, dstPort: 9, payload: Buffer.from('spoof') })]);
    const d = delta(paths(await h.router.metrics()), before);
    await Promise.all([cap.stop(), atGateway.stop()]);
    spoof = { atGateway: (await atGateway.packets()).length, local: d.local ?? 0, hairpin: d.hairpin ?? 0, reached: (await cap.packets()).map((p) => p.line) };
  });

  it('a WAN packet claiming a LAN source is not taken for LAN traffic', () => {
    expect(spoof?.atGateway).toBe(1);
    expect(spoof!.local + spoof!.hairpin).toBe(0);
    expect(spoof?.reached).toEqual([]);
  });

  // tunnat checks an RST's sequence number against what that side sends (RFC 5961 spirit). Before, any
  // RST on the 4-tuple moved the flow to CLOSE: the endpoints ignored it, but once the connection idled
  // longer than the CLOSE timeout its flow was gone and its next segment was dropped.
  it('an out-of-window RST (which the endpoints ignore) does not cut an idle connection short', async () => {
    const client: NsProcess = spawnIn(
      h.lab.lanHosts[1]!.netns,
      [process.execPath, KEEPALIVE, 'client', SERVER, String(KEEPALIVE_PORT), '--interval', String((TCP_CLOSE_SECONDS + 1) * 1000), '--timeout', '1500'],
      { label: 'idle keepalive client', cleanup },
    );
    const line = await client.waitForLine(/"event":"connected"/, 10_000);
    const lport = (JSON.parse(line) as { localPort: number }).localPort;
    await sleep(500); // the first round trip is done
    const flow = (await h.router.conntrack()).find((f) => f.protocol === 'tcp' && f.original.srcPort === lport);
    expect(flow?.state).toBe('ESTABLISHED');
    const before = dropsByReason(await h.router.metrics());
    await send([tcpPacket({ src: addr(SERVER), dst: PUB, srcPort: KEEPALIVE_PORT, dstPort: flow!.reply.dstPort, seq: 0x5eed, ack: 0, flags: TCP_FLAGS.RST })]);
    expect(delta(dropsByReason(await h.router.metrics()), before)).toEqual({ 'tcp-flags': 1 });
    await sleep((TCP_CLOSE_SECONDS + 1) * 2000 + 500); // two more rounds, each after an idle gap longer than CLOSE
    const s = await keepaliveSummary(client);
    expect(s.errors).toEqual([]);
    expect(s.late).toBe(0);
    expect(s.rounds).toBeGreaterThanOrEqual(3);
  }, 30_000);
});
