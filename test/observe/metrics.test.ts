import { describe, it, expect, vi } from 'vitest';
import { udpPacket, tcpPacket } from '../../src/wire/build.js';
import { TCP_FLAGS } from '../../src/wire/tcp.js';
import { HostAccounting, OTHER_HOSTS } from '../../src/observe/hosts.js';
import { createRegistry } from '../../src/metrics/registry.js';
import { FixedHistogram } from '../../src/metrics/histogram.js';
import { parsePromText, sampleValue } from '../../src/observe/promtext.js';
import { observed, pipeline, HOST_A, HOST_B, REMOTE, PUB, ip } from './helpers.js';

const payload = (n: number) => Buffer.alloc(n, 0x61);

describe('traffic per LAN host', () => {
  it('sums live flows and removed ones, so totals only grow as flows expire', () => {
    const p = pipeline();
    const hosts = new HostAccounting(p.nat.flows, 16);
    p.nat.observers.push(hosts);
    // Host A: two UDP flows (100 and 200 bytes of payload out, one reply each); host B: one.
    p.run(
      udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 1000, dstPort: 7, payload: payload(100) }),
      udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 1001, dstPort: 7, payload: payload(200) }),
      udpPacket({ src: HOST_B, dst: REMOTE, srcPort: 1000, dstPort: 7, payload: payload(50) }),
    );
    const portOf = (src: number, sport: number) => {
      for (const f of p.nat.flows.flows()) if (p.nat.flows.tSrc[f * 2] === src && p.nat.flows.tSport[f * 2] === sport) return p.nat.flows.tDport[f * 2 + 1]!;
      throw new Error('no flow');
    };
    p.run(
      udpPacket({ src: REMOTE, dst: PUB, srcPort: 7, dstPort: portOf(HOST_A, 1000), payload: payload(10) }),
      udpPacket({ src: REMOTE, dst: PUB, srcPort: 7, dstPort: portOf(HOST_A, 1001), payload: payload(20) }),
    );
    const expectA = { packets: { outbound: 2, inbound: 2 }, bytes: { outbound: 128 + 228, inbound: 38 + 48 }, flows: 2, flowsCreated: 2 };
    const a1 = hosts.census().hosts.find((h) => h.host === '192.168.1.10');
    expect(a1).toEqual({ host: '192.168.1.10', ...expectA });
    expect(hosts.census().hosts.find((h) => h.host === '192.168.1.11')?.bytes).toEqual({ outbound: 78, inbound: 0 });

    // Every flow expires; the totals stay, the live flow count drops to zero.
    p.advance(1000 * 1000);
    p.nat.sweep(p.clock(), 10_000);
    expect(p.nat.flows.size).toBe(0);
    const a2 = hosts.census().hosts.find((h) => h.host === '192.168.1.10');
    expect(a2).toEqual({ host: '192.168.1.10', ...expectA, flows: 0 });
  });

  it('bounds the label count: hosts beyond the limit are summed as "other"', () => {
    const p = pipeline();
    const hosts = new HostAccounting(p.nat.flows, 2);
    p.nat.observers.push(hosts);
    for (let i = 0; i < 5; i++) p.run(udpPacket({ src: ip(`192.168.1.${20 + i}`), dst: REMOTE, srcPort: 5000, dstPort: 7, payload: payload(12) }));
    const c = hosts.census();
    expect(c.hosts.map((h) => h.host)).toEqual(['192.168.1.20', '192.168.1.21', OTHER_HOSTS]);
    expect(c.hosts[2]).toMatchObject({ packets: { outbound: 3, inbound: 0 }, bytes: { outbound: 120, inbound: 0 }, flows: 3, flowsCreated: 3 });
    expect(c.byState.get('udp/UNREPLIED')).toBe(5);
  });
});

