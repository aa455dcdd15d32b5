/**
 * Packet emitters: the "plain object → bytes" half of each header. They write a complete IPv4
 * packet with correct checksums into a caller-provided buffer at an offset and return its length,
 * so the router can build packets (ICMP errors, TCP resets) in a preallocated slot without
 * allocating. Every byte of the returned range is written; nothing outside it is touched.
 *
 * A buffer too small for the packet, or a packet over 65535 bytes, is a bug in the caller and
 * throws RangeError before anything is written.
 *
 * The allocating wrappers at the end (udpPacket, tcpPacket, icmpEcho, icmpError) are for tests
 * and tools, not for the data path.
 */
import { internetChecksum, pseudoHeaderSum } from './checksum.js';
import { wr16, wr32 } from './bytes.js';
import { ICMP_HEADER_LENGTH, ICMP_OFF, ICMP_TYPE, ICMP_UNREACH_CODE } from './icmp.js';
import { IPPROTO, IPV4_FRAG, IPV4_MIN_HEADER_LENGTH, IPV4_OFF } from './ipv4.js';
import { TCP_MIN_HEADER_LENGTH, TCP_OFF, TCP_OPTION } from './tcp.js';
import { UDP_HEADER_LENGTH, UDP_OFF } from './udp.js';

/** Fields of the IPv4 header common to every emitter. */
export interface Ipv4EmitOptions {
  src: number;
  dst: number;
  /** Default 64 (Linux's default TTL). */
  ttl?: number;
  /** Identification; default 0. */
  id?: number;
  /** Default false. */
  dontFragment?: boolean;
  /** DSCP/ECN byte; default 0. */
  dscpEcn?: number;
}

export interface UdpEmitOptions extends Ipv4EmitOptions {
  srcPort: number;
  dstPort: number;
  payload: Uint8Array;
  /** false stores 0 ("no checksum", RFC 768); default true. */
  checksum?: boolean;
}

export interface TcpEmitOptions extends Ipv4EmitOptions {
  srcPort: number;
  dstPort: number;
  seq: number;
  ack: number;
  /** TCP_FLAGS bits. */
  flags: number;
  /** Default 65535. */
  window?: number;
  urgentPointer?: number;
  payload?: Uint8Array;
  /** Adds an MSS option (the header grows to 24 bytes). */
  mss?: number;
}

export interface IcmpEchoEmitOptions extends Ipv4EmitOptions {
  type: 0 | 8;
  identifier: number;
  sequence: number;
  payload?: Uint8Array;
}

export interface IcmpErrorEmitOptions extends Ipv4EmitOptions {
  /** An error type: 3, 4, 5, 11 or 12. */
  type: number;
  code: number;
  /** The offending packet from its IP header on; quoted as far as RFC 1812 allows. */
  quoted: Uint8Array;
  /** Next-hop MTU, for destination unreachable / fragmentation needed (RFC 1191). */
  mtu?: number;
  /** Octet pointer, for parameter problem. */
  pointer?: number;
  /** Gateway address, for redirect. */
  gateway?: number;
}

export const DEFAULT_TTL = 64;
const DEFAULT_WINDOW = 65535;
const IPV4_MAX_TOTAL_LENGTH = 65535;
const MSS_OPTION_LENGTH = 4;

/** RFC 1812 4.3.2.3: an ICMP error, IP header included, should not exceed 576 bytes. */
export const ICMP_ERROR_MAX_LENGTH = 576;

function checkRoom(buf: Uint8Array, off: number, total: number): void {
  if (total > IPV4_MAX_TOTAL_LENGTH) throw new RangeError(`IPv4 packet of ${total} bytes exceeds 65535`);
  if (off >>> 0 !== off || off + total > buf.length) {
    throw new RangeError(`packet of ${total} bytes at offset ${off} does not fit a buffer of ${buf.length}`);
  }
}

/**
 * Writes an option-less IPv4 header (20 bytes) with its checksum at `off`.
 * `totalLength` is header + payload; the payload is the caller's to write.
 */
export function emitIpv4Header(
  buf: Uint8Array,
  off: number,
  opts: Ipv4EmitOptions & { protocol: number; totalLength: number },
): number {
  checkRoom(buf, off, IPV4_MIN_HEADER_LENGTH);
  writeIpv4Header(buf, off, opts, opts.protocol, opts.totalLength);
  return IPV4_MIN_HEADER_LENGTH;
}

