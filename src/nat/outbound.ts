import { IPPROTO } from '../wire/ipv4.js';
import { DIR_ORIGINAL, DIR_REPLY } from '../conntrack/table.js';
import { NONE, type NatContext } from './context.js';
import { allocateFlow, commitFlow, created, hostLimitReached, mappingFor } from './flow-setup.js';
import { refuse } from './refusal.js';
import { reclaimPort } from './port-reclaim.js';
import { DropReason, type Setup } from './outcome.js';

/** The protocols whose full port pool may reclaim a port (port-reclaim.ts): the datagram ones. */
const RECLAIMS = new Uint8Array(256);
RECLAIMS[IPPROTO.UDP] = 1;
RECLAIMS[IPPROTO.UDPLITE] = 1;

/**
 * A new connection from the LAN to the outside: the heart of source NAT. In the order the checks run:
 * 1. the egress policy (the allowlist of destinations a LAN may open flows to);
 * 2. the per-host limit (one host must not take the whole table);
 * 3. a public port must be there to give, if need be reclaimed from an unassured flow whose mapping
 *    nothing else uses (port-reclaim.ts): a flow that will find none must not evict another flow first;
 * 4. a flow slot (evicting an unassured flow if the table is full);
 * 5. the LAN endpoint's mapping (existing, or new with its port preserved where it is free);
 * 6. the two tuples: original (LAN host → server) and reply (server → public address:port), the
 *    inverse of what the server will send back.
 * A refusal at any step is counted by reason, and for 2–5 the host is told when icmpOnExhaustion is on
 * (refusal.ts).
 */
export function createOutbound(
  nat: NatContext, buf: Uint8Array, proto: number, src: number, dst: number, sport: number, dport: number, now: number,
): Setup {
  if (nat.egress && !nat.egress.allows(proto, dst, dport)) {
    return refuse(nat, buf, DropReason.EGRESS_POLICY, proto, nat.egressReject, now);
  }
  const tell = nat.icmpOnExhaustion;
  if (hostLimitReached(nat, src)) return refuse(nat, buf, DropReason.HOST_LIMIT, proto, tell, now);
  const maps = nat.mappings;
  const existing = maps.lookupInternal(proto, src, sport);
  // Paired pooling: a host whose address has no port left is refused, never moved to another address.
  // First, for datagrams, a full pool gives up the port of an unassured flow on that address
  // (port-reclaim.ts). A TCP connection attempt keeps its port: its SYN may still be answered.
  const addr = nat.addressFor(src);
  if (existing < 0 && maps.poolAt(proto, addr)!.available <= 0 && !(RECLAIMS[proto] === 1 && reclaimPort(nat, proto, addr, now))) {
    return refuse(nat, buf, DropReason.PORTS_EXHAUSTED, proto, tell, now);
  }
  const flow = allocateFlow(nat, now);
  if (flow < 0) return refuse(nat, buf, DropReason.TABLE_FULL, proto, tell, now);
  // No mapping can appear while a slot is found, but an early drop may free the one there was, along
  // with its last flow: only then is it looked up again.
  const m = mappingFor(nat, proto, src, sport, existing < 0 ? NONE : maps.lookupInternal(proto, src, sport));
  if (m < 0) {
    nat.flows.release(flow);
    return refuse(nat, buf, nat.setupReason, proto, tell, now);
  }
  nat.flows.setTuple(flow, DIR_ORIGINAL, src, dst, sport, dport);
  nat.flows.setTuple(flow, DIR_REPLY, dst, maps.extAddr[m]!, dport, maps.extPort[m]!);
  return created(nat, commitFlow(nat, flow, proto, m, NONE, 0, src, dst, now));
}
