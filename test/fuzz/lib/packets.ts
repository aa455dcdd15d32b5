/**
 * Packet surgery for the fuzzers: everything a hostile or broken sender can do to a packet, on plain
 * Buffers (test code: allocation is fine here). The emitters of src/wire/build.ts make the clean
 * packets; these helpers cut them into fragments, add IP options, wrap them in ICMP errors, fix or
 * break checksums, and write the virtio-net header the TUN would put in front.
 */
import { fold16, internetChecksum, pseudoHeaderSum, sum16 } from '../../../src/wire/checksum.js';
import { emitIpv4IcmpError, ipv4IcmpErrorLength } from '../../../src/wire/build.js';
import { VNET_HDR_LEN, writeVnetHeader } from '../../../src/dataplane/vnet.js';
import { parseIpv4 } from '../../../src/wire/addr.js';
import { rd16, rd32 } from '../../../src/wire/bytes.js';

export const PROTO_ICMP = 1;
export const PROTO_TCP = 6;
export const PROTO_UDP = 17;

/** Offsets inside the fixed part of an IPv4 header (RFC 791 §3.1). */
export const IP = { VIHL: 0, TOTAL_LENGTH: 2, ID: 4, FRAG: 6, TTL: 8, PROTO: 9, CSUM: 10, SRC: 12, DST: 16 } as const;
const MF = 0x2000;
const DF = 0x4000;

export function addr(s: string): number {
  const v = parseIpv4(s);
  if (v === null) throw new Error(`bad address ${s}`);
  return v;
}

export function ihl(p: Uint8Array): number {
  return (p[0]! & 0x0f) * 4;
}

/**
 * Unlike src/wire/bytes.ts's wr16, writes nothing when the field does not fit: mutations aim at
 * packets that may already have been cut short. (Its readers already read missing bytes as 0.)
 */
export function wr16(p: Uint8Array, at: number, v: number): void {
  if (at + 1 >= p.length) return;
  p[at] = (v >>> 8) & 0xff;
  p[at + 1] = v & 0xff;
}

export function wr32(p: Uint8Array, at: number, v: number): void {
  wr16(p, at, v >>> 16);
  wr16(p, at + 2, v & 0xffff);
}

export function srcOf(p: Uint8Array): number {
  return rd32(p, IP.SRC);
}

export function dstOf(p: Uint8Array): number {
  return rd32(p, IP.DST);
}

export function protoOf(p: Uint8Array): number {
  return p[IP.PROTO] ?? 0;
}

export function isFragment(p: Uint8Array): boolean {
  return (rd16(p, IP.FRAG) & (MF | 0x1fff)) !== 0;
}

/** Whether the bytes hold a whole IPv4 packet the translator's parser would accept (header fields only). */
export function looksLikeIpv4(p: Uint8Array): boolean {
  if (p.length < 20 || p[0]! >>> 4 !== 4) return false;
  const h = ihl(p);
  const total = rd16(p, IP.TOTAL_LENGTH);
  return h >= 20 && total >= h && total <= p.length;
}

export function ipChecksumValid(p: Uint8Array): boolean {
  if (!looksLikeIpv4(p)) return false;
  return fold16(sum16(p, 0, ihl(p))) === 0xffff;
}

export function fixIpChecksum(p: Uint8Array): void {
  const h = ihl(p);
  if (p.length < 20 || h < 20 || h > p.length) return;
  wr16(p, IP.CSUM, 0);
  wr16(p, IP.CSUM, internetChecksum(p, 0, h));
}

/** Where the transport checksum lives, or -1 (other protocols, fragments, truncated headers). */
function l4ChecksumAt(p: Uint8Array): number {
  if (!looksLikeIpv4(p) || isFragment(p)) return -1;
  const h = ihl(p);
  const total = rd16(p, IP.TOTAL_LENGTH);
  const proto = protoOf(p);
  const at = proto === PROTO_TCP ? h + 16 : proto === PROTO_UDP ? h + 6 : proto === PROTO_ICMP ? h + 2 : -1;
  return at >= 0 && at + 2 <= total ? at : -1;
}

