import { describe, expect, it } from 'vitest';
import { Worker } from 'node:worker_threads';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { PacketRing } from '../../src/dataplane/ring.js';

describe('PacketRing', () => {
  it('keeps order, refuses when full and says when it was empty', () => {
    const r = PacketRing.create(64); // 64 bytes: records of 8 or 16 bytes, packets up to 12 bytes
    const dst = Buffer.alloc(64);
    expect(r.maxPacket).toBe(12);
    expect(r.pop(dst, 0)).toBe(-1);
    expect(r.push(Buffer.from('a'), 0, 1)).toBe(1); // was empty: wake the consumer
    expect(r.push(Buffer.from('bb'), 0, 2)).toBe(0);
    expect(r.push(Buffer.from('ccccc'), 0, 5)).toBe(0); // a 16-byte record
    expect(r.push(Buffer.from('dddddddddddd'), 0, 12)).toBe(0);
    expect(r.push(Buffer.alloc(13), 0, 13)).toBe(-1); // too big for this ring
    expect(r.push(Buffer.from('eeeee'), 0, 5)).toBe(0); // exactly full
    expect(r.used).toBe(64);
    expect(r.push(Buffer.from('f'), 0, 1)).toBe(-1);
    expect(r.pop(dst, 8)).toBe(1);
    expect(dst.subarray(8, 9).toString()).toBe('a');
    expect(r.pop(dst, 0)).toBe(2);
    expect(dst.subarray(0, 2).toString()).toBe('bb');
    expect(r.push(Buffer.from('-xyz'), 1, 3)).toBe(0); // wraps to the start: room freed by the pops
    expect([r.pop(dst, 0), r.pop(dst, 5), r.pop(dst, 17), r.pop(dst, 22)]).toEqual([5, 12, 5, 3]);
    expect(dst.subarray(0, 25).toString()).toBe('cccccddddddddddddeeeeexyz');
    expect(r.pop(dst, 0)).toBe(-1);
    expect(r.empty).toBe(true);
  });

  it('skips the end of the ring when a record does not fit there', () => {
    const r = PacketRing.create(64);
    const dst = Buffer.alloc(16);
    for (let i = 0; i < 7; i++) expect(r.push(Buffer.from([i]), 0, 1)).toBeGreaterThanOrEqual(0); // 56 bytes
    for (let i = 0; i < 6; i++) r.pop(dst, 0);
    expect(r.used).toBe(8);
    // 8 bytes are left at the end, the record needs 16: it goes to 0 and the 8 are skipped.
    expect(r.push(Buffer.from('hello'), 0, 5)).toBe(0);
    expect(r.used).toBe(32);
    expect(r.pop(dst, 0)).toBe(1);
    expect(dst[0]).toBe(6);
    expect(r.pop(dst, 0)).toBe(5);
    expect(dst.subarray(0, 5).toString()).toBe('hello');
    expect(r.empty).toBe(true);
  });

  it('carries 100 000 packets between two threads without loss or reordering', async () => {
    const r = PacketRing.create(1024);
    const total = 100_000;
    // The producer is the built PacketRing itself (npm test builds first), in a thread of its own.
    const built = pathToFileURL(join(dirname(fileURLToPath(import.meta.url)), '../../dist/src/dataplane/ring.js')).href;
    const src = `
      const { workerData } = require('node:worker_threads');
      (async () => {
        const { PacketRing } = await import(workerData.built);
        const ring = new PacketRing(workerData.sab, 1024);
        const b = Buffer.alloc(32);
        for (let n = 0; n < workerData.total; ) {
          b.writeUInt32LE(n, 0);
          if (ring.push(b, 0, 4 + (n % 28)) >= 0) n++;
        }
      })();
    `;
    const w = new Worker(src, { eval: true, workerData: { sab: r.sab, total, built } });
    const dst = Buffer.alloc(32);
    let expected = 0;
    const deadline = Date.now() + 20_000;
    while (expected < total && Date.now() < deadline) {
      const len = r.pop(dst, 0);
      if (len < 0) continue;
      expect(len).toBe(4 + (expected % 28));
      expect(dst.readUInt32LE(0)).toBe(expected);
      expected++;
    }
    await w.terminate();
    expect(expected).toBe(total);
  }, 30_000);
});