// Protocol and length as arguments rather than merged into opts: merging would allocate.
function writeIpv4Header(buf: Uint8Array, off: number, opts: Ipv4EmitOptions, protocol: number, totalLength: number): void {
  buf[off + IPV4_OFF.VERSION_IHL] = 0x45;
  buf[off + IPV4_OFF.DSCP_ECN] = opts.dscpEcn ?? 0;
  wr16(buf, off + IPV4_OFF.TOTAL_LENGTH, totalLength);
  wr16(buf, off + IPV4_OFF.IDENTIFICATION, opts.id ?? 0);
  wr16(buf, off + IPV4_OFF.FLAGS_FRAGMENT, opts.dontFragment === true ? IPV4_FRAG.DONT_FRAGMENT : 0);
  buf[off + IPV4_OFF.TTL] = opts.ttl ?? DEFAULT_TTL;
  buf[off + IPV4_OFF.PROTOCOL] = protocol;
  wr16(buf, off + IPV4_OFF.CHECKSUM, 0);
  wr32(buf, off + IPV4_OFF.SOURCE, opts.src);
  wr32(buf, off + IPV4_OFF.DESTINATION, opts.dst);
  wr16(buf, off + IPV4_OFF.CHECKSUM, internetChecksum(buf, off, IPV4_MIN_HEADER_LENGTH));
}

export function ipv4UdpLength(payloadLength: number): number {
  return IPV4_MIN_HEADER_LENGTH + UDP_HEADER_LENGTH + payloadLength;
}

export function emitIpv4Udp(buf: Uint8Array, off: number, opts: UdpEmitOptions): number {
  const ulen = UDP_HEADER_LENGTH + opts.payload.length;
  const total = IPV4_MIN_HEADER_LENGTH + ulen;
  checkRoom(buf, off, total);
  writeIpv4Header(buf, off, opts, IPPROTO.UDP, total);
  const u = off + IPV4_MIN_HEADER_LENGTH;
  wr16(buf, u + UDP_OFF.SOURCE_PORT, opts.srcPort);
  wr16(buf, u + UDP_OFF.DESTINATION_PORT, opts.dstPort);
  wr16(buf, u + UDP_OFF.LENGTH, ulen);
  wr16(buf, u + UDP_OFF.CHECKSUM, 0);
  buf.set(opts.payload, u + UDP_OFF.DATA);
  if (opts.checksum !== false) {
    const c = internetChecksum(buf, u, ulen, pseudoHeaderSum(opts.src >>> 0, opts.dst >>> 0, IPPROTO.UDP, ulen));
    // A computed 0 is sent as 0xffff: 0 would mean "no checksum" (RFC 768).
    wr16(buf, u + UDP_OFF.CHECKSUM, c || 0xffff);
  }
  return total;
}

export function ipv4TcpLength(payloadLength: number, withMss: boolean): number {
  return IPV4_MIN_HEADER_LENGTH + TCP_MIN_HEADER_LENGTH + (withMss ? MSS_OPTION_LENGTH : 0) + payloadLength;
}

export function emitIpv4Tcp(buf: Uint8Array, off: number, opts: TcpEmitOptions): number {
  const hlen = TCP_MIN_HEADER_LENGTH + (opts.mss === undefined ? 0 : MSS_OPTION_LENGTH);
  const plen = opts.payload?.length ?? 0;
  const slen = hlen + plen;
  const total = IPV4_MIN_HEADER_LENGTH + slen;
  checkRoom(buf, off, total);
  writeIpv4Header(buf, off, opts, IPPROTO.TCP, total);
  const t = off + IPV4_MIN_HEADER_LENGTH;
  wr16(buf, t + TCP_OFF.SOURCE_PORT, opts.srcPort);
  wr16(buf, t + TCP_OFF.DESTINATION_PORT, opts.dstPort);
  wr32(buf, t + TCP_OFF.SEQUENCE, opts.seq);
  wr32(buf, t + TCP_OFF.ACKNOWLEDGMENT, opts.ack);
  buf[t + TCP_OFF.DATA_OFFSET] = (hlen >>> 2) << 4;
  buf[t + TCP_OFF.FLAGS] = opts.flags;
  wr16(buf, t + TCP_OFF.WINDOW, opts.window ?? DEFAULT_WINDOW);
  wr16(buf, t + TCP_OFF.CHECKSUM, 0);
  wr16(buf, t + TCP_OFF.URGENT_POINTER, opts.urgentPointer ?? 0);
  if (opts.mss !== undefined) {
    buf[t + TCP_OFF.OPTIONS] = TCP_OPTION.MSS;
    buf[t + TCP_OFF.OPTIONS + 1] = MSS_OPTION_LENGTH;
    wr16(buf, t + TCP_OFF.OPTIONS + 2, opts.mss);
  }
  if (opts.payload !== undefined) buf.set(opts.payload, t + hlen);
  wr16(
    buf,
    t + TCP_OFF.CHECKSUM,
    internetChecksum(buf, t, slen, pseudoHeaderSum(opts.src >>> 0, opts.dst >>> 0, IPPROTO.TCP, slen)),
  );
  return total;
}

