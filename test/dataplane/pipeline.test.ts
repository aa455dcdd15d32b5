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
      secondsLeft: 300,
    });
    loop.stop();
  });
});
