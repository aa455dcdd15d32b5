import { IPV4_OFF, IPV4_FRAG, IPPROTO, IPV4_MIN_HEADER_LENGTH } from '../wire/ipv4.js';
import { UDP_OFF, UDP_HEADER_LENGTH } from '../wire/udp.js';
import { TCP_OFF, TCP_FLAGS, TCP_MIN_HEADER_LENGTH } from '../wire/tcp.js';
import { ICMP_OFF, ICMP_HEADER_LENGTH, isErrorType, isQueryType } from '../wire/icmp.js';
import { fold16, internetChecksum, pseudoHeaderSum } from '../wire/checksum.js';
import { ipToString } from '../wire/addr.js';
import { rd16, rd32 } from '../wire/bytes.js';
import { SCTP_HEADER_LENGTH, readSctpChecksum, sctpChecksum } from '../wire/crc32c.js';
import type { PacketKey } from './filter.js';
import { protoName } from '../wire/ipv4.js';

/**
 * Reading headers for the trace and the pcap comments: what a packet looked like, field by field,
 * and which fields translation changed. Off the packet path's common case (only while a trace is
 * attached, and the full decode only for packets that are shown), so clarity wins over speed; the
 * one function called for every packet while tracing, readKey, allocates nothing.
 */

/** The protocols with ports at the start of their header (TCP, UDP, SCTP, UDP-Lite). */
function hasPorts(proto: number): boolean {
  return proto === IPPROTO.TCP || proto === IPPROTO.UDP || proto === IPPROTO.SCTP || proto === IPPROTO.UDPLITE;
}

/** Fill `k` with the packet's protocol, addresses and ports; false if it is not a whole IPv4 header. */
export function readKey(b: Uint8Array, off: number, len: number, k: PacketKey): boolean {
  k.proto = -1;
  k.src = 0;
  k.dst = 0;
  k.sport = -1;
  k.dport = -1;
  if (len < 20 || b[off]! >>> 4 !== 4) return false;
  const hl = (b[off]! & 0x0f) << 2;
  k.proto = b[off + IPV4_OFF.PROTOCOL]!;
  k.src = rd32(b, off + IPV4_OFF.SOURCE);
  k.dst = rd32(b, off + IPV4_OFF.DESTINATION);
  const frag = rd16(b, off + IPV4_OFF.FLAGS_FRAGMENT) & IPV4_FRAG.OFFSET_MASK;
  if (hasPorts(k.proto) && frag === 0 && hl + 4 <= len) {
    k.sport = rd16(b, off + hl);
    k.dport = rd16(b, off + hl + 2);
  }
  return true;
}

/** What `headerBytes` keeps of a packet that does not parse as IPv4: its first bytes, to see why. */
export const UNPARSED_SNAP = 128;
/** What an ICMP error quotes after the inner IPv4 header and is kept with it (RFC 792: 64 bits). */
const QUOTED_TRANSPORT = 8;

/**
 * How many leading bytes of a packet are headers, for `--pcap-snaplen headers`: every byte NAT reads
 * or rewrites and none of the payload. That is the IPv4 header with its options, then the transport
 * header: TCP with its options, UDP 8 bytes, ICMP 8 bytes (for an error also the IPv4 header it quotes,
 * with options, and the 8 bytes after it, which hold the quoted ports or identifier). A later fragment
 * or another protocol keeps its IPv4 header only; a packet without a whole IPv4 header keeps its first
 * UNPARSED_SNAP bytes. Never more than `len`. Allocates nothing (called per packet while capturing).
 */