/** The complete checksum the transport header should carry (pseudo-header included for TCP/UDP). */
function l4Expected(p: Uint8Array, at: number): number {
  const h = ihl(p);
  const total = rd16(p, IP.TOTAL_LENGTH);
  const proto = protoOf(p);
  const saved = rd16(p, at);
  wr16(p, at, 0);
  const len = total - h;
  const c = proto === PROTO_ICMP ? internetChecksum(p, h, len) : internetChecksum(p, h, len, pseudoHeaderSum(srcOf(p), dstOf(p), proto, len));
  wr16(p, at, saved);
  return c;
}

/**
 * Whether the transport checksum verifies over the whole packet; null when it cannot be judged (not
 * TCP/UDP/ICMP, a fragment, a header that does not fit). A UDP checksum of 0 means "none" and passes.
 */
export function l4ChecksumValid(p: Uint8Array): boolean | null {
  const at = l4ChecksumAt(p);
  if (at < 0) return null;
  const have = rd16(p, at);
  if (protoOf(p) === PROTO_UDP && have === 0) return true;
  const want = l4Expected(p, at);
  // 0 and 0xffff are the same number in ones' complement (UDP must send 0xffff for a computed 0,
  // and an incremental update may legitimately land on either form for TCP and ICMP).
  return have === want || (have === 0xffff && want === 0) || (protoOf(p) !== PROTO_UDP && have === 0 && want === 0xffff);
}

export function fixL4Checksum(p: Uint8Array): void {
  const at = l4ChecksumAt(p);
  if (at < 0) return;
  if (protoOf(p) === PROTO_UDP && rd16(p, at) === 0) return;
  const c = l4Expected(p, at);
  wr16(p, at, protoOf(p) === PROTO_UDP && c === 0 ? 0xffff : c);
}

/** Set the total length to the buffer length (after the buffer was cut or grown). */
export function fitTotalLength(p: Uint8Array): void {
  wr16(p, IP.TOTAL_LENGTH, p.length);
}

/**
 * Insert IP options after the fixed header (the transport checksum does not cover them; the IP one
 * is recomputed). `opts` is padded with End-of-Options to a multiple of 4, at most 40 bytes.
 */
export function withIpOptions(p: Buffer, opts: Uint8Array): Buffer {
  const h = ihl(p);
  const pad = Math.min(40 - (h - 20), (opts.length + 3) & ~3);
  if (pad <= 0 || h < 20 || h > p.length) return Buffer.from(p);
  const out = Buffer.alloc(p.length + pad);
  p.copy(out, 0, 0, h);
  out.set(opts.subarray(0, pad), h);
  p.copy(out, h + pad, h);
  out[0] = 0x40 | ((h + pad) >> 2);
  wr16(out, IP.TOTAL_LENGTH, rd16(p, IP.TOTAL_LENGTH) + pad);
  fixIpChecksum(out);
  return out;
}

/** Real options a sender may use: record route, timestamp, router alert, NOPs, and nonsense. */
export const IP_OPTION_SAMPLES: readonly Uint8Array[] = [
  Uint8Array.from([0x07, 0x0b, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0]), // record route, 2 slots
  Uint8Array.from([0x94, 0x04, 0x00, 0x00]), // router alert
  Uint8Array.from([0x44, 0x0c, 0x05, 0x00, 0, 0, 0, 0, 0, 0, 0, 0]), // timestamp
  Uint8Array.from([0x01, 0x01, 0x01, 0x00]), // NOP NOP NOP EOL
  Uint8Array.from([0x83, 0x07, 0x04, 0xc6, 0x33, 0x64, 0x01, 0x00]), // loose source route via 198.51.100.1
  Uint8Array.from([0x07, 0x00, 0x00, 0x00]), // option length 0: malformed
  Uint8Array.from([0x44, 0xff, 0x00, 0x00]), // length beyond the header
];

/**
 * Cut a packet into fragments at the given payload offsets (multiples of 8 are what a sender would
 * use; others make the fragments inconsistent, which is fine for a fuzzer). Each fragment gets the
 * full IP header (options included), MF on all but the last, and a fixed IP checksum.
 */
