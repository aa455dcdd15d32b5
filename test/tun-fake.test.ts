import { describe, expect, it } from 'vitest';
import { FakeTun } from '../src/tun/fake.js';
import { TunError } from '../src/tun/errors.js';

// A minimal IPv4-looking packet: version nibble 4 and a marker byte so packets can be told apart.
function ipv4(marker: number, length = 20): Buffer {
  const p = Buffer.alloc(length, 0xa5);
  p[0] = 0x45;
  p[1] = marker;
  return p;
}

const nextTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe('FakeTun readBatch', () => {
  it('returns 0 when nothing waits', () => {
    const tun = new FakeTun();
    expect(tun.readBatch(Buffer.alloc(1500 * 4), 1500, new Uint32Array(4))).toBe(0);
  });

  it('fills slots in order, at most lens.length per call, and keeps the rest queued', () => {
    const tun = new FakeTun();
    for (let i = 0; i < 5; i++) tun.inject(ipv4(i, 20 + i));
    const slot = 64;
    const buf = Buffer.alloc(slot * 3, 0xee);
    const lens = new Uint32Array(3);

    expect(tun.readBatch(buf, slot, lens)).toBe(3);
    expect([...lens]).toEqual([20, 21, 22]);
    for (let i = 0; i < 3; i++) {
      expect(buf[i * slot + 1]).toBe(i);
      expect(buf.subarray(i * slot, i * slot + 20 + i).equals(ipv4(i, 20 + i))).toBe(true);
      // Bytes past the packet in its slot are untouched.
      expect(buf[i * slot + 20 + i]).toBe(0xee);
    }
    expect(tun.pending).toBe(2);

    expect(tun.readBatch(buf, slot, lens)).toBe(2);
    expect([lens[0], lens[1]]).toEqual([23, 24]);
    expect(buf[1]).toBe(3);
    expect(buf[slot + 1]).toBe(4);
    expect(tun.pending).toBe(0);
    expect(tun.stats().readPackets).toBe(5);
  });

  it('copies injected packets, so the caller may reuse its buffer', () => {
    const tun = new FakeTun();
    const p = ipv4(7);
    tun.inject(p);
    p[1] = 99;
    const buf = Buffer.alloc(64);
    const lens = new Uint32Array(1);
    tun.readBatch(buf, 64, lens);
    expect(buf[1]).toBe(7);
  });

  it('truncates a packet longer than slotSize and reports its real length by default', () => {
    const tun = new FakeTun();
    tun.inject(ipv4(1, 100));
    tun.inject(ipv4(2, 30));
    const buf = Buffer.alloc(64 * 2, 0xee);
    const lens = new Uint32Array(2);
    expect(tun.readBatch(buf, 64, lens)).toBe(2);
    expect(lens[0]).toBe(100);
    expect(buf.subarray(0, 64).equals(ipv4(1, 100).subarray(0, 64))).toBe(true);
    // The truncated copy did not spill into the next slot.
    expect(buf[64 + 1]).toBe(2);
    expect(lens[1]).toBe(30);
    expect(tun.stats().truncatedReads).toBe(1);
  });

  it("reports slotSize for a truncated packet with truncatedLength 'slot', as Linux does", () => {
    const tun = new FakeTun({ truncatedLength: 'slot' });
    tun.inject(ipv4(1, 100));
    const lens = new Uint32Array(1);
    expect(tun.readBatch(Buffer.alloc(64), 64, lens)).toBe(1);
    expect(lens[0]).toBe(64);
  });

  it('validates its arguments like the native device', () => {
    const tun = new FakeTun();
    expect(() => tun.readBatch(Buffer.alloc(100), 64, new Uint32Array(2))).toThrow(RangeError);
    expect(() => tun.readBatch(Buffer.alloc(100), 0, new Uint32Array(1))).toThrow(RangeError);
    expect(() => tun.readBatch(Buffer.alloc(100), 1.5, new Uint32Array(1))).toThrow(RangeError);
    expect(() => tun.readBatch(Buffer.alloc(100), 10, new Uint16Array(1) as unknown as Uint32Array)).toThrow(
      TypeError,
    );
  });
});