export function headerBytes(b: Uint8Array, off: number, len: number): number {
  if (len < IPV4_MIN_HEADER_LENGTH || b[off]! >>> 4 !== 4) return Math.min(len, UNPARSED_SNAP);
  const hl = (b[off]! & 0x0f) << 2;
  if (hl < IPV4_MIN_HEADER_LENGTH || hl > len) return Math.min(len, UNPARSED_SNAP);
  if (rd16(b, off + IPV4_OFF.FLAGS_FRAGMENT) & IPV4_FRAG.OFFSET_MASK) return hl;
  const proto = b[off + IPV4_OFF.PROTOCOL]!;
  const l4 = off + hl;
  let n = hl;
  if (proto === IPPROTO.TCP) {
    const dataOffset = hl + TCP_OFF.DATA_OFFSET < len ? (b[l4 + TCP_OFF.DATA_OFFSET]! >>> 4) << 2 : 0;
    n += Math.max(TCP_MIN_HEADER_LENGTH, dataOffset);
  } else if (proto === IPPROTO.UDP || proto === IPPROTO.UDPLITE) {
    n += UDP_HEADER_LENGTH;
  } else if (proto === IPPROTO.SCTP) {
    n += SCTP_HEADER_LENGTH;
  } else if (proto === IPPROTO.ICMP) {
    n += ICMP_HEADER_LENGTH;
    if (hl + ICMP_OFF.QUOTED < len && isErrorType(b[l4 + ICMP_OFF.TYPE]!)) {
      n += Math.max(IPV4_MIN_HEADER_LENGTH, (b[l4 + ICMP_OFF.QUOTED]! & 0x0f) << 2) + QUOTED_TRANSPORT;
    }
  }
  return Math.min(n, len);
}

/** One packet's headers as the trace shows them. Numbers are as on the wire; checksums as numbers. */
export interface PacketInfo {
  length: number;
  protocol: string;
  src: string;
  dst: string;
  ttl: number;
  ipChecksum: number;
  /** TCP/UDP. */
  srcPort?: number;
  dstPort?: number;
  /** TCP flags as letters (S, A, F, R, P, U, E, C), e.g. "SA". */
  tcpFlags?: string;
  /** TCP/UDP/ICMP checksum (UDP: 0 means the sender computed none). */
  l4Checksum?: number;
  icmpType?: number;
  icmpCode?: number;
  /** ICMP query identifier. */
  icmpId?: number;
  /** ICMP errors: the packet they quote. */
  quoted?: { protocol: string; src: string; dst: string; srcPort?: number; dstPort?: number; icmpId?: number; ipChecksum: number };
  fragment?: boolean;
}

const FLAG_LETTERS: [number, string][] = [
  [TCP_FLAGS.SYN, 'S'], [TCP_FLAGS.ACK, 'A'], [TCP_FLAGS.FIN, 'F'], [TCP_FLAGS.RST, 'R'],
  [TCP_FLAGS.PSH, 'P'], [TCP_FLAGS.URG, 'U'], [TCP_FLAGS.ECE, 'E'], [TCP_FLAGS.CWR, 'C'],
];

export function tcpFlagLetters(flags: number): string {
  let s = '';
  for (const [bit, letter] of FLAG_LETTERS) if (flags & bit) s += letter;
  return s || '.';
}

