import type { Timeouts } from './timeouts.js';
import { TCP_FLAGS } from '../wire/tcp.js';

/**
 * The TCP connection tracker: a state machine driven by the flags seen in both directions, in the
 * spirit of netfilter's nf_conntrack_proto_tcp (which tracks sequence windows too; tunnat does not,
 * since a NAT only needs to know when a connection is alive, opening or closing).
 *
 * Directions: ORIGINAL is the side that sent the first SYN, REPLY the other one.
 */
export const TcpState = {
  NONE: 0,
  SYN_SENT: 1, // SYN seen from the originator
  SYN_RECV: 2, // SYN-ACK seen (or SYN-ACK from the originator after a simultaneous open)
  ESTABLISHED: 3,
  FIN_WAIT: 4, // one side sent FIN
  CLOSE_WAIT: 5, // that FIN was followed by an ACK from the other side: half-closed
  LAST_ACK: 6, // both sides sent FIN; waiting for the last ACK
  TIME_WAIT: 7, // the last ACK went by
  CLOSE: 8, // RST seen
  SYN_SENT2: 9, // simultaneous open: both sides sent a bare SYN (RFC 5382 REQ-2)
} as const;
export type TcpStateValue = (typeof TcpState)[keyof typeof TcpState];

export const TCP_STATE_NAMES = [
  'NONE', 'SYN_SENT', 'SYN_RECV', 'ESTABLISHED', 'FIN_WAIT', 'CLOSE_WAIT', 'LAST_ACK', 'TIME_WAIT', 'CLOSE', 'SYN_SENT2',
] as const;

/** Packet classes the table is indexed by (derived from the flag byte by tcpPacketClass). */
export const TcpClass = { SYN: 0, SYNACK: 1, FIN: 2, ACK: 3, RST: 4, INVALID: 5 } as const;

const FIN = TCP_FLAGS.FIN, SYN = TCP_FLAGS.SYN, RST = TCP_FLAGS.RST, ACK = TCP_FLAGS.ACK;

/**
 * Classify a segment by its flags. Combinations no real stack sends (SYN+FIN, SYN+RST, no SYN/ACK/RST
 * at all: null and most "Xmas" scans) are INVALID: dropped and counted, never allowed to change state.
 */
export function tcpPacketClass(flags: number): number {
  if (flags & RST) return flags & SYN ? TcpClass.INVALID : TcpClass.RST;
  if (flags & SYN) {
    if (flags & FIN) return TcpClass.INVALID;
    return flags & ACK ? TcpClass.SYNACK : TcpClass.SYN;
  }
  if (flags & FIN) return flags & ACK ? TcpClass.FIN : TcpClass.INVALID; // every FIN after the handshake carries ACK
  if (flags & ACK) return TcpClass.ACK;
  return TcpClass.INVALID;
}

/** A bare SYN may create a tracked connection; nothing else may (RFC 5382 §2: the NAT sees the 3-way handshake). */
export function tcpMayCreate(flags: number): boolean {
  return tcpPacketClass(flags) === TcpClass.SYN;
}

// Shorthands for the transition table.
const sNO = TcpState.NONE, sSS = TcpState.SYN_SENT, sSR = TcpState.SYN_RECV, sES = TcpState.ESTABLISHED,
  sFW = TcpState.FIN_WAIT, sCW = TcpState.CLOSE_WAIT, sLA = TcpState.LAST_ACK, sTW = TcpState.TIME_WAIT,
  sCL = TcpState.CLOSE, sS2 = TcpState.SYN_SENT2;
/** "Keep the current state": the segment is legal but says nothing new (retransmissions, stray ACKs). */
const sKP = 0xfe;

/**
 * next = TRANSITIONS[dir][class][state]. Columns are the states in TcpState order:
 *   NONE SYN_SENT SYN_RECV ESTABLISHED FIN_WAIT CLOSE_WAIT LAST_ACK TIME_WAIT CLOSE SYN_SENT2
 * Each row names the behaviour it encodes. FIN and ACK rows below are the direction-independent part;
 * which side sent a FIN is tracked separately (finSeen bits) to tell FIN_WAIT from LAST_ACK.
 */