describe('FakeTun writeBatch', () => {
  it('writes packets from explicit offsets and copies them out', () => {
    const tun = new FakeTun();
    const buf = Buffer.alloc(200);
    ipv4(1, 20).copy(buf, 100);
    ipv4(2, 40).copy(buf, 0);
    const n = tun.writeBatch(buf, new Uint32Array([100, 0]), new Uint32Array([20, 40]), 2);
    expect(n).toBe(2);
    buf.fill(0); // the copies are independent of the caller's buffer
    const out = tun.takeWritten();
    expect(out.map((p) => [p[1], p.length])).toEqual([
      [1, 20],
      [2, 40],
    ]);
    expect(tun.takeWritten()).toEqual([]);
    expect(tun.stats().writePackets).toBe(2);
  });

  it('writes only the first count entries', () => {
    const tun = new FakeTun();
    const buf = Buffer.concat([ipv4(1), ipv4(2), ipv4(3)]);
    expect(tun.writeBatch(buf, new Uint32Array([0, 20, 40]), new Uint32Array([20, 20, 20]), 2)).toBe(2);
    expect(tun.written.map((p) => p[1])).toEqual([1, 2]);
  });

  it('skips and counts out-of-range entries and packets the kernel would refuse', () => {
    const tun = new FakeTun();
    const buf = Buffer.concat([ipv4(1), Buffer.alloc(20, 0), ipv4(3)]);
    const offsets = new Uint32Array([0, 50, 20, 40, 0xffffffff]);
    const lens = new Uint32Array([20, 20, 20, 20, 1]);
    expect(tun.writeBatch(buf, offsets, lens, 5)).toBe(5);
    expect(tun.written.map((p) => p[1])).toEqual([1, 3]);
    expect(tun.stats()).toMatchObject({ writePackets: 2, writeOutOfRange: 2, writeErrors: 1, lastWriteErrno: 22 });
  });

  it('accepts at most writeCapacity packets per call and reports where it stopped', () => {
    const tun = new FakeTun({ writeCapacity: 2 });
    const buf = Buffer.concat([ipv4(0), ipv4(1), ipv4(2), ipv4(3), ipv4(4)]);
    const offsets = Uint32Array.from([0, 20, 40, 60, 80]);
    const lens = new Uint32Array(5).fill(20);

    expect(tun.writeBatch(buf, offsets, lens, 5)).toBe(2);
    // The caller resumes from the returned index.
    expect(tun.writeBatch(buf, offsets.subarray(2), lens.subarray(2), 3)).toBe(2);
    tun.writeCapacity = 0;
    expect(tun.writeBatch(buf, offsets.subarray(4), lens.subarray(4), 1)).toBe(0);
    tun.writeCapacity = Number.POSITIVE_INFINITY;
    expect(tun.writeBatch(buf, offsets.subarray(4), lens.subarray(4), 1)).toBe(1);
    expect(tun.written.map((p) => p[1])).toEqual([0, 1, 2, 3, 4]);
  });

  it('consumes out-of-range entries without using capacity, as the native loop does', () => {
    const tun = new FakeTun({ writeCapacity: 1 });
    const buf = Buffer.concat([ipv4(0), ipv4(1)]);
    // in range, out of range, in range: the first fills the queue, the second is skipped, the third waits.
    expect(tun.writeBatch(buf, new Uint32Array([0, 1000, 20]), new Uint32Array([20, 20, 20]), 3)).toBe(2);
    expect(tun.stats()).toMatchObject({ writePackets: 1, writeOutOfRange: 1 });
  });

  it('validates its arguments like the native device', () => {
    const tun = new FakeTun();
    const buf = Buffer.alloc(40);
    expect(() => tun.writeBatch(buf, new Uint32Array(1), new Uint32Array(2), 2)).toThrow(RangeError);
    expect(() => tun.writeBatch(buf, new Uint32Array(2), new Uint32Array(2), -1)).toThrow(RangeError);
    expect(() => tun.writeBatch(buf, [0] as unknown as Uint32Array, new Uint32Array(1), 1)).toThrow(TypeError);
    expect(() => tun.writeBatch('x' as unknown as Buffer, new Uint32Array(1), new Uint32Array(1), 1)).toThrow(
      TypeError,
    );
  });
});

