import type { RemoveReason } from '../conntrack/table.js';

/**
 * The words the translator answers in: what became of a packet (Verdict), why it was dropped
 * (DropReason), which way it went (Path), how a new flow's public port was chosen (PortChoice), and
 * what a new-flow attempt came to (Setup). Each is a small integer so the packet path stores and
 * compares them without allocating; each has a names table for metrics, the trace and the docs.
 */

/** What to do with the packet in hand. */
export const Verdict = {
  /** Write the packet back into the TUN (rewritten in place, same length). */
  FORWARD: 0,
  DROP: 1,
  /** A fragment kept until its first fragment decides its fate; sent later through the sink. */
  HELD: 2,
  /** Another worker holds this packet's flow (an FTP data endpoint: alg-redirect.ts): hand it to NatContext.handoffTo, unchanged. */
  HANDOFF: 3,
} as const;

/** Drop reasons; index into NatStats.drops. Names are the `reason` label of tunnat_drops_total. */
export const DropReason = {
  MALFORMED: 0,
  NO_MAPPING: 1,
  TABLE_FULL: 2,
  PORTS_EXHAUSTED: 3,
  FRAGMENT: 4,
  UNSUPPORTED_PROTOCOL: 5,
  TCP_FLAGS: 6,
  CHECKSUM: 7,
  NOT_OURS: 8,
  TTL: 9,
  FILTERED: 10,
  EGRESS_POLICY: 11,
  HOST_LIMIT: 12,
  /** An address-only protocol already has a flow from another LAN host to the same remote address. */
  PROTOCOL_BUSY: 13,
  /** The gateway is the standby of a pair: it forwards nothing until it holds the addresses. */
  STANDBY: 14,
} as const;
export const DROP_REASON_NAMES = [
  'malformed', 'no-mapping', 'table-full', 'ports-exhausted', 'fragment', 'unsupported-protocol', 'tcp-flags',
  'checksum', 'not-ours', 'ttl', 'filtered', 'egress-policy', 'host-limit',
  'protocol-busy', 'standby',
] as const;

/** Where a forwarded packet went; index into NatStats.packets/bytes. */
export const Path = { OUTBOUND: 0, INBOUND: 1, LOCAL: 2, HAIRPIN: 3 } as const;
export const PATH_NAMES = ['outbound', 'inbound', 'local', 'hairpin'] as const;

/** RFC 4787 REQ-8 filtering behaviours. */
export const Filtering = { ENDPOINT: 0, ADDRESS: 1, ADDRESS_PORT: 2 } as const;
export const FILTERING_NAMES = ['endpoint', 'address', 'address-port'] as const;
export type FilteringName = (typeof FILTERING_NAMES)[number];

/** How the public port of the last new flow was chosen (for the trace). */
export const PortChoice = { NONE: 0, EXISTING: 1, PRESERVED: 2, REMAPPED: 3, FORWARD: 4 } as const;
export const PORT_CHOICE_NAMES = ['none', 'existing mapping', 'preserved', 'remapped', 'port forward'] as const;

/**
 * What an attempt to set up a new flow came to. The flow's entry (CREATED) or the drop reason (REFUSED)
 * is left in NatContext.setupEntry / setupReason, so the answer needs no object per packet.
 */
export const Setup = {
  CREATED: 0,
  /** No flow, and none needed: the packet is for the gateway's own stack (written back unchanged). */
  TO_GATEWAY: 1,
  REFUSED: 2,
} as const;
export type Setup = (typeof Setup)[keyof typeof Setup];

/**
 * Which LAN endpoint a packet from outside (or a hairpinned one) reaches, as resolveTarget answers: a LAN
 * host (the endpoint is left in NatContext.target), the gateway itself, or nobody (REFUSED, with the
 * reason in setupReason).
 */
export const Resolved = { LAN_HOST: 0, GATEWAY: 1, REFUSED: 2 } as const;
export type Resolved = (typeof Resolved)[keyof typeof Resolved];

export interface NatStats {
  /** Packets and bytes forwarded, by Path. */
  readonly packets: Float64Array;
  readonly bytes: Float64Array;
  readonly drops: Float64Array;
  flowsCreated: number;
  /** Public ports taken from an unassured flow because the pool was full (port-reclaim.ts). */
  portsReclaimed: number;
  /** TCP connections picked up from the LAN side in the middle (NatOptions.tcpLoose, after a failover). */
  tcpPickedUp: number;
  /** Flows removed, by reason name. */
  readonly flowsRemoved: Record<RemoveReason, number>;
  icmpErrorsTranslated: number;
  /** ICMP errors and TCP resets tunnat generated itself (out of resources, egress rejects). */
  generated: number;
  /** Generated packets not sent: rate limit, or no room in the batch. */
  generatedSuppressed: number;
}

export function newNatStats(): NatStats {
  return {
    packets: new Float64Array(PATH_NAMES.length),
    bytes: new Float64Array(PATH_NAMES.length),
    drops: new Float64Array(DROP_REASON_NAMES.length),
    flowsCreated: 0,
    portsReclaimed: 0,
    tcpPickedUp: 0,
    flowsRemoved: { expired: 0, 'early-drop': 0, flush: 0, closed: 0 },
    icmpErrorsTranslated: 0,
    generated: 0,
    generatedSuppressed: 0,
  };
}

/**
 * Flow observers hear about flows (metrics per LAN host, `conntrack --events`, the trace). Called only
 * when a flow is created, changes TCP state, or is removed — never per packet.
 */
export interface FlowObserver {
  created?(flow: number, now: number): void;
  /**
   * A flow changed state: a TCP transition (`from` is the old TcpState), or the first reply of a UDP or
   * ICMP flow (UNREPLIED → REPLIED; `from` is then the flow's unchanged state field, TcpState.NONE).
   * Called from the tracking step, before the packet that caused it is counted in the flow.
   */
  updated?(flow: number, from: number, now: number): void;
  /** Called before the slot is freed: the flow's tuples and counters are still readable. */
  removed?(flow: number, reason: RemoveReason): void;
}

/** Where generated packets go: the data plane hands out room in its write batch. */
export interface PacketSink {
  readonly buf: Buffer;
  /** Offset of room for a packet of up to `maxLen` bytes, or -1 if the batch has none left. */
  alloc(maxLen: number): number;
  /** Queue the packet written at `off` for sending. */
  commit(off: number, len: number): void;
}
