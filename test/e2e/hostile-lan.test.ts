/**
 * Hostile traffic from a LAN host, against `tunnat run` in a namespace lab, while another LAN host keeps
 * an established TCP connection busy (a round trip every 200 ms). Each kind of bad packet is put on the
 * wire byte for byte (hostile-send.py) and must move exactly the tunnat drop counter it should, or none
 * when the gateway's own kernel stops it first. Afterwards: the connection never stalled or reset, the
 * router's memory stayed bounded, and a capture on the WAN side shows no 192.168.0.0/16 address, in
 * headers or quoted in ICMP errors.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cleanup, captureOn, isRoot } from './harness.js';
import {
  delta, dropsByReason, type KeepaliveSummary, ipCounters, keepaliveSummary, rssKiB, sendRaw, setupHostileLab, sleep, wanLeakLines, type HostileLab,
} from './fixtures/hostile-lab.js';
import { addr, lanAttacks, timestampOptionProbe, type Attack } from './fixtures/hostile-packets.js';
import { udpPacket } from '../../src/wire/build.js';
import { withIpOptions } from '../fuzz/lib/packets.js';

const ctx = { lanHost: addr('192.168.1.11'), server: addr('203.0.113.2'), publicIp: addr('203.0.113.1') };
const ATTACKS = lanAttacks(ctx);
/** What the router may grow by while under attack (its tables are preallocated; this is V8's slack). */
const RSS_GROWTH_LIMIT_KIB = 48 * 1024;

