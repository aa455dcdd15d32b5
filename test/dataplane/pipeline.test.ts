import { describe, it, expect } from 'vitest';
import { FakeTun } from '../../src/tun/fake.js';
import { Dataplane } from '../../src/dataplane/loop.js';
import { udpPacket, tcpPacket, icmpEcho } from '../../src/wire/build.js';
import { TCP_FLAGS } from '../../src/wire/tcp.js';
import { listFlows } from '../../src/conntrack/listing.js';
import { makeNat, parse, checkAllChecksums, PUB, REMOTE, HOST_A, HOST_B } from '../nat/helpers.js';

/** The whole data plane on an in-memory TUN: no root, no kernel. */
function setup(opts: { batch?: number; writeCapacity?: number } = {}) {
  const tun = new FakeTun(opts.writeCapacity !== undefined ? { writeCapacity: opts.writeCapacity } : {});
  const nat = makeNat();
  let now = 0;
  const loop = new Dataplane(tun, nat, { batch: opts.batch ?? 8, slotSize: 2048, clock: () => now });
  return { tun, nat, loop, setNow: (t: number) => (now = t) };
}

const payload = Buffer.from('ping over the fake tun');

describe('data plane on a fake TUN', () => {
  it('translates a batch of mixed packets and writes them back in order', () => {
    const { tun, loop, nat } = setup();
    const pkts = [
      udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 5353, dstPort: 53, payload }),
      tcpPacket({ src: HOST_B, dst: REMOTE, srcPort: 40000, dstPort: 80, seq: 1, ack: 0, flags: TCP_FLAGS.SYN }),
      icmpEcho({ src: HOST_A, dst: REMOTE, type: 8, identifier: 9, sequence: 1 }),
      udpPacket({ src: REMOTE, dst: PUB, srcPort: 1, dstPort: 2, payload }), // for the gateway itself
    ];
    pkts.forEach((p) => tun.inject(p));
    expect(loop.runBatch()).toBe(4);
    const out = tun.takeWritten();
    expect(out).toHaveLength(4);
    out.forEach(checkAllChecksums);
    expect(out.slice(0, 3).map((p) => parse(p).src)).toEqual([PUB, PUB, PUB]);
    expect(parse(out[3]!).dst).toBe(PUB);
    expect(nat.flows.size).toBe(3);
  });

  it('drops bad packets within a batch and still forwards the good ones', () => {
    const { tun, loop, nat } = setup();
    tun.inject(Buffer.from([0x45, 0, 0]));
    tun.inject(udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 1000, dstPort: 7, payload }));
    tun.inject(Buffer.alloc(3000, 0x45)); // longer than a slot: the fake truncates it, like the kernel
    loop.runBatch();
    const out = tun.takeWritten();
    expect(out).toHaveLength(1);
    expect(parse(out[0]!).src).toBe(PUB);
    expect(loop.stats.oversize).toBe(1);
    expect(nat.stats.drops.reduce((a, b) => a + b, 0)).toBe(1);
  });

  it('reads many batches in one drain and counts what a full TUN queue refused', () => {
    const { tun, loop } = setup({ batch: 4, writeCapacity: 3 });
    for (let i = 0; i < 10; i++) tun.inject(udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 2000 + i, dstPort: 7, payload }));
    expect(loop.drain()).toBe(10);
    expect(loop.stats.batches).toBe(3);
    expect(loop.stats.writeShort).toBe(1 + 1); // batches of 4, 4, 2 into a queue taking 3 per call
    expect(tun.takeWritten()).toHaveLength(8);
  });

  it('runs when the TUN becomes readable, and the flow listing shows the translation', async () => {
    const { tun, loop, nat } = setup();
    loop.start();
    tun.inject(udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 4444, dstPort: 7, payload }));
    await new Promise((r) => setTimeout(r, 20));
    expect(tun.takeWritten()).toHaveLength(1);
    const [f] = listFlows(nat.flows, 0);
    expect(f).toMatchObject({
      protocol: 'udp',
      original: { src: '192.168.1.10', dst: '203.0.113.2', srcPort: 4444, dstPort: 7 },
      reply: { src: '203.0.113.2', dst: '203.0.113.1', srcPort: 7, dstPort: 4444 },
      state: 'UNREPLIED',
      secondsLeft: 30, // port 7 is well-known: an unanswered query's timer (udp-timer.ts)
    });
    loop.stop();
  });

  describe('busy polling', () => {
    /** A FakeTun where a packet "arrives" while the loop is spinning: on the given empty read. */
    function lateArrival(onEmptyRead: number, batch = 8, busyPollUs = 2000) {
      const tun = new FakeTun();
      const nat = makeNat();
      const loop = new Dataplane(tun, nat, { batch, slotSize: 2048, clock: () => 0, busyPollUs });
      const read = tun.readBatch.bind(tun);
      let reads = 0;
      let empty = 0;
      tun.readBatch = (buf, slot, lens) => {
        reads++;
        const n = read(buf, slot, lens);
        if (n === 0 && ++empty === onEmptyRead) {
          tun.inject(udpPacket({ src: REMOTE, dst: PUB, srcPort: 7, dstPort: 4000, payload }));
        }
        return n;
      };
      return { tun, nat, loop, reads: () => reads };
    }

    it('is off by default: one read per wake when the TUN empties', () => {
      const { tun, loop } = setup();
      let reads = 0;
      const read = tun.readBatch.bind(tun);
      tun.readBatch = (buf, slot, lens) => (reads++, read(buf, slot, lens));
      tun.inject(udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 4000, dstPort: 7, payload }));
      expect(loop.drain()).toBe(1);
      expect(reads).toBe(1);
      expect(loop.stats.spins).toBe(0);
    });

    it('catches the answer that arrives while spinning, without another wake-up', () => {
      const { tun, loop } = lateArrival(3);
      tun.inject(udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 4000, dstPort: 7, payload }));
      // The request, then the reply that turned up on the third empty read of the spin.
      expect(loop.drain()).toBe(2);
      const out = tun.takeWritten();
      expect(out).toHaveLength(2);
      expect(parse(out[0]!).src).toBe(PUB);
      expect(parse(out[1]!)).toMatchObject({ dst: HOST_A, dport: 4000 });
      expect(loop.stats).toMatchObject({ spins: 1, spinPackets: 1 });
    });

    it('gives up after the window when nothing comes, and never spins on an empty wake-up', () => {
      const { tun, loop, reads } = lateArrival(Number.MAX_SAFE_INTEGER, 8, 300);
      expect(loop.drain()).toBe(0);
      expect(reads()).toBe(1);
      tun.inject(udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 4000, dstPort: 7, payload }));
      const t0 = performance.now();
      expect(loop.drain()).toBe(1);
      const spent = performance.now() - t0;
      expect(spent).toBeGreaterThanOrEqual(0.3);
      expect(reads()).toBeGreaterThan(2);
      expect(loop.stats).toMatchObject({ spins: 1, spinPackets: 0 });
    });

    it('returns to the event loop after the per-wake budget under a steady stream', () => {
      const tun = new FakeTun();
      const nat = makeNat();
      const loop = new Dataplane(tun, nat, { batch: 2, slotSize: 2048, clock: () => 0, busyPollUs: 10_000, maxBatchesPerWake: 4 });
      const read = tun.readBatch.bind(tun);
      let port = 1000;
      // Every read finds one new packet: a stream that never lets the TUN run dry.
      tun.readBatch = (buf, slot, lens) => {
        tun.inject(udpPacket({ src: HOST_A, dst: REMOTE, srcPort: port++, dstPort: 7, payload }));
        return read(buf, slot, lens);
      };
      const n = loop.drain();
      // One short batch ends the normal drain; the spin then stops after its 4 batches, not after 10 ms of stream.
      expect(n).toBe(1 + 4);
      expect(loop.stats.batches).toBe(5);
    });

    it('halves the window after a spin that was preempted, and grows it back when spinning pays off alone', () => {
      const { tun, loop } = lateArrival(Number.MAX_SAFE_INTEGER, 8, 1600);
      let switches = 0;
      let preemptedDuringSpin = true;
      // The fake thread is preempted once per spin while the "core" is shared.
      tun.preemptions = () => (preemptedDuringSpin ? ++switches : switches);
      const request = (port: number) => udpPacket({ src: HOST_A, dst: REMOTE, srcPort: port, dstPort: 7, payload });
      expect(loop.spinWindowUs).toBe(1600);
      for (let i = 0; i < 6; i++) {
        tun.inject(request(4000 + i));
        loop.drain();
      }
      // 1600 → 800 → 400 → 200 → 100 (1/16 of --busy-poll, the floor), and there it stays.
      expect(loop.spinWindowUs).toBe(100);
      expect(loop.stats.spinShrinks).toBe(6);
      preemptedDuringSpin = false;
      // An empty spin that ran alone leaves the window as it is; one that caught a packet doubles it.
      tun.inject(request(5000));
      loop.drain();
      expect(loop.spinWindowUs).toBe(100);
      const read = tun.readBatch;
      let empty = 0;
      tun.readBatch = (buf, slot, lens) => {
        const n = read(buf, slot, lens);
        if (n !== 0 || ++empty !== 1) return n;
        // The reply arrives during the spin's first read: returned by that read, so that the spin catches it
        // however long this thread was kept off the CPU (a busy CI machine) before it read.
        tun.inject(request(6000));
        return read(buf, slot, lens);
      };
      tun.inject(request(5001));
      expect(loop.drain()).toBe(2);
      expect(loop.spinWindowUs).toBe(200);
      expect(loop.stats.spinShrinks).toBe(6);
    });

    it('keeps the window fixed on a device that cannot count preemptions', () => {
      const { tun, loop } = lateArrival(Number.MAX_SAFE_INTEGER, 8, 200);
      expect(tun.preemptions).toBeUndefined();
      tun.inject(udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 4000, dstPort: 7, payload }));
      loop.drain();
      expect(loop.spinWindowUs).toBe(200);
      expect(loop.stats.spinShrinks).toBe(0);
    });

    it('rejects an impossible window', () => {
      expect(() => new Dataplane(new FakeTun(), makeNat(), { busyPollUs: -1 })).toThrow(RangeError);
      expect(() => new Dataplane(new FakeTun(), makeNat(), { busyPollUs: 1.5 })).toThrow(RangeError);
    });
  });

  it('translates the same with the flow table warmed for each batch', () => {
    const run = (prefetchMinFlows: number) => {
      const tun = new FakeTun();
      const nat = makeNat();
      const loop = new Dataplane(tun, nat, { batch: 8, slotSize: 2048, clock: () => 0, prefetchMinFlows });
      const batch = () => [
        udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 5353, dstPort: 53, payload }),
        tcpPacket({ src: HOST_B, dst: REMOTE, srcPort: 40000, dstPort: 80, seq: 1, ack: 0, flags: TCP_FLAGS.SYN }),
        icmpEcho({ src: HOST_A, dst: REMOTE, type: 8, identifier: 9, sequence: 1 }),
        Buffer.from([0x45, 0, 0, 24, 0, 0, 0, 0, 64, 17, 0, 0]), // cut short: skipped by the warm-up, dropped
        udpPacket({ src: REMOTE, dst: PUB, srcPort: 53, dstPort: 5353, payload }),
      ];
      for (let round = 0; round < 3; round++) {
        batch().forEach((p) => tun.inject(p));
        loop.runBatch();
      }
      return { out: tun.takeWritten().map((p) => p.toString('hex')), flows: nat.flows.size };
    };
    const cold = run(Number.MAX_SAFE_INTEGER);
    expect(cold.out.length).toBeGreaterThan(9);
    expect(run(0)).toEqual(cold);
  });
});
