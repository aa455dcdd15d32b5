import { describe, expect, it } from 'vitest';
import {
  csumUpdate16,
  csumUpdate32,
  fold16,
  internetChecksum,
  pseudoHeaderSum,
  sum16,
} from '../../src/wire/checksum.js';
import { atOddOffset, prng, pseudoWords, randomBytes, referenceChecksum } from '../fixtures/wire/fixtures.js';

describe('sum16 / fold16 / internetChecksum', () => {
  it('matches the worked example of RFC 1071 section 3', () => {
    // Bytes 00 01 f2 03 f4 f5 f6 f7: the sum is 2ddf0, folded ddf2, checksum 220d.
    const b = Uint8Array.from([0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]);
    expect(fold16(sum16(b, 0, 8))).toBe(0xddf2);
    expect(internetChecksum(b, 0, 8)).toBe(0x220d);
  });

  it.each([
    { name: 'empty', bytes: [], sum: 0 },
    { name: 'one byte is the high byte of a padded word', bytes: [0xab], sum: 0xab00 },
    { name: 'three bytes', bytes: [0x12, 0x34, 0x56], sum: 0x1234 + 0x5600 },
    { name: 'carry folds back', bytes: [0xff, 0xff, 0x00, 0x02], sum: 0x10001 },
    { name: 'all ones', bytes: [0xff, 0xff, 0xff, 0xff], sum: 0x1fffe },
  ])('$name', ({ bytes, sum }) => {
    const b = Uint8Array.from(bytes);
    expect(fold16(sum16(b, 0, b.length))).toBe(fold16(sum));
    expect(internetChecksum(b, 0, b.length)).toBe(referenceChecksum(b));
  });

  it('adds to `initial` and continues a sum across calls', () => {
    const rng = prng(1);
    const b = randomBytes(rng, 200);
    const whole = fold16(sum16(b, 0, 200));
    // Splitting at an even boundary must give the same folded sum.
    expect(fold16(sum16(b, 100, 100, sum16(b, 0, 100)))).toBe(whole);
    expect(fold16(sum16(b, 0, 200, 0x1234))).toBe(fold16(whole + 0x1234));
  });

  it('matches the reference on random data, lengths 0..300, odd and even, at odd byteOffsets', () => {
    const rng = prng(2);
    for (let n = 0; n <= 300; n++) {
      const data = randomBytes(rng, n);
      const view = atOddOffset(data, 1 + rng.int(9), rng.int(9));
      expect(view.byteOffset).toBeGreaterThan(0);
      expect(internetChecksum(view, 0, n), `len ${n}`).toBe(referenceChecksum(data));
      // The same range addressed inside the parent buffer.
      const parent = new Uint8Array(view.buffer);
      expect(internetChecksum(parent, view.byteOffset, n)).toBe(referenceChecksum(data));
    }
  });

  it('stays exact for a 64 KiB run of 0xff with a huge initial sum', () => {
    const b = new Uint8Array(65535).fill(0xff);
    const s = sum16(b, 0, b.length, 2 ** 40);
    expect(s).toBeLessThan(2 ** 32);
    // Every 0xffff word is -0; the trailing byte adds 0xff00; 2^40 = 2^8 * (2^16)^2 is 2^8 mod 0xffff.
    expect(fold16(s)).toBe(fold16(0xff00 + 0x100));
  });

  it('fold16 handles sums beyond 2^32', () => {
    expect(fold16(2 ** 32)).toBe(1);
    expect(fold16(2 ** 48 + 5)).toBe(6);
    expect(fold16(0x1ffff)).toBe(1);
    expect(fold16(0xffff)).toBe(0xffff);
    expect(fold16(0)).toBe(0);
  });
});