// Needs root: namespaces, veth pairs, a TUN device, raw sockets and tcpdump. CI runs as root.
describe.skipIf(!isRoot)('hostile traffic from a LAN host (tunnat run in a lab)', () => {
  const cleanup = new Cleanup((l) => console.error(l));
  let h: HostileLab;
  let attacker: string;
  let rssBefore = 0;
  let rssPeak = 0;
  let keepaliveSeen: KeepaliveSummary | null = null;

  beforeAll(async () => {
    h = await setupHostileLab({ cleanup, prefix: 'hl' });
    attacker = h.lab.lanHosts[1]!.netns;
    rssBefore = rssKiB(h.router.process!.pid);
  }, 60_000);

  afterAll(async () => {
    // Figures for docs/reliability.md.
    console.log(`hostile-lan figures: ${JSON.stringify({ rssBeforeKiB: rssBefore, rssPeakKiB: rssPeak, keepalive: keepaliveSeen })}`);
    await cleanup.run();
  }, 60_000);

  /** Send an attack and return how tunnat's drop counters moved. */
  const attack = async (a: Attack): Promise<Record<string, number>> => {
    const before = dropsByReason(await h.router.metrics());
    const sent = await sendRaw(attacker, 'eth0', h.gwLanMac, a.packets);
    expect(sent).toBe(a.packets.length);
    await sleep(250);
    rssPeak = Math.max(rssPeak, rssKiB(h.router.process!.pid));
    return delta(dropsByReason(await h.router.metrics()), before);
  };

  it.each(ATTACKS.map((a) => [a.name, a] as const))('%s', async (_name, a) => {
    const k0 = await ipCounters(h.lab.gw.netns);
    expect(await attack(a)).toEqual(a.drops);
    if (a.kernel) {
      // What tunnat never saw, the gateway's kernel counted: header errors (checksum, IHL, and TTL expiry
      // in ip_forward) or a frame shorter than its total length.
      const k = delta(await ipCounters(h.lab.gw.netns), k0);
      expect((k.InHdrErrors ?? 0) + (k.InTruncatedPkts ?? 0)).toBe(a.packets.length);
    }
  });

  it('a timestamp option: translated, and the stale-checksum error about it is dropped as RFC 5508 REQ-3 asks', async () => {
    // Let the internet host's ICMP rate limit towards the public address refill first.
    await sleep(1_200);
    const a = timestampOptionProbe(ctx);
    expect(await attack(a)).toEqual(a.drops);
  });

  it('the live connection kept its round trips going, and was never reset', async () => {
    const s = await keepaliveSummary(h.keepalive);
    keepaliveSeen = s;
    expect(s.errors).toEqual([]);
    expect(s.open).toBe(true);
    expect(s.late).toBe(0);
    expect(s.rounds).toBeGreaterThan(20);
  });

  it('the router\'s memory stayed bounded', () => {
    const now = rssKiB(h.router.process!.pid);
    expect(now).toBeGreaterThan(0);
    expect(Math.max(rssPeak, now) - rssBefore).toBeLessThan(RSS_GROWTH_LIMIT_KIB);
  });

  it('no packet on the WAN carried or quoted a 192.168.0.0/16 address', async () => {
    const { text, leaks } = await wanLeakLines(h.wan);
    // The capture saw the attacks' translated traffic leave with the public address.
    expect(text).toMatch(/203\.0\.113\.1\.\d+ > 203\.0\.113\.2\.\d+/);
    expect(leaks).toEqual([]);
  });

  // A reply to a LAN address that does not answer ARP (a host gone, or a spoofed source) is translated and
  // forwarded into the LAN; the gateway's kernel then answers the remote with "host unreachable", quoting
  // the packet as tunnat translated it, with the LAN address. Its own ICMP to the WAN is routed through
  // tunnat (rule 998), which puts the public side back in the quote before it leaves.
  let ghostCapture: { text: string; leaks: string[] } | null = null;
  it('a datagram from a LAN address that then never answers is translated and sent (setup of the next test)', async () => {
    const cap = await captureOn(h.lab.inet.netns, h.lab.inet.dev, cleanup, ['ether', 'src', h.gwWanMac]);
    const ghost = udpPacket({ src: addr('192.168.1.99'), dst: ctx.server, srcPort: 4444, dstPort: 7, payload: Buffer.from('ghost') });
    expect(await sendRaw(attacker, 'eth0', h.gwLanMac, [ghost])).toBe(1);
    await sleep(4_500); // the echo's reply comes back; three ARP probes a second apart, then the error
    ghostCapture = await wanLeakLines(cap);
    expect(ghostCapture.text).toMatch(/203\.0\.113\.1\.\d+ > 203\.0\.113\.2\.7: UDP/);
  }, 20_000);

  it('a reply to a LAN address nobody answers for is not reported to the WAN with that address', () => {
    // The datagram left translated (the capture saw it), so there was a reply to be reported.
    expect(ghostCapture?.text).toMatch(/203\.0\.113\.1\.\d+ > 203\.0\.113\.2\.7: UDP/);
    expect(ghostCapture?.leaks).toEqual([]);
    // The remote still hears of it, about its own packet to the public address.
    expect(ghostCapture?.text).toMatch(/203\.0\.113\.1 > 203\.0\.113\.2: ICMP host 203\.0\.113\.1 unreachable/);
  });

  // A packet forwarded into the TUN is routed twice, and the first pass records an address for the TUN,
  // which has none of its own: the kernel borrowed the gateway's LAN address until the route into the TUN
  // got a source hint (the public address).
  let rrCapture: { text: string; leaks: string[] } | null = null;
  it('a datagram with a Record Route option is translated and sent (setup of the next test)', async () => {
    const cap = await captureOn(h.lab.inet.netns, h.lab.inet.dev, cleanup, ['ether', 'src', h.gwWanMac]);
    const rr = withIpOptions(
      udpPacket({ src: ctx.lanHost, dst: ctx.server, srcPort: 31100, dstPort: 9, payload: Buffer.from('rr') }),
      Uint8Array.from([0x07, 0x0b, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    );
    expect(await sendRaw(attacker, 'eth0', h.gwLanMac, [rr])).toBe(1);
    await sleep(300);
    rrCapture = await wanLeakLines(cap);
    expect(rrCapture.text).toContain('RR');
  });

  it('a Record Route option does not carry the gateway\'s LAN address to the WAN', () => {
    // The datagram left with its option (the capture saw it), so there was a route record to leak.
    expect(rrCapture?.text).toContain('RR');
    expect(rrCapture?.leaks).toEqual([]);
  });
});
