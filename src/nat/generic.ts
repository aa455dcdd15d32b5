import { DIR_ORIGINAL, DIR_REPLY, FLOW_ASSURED, FLOW_SEEN_REPLY } from '../conntrack/table.js';
import { IPPROTO } from '../wire/ipv4.js';
import { rewriteIpv4Header } from '../wire/rewrite.js';
import { translatePorted } from './ported.js';
import { NONE, type NatContext } from './context.js';
import { allocateFlow, commitFlow, hostLimitReached } from './flow-setup.js';
import { refuse } from './refusal.js';
import { DropReason, Path, Setup } from './outcome.js';

/**
 * Address-only NAT for every IP protocol tunnat has no tracker of its own for (GRE, ESP, IPIP, AH, any
 * number nobody assigned), as Linux's generic tracker (nf_conntrack_proto_generic) and MASQUERADE treat
 * them: there are no ports to rewrite, so a flow is keyed by (protocol, LAN host, remote address) with
 * both ports 0, and its reply tuple is (remote address → public address). Only the IP header changes.
 *
 * The cost of having no ports: the public address can stand for only one LAN host per (protocol, remote
 * address) at a time, or the replies could not be told apart. While one host holds that pair, a second
 * host's packet is refused (DropReason.PROTOCOL_BUSY) and the host is told with ICMP "communication
 * administratively prohibited", rate-limited like every refusal. Linux behaves the same in effect: its
 * second conntrack entry clashes with the first one's reply tuple and the packet is dropped (silently).
 *
 * No mapping and no public port are taken (the flow's mapping is NONE), so the filtering modes have
 * nothing to consult: a flow exists only once the LAN host sent, and only that remote address's replies
 * match it. Anything from outside that matches no flow belongs to the gateway, as before.
 *
 * Out of line from Translator.translate(): these protocols are rare, and the per-packet path of TCP, UDP
 * and ICMP must not grow for them.
 */
/**
 * Every protocol translate() does not handle itself: SCTP and UDP-Lite with their ports (ported.ts),
 * everything else by address. One call from translate()'s last branch, so its bytecode barely grows.
 */
export function translateOther(
  nat: NatContext, buf: Uint8Array, proto: number, src: number, dst: number, fromInside: boolean, toPublic: boolean,
  firstFragment: boolean, now: number,
): number {
  if (proto === IPPROTO.SCTP || proto === IPPROTO.UDPLITE) {
    return translatePorted(nat, buf, proto, src, dst, fromInside, toPublic, firstFragment, now);
  }
  return translateGeneric(nat, buf, proto, src, dst, fromInside, toPublic, now);
}

export function translateGeneric(
  nat: NatContext, buf: Uint8Array, proto: number, src: number, dst: number, fromInside: boolean, toPublic: boolean, now: number,
): number {
  const ip = nat.ip;
  const total = ip.totalLength;
  const flows = nat.flows;
  let e = flows.lookup(proto, src, dst, 0, 0, now);
  if (e < 0) {
    if (!fromInside) return nat.toGateway(total);
    // Hairpinning needs a port to say which LAN host is meant: without one there is nobody to reach.
    if (toPublic) return nat.drop(DropReason.NO_MAPPING);
    const setup = createGeneric(nat, buf, proto, src, dst, now);
    if (setup !== Setup.CREATED) return nat.drop(nat.setupReason);
    e = nat.setupEntry;
  }
  const flow = e >> 1;
  nat.lastEntry = e;
  if (e & 1) {
    if (!(flows.flags[flow]! & FLOW_SEEN_REPLY)) {
      // The first reply: UNREPLIED → REPLIED, as conntrack -E shows it; like the kernel's generic tracker,
      // a flow answered once counts as assured (an early drop passes it by).
      flows.flags[flow] = flows.flags[flow]! | FLOW_SEEN_REPLY | FLOW_ASSURED;
      for (const ob of nat.observers) ob.updated?.(flow, flows.state[flow]!, now);
    }
  }
  flows.expires[flow] = now + nat.timeouts.generic * 1000;
  flows.packets[e]!++;
  flows.bytes[e]! += total;
  const o = e ^ 1;
  rewriteIpv4Header(buf, ip.off, src, dst, flows.tDst[o]!, flows.tSrc[o]!, true);
  return nat.countForward(fromInside ? Path.OUTBOUND : Path.INBOUND, total);
}

/**
 * A new address-only flow from a LAN host: the egress policy (with port 0), the host's limit, the
 * one-host-per-remote rule, a flow slot. The reply tuple is (remote → public address), ports 0.
 */
function createGeneric(nat: NatContext, buf: Uint8Array, proto: number, src: number, dst: number, now: number): Setup {
  if (nat.egress && !nat.egress.allows(proto, dst, 0)) {
    return refuse(nat, buf, DropReason.EGRESS_POLICY, proto, nat.egressReject, now);
  }
  const tell = nat.icmpOnExhaustion;
  if (hostLimitReached(nat, src)) return refuse(nat, buf, DropReason.HOST_LIMIT, proto, tell, now);
  const pub = nat.addressFor(src); // paired pooling: the address its ported flows use too
  // Another LAN host's flow to the same remote address has this very reply tuple.
  if (nat.flows.lookup(proto, dst, pub, 0, 0, now) >= 0) return refuse(nat, buf, DropReason.PROTOCOL_BUSY, proto, true, now);
  const flow = allocateFlow(nat, now);
  if (flow < 0) return refuse(nat, buf, DropReason.TABLE_FULL, proto, tell, now);
  nat.flows.setTuple(flow, DIR_ORIGINAL, src, dst, 0, 0);
  nat.flows.setTuple(flow, DIR_REPLY, dst, pub, 0, 0);
  nat.setupEntry = commitFlow(nat, flow, proto, NONE, NONE, 0, src, dst, now);
  return Setup.CREATED;
}