export function ipv4IcmpEchoLength(payloadLength: number): number {
  return IPV4_MIN_HEADER_LENGTH + ICMP_HEADER_LENGTH + payloadLength;
}

export function emitIpv4IcmpEcho(buf: Uint8Array, off: number, opts: IcmpEchoEmitOptions): number {
  const mlen = ICMP_HEADER_LENGTH + (opts.payload?.length ?? 0);
  const total = IPV4_MIN_HEADER_LENGTH + mlen;
  checkRoom(buf, off, total);
  writeIpv4Header(buf, off, opts, IPPROTO.ICMP, total);
  const m = off + IPV4_MIN_HEADER_LENGTH;
  buf[m + ICMP_OFF.TYPE] = opts.type;
  buf[m + ICMP_OFF.CODE] = 0;
  wr16(buf, m + ICMP_OFF.CHECKSUM, 0);
  wr16(buf, m + ICMP_OFF.IDENTIFIER, opts.identifier);
  wr16(buf, m + ICMP_OFF.SEQUENCE, opts.sequence);
  if (opts.payload !== undefined) buf.set(opts.payload, m + ICMP_HEADER_LENGTH);
  wr16(buf, m + ICMP_OFF.CHECKSUM, internetChecksum(buf, m, mlen));
  return total;
}

/**
 * How many bytes of an offending packet an ICMP error quotes: as much as fits in 576 bytes
 * (RFC 1812 4.3.2.3), which is more than RFC 792's "IP header + 64 bits" and lets the sender
 * see the whole transport header even with IP options.
 */
export function icmpErrorQuoteLength(quotedLength: number): number {
  return Math.min(quotedLength, ICMP_ERROR_MAX_LENGTH - IPV4_MIN_HEADER_LENGTH - ICMP_HEADER_LENGTH);
}

export function ipv4IcmpErrorLength(quotedLength: number): number {
  return IPV4_MIN_HEADER_LENGTH + ICMP_HEADER_LENGTH + icmpErrorQuoteLength(quotedLength);
}

export function emitIpv4IcmpError(buf: Uint8Array, off: number, opts: IcmpErrorEmitOptions): number {
  const qlen = icmpErrorQuoteLength(opts.quoted.length);
  const mlen = ICMP_HEADER_LENGTH + qlen;
  const total = IPV4_MIN_HEADER_LENGTH + mlen;
  checkRoom(buf, off, total);
  writeIpv4Header(buf, off, opts, IPPROTO.ICMP, total);
  const m = off + IPV4_MIN_HEADER_LENGTH;
  buf[m + ICMP_OFF.TYPE] = opts.type;
  buf[m + ICMP_OFF.CODE] = opts.code;
  wr16(buf, m + ICMP_OFF.CHECKSUM, 0);
  // The second word of an error header is "unused" (zero) except for these three layouts.
  wr32(buf, m + 4, 0);
  if (opts.type === ICMP_TYPE.DEST_UNREACH && opts.code === ICMP_UNREACH_CODE.FRAG_NEEDED) {
    wr16(buf, m + ICMP_OFF.NEXT_HOP_MTU, opts.mtu ?? 0);
  } else if (opts.type === ICMP_TYPE.PARAM_PROBLEM) {
    buf[m + ICMP_OFF.POINTER] = opts.pointer ?? 0;
  } else if (opts.type === ICMP_TYPE.REDIRECT) {
    wr32(buf, m + 4, opts.gateway ?? 0);
  }
  // A byte loop, not set(subarray(...)): subarray would allocate, and the quote is at most 548 bytes.
  const q = opts.quoted;
  const dst = m + ICMP_OFF.QUOTED;
  for (let i = 0; i < qlen; i++) buf[dst + i] = q[i]!;
  wr16(buf, m + ICMP_OFF.CHECKSUM, internetChecksum(buf, m, mlen));
  return total;
}

// Allocating wrappers for tests and tools.

export function udpPacket(opts: UdpEmitOptions): Buffer {
  const b = Buffer.alloc(ipv4UdpLength(opts.payload.length));
  emitIpv4Udp(b, 0, opts);
  return b;
}

export function tcpPacket(opts: TcpEmitOptions): Buffer {
  const b = Buffer.alloc(ipv4TcpLength(opts.payload?.length ?? 0, opts.mss !== undefined));
  emitIpv4Tcp(b, 0, opts);
  return b;
}

export function icmpEcho(opts: IcmpEchoEmitOptions): Buffer {
  const b = Buffer.alloc(ipv4IcmpEchoLength(opts.payload?.length ?? 0));
  emitIpv4IcmpEcho(b, 0, opts);
  return b;
}

export function icmpError(opts: IcmpErrorEmitOptions): Buffer {
  const b = Buffer.alloc(ipv4IcmpErrorLength(opts.quoted.length));
  emitIpv4IcmpError(b, 0, opts);
  return b;
}