/** Decode the headers of one IPv4 packet; null when it has no whole IPv4 header. */
export function decodePacket(b: Uint8Array, off: number, len: number): PacketInfo | null {
  if (len < 20 || b[off]! >>> 4 !== 4) return null;
  const hl = (b[off]! & 0x0f) << 2;
  if (hl < 20 || hl > len) return null;
  const total = Math.min(rd16(b, off + IPV4_OFF.TOTAL_LENGTH), len);
  const proto = b[off + IPV4_OFF.PROTOCOL]!;
  const p: PacketInfo = {
    length: total,
    protocol: protoName(proto),
    src: ipToString(rd32(b, off + IPV4_OFF.SOURCE)),
    dst: ipToString(rd32(b, off + IPV4_OFF.DESTINATION)),
    ttl: b[off + IPV4_OFF.TTL]!,
    ipChecksum: rd16(b, off + IPV4_OFF.CHECKSUM),
  };
  const fragWord = rd16(b, off + IPV4_OFF.FLAGS_FRAGMENT);
  if (fragWord & (IPV4_FRAG.MORE_FRAGMENTS | IPV4_FRAG.OFFSET_MASK)) p.fragment = true;
  if (fragWord & IPV4_FRAG.OFFSET_MASK) return p;
  const l4 = off + hl;
  const l4len = total - hl;
  if (proto === IPPROTO.UDP && l4len >= 8) {
    p.srcPort = rd16(b, l4 + UDP_OFF.SOURCE_PORT);
    p.dstPort = rd16(b, l4 + UDP_OFF.DESTINATION_PORT);
    p.l4Checksum = rd16(b, l4 + UDP_OFF.CHECKSUM);
  } else if ((proto === IPPROTO.SCTP || proto === IPPROTO.UDPLITE) && l4len >= 8) {
    // Ports where UDP has them; SCTP's CRC32c is not an Internet checksum and is not shown as one.
    p.srcPort = rd16(b, l4 + UDP_OFF.SOURCE_PORT);
    p.dstPort = rd16(b, l4 + UDP_OFF.DESTINATION_PORT);
    if (proto === IPPROTO.UDPLITE) p.l4Checksum = rd16(b, l4 + UDP_OFF.CHECKSUM);
  } else if (proto === IPPROTO.TCP && l4len >= 20) {
    p.srcPort = rd16(b, l4 + TCP_OFF.SOURCE_PORT);
    p.dstPort = rd16(b, l4 + TCP_OFF.DESTINATION_PORT);
    p.tcpFlags = tcpFlagLetters(b[l4 + TCP_OFF.FLAGS]!);
    p.l4Checksum = rd16(b, l4 + TCP_OFF.CHECKSUM);
  } else if (proto === IPPROTO.ICMP && l4len >= 8) {
    const type = b[l4 + ICMP_OFF.TYPE]!;
    p.icmpType = type;
    p.icmpCode = b[l4 + ICMP_OFF.CODE]!;
    p.l4Checksum = rd16(b, l4 + ICMP_OFF.CHECKSUM);
    if (isQueryType(type)) p.icmpId = rd16(b, l4 + ICMP_OFF.IDENTIFIER);
    else if (isErrorType(type) && l4len >= ICMP_OFF.QUOTED + 20 + 8) {
      const q = l4 + ICMP_OFF.QUOTED;
      const qhl = (b[q]! & 0x0f) << 2;
      if (b[q]! >>> 4 === 4 && qhl >= 20 && ICMP_OFF.QUOTED + qhl + 8 <= l4len) {
        const qp = b[q + IPV4_OFF.PROTOCOL]!;
        const ql4 = q + qhl;
        const quoted: NonNullable<PacketInfo['quoted']> = {
          protocol: protoName(qp),
          src: ipToString(rd32(b, q + IPV4_OFF.SOURCE)),
          dst: ipToString(rd32(b, q + IPV4_OFF.DESTINATION)),
          ipChecksum: rd16(b, q + IPV4_OFF.CHECKSUM),
        };
        if (qp === IPPROTO.UDP || qp === IPPROTO.TCP) {
          quoted.srcPort = rd16(b, ql4);
          quoted.dstPort = rd16(b, ql4 + 2);
        } else if (qp === IPPROTO.ICMP) {
          quoted.icmpId = rd16(b, ql4 + ICMP_OFF.IDENTIFIER);
        }
        p.quoted = quoted;
      }
    }
  }
  return p;
}

/** One field translation changed. Values are printable (addresses dotted, checksums 0x-hex). */
export interface FieldChange {
  field: string;
  from: string;
  to: string;
}

const hex = (n: number): string => `0x${n.toString(16).padStart(4, '0')}`;