const TRANSITIONS: readonly (readonly (readonly number[])[])[] = [
  // ORIGINAL direction
  [
    // SYN: opens; a SYN after TIME_WAIT/CLOSE reopens the same 4-tuple (port reuse); otherwise a retransmission.
    [sSS, sSS, sKP, sKP, sKP, sKP, sKP, sSS, sSS, sS2],
    // SYN-ACK from the originator is only legal after a simultaneous open.
    [sKP, sKP, sKP, sKP, sKP, sKP, sKP, sKP, sKP, sSR],
    // FIN: handled by finTransition (depends on which FINs were seen).
    [sKP, sKP, sFW, sFW, sFW, sLA, sLA, sKP, sKP, sKP],
    // ACK: completes the handshake; in FIN_WAIT an ACK from the non-FIN side half-closes (see below);
    // in LAST_ACK it is the final ACK.
    [sKP, sKP, sES, sKP, sCW, sKP, sTW, sKP, sKP, sKP],
    // RST: the connection is gone in every state.
    [sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL],
  ],
  // REPLY direction
  [
    // SYN from the responder while ours is outstanding: simultaneous open (RFC 793 §3.4, RFC 5382 REQ-2).
    [sKP, sS2, sKP, sKP, sKP, sKP, sKP, sKP, sKP, sS2],
    // SYN-ACK: the responder accepted.
    [sKP, sSR, sSR, sKP, sKP, sKP, sKP, sKP, sKP, sSR],
    [sKP, sKP, sFW, sFW, sFW, sLA, sLA, sKP, sKP, sKP],
    // ACK in SYN_RECV from the responder completes a simultaneous open.
    [sKP, sKP, sES, sKP, sCW, sKP, sTW, sKP, sKP, sKP],
    [sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL],
  ],
];
void sNO;

/** Bits of the per-flow TCP detail byte. */
export const TCP_FIN_ORIG = 1;
export const TCP_FIN_REPLY = 2;

export interface TcpStep {
  state: number;
  detail: number;
  /** false when the segment is not valid in this state (it is still forwarded if the flow exists). */
  valid: boolean;
}

/**
 * Advance the state machine for one segment. `detail` carries which sides have sent FIN.
 * Returns the new state and detail; the caller stores them. Allocation-free: writes into `out`.
 */
export function tcpStep(state: number, detail: number, dir: 0 | 1, flags: number, out: TcpStep): TcpStep {
  const cls = tcpPacketClass(flags);
  out.state = state;
  out.detail = detail;
  out.valid = cls !== TcpClass.INVALID;
  if (!out.valid) return out;
  const row = TRANSITIONS[dir]![cls]!;
  let next = row[state]!;
  if (cls === TcpClass.FIN) {
    const mine = dir === 0 ? TCP_FIN_ORIG : TCP_FIN_REPLY;
    const seen = detail | mine;
    out.detail = seen;
    // The second side's FIN (whether or not the first was acknowledged yet) leaves only the last ACK;
    // a first FIN half-closes; a retransmitted FIN changes nothing.
    if (next !== sKP) {
      if ((seen & (TCP_FIN_ORIG | TCP_FIN_REPLY)) === (TCP_FIN_ORIG | TCP_FIN_REPLY)) next = sLA;
      else next = state === sSR || state === sES ? sFW : sKP;
    }
  } else if (cls === TcpClass.ACK && state === sFW) {
    // Only an ACK from the side that did NOT send the FIN acknowledges it.
    const finFromMe = (detail & (dir === 0 ? TCP_FIN_ORIG : TCP_FIN_REPLY)) !== 0;
    if (finFromMe) next = sKP;
  }
  if (next !== sKP) out.state = next;
  return out;
}

/** Idle timeout in seconds for a TCP state. */
export function tcpTimeout(state: number, t: Timeouts): number {
  switch (state) {
    case TcpState.SYN_SENT:
    case TcpState.SYN_SENT2:
      return t.tcpSynSent;
    case TcpState.SYN_RECV:
      return t.tcpSynRecv;
    case TcpState.ESTABLISHED:
      return t.tcpEstablished;
    case TcpState.FIN_WAIT:
      return t.tcpFinWait;
    case TcpState.CLOSE_WAIT:
      return t.tcpCloseWait;
    case TcpState.LAST_ACK:
      return t.tcpLastAck;
    case TcpState.TIME_WAIT:
      return t.tcpTimeWait;
    default:
      return t.tcpClose;
  }
}

/** Established-ish states: a flow in them is never early-dropped when the table is full. */
export function tcpIsAssured(state: number): boolean {
  return state >= TcpState.ESTABLISHED && state <= TcpState.LAST_ACK;
}
