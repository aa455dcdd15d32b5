import { Ipv4Verdict, IPPROTO, IPV4_OFF, IPV4_MIN_HEADER_LENGTH } from '../wire/ipv4.js';
import { IcmpVerdict, ICMP_OFF, isQueryRequestType, isQueryType } from '../wire/icmp.js';
import { UDP_OFF } from '../wire/udp.js';
import { rd16, rd32 } from '../wire/bytes.js';
import { l4ChecksumOffset, rewriteIcmpIdentifier, rewriteIpv4Header, rewritePorts, rewriteTransportEndpoints } from '../wire/rewrite.js';
import type { NatContext } from './context.js';
import { DropReason, Path } from './outcome.js';

/**
 * ICMP errors (RFC 5508 §4.2; RFC 792): "destination unreachable", "time exceeded" and the like quote
 * the start of the packet that caused them. The error belongs to that packet's flow, and it travels
 * against it: so the flow is found by the inverse of the quoted tuple, and then the quoted packet is put
 * into the form its receiver sent it in, by the very same rewrite a packet of the flow gets
 * (wire/rewrite.ts) — addresses, ports or identifier, and their checksums — applied to the quoted headers.
 * The outer header follows. Errors never create, refresh or remove a flow.
 *
 * The quote is usually cut short (RFC 792 asks for 8 bytes of it), so it is read through wrapQuoted,
 * which accepts a packet shorter than its total length, and the quoted transport checksum is patched
 * only if it was quoted at all.
 */

/** What of the quoted transport header an error must carry: RFC 792's 8 bytes (ports, or the identifier). */
const QUOTE_MIN_L4 = 8;