export function fragment(p: Buffer, cuts: readonly number[]): Buffer[] {
  const h = ihl(p);
  const total = rd16(p, IP.TOTAL_LENGTH);
  const payload = p.subarray(h, total);
  const points = [...new Set(cuts.filter((c) => c > 0 && c < payload.length))].sort((a, b) => a - b);
  const bounds = [0, ...points, payload.length];
  const out: Buffer[] = [];
  for (let i = 0; i + 1 < bounds.length; i++) {
    const start = bounds[i]!;
    const end = bounds[i + 1]!;
    const f = Buffer.alloc(h + end - start);
    p.copy(f, 0, 0, h);
    payload.copy(f, h, start, end);
    wr16(f, IP.TOTAL_LENGTH, f.length);
    const last = i + 2 === bounds.length;
    wr16(f, IP.FRAG, (last ? 0 : MF) | ((start >> 3) & 0x1fff));
    fixIpChecksum(f);
    out.push(f);
  }
  return out;
}

/** Fragment cut points every `step` bytes (rounded to 8). */
export function evenCuts(len: number, step: number): number[] {
  const s = Math.max(8, step & ~7);
  const cuts: number[] = [];
  for (let c = s; c < len; c += s) cuts.push(c);
  return cuts;
}

export interface IcmpErrorSpec {
  src: number;
  dst: number;
  type: number;
  code: number;
  quoted: Uint8Array;
  /** Quote only this many bytes (RFC 792's minimum is the IP header + 8). */
  quoteLength?: number;
  ttl?: number;
  mtu?: number;
}

export function icmpErrorPacket(s: IcmpErrorSpec): Buffer {
  const q = s.quoteLength !== undefined ? s.quoted.subarray(0, Math.min(s.quoteLength, s.quoted.length)) : s.quoted;
  const b = Buffer.alloc(ipv4IcmpErrorLength(q.length));
  emitIpv4IcmpError(b, 0, {
    src: s.src,
    dst: s.dst,
    type: s.type,
    code: s.code,
    quoted: q,
    ...(s.ttl !== undefined ? { ttl: s.ttl } : {}),
    ...(s.mtu !== undefined ? { mtu: s.mtu } : {}),
  });
  return b;
}

/**
 * What the kernel hands over with NEEDS_CSUM: the transport checksum field holds the folded
 * pseudo-header sum, not complemented, and whoever sends the packet finishes it.
 */
export function makePartial(p: Buffer): boolean {
  const at = l4ChecksumAt(p);
  const proto = protoOf(p);
  if (at < 0 || (proto !== PROTO_TCP && proto !== PROTO_UDP)) return false;
  const h = ihl(p);
  const len = rd16(p, IP.TOTAL_LENGTH) - h;
  wr16(p, at, fold16(pseudoHeaderSum(srcOf(p), dstOf(p), proto, len)));
  return true;
}

/** What the sender of a NEEDS_CSUM packet does: checksum from the transport header on, field included. */
export function completePartial(p: Buffer): void {
  const at = l4ChecksumAt(p);
  const proto = protoOf(p);
  if (at < 0 || (proto !== PROTO_TCP && proto !== PROTO_UDP)) return;
  const h = ihl(p);
  const c = internetChecksum(p, h, rd16(p, IP.TOTAL_LENGTH) - h);
  wr16(p, at, proto === PROTO_UDP && c === 0 ? 0xffff : c);
}

export interface VnetSpec {
  flags?: number;
  gsoType?: number;
  hdrLen?: number;
  gsoSize?: number;
  csumStart?: number;
  csumOffset?: number;
}

export function withVnet(p: Uint8Array, h: VnetSpec): Buffer {
  const out = Buffer.alloc(VNET_HDR_LEN + p.length);
  writeVnetHeader(out, 0, h);
  out.set(p, VNET_HDR_LEN);
  return out;
}

/** The vnet header Linux writes for a NEEDS_CSUM TCP/UDP packet (no GSO). */
export function partialVnet(p: Uint8Array): VnetSpec {
  return { flags: 1, csumStart: ihl(p), csumOffset: protoOf(p) === PROTO_TCP ? 16 : 6 };
}

export function setDontFragment(p: Uint8Array, on: boolean): void {
  const f = rd16(p, IP.FRAG);
  wr16(p, IP.FRAG, on ? f | DF : f & ~DF);
}

export function hex(p: Uint8Array): string {
  return Buffer.from(p.buffer, p.byteOffset, p.length).toString('hex');
}
