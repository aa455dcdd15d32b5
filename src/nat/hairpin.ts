import { IPPROTO } from '../wire/ipv4.js';
import { DIR_ORIGINAL, DIR_REPLY } from '../conntrack/table.js';
import { NONE, type NatContext } from './context.js';
import { allocateFlow, commitFlow, created, hostLimitReached, mappingFor, refused } from './flow-setup.js';
import { resolveTarget } from './inbound.js';
import { refuse } from './refusal.js';
import { DropReason, PortChoice, Resolved, Setup } from './outcome.js';

/**
 * Hairpinning (RFC 4787 REQ-9, RFC 5382 REQ-8): a LAN host A sends to the public address and a port that
 * leads to LAN host B (a port forward, or B's mapping). Both translations happen at once: A gets its own
 * mapping, as if it were leaving, and B sees A's public endpoint, exactly as an outside host would see
 * it — so the two can use what they learnt from a rendezvous server. One flow:
 *   original  A → pub:P      (what A sends)
 *   reply     B → pub:Pa     (what B sends back; Pa is A's public port)
 */
export function createHairpin(
  nat: NatContext, buf: Uint8Array, proto: number, src: number, dst: number, sport: number, dport: number, now: number,
): Setup {
  if (proto === IPPROTO.ICMP) return Setup.TO_GATEWAY; // the gateway answers pings to its own address
  const maps = nat.mappings;
  // A's packet comes from behind this NAT: the filtering mode does not apply to it (see resolveTarget).
  // Any pool address A sends to hairpins.
  const r = resolveTarget(nat, proto, dst, dport, nat.addressFor(src), true);
  if (r === Resolved.GATEWAY) return Setup.TO_GATEWAY;
  // A port no mapping holds is the gateway's own service as far as a LAN host can tell.
  if (r === Resolved.REFUSED) return nat.setupReason === DropReason.NO_MAPPING ? Setup.TO_GATEWAY : Setup.REFUSED;
  if (hostLimitReached(nat, src)) return refuse(nat, buf, DropReason.HOST_LIMIT, proto, nat.icmpOnExhaustion, now);
  const { addr, port, mapping: m2 } = nat.target;
  // Hold B's mapping while a slot is found (see createInbound).
  if (m2 >= 0) maps.ref(m2);
  const flow = allocateFlow(nat, now);
  if (m2 >= 0) maps.unrefKeep(m2);
  const result = flow < 0 ? refused(nat, DropReason.TABLE_FULL) : finish(nat, flow, proto, src, dst, sport, dport, addr, port, m2, now);
  if (m2 >= 0) maps.releaseIfUnused(m2);
  return result;
}

/** A's mapping, the one-tuple-one-flow check, and the commit. */
function finish(
  nat: NatContext, flow: number, proto: number, src: number, dst: number, sport: number, dport: number,
  addr: number, port: number, m2: number, now: number,
): Setup {
  const t = nat.flows;
  const m = mappingFor(nat, proto, src, sport);
  if (m < 0) {
    t.release(flow);
    return Setup.REFUSED; // mappingFor left the reason
  }
  // The trace names how B's side was reached when it was a forward; A's port choice otherwise.
  if (m2 === NONE) nat.lastPortChoice = PortChoice.FORWARD;
  // B sees A's public endpoint (A's paired address and port); A sees the address it sent to answer.
  const pub = nat.mappings.extAddr[m]!;
  const pa = nat.mappings.extPort[m]!;
  if (t.lookup(proto, addr, pub, port, pa, now) >= 0) {
    // The reply side is already a flow (B talked to this public endpoint first): one tuple, one flow.
    t.release(flow);
    nat.mappings.releaseIfUnused(m);
    return refused(nat, DropReason.NO_MAPPING);
  }
  t.setTuple(flow, DIR_ORIGINAL, src, dst, sport, dport);
  t.setTuple(flow, DIR_REPLY, addr, pub, port, pa);
  // The permissions are keyed by the address A sent to, as peerAddress (and so their removal) reads it:
  // with a pool that need not be A's own public address.
  return created(nat, commitFlow(nat, flow, proto, m, m2, 0, src, dst, now));
}