/** Translate the ICMP error in hand; `fromInside`: it came from the LAN side. */
export function translateIcmpError(nat: NatContext, buf: Uint8Array, fromInside: boolean, total: number, now: number): number {
  const icmp = nat.icmp;
  if (!icmp.verifyChecksum()) return nat.drop(DropReason.CHECKSUM);
  const quoted = nat.innerIp;
  if (quoted.wrapQuoted(buf, icmp.innerOffset, icmp.innerLength) !== Ipv4Verdict.OK || quoted.payloadLength < QUOTE_MIN_L4) {
    return nat.drop(DropReason.MALFORMED);
  }
  // RFC 5508 REQ-3: a quoted IP header with a bad checksum makes the whole error suspect. (The quoted
  // transport checksum is not checked: the quote is usually cut short, REQ-3c.)
  if (!quoted.verifyChecksum()) return nat.drop(DropReason.CHECKSUM);

  // The quoted packet's tuple, with an ICMP query's identifier as the querying side's "port".
  const qproto = quoted.protocol;
  const qsrc = quoted.sourceAddress;
  const qdst = quoted.destinationAddress;
  const ql4 = quoted.payloadOffset;
  let qsport: number;
  let qdport: number;
  let quotedRequest = false;
  if (qproto === IPPROTO.UDP || qproto === IPPROTO.TCP || qproto === IPPROTO.SCTP || qproto === IPPROTO.UDPLITE) {
    // The ports are at the same offsets in all four headers, inside the 8 bytes every quote has.
    qsport = rd16(buf, ql4 + UDP_OFF.SOURCE_PORT);
    qdport = rd16(buf, ql4 + UDP_OFF.DESTINATION_PORT);
  } else if (qproto === IPPROTO.ICMP) {
    const qtype = buf[ql4 + ICMP_OFF.TYPE]!;
    if (!isQueryType(qtype)) return fromInside ? nat.drop(DropReason.NO_MAPPING) : nat.toGateway(total);
    quotedRequest = isQueryRequestType(qtype);
    const id = rd16(buf, ql4 + ICMP_OFF.IDENTIFIER);
    qsport = quotedRequest ? id : 0;
    qdport = quotedRequest ? 0 : id;
  } else {
    // Any other protocol is tracked by address only (generic.ts): its flow's ports are 0, and only the
    // quoted IP header is rewritten.
    qsport = 0;
    qdport = 0;
  }

  // The error travels against the quoted packet: look up the inverse of the quoted tuple.
  const flows = nat.flows;
  const e = flows.lookup(qproto, qdst, qsrc, qdport, qsport, now);
  if (e < 0) return fromInside ? nat.drop(DropReason.NO_MAPPING) : nat.toGateway(total);
  // An error goes to the sender of the packet it quotes (RFC 792), and it travels the way the flow's
  // side it comes from sends: from inside only along a tuple whose source is inside, from outside only
  // along one whose source is outside. Anything else is forged, and translating it would carry a LAN
  // address out in the quote.
  const ip = nat.ip;
  if (ip.destinationAddress !== qsrc || nat.isInternal(flows.tSrc[e]!) !== fromInside) {
    return nat.drop(DropReason.NOT_OURS);
  }
  nat.lastEntry = e;

  // The quoted packet travelled in the other direction: give it that direction's tuple as its receiver
  // (the one this error goes to) knows it.
  const qe = e ^ 1;
  const nqsrc = flows.tSrc[qe]!;
  const nqdst = flows.tDst[qe]!;
  if (qproto === IPPROTO.ICMP) {
    rewriteIcmpIdentifier(buf, ql4, false, quotedRequest ? flows.tSport[qe]! : flows.tDport[qe]!);
  } else if (qproto === IPPROTO.SCTP) {
    // SCTP's CRC32c covers the whole SCTP packet, and a quote is cut short: it cannot be computed again,
    // so only the ports are put back (Linux leaves it too). Receivers match the error by the ports and
    // the verification tag, not by the quoted checksum.
    rewritePorts(buf, ql4, flows.tSport[qe]!, flows.tDport[qe]!);
  } else if (qproto === IPPROTO.UDP || qproto === IPPROTO.TCP || qproto === IPPROTO.UDPLITE) {
    // (UDP-Lite's checksum sits where UDP's does, and covers the pseudo-header and ports like it.)
    const nqsport = flows.tSport[qe]!;
    const nqdport = flows.tDport[qe]!;
    if (quoted.payloadLength >= l4ChecksumOffset(qproto) + 2) {
      rewriteTransportEndpoints(buf, ql4, qproto, false, qsrc, qdst, qsport, qdport, nqsrc, nqdst, nqsport, nqdport);
    } else {
      rewritePorts(buf, ql4, nqsport, nqdport); // the quote ends before the checksum field
    }
  }
  rewriteIpv4Header(buf, quoted.off, qsrc, qdst, nqsrc, nqdst, false); // a quote keeps the TTL it was sent with

  // The outer header: whichever address named the translated side follows it.
  const osrc = ip.sourceAddress;
  const odst = ip.destinationAddress;
  const ndst = odst === qsrc ? nqsrc : odst;
  let nsrc = osrc;
  if (osrc === qdst && nqdst !== qdst) nsrc = nqdst;
  else if (fromInside && !nat.isInternal(ndst) && !nat.isPublic(osrc)) {
    // An error from another LAN device (a router, a firewall) about a flow leaving through the NAT leaves
    // with the flow's public address as its source, like any other packet of that flow (Linux SNATs it too).
    nsrc = nqdst;
  }
  rewriteIpv4Header(buf, ip.off, osrc, odst, nsrc, ndst, true);
  // The quote changed in the middle of the message: an error is rare enough to sum again in full, as
  // Linux does (nf_nat_icmp_reply_translation).
  icmp.fillChecksum();
  nat.stats.icmpErrorsTranslated++;
  const path = fromInside ? (nat.isPublic(odst) ? Path.HAIRPIN : Path.OUTBOUND) : Path.INBOUND;
  return nat.countForward(path, total);
}

/**
 * ICMP the gateway itself sends towards the WAN (the routing sends it through the TUN: rule 998). An error
 * about a packet tunnat translated inbound (the gateway could not deliver it into the LAN: no ARP answer,
 * too big, …) quotes it as it left tunnat, with the LAN address: restore the quote to the public side, as
 * an error from the LAN side of that flow would be. An error quoting a LAN address that no flow explains
 * is dropped; everything else (the gateway's echo replies and requests, errors about its own traffic)
 * passes unchanged.
 */
export function gatewayIcmp(nat: NatContext, buf: Uint8Array, now: number, total: number): number {
  const ip = nat.ip;
  const icmp = nat.icmp;
  if (ip.isFragment || icmp.wrap(buf, ip.payloadOffset, ip.payloadLength) !== IcmpVerdict.OK) {
    return nat.drop(DropReason.NOT_OURS);
  }
  if (icmp.isError) {
    const q = icmp.innerOffset;
    const quotesLan = icmp.innerLength >= IPV4_MIN_HEADER_LENGTH &&
      (nat.isInternal(rd32(buf, q + IPV4_OFF.SOURCE)) || nat.isInternal(rd32(buf, q + IPV4_OFF.DESTINATION)));
    if (quotesLan) return translateIcmpError(nat, buf, true, total, now);
  }
  // forward() gives back the hop the way out of the TUN will take: the gateway is this packet's source,
  // not a router on its path, so it leaves with the TTL it was made with.
  return nat.forward(Path.LOCAL, total);
}
