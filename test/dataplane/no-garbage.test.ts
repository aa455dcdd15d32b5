import { describe, expect, it } from 'vitest';
import { Session } from 'node:inspector/promises';
import { tuneJit } from '../../src/util/jit.js';
import { Dataplane } from '../../src/dataplane/loop.js';
import { VNET_HDR_LEN } from '../../src/dataplane/vnet.js';
import type { TunDevice } from '../../src/tun/device.js';
import { tcpPacket, udpPacket } from '../../src/wire/build.js';
import { TCP_FLAGS } from '../../src/wire/tcp.js';
import { makeNat, PUB, REMOTE, HOST_A } from '../nat/helpers.js';

/**
 * The established path must leave no garbage behind: every object it allocates per packet is work for
 * V8's collector, which then runs on the data-plane thread. The easy way to break it is to pass an IPv4
 * address (a 32-bit number, too wide for V8's small integers) to a function that is not inlined: each such
 * call boxes the number in a new heap object. Measured with V8's sampling heap profiler, counting objects
 * already collected too, after the code has been optimised (with the data plane's JIT setting).
 */
describe('established packets allocate nothing', () => {
  it('UDP and TCP in both directions, with virtio-net headers, leave < 1 byte of garbage per packet', async () => {
    tuneJit();
    const queue: Buffer[] = [];
    let first: Buffer | null = null;
    // A TUN that allocates nothing itself: it copies prepared packets in and drops what is written.
    const tun = {
      name: 'probe',
      readBatch(buf: Buffer, slot: number, lens: Uint32Array): number {
        let n = 0;
        while (n < lens.length && queue.length > 0) {
          const p = queue.pop()!;
          buf.fill(0, n * slot, n * slot + VNET_HDR_LEN);
          p.copy(buf, n * slot + VNET_HDR_LEN);
          lens[n++] = p.length + VNET_HDR_LEN;
        }
        return n;
      },
      writeBatch(buf: Buffer, offsets: Uint32Array, lens: Uint32Array, count: number): number {
        if (first === null && count > 0) first = Buffer.from(buf.subarray(offsets[0]! + VNET_HDR_LEN, offsets[0]! + lens[0]!));
        return count;
      },
      onReadable(): void {},
      close(): void {},
    } as unknown as TunDevice;
    const nat = makeNat();
    const loop = new Dataplane(tun, nat, { batch: 64, slotSize: 2048 + VNET_HDR_LEN, vnetHdr: true, clock: () => 1000 });
    // Open a TCP connection (SYN out, SYN-ACK back) and learn its public port.
    queue.push(tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 4000, dstPort: 80, flags: TCP_FLAGS.SYN, seq: 1, ack: 0, payload: Buffer.alloc(0) }));
    loop.drain();
    const port = first!.readUInt16BE(20);
    queue.push(tcpPacket({ src: REMOTE, dst: PUB, srcPort: 80, dstPort: port, flags: TCP_FLAGS.SYN | TCP_FLAGS.ACK, seq: 100, ack: 2, payload: Buffer.alloc(0) }));
    loop.drain();
    const data = tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 4000, dstPort: 80, flags: TCP_FLAGS.ACK, seq: 2, ack: 101, payload: Buffer.alloc(1000) });
    const ack = tcpPacket({ src: REMOTE, dst: PUB, srcPort: 80, dstPort: port, flags: TCP_FLAGS.ACK, seq: 101, ack: 1002, payload: Buffer.alloc(0) });
    const udp = udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 5000, dstPort: 5001, payload: Buffer.alloc(100) });
    const rounds = 40_000;
    const run = () => {
      for (let i = 0; i < rounds; i++) {
        queue.push(data, ack, udp, ack, data, ack, udp, ack);
        loop.drain();
      }
    };
    run();
    run(); // optimised by now
    const session = new Session();
    session.connect();
    try {
      await session.post('HeapProfiler.startSampling', {
        samplingInterval: 128, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true,
      } as never);
      run();
      const prof = (await session.post('HeapProfiler.stopSampling')) as { profile: { head: SampleNode } };
      const packets = rounds * 8;
      expect(loop.stats.packetsRead).toBe(2 + 3 * packets);
      const sites = new Map<string, number>();
      const walk = (n: SampleNode) => {
        const url = n.callFrame.url;
        // Only what the data plane's own code allocated (the profiler's session allocates too).
        if (n.selfSize > 0 && url.includes('/src/')) {
          const site = `${n.callFrame.functionName} ${url.split('/src/')[1]}:${n.callFrame.lineNumber + 1}`;
          sites.set(site, (sites.get(site) ?? 0) + n.selfSize);
        }
        for (const c of n.children) walk(c);
      };
      walk(prof.profile.head);
      const bytes = [...sites.values()].reduce((a, b) => a + b, 0);
      expect(bytes / packets, JSON.stringify(Object.fromEntries(sites))).toBeLessThan(1);
    } finally {
      session.disconnect();
    }
  });
});

interface SampleNode {
  callFrame: { functionName: string; url: string; lineNumber: number };
  selfSize: number;
  children: SampleNode[];
}