/** The fields that differ between a packet before and after translation, in header order. */
export function diffPackets(a: PacketInfo, b: PacketInfo): FieldChange[] {
  const out: FieldChange[] = [];
  const l4 = a.protocol;
  const add = (field: string, x: unknown, y: unknown, fmt: (v: never) => string = String) => {
    if (x !== y && x !== undefined && y !== undefined) out.push({ field, from: fmt(x as never), to: fmt(y as never) });
  };
  add('ip.ttl', a.ttl, b.ttl);
  add('ip.src', a.src, b.src);
  add('ip.dst', a.dst, b.dst);
  add('ip.checksum', a.ipChecksum, b.ipChecksum, hex);
  add(`${l4}.sport`, a.srcPort, b.srcPort);
  add(`${l4}.dport`, a.dstPort, b.dstPort);
  add('icmp.id', a.icmpId, b.icmpId);
  if (a.quoted && b.quoted) {
    const qa = a.quoted;
    const qb = b.quoted;
    add('quoted.ip.src', qa.src, qb.src);
    add('quoted.ip.dst', qa.dst, qb.dst);
    add('quoted.ip.checksum', qa.ipChecksum, qb.ipChecksum, hex);
    add(`quoted.${qa.protocol}.sport`, qa.srcPort, qb.srcPort);
    add(`quoted.${qa.protocol}.dport`, qa.dstPort, qb.dstPort);
    add('quoted.icmp.id', qa.icmpId, qb.icmpId);
  }
  add(`${l4}.checksum`, a.l4Checksum, b.l4Checksum, hex);
  return out;
}

/**
 * Recompute every checksum of the packet from scratch and compare with what is stored: the trace's
 * proof that the incremental (RFC 1624) updates came out right. A UDP checksum of 0 ("none") passes.
 * With `partial` (TUN offloads: the kernel completes the transport checksum when it sends the packet
 * on) the transport field must hold the pseudo-header sum instead, not yet complemented.
 */
export function checksumsValid(b: Uint8Array, off: number, len: number, partial = false): boolean {
  if (len < 20 || b[off]! >>> 4 !== 4) return false;
  const hl = (b[off]! & 0x0f) << 2;
  const total = rd16(b, off + IPV4_OFF.TOTAL_LENGTH);
  if (hl < 20 || total > len || hl > total) return false;
  if (internetChecksum(b, off, hl) !== 0) return false;
  if (rd16(b, off + IPV4_OFF.FLAGS_FRAGMENT) & (IPV4_FRAG.MORE_FRAGMENTS | IPV4_FRAG.OFFSET_MASK)) return true;
  const proto = b[off + IPV4_OFF.PROTOCOL]!;
  const l4 = off + hl;
  const l4len = total - hl;
  const src = rd32(b, off + IPV4_OFF.SOURCE);
  const dst = rd32(b, off + IPV4_OFF.DESTINATION);
  if (proto === IPPROTO.UDP || proto === IPPROTO.TCP) {
    const field = proto === IPPROTO.UDP ? UDP_OFF.CHECKSUM : TCP_OFF.CHECKSUM;
    if (l4len < field + 2) return false;
    if (partial) return rd16(b, l4 + field) === fold16(pseudoHeaderSum(src, dst, proto, l4len));
    if (proto === IPPROTO.UDP && rd16(b, l4 + field) === 0) return true;
    return internetChecksum(b, l4, l4len, pseudoHeaderSum(src, dst, proto, l4len)) === 0;
  }
  if (proto === IPPROTO.ICMP) return l4len >= 8 && internetChecksum(b, l4, l4len) === 0;
  if (proto === IPPROTO.UDPLITE) {
    // RFC 3828: the pseudo-header (with the IP payload length) and the first `coverage` bytes (0: all).
    if (l4len < 8) return false;
    const cov = rd16(b, l4 + 4) || l4len;
    return cov <= l4len && internetChecksum(b, l4, cov, pseudoHeaderSum(src, dst, proto, l4len)) === 0;
  }
  if (proto === IPPROTO.SCTP) return l4len >= SCTP_HEADER_LENGTH && sctpChecksum(b, l4, l4len) === readSctpChecksum(b, l4);
  return true;
}
