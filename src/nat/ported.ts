import { IPPROTO } from '../wire/ipv4.js';
import { rd16, wr16 } from '../wire/bytes.js';
import { UDP_OFF } from '../wire/udp.js';
import { rewriteIpv4Header, rewriteTransportEndpoints } from '../wire/rewrite.js';
import { SCTP_HEADER_LENGTH, readSctpChecksum, sctpChecksum, sctpChunkMask, writeSctpChecksum } from '../wire/crc32c.js';
import { DIR_REPLY, FLOW_ASSURED, FLOW_SEEN_REPLY } from '../conntrack/table.js';
import { SctpState, sctpFirstState, sctpMayCreate, sctpStep, sctpTimeout } from '../conntrack/sctp.js';
import type { NatContext } from './context.js';
import { setUpFlow } from './new-flow.js';
import { DropReason, Path, Setup } from './outcome.js';

/**
 * The two port-carrying protocols beyond TCP and UDP, translated like UDP (endpoint-independent
 * mappings from their own port pools, the same filtering, forwards and refusals) but out of line from
 * Translator.translate(), whose TCP/UDP/ICMP path must not grow for them:
 *
 * - UDP-Lite (RFC 3828, protocol 136): UDP's header, with the length field replaced by the checksum
 *   coverage. The checksum is mandatory (0 is invalid: dropped as CHECKSUM) and always covers the
 *   pseudo-header and the ports, so the incremental update UDP gets is exact whatever the coverage.
 * - SCTP (RFC 9260, protocol 132): ports at 0 and 2, then the verification tag and a CRC32c over the
 *   whole SCTP packet, which cannot be patched: it is checked (a corrupted packet must not leave with a
 *   fresh, valid CRC) and computed again after the ports change. That needs the whole packet, so a
 *   fragmented SCTP packet is dropped as FRAGMENT (SCTP sizes its packets to the path MTU and is
 *   rarely fragmented; reassembling just for it is not worth the memory). The association's state
 *   (conntrack/sctp.ts) sets the timer.
 */

/** UDP-Lite's checksum coverage field (RFC 3828 §3.1), where UDP has its length. */
const UDPLITE_COVERAGE = 4;

export function translatePorted(
  nat: NatContext, buf: Uint8Array, proto: number, src: number, dst: number, fromInside: boolean, toPublic: boolean,
  firstFragment: boolean, now: number,
): number {
  const ip = nat.ip;
  const total = ip.totalLength;
  const l4 = ip.off + ip.headerLength;
  const l4len = total - ip.headerLength;
  const sctp = proto === IPPROTO.SCTP;
  let chunks = 0;
  if (sctp) {
    if (firstFragment) return nat.drop(DropReason.FRAGMENT);
    if (l4len < SCTP_HEADER_LENGTH) return nat.drop(DropReason.MALFORMED);
    chunks = sctpChunkMask(buf, l4, l4len);
    if (chunks < 0) return nat.drop(DropReason.MALFORMED);
    if (sctpChecksum(buf, l4, l4len) !== readSctpChecksum(buf, l4)) return nat.drop(DropReason.CHECKSUM);
  } else {
    if (l4len < 8) return nat.drop(DropReason.MALFORMED);
    // Coverage 0 means the whole datagram; otherwise at least the header and no more than there is. A
    // first fragment's coverage may reach into later fragments.
    const cov = rd16(buf, l4 + UDPLITE_COVERAGE);
    if (cov !== 0 && (cov < 8 || (!firstFragment && cov > l4len))) return nat.drop(DropReason.MALFORMED);
    if (rd16(buf, l4 + UDP_OFF.CHECKSUM) === 0) return nat.drop(DropReason.CHECKSUM);
  }
  const sport = rd16(buf, l4 + UDP_OFF.SOURCE_PORT);
  const dport = rd16(buf, l4 + UDP_OFF.DESTINATION_PORT);

  const flows = nat.flows;
  let e = flows.lookup(proto, src, dst, sport, dport, now);
  if (e < 0) {
    if (sctp && !sctpMayCreate(chunks)) {
      if (!fromInside && nat.gatewayOwnsPort(proto, dport, dst)) return nat.toGateway(total);
      return nat.drop(DropReason.NO_MAPPING);
    }
    const setup = setUpFlow(nat, buf, proto, src, dst, sport, dport, fromInside, toPublic, now);
    if (setup === Setup.TO_GATEWAY) return nat.toGateway(total);
    if (setup === Setup.REFUSED) return nat.drop(nat.setupReason);
    e = nat.setupEntry;
    if (sctp) flows.state[e >> 1] = sctpFirstState(chunks);
  }
  const flow = e >> 1;
  const dir = e & 1;
  nat.lastEntry = e;

  let timeout: number;
  const firstReply = dir === DIR_REPLY && !(flows.flags[flow]! & FLOW_SEEN_REPLY);
  if (firstReply) flows.flags[flow] = flows.flags[flow]! | FLOW_SEEN_REPLY;
  if (sctp) {
    const before = flows.state[flow]!;
    const replied = (flows.flags[flow]! & FLOW_SEEN_REPLY) !== 0;
    const after = sctpStep(before, chunks, dir as 0 | 1, replied);
    if (after !== before) {
      flows.state[flow] = after;
      if (after === SctpState.ESTABLISHED) flows.flags[flow] = flows.flags[flow]! | FLOW_ASSURED;
      for (const ob of nat.observers) ob.updated?.(flow, before, now);
    } else if (firstReply) {
      for (const ob of nat.observers) ob.updated?.(flow, before, now);
    }
    timeout = sctpTimeout(after, nat.timeouts);
  } else {
    timeout = nat.timeouts.udp;
    if (dir === DIR_REPLY) flows.flags[flow] = flows.flags[flow]! | FLOW_ASSURED;
    if (firstReply) for (const ob of nat.observers) ob.updated?.(flow, flows.state[flow]!, now);
  }
  flows.expires[flow] = now + timeout * 1000;
  flows.packets[e]!++;
  flows.bytes[e]! += total;

  const o = e ^ 1;
  const newSrc = flows.tDst[o]!;
  const newDst = flows.tSrc[o]!;
  const newSport = flows.tDport[o]!;
  const newDport = flows.tSport[o]!;
  if (sctp) {
    wr16(buf, l4 + UDP_OFF.SOURCE_PORT, newSport);
    wr16(buf, l4 + UDP_OFF.DESTINATION_PORT, newDport);
    // SCTP has no pseudo-header: the addresses are not in its CRC, only the ports are.
    writeSctpChecksum(buf, l4, sctpChecksum(buf, l4, l4len));
  } else {
    rewriteTransportEndpoints(buf, l4, proto, nat.partial, src, dst, sport, dport, newSrc, newDst, newSport, newDport);
    // As for UDP, a checksum that comes to 0 is sent as all ones (0 would be invalid here).
    if (rd16(buf, l4 + UDP_OFF.CHECKSUM) === 0) wr16(buf, l4 + UDP_OFF.CHECKSUM, 0xffff);
  }
  rewriteIpv4Header(buf, ip.off, src, dst, newSrc, newDst, true);
  return nat.countForward(fromInside ? (toPublic ? Path.HAIRPIN : Path.OUTBOUND) : Path.INBOUND, total);
}
