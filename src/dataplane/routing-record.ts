import type { HostStep } from '../host/journal.js';
import { isRecord } from '../host/ip-json.js';
import { ipToString } from '../wire/addr.js';

/**
 * The userspace engine's routing record: its configuration, the journal of what it changed (the
 * state file's content), its errors, and the rule preferences that the recipe and the leftover
 * scan both need.
 */

/**
 * The `proto` of tunnat's routes, rules and proxy neighbour entries: 0x54, 'T'. Unassigned in
 * /etc/iproute2/rt_protos (99 looks free but is openr's).
 */
export const ROUTE_PROTOCOL = 84;

/** Rule preferences, in the order the kernel consults them. */
export const RULE_PREF = {
  /**
   * iif WAN from <LAN prefix>: a WAN packet claiming a LAN source is dropped before anything else sees it
   * (before the inbound rule, or tunnat would take it for LAN traffic). Silently: an ICMP error would go
   * to the spoofed LAN address.
   */
  antiSpoof: 5,
  /** iif WAN to <LAN prefix>: the WAN never reaches a LAN address directly, only through the translation. */
  wanToLan: 6,
  /** iif WAN to <public address>: replies and the gateway's own inbound traffic go through tunnat. */
  inbound: 10,
  /**
   * iif TUN: what tunnat writes is delivered locally or routed by the main table, and never matches the
   * rules below that send traffic into the TUN (a packet tunnat hands to the gateway must not loop).
   */
  fromTunLocal: 20,
  fromTun: 21,
  /** from <LAN prefix> to <public address>: hairpinned traffic and port forwards reached from the LAN. */
  hairpin: 50,
  /** The local table, moved here from 0 so that the inbound rule can come before it. */
  local: 100,
  /**
   * A gateway of a pair, from its sync address to the peer's: the main table without its default route, then
   * unreachable. The sync may use the link (or LAN) the peer is on, never the default route: when that link
   * is down, its private addresses must not leave on the WAN.
   */
  syncPath: 990,
  syncBlock: 991,
  /** to <LAN prefix>: LAN-to-LAN traffic is routed, not translated. */
  lanToLan: 996,
  /**
   * iif lo ipproto icmp: the gateway's own ICMP to anywhere but itself and the LAN goes through tunnat,
   * which restores the public side in the quote of an error about a packet it translated into the LAN.
   * Looks up T+1, which has no fail-closed route: with no tunnat attached it falls through to the main
   * table (nothing is translated into the LAN then, so nothing needs restoring).
   */
  gatewayIcmp: 998,
  /** from <LAN prefix>: outbound LAN traffic goes into tunnat. */
  outbound: 1000,
} as const;

export const DEFAULT_ROUTING_TABLE = 7301;
export const DEFAULT_GATEWAY_PORTS: readonly [number, number] = [20000, 29999];

/** Metric of the fail-closed route: the worst possible, so any live `default dev <tun>` wins. */
export const FAIL_CLOSED_METRIC = 4294967295;
export const PROTO = String(ROUTE_PROTOCOL);
export const RESERVED_TABLES = new Set([0, 253, 254, 255]);

export interface RoutingConfig {
  /** TUN interface name, already created and opened by the caller. */
  tun: string;
  /** LAN prefixes (addresses as uint32). */
  internal: { network: number; prefixLength: number }[];
  /** WAN interface. */
  externalIface: string;
  /** uint32; the address translated flows use. */
  publicIp: number;
  /**
   * The rest of a static pool of public addresses: routed into the TUN like publicIp (inbound from the WAN,
   * hairpin from the LAN) and answered for on the WAN by proxy ARP.
   */
  extraPublicIps?: number[];
  /** The pool follows the WAN interface's addresses (masquerade over every address): a restart may find others. */
  dynamicPool?: boolean;
  /** True when the gateway has publicIp on an interface (masquerade or owned static). */
  publicIpOwned: boolean;
  /** Routing table T for outbound (fail closed); T+1 for inbound and the gateway's own ICMP (default 7301). */
  table: number;
  /** The gateway's own ephemeral port range; tunnat maps ports outside it (default [20000, 29999]). */
  gatewayPorts: [number, number];
  tunMtu?: number;
  /**
   * One gateway of a pair (`--ha-node`): the public address belongs to whichever gateway holds it now, so
   * the WAN's ARP answer for it is not part of the set-up; setProxyArp adds it while this gateway holds the
   * address and removes it when it goes (a standby never answers for an address it does not hold).
   */
  proxyArpByRole?: boolean;
  /** A gateway of a pair: its sync address and the peer's, kept off the default route (RULE_PREF.syncPath). */
  syncPath?: { local: number; peer: number };
}


/** One journalled change of the routing set-up (see src/host/journal.ts). */
export type RoutingStep = HostStep;

/** Everything needed to undo the set-up; the same object is the state file's content. */
export interface AppliedRouting {
  version: 1;
  /** Random; tells this run's state file from a later run's file at the same path. */
  runId: string;
  pid: number;
  /** With the pid, identifies the process even after pid reuse. */
  pidStartTime: string | null;
  netnsInode: number;
  stateFile: string;
  /**
   * The WAN link as it was at start. Namespace inodes are reused, so this tells a record of this
   * namespace from one of an earlier namespace that had the same inode.
   */
  wan: { ifindex: number; address: string | null };
  config: RoutingConfig;
  /** In the order applied; undone in reverse. */
  steps: RoutingStep[];
}

export type RoutingErrorCode = 'ROUTING_CONFLICT' | 'ALREADY_RUNNING' | 'ROUTING_FAILED' | 'ROUTING_INVALID';

export class RoutingError extends Error {
  constructor(
    readonly code: RoutingErrorCode,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = 'RoutingError';
  }
}

export function cidrText(c: { network: number; prefixLength: number }): string {
  return `${ipToString(c.network)}/${c.prefixLength}`;
}

export function parseAppliedRouting(v: unknown): AppliedRouting | null {
  if (!isRecord(v) || v['version'] !== 1 || !Array.isArray(v['steps']) || !isRecord(v['config']) || !isRecord(v['wan'])) return null;
  if (typeof v['runId'] !== 'string' || typeof v['pid'] !== 'number' || typeof v['stateFile'] !== 'string') return null;
  return v as unknown as AppliedRouting;
}
