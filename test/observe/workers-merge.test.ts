import { describe, expect, it } from 'vitest';
import { mergeCensus, mergeHosts, mergeLive, mergeLoopMetrics, histogramData } from '../../src/router/workers-proto.js';
import { LoopMetrics } from '../../src/metrics/loop-metrics.js';
import type { HostTotals } from '../../src/metrics/registry.js';
import type { LiveSnapshot } from '../../src/observe/live.js';
import type { FlowRecord } from '../../src/conntrack/listing.js';

const host = (h: string, n: number): HostTotals => ({
  host: h,
  packets: { outbound: n, inbound: 2 * n },
  bytes: { outbound: 100 * n, inbound: 200 * n },
  flows: n,
  flowsCreated: n + 1,
});

describe('merging the workers’ observations (--workers N)', () => {
  it('sums a host whose flows sit on several workers, and folds hosts past the label limit into "other"', () => {
    const merged = mergeHosts([[host('192.168.1.2', 1), host('192.168.1.3', 2)], [host('192.168.1.2', 3), host('192.168.1.4', 4), host('other', 5)]], 2);
    expect(merged.map((h) => h.host)).toEqual(['192.168.1.2', '192.168.1.3', 'other']);
    expect(merged[0]).toEqual({ host: '192.168.1.2', packets: { outbound: 4, inbound: 8 }, bytes: { outbound: 400, inbound: 800 }, flows: 4, flowsCreated: 6 });
    // 192.168.1.4 (the third host) and worker 1's own "other" together.
    expect(merged[2]!.flows).toBe(9);
    expect(merged[2]!.flowsCreated).toBe(11);
  });

  it('sums flows by state and their total', () => {
    const c = mergeCensus(
      [
        { hosts: [], byState: new Map([['tcp/ESTABLISHED', 3], ['udp/UNREPLIED', 1]]), total: 4 },
        { hosts: [], byState: new Map([['tcp/ESTABLISHED', 2]]), total: 2 },
      ],
      256,
    );
    expect(c.total).toBe(6);
    expect([...c.byState]).toEqual([['tcp/ESTABLISHED', 5], ['udp/UNREPLIED', 1]]);
  });

  it('sums the loop histograms bucket by bucket', () => {
    const a = new LoopMetrics();
    const b = new LoopMetrics();
    a.batchSize.observe(1);
    b.batchSize.observe(1);
    b.batchSize.observe(64);
    b.loopSeconds.observe(0.001);
    a.packetsRead = 10;
    b.packetsRead = 65;
    const into = new LoopMetrics();
    into.batchSize.observe(1000); // left from an earlier scrape: replaced, not added to
    const part = (m: LoopMetrics) => ({ packetsRead: m.packetsRead, batchSize: histogramData(m.batchSize), loopSeconds: histogramData(m.loopSeconds) });
    mergeLoopMetrics(into, [part(a), part(b)]);
    expect(into.packetsRead).toBe(75);
    expect(into.batchSize.count).toBe(3);
    expect(into.batchSize.sum).toBe(66);
    expect(into.batchSize.cumulative().find((x) => x.le === '1')!.count).toBe(2);
    expect(into.loopSeconds.count).toBe(1);
  });

  it('merges live snapshots: counters summed, pools per address summed, the busiest flows of all', () => {
    const flow = (bytes: number): FlowRecord => ({ bytes: { original: bytes, reply: 0 } }) as unknown as FlowRecord;
    const snap = (n: number, flows: FlowRecord[]): LiveSnapshot => ({
      time: 't',
      publicAddress: '203.0.113.1',
      counters: {
        packets: { outbound: n, inbound: n },
        bytes: { outbound: 10 * n },
        drops: { table_full: n },
        flows: n,
        flowsMax: 1000,
        flowsCreated: 2 * n,
        flowsRemoved: { timeout: n },
        portPools: [{ protocol: 'udp', address: '203.0.113.1', used: n, size: 32000 }],
      },
      hosts: [host('192.168.1.2', n)],
      flows,
      flowsTotal: flows.length,
    });
    const m = mergeLive([snap(1, [flow(5), flow(1)]), snap(2, [flow(9)])], 256, 2);
    expect(m.counters.packets).toEqual({ outbound: 3, inbound: 3 });
    expect(m.counters.flows).toBe(3);
    expect(m.counters.flowsMax).toBe(2000);
    expect(m.counters.drops).toEqual({ table_full: 3 });
    expect(m.counters.portPools).toEqual([{ protocol: 'udp', address: '203.0.113.1', used: 3, size: 64000 }]);
    expect(m.hosts).toHaveLength(1);
    expect(m.hosts[0]!.flows).toBe(3);
    expect(m.flows.map((f) => f.bytes.original)).toEqual([9, 5]);
    expect(m.flowsTotal).toBe(3);
  });
});
