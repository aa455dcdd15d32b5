import { FLOW_ASSURED, type FlowTable } from '../conntrack/table.js';
import type { NatContext } from './context.js';

/**
 * The timer of a UDP flow that is not (yet) a stream. translate() calls this only for UDP flows without
 * FLOW_ASSURED: an assured flow takes timeouts.udp with one flag test, so established traffic pays
 * nothing for what happens here.
 *
 * The rules (RFC 4787 REQ-5 and REQ-5a, and Linux's nf_conntrack_proto_udp.c "stream" rule):
 * - A flow becomes a stream, gets the long timer (timeouts.udp) and is ASSURED, once it has had a reply
 *   and then carries a packet either way at least UDP_STREAM_AFTER_MS after it was created (Linux's rule:
 *   still active after two seconds), or carries more packets than a query-and-answer
 *   exchange has (QUERY_PACKETS each way: a lookup of A and AAAA from one socket, with a retry).
 * - A flow to a destination port of 1024 or above keeps timeouts.udp whatever it did: REQ-5 wants at
 *   least two minutes for every mapping except those REQ-5a names.
 * - A flow to a well-known port (below 1024, REQ-5a) that is not a stream is a query-and-answer exchange:
 *   timeouts.udpQueryUnanswered while some query has no answer yet (the kernel's 30 s for an unreplied
 *   flow), timeouts.udpQueryAnswered once every query is answered, so a DNS lookup from a fresh socket
 *   gives its public port back a few seconds after the answer instead of five minutes later.
 * Queries and answers are counted with the flow's own packet counters (this packet not yet counted).
 */

/** A flow still talking this long after it was created, with a reply seen, is a stream (Linux: 2 s). */
export const UDP_STREAM_AFTER_MS = 2000;
/** The most packets either way a query-and-answer exchange to a well-known port may carry. */
export const QUERY_PACKETS = 4;
/** Destination ports below this are "well-known" (RFC 4787 REQ-5a, IANA's system ports). */
export const WELL_KNOWN_BELOW = 1024;

/** The idle timeout in seconds for this packet of unassured UDP flow `flow`, marking it assured when it became a stream. */
export function udpTimer(nat: NatContext, flow: number, dir: number, now: number): number {
  const flows = nat.flows;
  const t = nat.timeouts;
  const o = flow * 2;
  const repliesBefore = flows.packets[o + 1]!;
  const wellKnown = flows.tDport[o]! < WELL_KNOWN_BELOW;
  if (repliesBefore > 0) {
    const queries = flows.packets[o]! + (dir ^ 1);
    const replies = repliesBefore + dir;
    const late = now - flows.created[flow]! >= UDP_STREAM_AFTER_MS;
    if (late || queries > QUERY_PACKETS || replies > QUERY_PACKETS) {
      flows.flags[flow] = flows.flags[flow]! | FLOW_ASSURED;
      return t.udp;
    }
  }
  if (!wellKnown) return t.udp;
  return isAnsweredQuery(flows, flow, dir) ? t.udpQueryAnswered : t.udpQueryUnanswered;
}

/** Whether every query of flow `flow` has had its answer, counting a packet in hand going direction `dir`. */
export function isAnsweredQuery(flows: FlowTable, flow: number, dir: number): boolean {
  const o = flow * 2;
  return flows.packets[o + 1]! + dir >= flows.packets[o]! + (dir ^ 1);
}