describe('the Prometheus registry', () => {
  it('exposes per-host traffic, flows by state, loop histograms and stream counters with tunnat_ names', async () => {
    const o = observed();
    o.run(
      tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40000, dstPort: 80, seq: 1, ack: 0, flags: TCP_FLAGS.SYN }),
      udpPacket({ src: HOST_B, dst: REMOTE, srcPort: 53000, dstPort: 53, payload: payload(30) }),
      Buffer.from([0x45, 0, 0]),
    );
    const registry = createRegistry(o.nat, o.loop, { hosts: o.obs.hosts, loopMetrics: o.obs.loopMetrics, observe: o.obs });
    const text = await registry.metrics();
    const s = parsePromText(text);
    expect(sampleValue(s, 'tunnat_flows', { protocol: 'tcp', state: 'SYN_SENT' })).toBe(1);
    expect(sampleValue(s, 'tunnat_flows', { protocol: 'udp', state: 'UNREPLIED' })).toBe(1);
    expect(sampleValue(s, 'tunnat_host_bytes_total', { host: '192.168.1.10', direction: 'outbound' })).toBe(40);
    expect(sampleValue(s, 'tunnat_host_bytes_total', { host: '192.168.1.11', direction: 'outbound' })).toBe(58);
    expect(sampleValue(s, 'tunnat_host_flows', { host: '192.168.1.11' })).toBe(1);
    expect(sampleValue(s, 'tunnat_drops_total', { reason: 'malformed' })).toBe(1);
    expect(sampleValue(s, 'tunnat_translations_total', { direction: 'outbound' })).toBe(2);
    expect(sampleValue(s, 'tunnat_port_pool_used', { protocol: 'tcp', address: '203.0.113.1' })).toBe(1);
    expect(sampleValue(s, 'tunnat_tun_read_packets_total')).toBe(3);
    expect(sampleValue(s, 'tunnat_batch_packets_count')).toBe(1);
    expect(sampleValue(s, 'tunnat_batch_packets_bucket', { le: '2' })).toBe(0);
    expect(sampleValue(s, 'tunnat_batch_packets_bucket', { le: '4' })).toBe(1);
    expect(sampleValue(s, 'tunnat_batch_packets_sum')).toBe(3);
    expect(sampleValue(s, 'tunnat_loop_seconds_count')).toBe(1);
    expect(sampleValue(s, 'tunnat_observe_clients', { stream: 'trace' })).toBe(0);
    expect(text).toContain('# TYPE tunnat_loop_seconds histogram');
    expect(text).toContain('process_cpu_seconds_total');
    // Prometheus naming: every tunnat counter ends in _total.
    for (const m of text.matchAll(/^# TYPE (tunnat_\S+) counter$/gm)) expect(m[1]).toMatch(/_total$/);
  });

  it('walks the table once per scrape, and a scrape right after another sees new traffic', async () => {
    const o = observed();
    const registry = createRegistry(o.nat, o.loop, { hosts: o.obs.hosts, defaultMetrics: false });
    const bytes = async () => sampleValue(parsePromText(await registry.metrics()), 'tunnat_host_bytes_total', { host: '192.168.1.10', direction: 'outbound' });
    o.run(udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 7000, dstPort: 7, payload: payload(2) }));
    expect(await bytes()).toBe(30);
    o.run(udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 7000, dstPort: 7, payload: payload(2) }));
    expect(await bytes()).toBe(60);
    const census = vi.spyOn(o.obs.hosts, 'census');
    await registry.metrics();
    expect(census).toHaveBeenCalledTimes(1);
  });

  it('a fixed histogram counts into the first bucket whose bound is not exceeded', () => {
    const h = new FixedHistogram([1, 10]);
    [0.5, 1, 2, 10, 11].forEach((v) => h.observe(v));
    expect(h.cumulative()).toEqual([
      { le: '1', count: 2 },
      { le: '10', count: 4 },
      { le: '+Inf', count: 5 },
    ]);
    expect(h.sum).toBe(24.5);
    expect(() => new FixedHistogram([2, 1])).toThrow(/increase/);
  });
});
