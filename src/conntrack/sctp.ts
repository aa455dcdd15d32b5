import { SCTP_CHUNK } from '../wire/crc32c.js';
import type { Timeouts } from './timeouts.js';

/**
 * SCTP association tracking, enough for sane timers: a simplified nf_conntrack_proto_sctp. The tracker
 * reads only which chunk types a packet carries (wire/crc32c.ts sctpChunkMask) and which way it goes.
 *
 * - INIT (or any packet that may pick an association up) opens the flow in COOKIE_WAIT; COOKIE_ECHO
 *   moves it to COOKIE_ECHOED; COOKIE_ACK, or DATA/SACK once both sides have spoken, means the
 *   association is up: ESTABLISHED, and the flow is assured.
 * - A HEARTBEAT opens a flow of its own (HEARTBEAT_SENT): SCTP multi-homing sends heartbeats down every
 *   secondary path, and as in Linux each address pair is its own flow; the HEARTBEAT_ACK coming back
 *   makes that path ESTABLISHED too.
 * - SHUTDOWN / SHUTDOWN_ACK shorten the timer (SHUTDOWN); ABORT and SHUTDOWN_COMPLETE close the flow
 *   (CLOSED, a few seconds so the last retransmissions still match). A new INIT on a closed flow opens it
 *   again.
 * Verification tags are not checked (Linux checks them; here the 5-tuple and the timers are the point).
 */
export const SctpState = {
  NONE: 0,
  COOKIE_WAIT: 1,
  COOKIE_ECHOED: 2,
  ESTABLISHED: 3,
  SHUTDOWN: 4,
  CLOSED: 5,
  HEARTBEAT_SENT: 6,
} as const;
export const SCTP_STATE_NAMES = ['NONE', 'COOKIE_WAIT', 'COOKIE_ECHOED', 'ESTABLISHED', 'SHUTDOWN', 'CLOSED', 'HEARTBEAT_SENT'] as const;

const bit = (t: number): number => 1 << t;
const CLOSING = bit(SCTP_CHUNK.ABORT) | bit(SCTP_CHUNK.SHUTDOWN_COMPLETE);
const SHUTTING = bit(SCTP_CHUNK.SHUTDOWN) | bit(SCTP_CHUNK.SHUTDOWN_ACK);
const TRAFFIC = bit(SCTP_CHUNK.DATA) | bit(SCTP_CHUNK.SACK);

/**
 * Whether a packet that matched no flow may open one: not one that ends or answers an association
 * (ABORT, SHUTDOWN_COMPLETE, COOKIE_ACK, SHUTDOWN_ACK), as Linux's sctp_new refuses them.
 */
export function sctpMayCreate(chunks: number): boolean {
  return (chunks & (CLOSING | bit(SCTP_CHUNK.COOKIE_ACK) | bit(SCTP_CHUNK.SHUTDOWN_ACK))) === 0;
}

/** The state a new flow starts in, from its first packet's chunks. */
export function sctpFirstState(chunks: number): number {
  return chunks === bit(SCTP_CHUNK.HEARTBEAT) ? SctpState.HEARTBEAT_SENT : SctpState.COOKIE_WAIT;
}

/** The next state after a packet with these chunks; `replied`: the other side has sent on this flow. */
export function sctpStep(state: number, chunks: number, dir: 0 | 1, replied: boolean): number {
  if (chunks & CLOSING) return SctpState.CLOSED;
  if (chunks & SHUTTING) return SctpState.SHUTDOWN;
  if (chunks & bit(SCTP_CHUNK.INIT) && (state === SctpState.CLOSED || state === SctpState.NONE)) return SctpState.COOKIE_WAIT;
  if (chunks & bit(SCTP_CHUNK.COOKIE_ACK)) return state === SctpState.SHUTDOWN ? state : SctpState.ESTABLISHED;
  if (state === SctpState.HEARTBEAT_SENT && dir === 1 && chunks & bit(SCTP_CHUNK.HEARTBEAT_ACK)) return SctpState.ESTABLISHED;
  if (state === SctpState.COOKIE_WAIT || state === SctpState.COOKIE_ECHOED || state === SctpState.HEARTBEAT_SENT) {
    if (chunks & bit(SCTP_CHUNK.COOKIE_ECHO)) return SctpState.COOKIE_ECHOED;
    if (replied && chunks & TRAFFIC) return SctpState.ESTABLISHED;
  }
  return state;
}

/** The idle timeout of a state, in seconds. */
export function sctpTimeout(state: number, t: Timeouts): number {
  switch (state) {
    case SctpState.ESTABLISHED:
      return t.sctpEstablished;
    case SctpState.SHUTDOWN:
      return t.sctpShutdown;
    case SctpState.CLOSED:
      return t.sctpClosed;
    default:
      return t.sctpOpening;
  }
}
