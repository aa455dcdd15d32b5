/**
 * Idle timeouts per protocol and state, in seconds. These are data, not code, so the CLI and the
 * config file can override any of them (the equivalents of the kernel's
 * net.netfilter.nf_conntrack_*_timeout sysctls).
 *
 * Defaults sit at or above the NAT RFCs' minimums, where Linux's own defaults are sometimes lower:
 * - RFC 4787 REQ-5: a UDP mapping MUST NOT expire in less than 2 minutes; 5 minutes RECOMMENDED
 *   (Linux: 30 s unreplied, 120 s once replied). REQ-5a allows shorter timers for destination ports
 *   in the well-known range: a query-and-answer exchange to such a port (DNS, NTP) that never becomes
 *   a stream gets udpQueryUnanswered, then udpQueryAnswered (src/nat/udp-timer.ts).
 * - RFC 5382 REQ-5: established TCP idle timeout ≥ 2 h 4 min (Linux: 5 days); transitory states
 *   (partially open or closing) ≥ 4 min (Linux: 60–120 s).
 * - RFC 5508 REQ-2: ICMP query mapping ≥ 60 s (Linux: 30 s).
 * - SCTP: see the figures below; UDP-Lite takes UDP's timeout.
 * - Every other protocol (GRE, ESP, IPIP, ...) is tracked by address only, as Linux's generic tracker
 *   does; no RFC sets a minimum, so Linux's nf_conntrack_generic_timeout (600 s) is the default.
 */
export interface Timeouts {
  tcpSynSent: number;
  tcpSynRecv: number;
  tcpEstablished: number;
  tcpFinWait: number;
  tcpCloseWait: number;
  tcpLastAck: number;
  tcpTimeWait: number;
  /** After a RST: the connection is gone; keep the entry briefly so stray segments still match. */
  tcpClose: number;
  /** A UDP stream, and any UDP flow to a port of 1024 or above (RFC 4787 REQ-5: at least 2 minutes). */
  udp: number;
  /**
   * A UDP query to a well-known port (below 1024, RFC 4787 REQ-5a) still waiting for an answer (Linux's
   * unreplied timeout), and one whose every query is answered (the port is given back soon after).
   */
  udpQueryUnanswered: number;
  udpQueryAnswered: number;
  icmp: number;
  /** Address-only flows of any protocol tunnat has no tracker for (src/nat/generic.ts). */
  generic: number;
  /** SCTP (conntrack/sctp.ts): an association being set up (INIT, COOKIE_ECHO; a heartbeat's path). */
  sctpOpening: number;
  sctpEstablished: number;
  /** After SHUTDOWN / SHUTDOWN_ACK. */
  sctpShutdown: number;
  /** After ABORT / SHUTDOWN_COMPLETE: briefly, so retransmissions of the last chunks still match. */
  sctpClosed: number;
}

export const DEFAULT_TIMEOUTS: Readonly<Timeouts> = Object.freeze({
  tcpSynSent: 240,
  tcpSynRecv: 240,
  tcpEstablished: 7440, // 2 h 4 min, RFC 5382 REQ-5
  tcpFinWait: 240,
  tcpCloseWait: 240,
  tcpLastAck: 240,
  tcpTimeWait: 240,
  tcpClose: 10,
  udp: 300, // RFC 4787 REQ-5's recommendation
  udpQueryUnanswered: 30, // Linux's nf_conntrack_udp_timeout
  udpQueryAnswered: 5, // late duplicates of the answer still get through; the port is back in seconds
  icmp: 60, // RFC 5508 REQ-2
  generic: 600, // Linux's nf_conntrack_generic_timeout
  // SCTP: no NAT RFC sets minimums. Linux: 3 s for each set-up and shutdown state, 210 s established
  // (heartbeats every 30 s keep it), 10 s closed. The set-up allows INIT's retransmissions (RFC 9260
  // RTO.Max 60 s); established follows TCP's RFC 5382 figure, since an idle association may not heartbeat.
  sctpOpening: 60,
  sctpEstablished: 7440,
  sctpShutdown: 30,
  sctpClosed: 10,
});

export const TIMEOUT_NAMES = Object.keys(DEFAULT_TIMEOUTS) as (keyof Timeouts)[];

/** Merge overrides into the defaults; rejects unknown names and non-positive values with the field named. */
export function resolveTimeouts(overrides: Record<string, unknown> = {}): Timeouts {
  const out: Timeouts = { ...DEFAULT_TIMEOUTS };
  for (const [name, value] of Object.entries(overrides)) {
    if (!(TIMEOUT_NAMES as string[]).includes(name)) {
      throw new RangeError(`timeouts.${name}: unknown timeout (known: ${TIMEOUT_NAMES.join(', ')})`);
    }
    if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) {
      throw new RangeError(`timeouts.${name}: must be a positive number of seconds, got ${JSON.stringify(value)}`);
    }
    out[name as keyof Timeouts] = value;
  }
  return out;
}
