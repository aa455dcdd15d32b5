import { FLOW_ASSURED, FLOW_IN_USE } from '../conntrack/table.js';
import type { NatContext } from './context.js';
import { WELL_KNOWN_BELOW } from './udp-timer.js';

/**
 * Netfilter's early drop, applied to public ports: when a datagram protocol's pool (UDP, UDP-Lite; see
 * outbound.ts) has no free port, a new outbound flow may take the port of an unassured flow of that
 * protocol on the same public address whose mapping no other flow uses (an answered or unanswered
 * query). Assured flows, and
 * mappings that several flows share, are never touched, so a reclaim only ever ends one exchange that had
 * not become a conversation.
 *
 * Up to RECLAIM_BUDGET flow slots are looked at from a rotating cursor. The first candidate that is
 * expired or a finished query (to a well-known port, every query answered) is taken at once; otherwise
 * the oldest candidate seen, so a query sent a moment ago is the last to lose its port.
 */
const RECLAIM_BUDGET = 256;

/** Free one public port of `proto` on public address `addr` by removing a reclaimable flow; false when none was found. */
export function reclaimPort(nat: NatContext, proto: number, addr: number, now: number): boolean {
  const flows = nat.flows;
  const maps = nat.mappings;
  const cap = flows.capacity;
  let cursor = nat.reclaimCursor % cap;
  let chosen = -1;
  let expired = false;
  let oldest = Infinity;
  for (let i = 0; i < RECLAIM_BUDGET && i < cap; i++) {
    const flow = cursor;
    cursor = flow + 1 === cap ? 0 : flow + 1;
    const f = flows.flags[flow]!;
    if (!(f & FLOW_IN_USE) || f & FLOW_ASSURED || flows.proto[flow] !== proto) continue;
    const m = flows.mapping[flow]!;
    if (m < 0 || maps.refs[m] !== 1 || flows.mapping2[flow]! >= 0 || maps.extAddr[m] !== addr) continue;
    if (flows.expires[flow]! <= now) {
      chosen = flow;
      expired = true;
      break;
    }
    const replies = flows.packets[flow * 2 + 1]!;
    if (flows.tDport[flow * 2]! < WELL_KNOWN_BELOW && replies > 0 && replies >= flows.packets[flow * 2]!) {
      chosen = flow;
      break;
    }
    if (flows.created[flow]! < oldest) {
      oldest = flows.created[flow]!;
      chosen = flow;
    }
  }
  nat.reclaimCursor = cursor;
  if (chosen < 0) return false;
  flows.remove(chosen, expired ? 'expired' : 'early-drop');
  nat.stats.portsReclaimed++;
  return true;
}