describe('FakeTun readiness', () => {
  it('coalesces many injects into one callback on the next turn', async () => {
    const tun = new FakeTun();
    let calls = 0;
    let got = 0;
    const buf = Buffer.alloc(64 * 16);
    const lens = new Uint32Array(16);
    tun.onReadable(() => {
      calls++;
      got += tun.readBatch(buf, 64, lens);
    });
    for (let i = 0; i < 10; i++) tun.inject(ipv4(i));
    expect(calls).toBe(0); // never synchronously from inject
    await nextTurn();
    await nextTurn();
    expect(calls).toBe(1);
    expect(got).toBe(10);
  });

  it('is level-triggered: calls again while packets remain unread', async () => {
    const tun = new FakeTun();
    for (let i = 0; i < 5; i++) tun.inject(ipv4(i));
    const seen: number[] = [];
    const buf = Buffer.alloc(64 * 2);
    const lens = new Uint32Array(2);
    await new Promise<void>((resolve) => {
      tun.onReadable(() => {
        const n = tun.readBatch(buf, 64, lens);
        seen.push(n);
        if (tun.pending === 0) resolve();
      });
    });
    expect(seen).toEqual([2, 2, 1]);
    await nextTurn();
    expect(seen).toEqual([2, 2, 1]); // quiet once drained
  });

  it('replaces the callback and stops with offReadable', async () => {
    const tun = new FakeTun();
    const calls: string[] = [];
    tun.onReadable(() => calls.push('first'));
    tun.onReadable(() => {
      calls.push('second');
      tun.readBatch(Buffer.alloc(64), 64, new Uint32Array(1));
    });
    tun.inject(ipv4(1));
    await nextTurn();
    expect(calls).toEqual(['second']);
    tun.offReadable();
    tun.inject(ipv4(2));
    await nextTurn();
    await nextTurn();
    expect(calls).toEqual(['second']);
  });
});

describe('FakeTun close', () => {
  it('is idempotent, cancels a scheduled callback, and makes I/O fail with TUN_IO/EBADF', async () => {
    const tun = new FakeTun({ name: 'lab0' });
    let calls = 0;
    tun.onReadable(() => calls++);
    tun.inject(ipv4(1));
    tun.close();
    tun.close();
    await nextTurn();
    expect(calls).toBe(0);
    expect(tun.isClosed).toBe(true);

    const err = (() => {
      try {
        tun.readBatch(Buffer.alloc(64), 64, new Uint32Array(1));
      } catch (e) {
        return e;
      }
      return undefined;
    })();
    expect(err).toBeInstanceOf(TunError);
    expect(err).toMatchObject({ code: 'TUN_IO', errno: 9, errnoCode: 'EBADF', syscall: 'read', device: 'lab0' });
    expect(() => tun.writeBatch(Buffer.alloc(20), new Uint32Array(1), new Uint32Array([20]), 1)).toThrow(TunError);
    expect(() => tun.onReadable(() => undefined)).toThrow(TunError);
    expect(() => tun.inject(ipv4(1))).toThrow(TunError);
  });

  it('keeps what was written readable after close', () => {
    const tun = new FakeTun();
    tun.writeBatch(ipv4(5), new Uint32Array([0]), new Uint32Array([20]), 1);
    tun.close();
    expect(tun.takeWritten().map((p) => p[1])).toEqual([5]);
  });
});
