import { describe, expect, it } from 'vitest';
import { LocalHostCounts, SharedHostCounts } from '../../src/nat/host-counts.js';
import { makeNat, HOST_A, HOST_B, REMOTE } from './helpers.js';
import { Steering, HERE } from '../../src/dataplane/steering.js';
import { udpPacket } from '../../src/wire/build.js';
import { Verdict } from '../../src/nat/outcome.js';
import { PUB } from './helpers.js';

describe('per-host flow counts', () => {
  it('one loop: a Map, hosts leave when their last flow goes', () => {
    const c = new LocalHostCounts();
    c.add(HOST_A, 1);
    c.add(HOST_A, 1);
    c.add(HOST_B, 1);
    expect([c.get(HOST_A), c.get(HOST_B), c.size]).toEqual([2, 1, 2]);
    c.add(HOST_A, -2);
    expect([c.get(HOST_A), c.size]).toEqual([0, 1]);
  });

  it('shared: every worker sees the host total; a restarted worker clears only its own counts', () => {
    const sab = SharedHostCounts.create(3, 16);
    const w = [0, 1, 2].map((i) => new SharedHostCounts(sab, 3, i, 16));
    w[0]!.add(HOST_A, 1);
    w[1]!.add(HOST_A, 2);
    w[2]!.add(HOST_B, 1);
    for (const x of w) expect([x.get(HOST_A), x.get(HOST_B), x.get(REMOTE)]).toEqual([3, 1, 0]);
    expect(w[0]!.size).toBe(2);
    w[1]!.clearOwn();
    expect(w[2]!.get(HOST_A)).toBe(1);
    w[0]!.add(HOST_A, -1);
    expect(w[1]!.get(HOST_A)).toBe(0);
    expect(w[1]!.size).toBe(1);
  });

  it('shared, with more hosts than slots: the rest are counted by each worker alone', () => {
    const sab = SharedHostCounts.create(2, 4);
    const a = new SharedHostCounts(sab, 2, 0, 4);
    const hosts = Array.from({ length: 6 }, (_, i) => HOST_A + i);
    for (const h of hosts) a.add(h, 1);
    expect(hosts.map((h) => a.get(h))).toEqual([1, 1, 1, 1, 1, 1]);
    expect(a.size).toBe(6);
    for (const h of hosts) a.add(h, -1);
    expect(a.size).toBe(0);
  });

  it("two workers hold a host to its limit together (--max-flows-per-host), not each to its own share", () => {
    const sab = SharedHostCounts.create(2);
    const workers = [0, 1].map((index) => makeNat({ slice: { index, count: 2 }, maxFlowsPerHost: 10, hostCounts: new SharedHostCounts(sab, 2, index), seed: 5 + index }));
    const s = new Steering(2);
    s.setPublicAddresses([PUB]);
    let forwarded = 0;
    const perWorker = [0, 0];
    for (let i = 0; i < 40; i++) {
      const pkt = udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40000 + i, dstPort: 53, payload: Buffer.from('q') });
      const o = s.ownerOf(pkt, 0, pkt.length);
      const w = o === HERE ? 0 : o;
      if (workers[w]!.process(pkt, 0, pkt.length, i) === Verdict.FORWARD) {
        forwarded++;
        perWorker[w]!++;
      }
    }
    expect(forwarded).toBe(10);
    // Both workers made some of them: the limit was the host's, shared.
    expect(perWorker[0]).toBeGreaterThan(0);
    expect(perWorker[1]).toBeGreaterThan(0);
    expect(workers[0]!.flowsOfHost(HOST_A)).toBe(10);
  });
});
