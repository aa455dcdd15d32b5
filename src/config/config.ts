import { availableParallelism } from 'node:os';
import type { Cidr } from '../wire/addr.js';
import type { Timeouts } from '../conntrack/timeouts.js';
import type { FilteringName } from '../nat/translator.js';
import type { PortForward, EgressRule } from '../nat/policy.js';
import type { SnatEntry } from '../nat/context.js';

/**
 * What the router runs with, whichever engine runs it (src/config/resolve.ts builds it from defaults,
 * the config file and the flags). Below the CLI, the data plane and the kernel engine, so all of them
 * can take a RouterConfig without depending on each other.
 */

/** A bad setting, named by its field; the CLI turns it into exit code 2. */
export class ConfigError extends Error {
  readonly code = 'BAD_CONFIG';
  constructor(readonly field: string, message: string) {
    super(`${field}: ${message}`);
    this.name = 'ConfigError';
  }
}

/**
 * Why the per-packet views (the trace, --pcap) exist only in the userspace engine, completing "the
 * per-packet trace …" / "--pcap …"; the kernel engine's refusals and the CLI say it in these words.
 */
/** The kernel's MASQUERADE takes the one source address routing picks; a pool that follows the WAN is tunnat's. */
export const MASQUERADE_ALL_USERSPACE =
  'needs the userspace engine (--engine userspace): the kernel\'s MASQUERADE uses the one address routing picks (for a fixed pool, give --public-ip A,B or a range)';
export const USERSPACE_ONLY = 'needs the userspace engine (--engine userspace): the kernel translates packets without showing them to tunnat';

export interface Endpoint {
  host: string;
  port: number;
}

export interface RouterConfig {
  internal: Cidr[];
  external: string;
  /** Static SNAT address; null = masquerade (follow the external interface's primary address). */
  publicIp: number | null;
  /**
   * Masquerade (publicIp null) over the external interface's primary IPv4 address, or over all of them
   * as a pool that follows the interface (`--masquerade all`).
   */
  masquerade: 'primary' | 'all';
  /** Every static public address, publicIp first (one long for a single address; empty for masquerade). */
  publicPool: number[];
  /** Static SNAT entries (`--snat PREFIX=ADDR`): that inside prefix leaves through that pool address. */
  snat: SnatEntry[];
  tun: string;
  /** Public ports mappings may use. */
  ports: [number, number];
  /** The gateway's own ephemeral ports (net.ipv4.ip_local_port_range while tunnat runs); never mapped. */
  gatewayPorts: [number, number];
  http: Endpoint | null;
  /** An extra HTTP listener on a unix socket (how the lab reaches a router inside a namespace). */
  httpSocket: string | null;
  maxFlows: number;
  timeouts: Timeouts;
  /** Routing table for outbound traffic; table + 1 is used for inbound. */
  table: number;
  batch: number;
  /** Microseconds the data plane keeps reading after the last packet before sleeping in poll; 0: off. */
  busyPoll: number;
  /** Data-plane workers, each reading its own queue of a multi-queue TUN (1: one loop, no threads; default one per core). */
  workers: number;
  logLevel: 'debug' | 'info' | 'warn' | 'error';
  /** Who translates: tunnat itself, the kernel's netfilter, or tunnat with the kernel as fallback. */
  engine: 'userspace' | 'kernel' | 'auto';
  /** Kernel engine only: which firewall tool writes the rules. */
  backend: 'auto' | 'nft' | 'iptables';
  /** RFC 4787 REQ-8 filtering of inbound packets to a mapping. */
  filtering: FilteringName;
  /** Port forwards (DNAT), `tcp:8080=192.168.1.10:80`. */
  forwards: PortForward[];
  /** Server ports the FTP ALG watches (`--alg ftp[:PORT]`); empty: off. */
  algFtp: number[];
  /** Allowlist for new outbound flows; null allows everything. */
  allowEgress: EgressRule[] | null;
  /** Refused outbound flows get a TCP RST / ICMP administratively prohibited instead of silence. */
  egressReject: boolean;
  /** Flows one LAN host may hold at once; 0 = no limit. */
  maxFlowsPerHost: number;
  /** Answer ICMP 3/13 when a new flow cannot be made (table full, ports exhausted, host limit). */
  icmpErrors: boolean;
  /** Write every packet before and after translation to this pcapng file (null: off). */
  pcap: string | null;
  /** Bytes kept of each captured packet: 'headers' (IP and transport headers only), or N (0: whole packets). */
  pcapSnaplen: 'headers' | number;
  /** Rotate the pcap file before it passes this many megabytes (10^6 bytes, as tcpdump -C); 0: never. */
  pcapSize: number;
  /** Pcap files kept when rotating: FILE, FILE.1 … FILE.(N-1), newest first (as tcpdump -W). */
  pcapFiles: number;
  /** Take GSO superpackets and partial checksums from the TUN (virtio-net header offloads). */
  offload: boolean;
  /** Flow table saved here on SIGTERM (gateway left failed closed) and restored on start; null: off. */
  stateFile: string | null;
  /** Run the data plane as this unprivileged user (privilege separation); null: one root process. */
  user: string | null;
  /**
   * One gateway (0 or 1) of a pair that shares --public-ip (docs/ha.md): it translates only while it holds
   * that address on --external (keepalived moves it), maps new ports in its half of --ports, and picks up
   * TCP connections from the LAN side. null: a single gateway.
   */
  haNode: number | null;
  /** Where this gateway's flow-state sync listens (on the sync link); null: no sync. */
  haSync: { address: number; port: number } | null;
  /** The other gateway's sync endpoint. */
  haPeer: { address: number; port: number } | null;
  /** File holding the pair's shared key (at least 16 bytes) that authenticates every sync message. */
  haKey: string | null;
}

export const DEFAULTS = {
  tun: 'tunnat0',
  ports: [1024, 65535] as [number, number],
  gatewayPorts: [20000, 29999] as [number, number],
  http: { host: '127.0.0.1', port: 9100 },
  maxFlows: 262144,
  table: 7301,
  batch: 64,
  busyPoll: 50,
  /** One data-plane worker per core (`--workers auto`), at most 64. */
  get workers(): number {
    return Math.max(1, Math.min(64, availableParallelism()));
  },
  logLevel: 'info' as const,
  pcapSnaplen: 'headers' as const,
  pcapSize: 100,
  pcapFiles: 10,
};

/** Every key the config file may hold, with the flag of the same meaning. */
export const CONFIG_KEYS = [
  'internal', 'external', 'publicIp', 'masquerade', 'snat', 'tun', 'ports', 'gatewayPorts', 'http', 'httpSocket', 'maxFlows',
  'timeouts', 'table', 'batch', 'busyPoll', 'workers', 'logLevel', 'engine', 'backend', 'filtering', 'forward', 'alg', 'allowEgress',
  'egressReject', 'maxFlowsPerHost', 'icmpErrors', 'pcap', 'pcapSnaplen', 'pcapSize', 'pcapFiles', 'offload', 'state', 'user',
  'haNode', 'haSync', 'haPeer', 'haKey',
] as const;
