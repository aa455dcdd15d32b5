import { IPV4_OFF, IPPROTO } from './ipv4.js';
import { TCP_OFF } from './tcp.js';
import { UDP_OFF } from './udp.js';
import { ICMP_OFF } from './icmp.js';
import { rd16, wr16, wr32 } from './bytes.js';
import { csumApply, csumDiff16, csumDiff32, csumUpdate32 } from './checksum.js';

/**
 * In-place rewrites of the fields a NAT changes — addresses, ports, ICMP identifiers, the TTL — with
 * the checksums patched incrementally (RFC 1624), never recomputed. They work at raw offsets, below the
 * views, because the same rewrite serves three kinds of bytes: a whole packet the views validated, a
 * first fragment (whose UDP length counts bytes still to come), and the packet quoted inside an ICMP
 * error (usually cut short, so its transport checksum may not even be there: `end` says what is).
 *
 * A checksum can arrive in two forms, and the choice between them is made here, once:
 * - full (the usual case): the field holds the finished checksum; every changed word is patched in.
 * - partial (virtio NEEDS_CSUM, from TUN offloads): the field holds only the pseudo-header sum, not yet
 *   complemented, and whoever sends the packet on completes it over the header and data. A new address
 *   changes the pseudo-header, so it is added into that sum; a new port is data the final checksum will
 *   cover anyway, so it changes nothing in the field.
 */

/** Offset of the checksum field in a TCP, UDP or UDP-Lite header (UDP-Lite's sits where UDP's does). */
export function l4ChecksumOffset(proto: number): number {
  return proto === IPPROTO.TCP ? TCP_OFF.CHECKSUM : UDP_OFF.CHECKSUM;
}

/**
 * Give a TCP or UDP header new addresses (through its pseudo-header) and ports. `l4` is where the header
 * starts (TCP and UDP put their ports at the same offsets); its checksum field must be present (a quote
 * cut short before it takes rewritePorts instead). UDP's checksum 0 ("none", RFC 768) stays 0, and a
 * computed 0 is sent as 0xffff.
 *
 * Kept to a two-way choice so V8 inlines it into the fast path; each form is a function of its own,
 * small enough to be inlined there too.
 */
export function rewriteTransportEndpoints(
  buf: Uint8Array, l4: number, proto: number, partial: boolean,
  src: number, dst: number, sport: number, dport: number,
  nsrc: number, ndst: number, nsport: number, ndport: number,
): void {
  if (partial) rewriteTransportPartial(buf, l4, proto, src, dst, nsrc, ndst, nsport, ndport);
  else rewriteTransportFull(buf, l4, proto, src, dst, sport, dport, nsrc, ndst, nsport, ndport);
}

/** The full form: every changed word is patched into the finished checksum (RFC 1624 eqn. 3, summed). */
function rewriteTransportFull(
  buf: Uint8Array, l4: number, proto: number,
  src: number, dst: number, sport: number, dport: number,
  nsrc: number, ndst: number, nsport: number, ndport: number,
): void {
  const at = l4 + l4ChecksumOffset(proto);
  // Read before the ports are written: the load then need not wait for those stores.
  const c = rd16(buf, at);
  let diffs = 0;
  if (nsport !== sport) {
    wr16(buf, l4 + UDP_OFF.SOURCE_PORT, nsport);
    diffs += csumDiff16(sport, nsport);
  }
  if (ndport !== dport) {
    wr16(buf, l4 + UDP_OFF.DESTINATION_PORT, ndport);
    diffs += csumDiff16(dport, ndport);
  }
  if (nsrc !== src) diffs += csumDiff32(src, nsrc);
  if (ndst !== dst) diffs += csumDiff32(dst, ndst);
  if (diffs === 0 || (proto === IPPROTO.UDP && c === 0)) return; // nothing changed, or UDP without a checksum
  let n = csumApply(c, diffs);
  if (proto === IPPROTO.UDP && n === 0) n = 0xffff;
  wr16(buf, at, n);
}

/** The partial form: new addresses are added into the pseudo-header sum; the ports need nothing there. */
function rewriteTransportPartial(
  buf: Uint8Array, l4: number, proto: number,
  src: number, dst: number, nsrc: number, ndst: number, nsport: number, ndport: number,
): void {
  wr16(buf, l4 + UDP_OFF.SOURCE_PORT, nsport);
  wr16(buf, l4 + UDP_OFF.DESTINATION_PORT, ndport);
  if (nsrc === src && ndst === dst) return;
  const at = l4 + l4ChecksumOffset(proto);
  let sum = ~rd16(buf, at) & 0xffff;
  if (nsrc !== src) sum = csumUpdate32(sum, src, nsrc);
  if (ndst !== dst) sum = csumUpdate32(sum, dst, ndst);
  wr16(buf, at, ~sum & 0xffff);
}

/**
 * Only the ports of a TCP or UDP header: for a header quoted inside an ICMP error that was cut short
 * before its checksum field (RFC 792 promises only 8 bytes of it, and TCP's checksum lies beyond).
 */
export function rewritePorts(buf: Uint8Array, l4: number, nsport: number, ndport: number): void {
  wr16(buf, l4 + UDP_OFF.SOURCE_PORT, nsport);
  wr16(buf, l4 + UDP_OFF.DESTINATION_PORT, ndport);
}

/**
 * Give an ICMP query (echo, timestamp) a new identifier. ICMP has no pseudo-header, so the addresses do
 * not enter its checksum; a partial checksum is completed later over the new bytes.
 */
export function rewriteIcmpIdentifier(buf: Uint8Array, icmp: number, partial: boolean, id: number): void {
  const at = icmp + ICMP_OFF.IDENTIFIER;
  const old = rd16(buf, at);
  if (old === id) return;
  wr16(buf, at, id);
  if (partial) return;
  const c = icmp + ICMP_OFF.CHECKSUM;
  wr16(buf, c, csumApply(rd16(buf, c), csumDiff16(old, id)));
}

/**
 * Give an IPv4 header new addresses and, when `hopBack` is set and the TTL has room, one more hop of TTL;
 * one checksum update for all of it. A packet the gateway routes into the TUN and out again is routed
 * twice, so tunnat gives back one hop and the gateway counts as one. A header quoted inside an ICMP error
 * keeps its TTL: it records the packet as it was.
 */
export function rewriteIpv4Header(buf: Uint8Array, ip: number, src: number, dst: number, nsrc: number, ndst: number, hopBack: boolean): void {
  let diffs = 0;
  if (nsrc !== src) {
    wr32(buf, ip + IPV4_OFF.SOURCE, nsrc);
    diffs += csumDiff32(src, nsrc);
  }
  if (ndst !== dst) {
    wr32(buf, ip + IPV4_OFF.DESTINATION, ndst);
    diffs += csumDiff32(dst, ndst);
  }
  const ttl = buf[ip + IPV4_OFF.TTL]!;
  if (hopBack && ttl < 255) {
    // TTL shares its 16-bit word with the protocol byte.
    const old = (ttl << 8) | buf[ip + IPV4_OFF.TTL + 1]!;
    buf[ip + IPV4_OFF.TTL] = ttl + 1;
    diffs += csumDiff16(old, old + 0x100);
  }
  if (diffs !== 0) wr16(buf, ip + IPV4_OFF.CHECKSUM, csumApply(rd16(buf, ip + IPV4_OFF.CHECKSUM), diffs));
}
