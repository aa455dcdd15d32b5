import { describe, it, expect } from 'vitest';
import { crc32c, readSctpChecksum, sctpChecksum, sctpChunkMask, writeSctpChecksum, SCTP_CHUNK } from '../../src/wire/crc32c.js';

describe('CRC32c (RFC 3720 appendix B.4 test vectors)', () => {
  const range = (n: number, f: (i: number) => number) => Uint8Array.from({ length: n }, (_, i) => f(i));
  it.each([
    ['32 bytes of zeros', range(32, () => 0), 0x8a9136aa],
    ['32 bytes of ones', range(32, () => 0xff), 0x62a8ab43],
    ['32 incrementing bytes', range(32, (i) => i), 0x46dd794e],
    ['32 decrementing bytes', range(32, (i) => 31 - i), 0x113fdb5c],
    ['"123456789"', new TextEncoder().encode('123456789'), 0xe3069283],
  ])('%s', (_name, bytes, want) => {
    expect(crc32c(bytes, 0, bytes.length)).toBe(want);
  });

  it('an iSCSI read command PDU (RFC 3720 B.4)', () => {
    const pdu = Uint8Array.from([
      0x01, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
      0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x18,
      0x28, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ]);
    expect(crc32c(pdu, 0, pdu.length)).toBe(0xd9963a56);
  });

  it('works at an offset, and over nothing', () => {
    const b = new Uint8Array(40);
    b.set(new TextEncoder().encode('123456789'), 5);
    expect(crc32c(b, 5, 9)).toBe(0xe3069283);
    expect(crc32c(b, 0, 0)).toBe(0);
  });
});

describe('SCTP checksum field and chunks', () => {
  /** An SCTP packet: common header, then an INIT chunk of 20 bytes and a DATA chunk of 17 (padded to 20). */
  function sctp(): Uint8Array {
    const b = new Uint8Array(12 + 20 + 20);
    const v = new DataView(b.buffer);
    v.setUint16(0, 5000);
    v.setUint16(2, 36412);
    v.setUint32(4, 0);
    b[12] = SCTP_CHUNK.INIT;
    v.setUint16(14, 20);
    b[32] = SCTP_CHUNK.DATA;
    v.setUint16(34, 17);
    return b;
  }

  it('is the CRC over the packet with the field zero, stored least significant byte first', () => {
    const b = sctp();
    b.set([1, 2, 3, 4], 8); // whatever was there does not enter the computation
    const c = sctpChecksum(b, 0, b.length);
    expect(Array.from(b.subarray(8, 12))).toEqual([1, 2, 3, 4]);
    const z = sctp();
    expect(c).toBe(crc32c(z, 0, z.length));
    writeSctpChecksum(b, 0, c);
    expect(b[8]).toBe(c & 0xff);
    expect(b[11]).toBe(c >>> 24);
    expect(readSctpChecksum(b, 0)).toBe(c);
    expect(sctpChecksum(b, 0, b.length)).toBe(c);
  });

  it('chunk mask: the types present; -1 for a bad chunk length or no chunk at all', () => {
    const b = sctp();
    expect(sctpChunkMask(b, 0, b.length)).toBe((1 << SCTP_CHUNK.INIT) | (1 << SCTP_CHUNK.DATA));
    expect(sctpChunkMask(b, 0, 12)).toBe(-1);
    const bad = sctp();
    bad[15] = 200; // INIT length past the end
    expect(sctpChunkMask(bad, 0, bad.length)).toBe(-1);
    const short = sctp();
    short[15] = 2; // shorter than a chunk header
    expect(sctpChunkMask(short, 0, short.length)).toBe(-1);
  });
});
