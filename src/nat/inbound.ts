import { IPPROTO } from '../wire/ipv4.js';
import { DIR_ORIGINAL, DIR_REPLY, FLOW_EXPECTED, FLOW_INBOUND } from '../conntrack/table.js';
import { NONE, type NatContext } from './context.js';
import { allocateFlow, commitFlow, created, refused } from './flow-setup.js';
import { DropReason, Filtering, PortChoice, Resolved, Setup } from './outcome.js';

/**
 * A new flow from outside to the public address. Nothing from outside creates a mapping: the packet
 * reaches a LAN host only through a port forward (DNAT) or through a mapping some LAN endpoint already
 * holds, if the filtering mode lets this sender in (RFC 4787 REQ-8). Anything else is either the
 * gateway's own (a port the NAT never hands out: written back for the local stack) or nobody's (dropped).
 */

/**
 * Which LAN endpoint a packet from `from` to public `port` reaches. LAN_HOST leaves the endpoint and the
 * mapping that admitted it (NONE for a port forward) in nat.target; GATEWAY means the gateway's own stack
 * should have it; REFUSED leaves the reason in nat.setupReason. `hairpin` says a LAN host sent the
 * packet to the public address (hairpin.ts): the filter is then not applied (see below).
 */
export function resolveTarget(nat: NatContext, proto: number, to: number, port: number, from: number, hairpin: boolean): Resolved {
  const target = nat.target;
  // Port forwards live on the address they name, or on the first (primary) public address.
  const f = nat.forwardAt(proto, port, to);
  if (f >= 0) {
    const fw = nat.forwardList[f]!;
    target.addr = fw.address;
    target.port = fw.port;
    target.mapping = NONE;
    nat.lastPortChoice = PortChoice.FORWARD;
    return Resolved.LAN_HOST;
  }
  if (proto === IPPROTO.ICMP) return Resolved.GATEWAY; // echo requests to the public address are the gateway's to answer
  const m = nat.mappings.lookupExternal(proto, to, port);
  if (m < 0) {
    if (nat.gatewayOwnsPort(proto, port, to)) return Resolved.GATEWAY;
    nat.setupReason = DropReason.NO_MAPPING;
    return Resolved.REFUSED;
  }
  // Address-and-port-dependent filtering admits only packets that match an existing flow, and those
  // never get here: so it admits nothing new.
  // A hairpinned packet passes whatever the mode. Filtering keeps unsolicited packets from outside away
  // from a mapping; a hairpinned one comes from a host behind this NAT, sent to the public endpoint
  // that host learnt (RFC 4787 REQ-9), and its sender is itself seen through a mapping it has just made
  // by sending to the public address. Filtering it by address would compare against the public address,
  // to which hardly any mapping ever sends: RFC 5780 §4.5's test (coturn's natdiscovery -H) sends from a
  // fresh second socket to the first socket's mapping, which has only talked to the STUN server, and
  // failed under address-dependent filtering for that reason.
  const allowed =
    hairpin ||
    nat.filtering === Filtering.ENDPOINT ||
    (nat.filtering === Filtering.ADDRESS && nat.permissions!.has(m, from));
  if (!allowed) {
    nat.setupReason = DropReason.FILTERED;
    return Resolved.REFUSED;
  }
  target.addr = nat.mappings.intAddr[m]!;
  target.port = nat.mappings.intPort[m]!;
  target.mapping = m;
  nat.lastPortChoice = PortChoice.EXISTING;
  return Resolved.LAN_HOST;
}

/**
 * The flow: original (outside host → public address:port), reply (LAN host → outside host), the inverse
 * of what the LAN host will answer with. The target is resolved once, before a slot is found; only a
 * packet that will become a flow may make room for one, so an unsolicited packet never evicts.
 */
export function createInbound(nat: NatContext, proto: number, src: number, dst: number, sport: number, dport: number, now: number): Setup {
  // A data connection an ALG expects (alg-ftp.ts) goes where the expectation says, whatever the filtering.
  const expected = proto === IPPROTO.TCP && nat.alg !== null && nat.alg.pending > 0 && nat.alg.claim(nat, src, dst, dport, now);
  const r = expected ? Resolved.LAN_HOST : resolveTarget(nat, proto, dst, dport, src, false);
  if (r === Resolved.GATEWAY) return Setup.TO_GATEWAY;
  if (r === Resolved.REFUSED) return Setup.REFUSED;
  const { addr, port, mapping } = nat.target;
  const maps = nat.mappings;
  // Making room may evict the last flow holding the target mapping: hold it meanwhile, so the packet that
  // caused the eviction still gets the flow it was admitted for.
  if (mapping >= 0) maps.ref(mapping);
  const flow = allocateFlow(nat, now);
  if (mapping >= 0) maps.unrefKeep(mapping);
  let result: Setup;
  if (flow < 0) {
    result = refused(nat, DropReason.TABLE_FULL);
  } else if (nat.flows.lookup(proto, addr, src, port, sport, now) >= 0) {
    // The flow's LAN side is already a flow of its own (a server behind a forward that opened the same
    // connection outwards): one tuple, one flow.
    nat.flows.release(flow);
    result = refused(nat, DropReason.NO_MAPPING);
  } else {
    const t = nat.flows;
    t.setTuple(flow, DIR_ORIGINAL, src, dst, sport, dport);
    t.setTuple(flow, DIR_REPLY, addr, src, port, sport);
    result = created(nat, commitFlow(nat, flow, proto, NONE, mapping, expected ? FLOW_INBOUND | FLOW_EXPECTED : FLOW_INBOUND, addr, src, now));
  }
  // A held mapping that no flow took is freed now.
  if (mapping >= 0) maps.releaseIfUnused(mapping);
  return result;
}