describe('pseudoHeaderSum', () => {
  it('equals summing the 12-byte pseudo-header', () => {
    const rng = prng(3);
    for (let i = 0; i < 200; i++) {
      const src = rng.u32();
      const dst = rng.u32();
      const proto = rng.int(256);
      const len = rng.u16();
      const ph = new Uint8Array(12);
      const dv = new DataView(ph.buffer);
      dv.setUint32(0, src);
      dv.setUint32(4, dst);
      dv.setUint8(9, proto);
      dv.setUint16(10, len);
      expect(fold16(pseudoHeaderSum(src, dst, proto, len))).toBe(fold16(sum16(ph, 0, 12)));
      expect(~fold16(pseudoHeaderSum(src, dst, proto, len)) & 0xffff).toBe(referenceChecksum(new Uint8Array(0), pseudoWords(src, dst, proto, len)));
    }
  });
});

describe('RFC 1624 incremental update', () => {
  it('reproduces the RFC 1624 section 4 example: eqn. 3 gives 0x0000 where eqn. 2 gave 0xffff', () => {
    // Other header words sum to 0xcd7a; m changes 0x5555 -> 0x3285; HC = 0xdd2f.
    expect(csumUpdate16(0xdd2f, 0x5555, 0x3285)).toBe(0x0000);
  });

  it.each([
    { name: 'no change', csum: 0x1234, old: 0xabcd, neu: 0xabcd, want: 0x1234 },
    { name: '0 -> 0xffff is a no-op in one\'s complement', csum: 0x1234, old: 0x0000, neu: 0xffff, want: 0x1234 },
    { name: 'stored -0 with m 0xffff -> 0 stays -0 (the only way to get 0xffff)', csum: 0xffff, old: 0xffff, neu: 0x0000, want: 0xffff },
    { name: 'stored -0 is read as +0', csum: 0xffff, old: 0x0001, neu: 0x0002, want: 0xfffe },
    { name: 'sum reaching -0 gives 0x0000', csum: 0x0001, old: 0x0000, neu: 0x0001, want: 0x0000 },
  ])('edge: $name', ({ csum, old, neu, want }) => {
    expect(csumUpdate16(csum, old, neu)).toBe(want);
  });

  it('csumUpdate16 equals a full recompute for every aligned word of random data', () => {
    const rng = prng(4);
    for (let iter = 0; iter < 2000; iter++) {
      const n = 2 + rng.int(80);
      const b = randomBytes(rng, n);
      const c = internetChecksum(b, 0, n);
      const w = 2 * rng.int(n >> 1);
      const old = (b[w]! << 8) | b[w + 1]!;
      // One case in four picks the word that makes the new sum -0, so the result is 0x0000.
      const neu = rng.int(4) === 0 ? ~fold16(sum16(b, 0, n) + (~old & 0xffff)) & 0xffff : rng.u16();
      b[w] = neu >>> 8;
      b[w + 1] = neu & 0xff;
      const full = internetChecksum(b, 0, n);
      const inc = csumUpdate16(c, old, neu);
      if (b.every((x) => x === 0)) continue; // the documented all-zero case
      expect(inc, `iter ${iter}`).toBe(full);
    }
  });

  it('csumUpdate32 equals a full recompute, and equals two csumUpdate16', () => {
    const rng = prng(5);
    for (let iter = 0; iter < 2000; iter++) {
      const n = 6 + 2 * rng.int(40);
      const b = randomBytes(rng, n);
      b[0] = 0x45; // keep the data non-zero, as every real header is
      const c = internetChecksum(b, 0, n);
      const at = 2 + 2 * rng.int((n - 4) >> 1);
      const dv = new DataView(b.buffer, b.byteOffset, b.length);
      const old = dv.getUint32(at);
      const neu = rng.int(4) === 0 ? rng.u16() * 0x10000 + 0xffff - rng.int(2) : rng.u32();
      dv.setUint32(at, neu);
      const inc = csumUpdate32(c, old, neu);
      expect(inc).toBe(internetChecksum(b, 0, n));
      expect(inc).toBe(csumUpdate16(csumUpdate16(c, old >>> 16, neu >>> 16), old & 0xffff, neu & 0xffff));
    }
  });

  it('accepts negative (signed 32-bit) inputs as the same unsigned address', () => {
    const a = 0xc0a80101;
    expect(csumUpdate32(0x1234, a | 0, 0xcb007101 | 0)).toBe(csumUpdate32(0x1234, a, 0xcb007101));
  });
});
