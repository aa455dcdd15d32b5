/**
 * Independent reference code the benchmarks check against: the Internet checksum done the slow,
 * obvious way (RFC 1071 §4.1's loop, word by word, folding at the end), raw big-endian reads at
 * fixed offsets, and seeded random numbers. None of it shares code with src/, so a bug in the
 * optimised library code cannot hide by agreeing with itself.
 */

export const PROTO_TCP = 6;
export const PROTO_UDP = 17;

export function rd16(b: Uint8Array, i: number): number {
  return (b[i]! << 8) | b[i + 1]!;
}

export function rd32(b: Uint8Array, i: number): number {
  return ((b[i]! << 24) | (b[i + 1]! << 16) | (b[i + 2]! << 8) | b[i + 3]!) >>> 0;
}

export function wr16(b: Uint8Array, i: number, v: number): void {
  b[i] = (v >>> 8) & 0xff;
  b[i + 1] = v & 0xff;
}

export function wr32(b: Uint8Array, i: number, v: number): void {
  b[i] = (v >>> 24) & 0xff;
  b[i + 1] = (v >>> 16) & 0xff;
  b[i + 2] = (v >>> 8) & 0xff;
  b[i + 3] = v & 0xff;
}

/** Adds `b[off .. off+len)` as 16-bit big-endian words to `sum`, skipping the word at `skipAt` (absolute). */
function addWords(sum: number, b: Uint8Array, off: number, len: number, skipAt = -1): number {
  for (let i = 0; i < len; i += 2) {
    if (off + i === skipAt) continue;
    const hi = b[off + i]!;
    const lo = i + 1 < len ? b[off + i + 1]! : 0;
    sum += hi * 256 + lo;
  }
  return sum;
}

function finish(sum: number): number {
  while (sum > 0xffff) sum = (sum % 0x10000) + Math.floor(sum / 0x10000);
  return 0xffff - sum;
}

/** RFC 1071 checksum of a byte range. */
export function refChecksum(b: Uint8Array, off: number, len: number): number {
  return finish(addWords(0, b, off, len));
}

/**
 * The TCP/UDP checksum a sender computes for the segment at `b[off .. off+len)` between `src` and
 * `dst`, the stored checksum field (at `off + csumOffset`) counted as zero. Raw one's-complement
 * result: the UDP "0 becomes 0xffff" rule is the caller's.
 */
export function refL4Checksum(src: number, dst: number, proto: number, b: Uint8Array, off: number, len: number, csumOffset: number): number {
  let sum = (src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff) + proto + len;
  sum = addWords(sum, b, off, len, off + csumOffset);
  return finish(sum);
}

/** The parts of an IPv4 + TCP/UDP packet a NAT reads and writes, read at fixed offsets. */
export interface RawPacket {
  ihl: number;
  totalLength: number;
  ttl: number;
  proto: number;
  src: number;
  dst: number;
  sport: number;
  dport: number;
  /** The IPv4 header checksum is right. */
  ipChecksumOk: boolean;
  /** The TCP/UDP checksum is right (a UDP checksum of 0, "none", counts as wrong: our packets all carry one). */
  l4ChecksumOk: boolean;
}

/** Reads an option-less or optioned IPv4 packet carrying TCP or UDP; for verification only (allocates). */
export function readPacket(b: Uint8Array, off: number): RawPacket {
  const ihl = (b[off]! & 0x0f) * 4;
  const totalLength = rd16(b, off + 2);
  const proto = b[off + 9]!;
  const src = rd32(b, off + 12);
  const dst = rd32(b, off + 16);
  const l4 = off + ihl;
  const l4len = totalLength - ihl;
  const csumOffset = proto === PROTO_UDP ? 6 : 16;
  const stored = rd16(b, l4 + csumOffset);
  const computed = refL4Checksum(src, dst, proto, b, l4, l4len, csumOffset);
  const l4ChecksumOk = proto === PROTO_UDP ? stored !== 0 && stored === (computed || 0xffff) : stored === computed;
  return {
    ihl,
    totalLength,
    ttl: b[off + 8]!,
    proto,
    src,
    dst,
    sport: rd16(b, l4),
    dport: rd16(b, l4 + 2),
    ipChecksumOk: refChecksum(b, off, ihl) === 0,
    l4ChecksumOk,
  };
}

/**
 * A bijection on 32-bit integers (Chris Wellons' "lowbias32" hash, every step invertible). Flow i of
 * a fixture gets the key perm32(i ^ seed), so keys look random yet are distinct by construction, and
 * any index outside the fixture's range gives a key that is certainly absent.
 */
export function perm32(x: number): number {
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d);
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b);
  x ^= x >>> 16;
  return x >>> 0;
}

/** Seeded 32-bit generator (mulberry32): fixtures are the same on every run. */
export class Rng32 {
  private a: number;
  constructor(seed: number) {
    this.a = seed >>> 0;
  }
  /** Uniform unsigned 32-bit integer. */
  u32(): number {
    this.a = (this.a + 0x6d2b79f5) >>> 0;
    let t = this.a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  /** Uniform integer in [0, n). */
  below(n: number): number {
    return Math.floor((this.u32() / 4294967296) * n);
  }
  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = this.u32() & 0xff;
    return out;
  }
}

/** Dotted-quad → number, for the fixed addresses of the fixtures. */
export function ip4(a: number, b: number, c: number, d: number): number {
  return ((a << 24) | (b << 16) | (c << 8) | d) >>> 0;
}
