import { Ipv4View, IPPROTO } from '../wire/ipv4.js';
import { LocalHostCounts, type HostCounts } from './host-counts.js';
import { UdpView } from '../wire/udp.js';
import { TcpView } from '../wire/tcp.js';
import { IcmpView } from '../wire/icmp.js';
import { FlowTable, FLOW_INBOUND, type RemoveReason } from '../conntrack/table.js';
import type { TcpStep } from '../conntrack/tcp.js';
import type { Timeouts } from '../conntrack/timeouts.js';
import { MappingTable, MAX_POOL } from './mappings.js';
import { BLOCK, PortPool, type Rng } from './ports.js';
import { PermissionTable } from './permissions.js';
import type { EgressPolicy, PortForward } from './policy.js';
import type { FtpAlg } from './alg-ftp.js';
import type { AlgRedirects } from './alg-redirect.js';
import { FragmentTracker, DEFAULT_FRAGMENT_LIMITS, type FragmentLimits } from './fragments.js';
import {
  DropReason, Filtering, FILTERING_NAMES, Path, PortChoice, Verdict, newNatStats,
  type FilteringName, type FlowObserver, type NatStats, type PacketSink,
} from './outcome.js';

/**
 * What every path through the translator shares: the tables, the configuration, the counters, the views
 * re-pointed at each packet, and the few fields a path leaves behind for the next step (the new flow's
 * entry, the target of an inbound packet) or for the trace (what was decided). The Translator
 * (translator.ts) is this plus the packet path itself; the slow paths (outbound.ts, inbound.ts,
 * hairpin.ts, icmp-error.ts, fragment-path.ts, refusal.ts) are functions over it, one file each, so
 * each reads top to bottom. The packet path is single-threaded: one context, one packet at a time.
 */

export interface Cidr {
  network: number;
  prefixLength: number;
}

export interface NatOptions {
  internal: readonly Cidr[];
  publicIp: number;
  /**
   * A pool of public addresses (the first must be publicIp); absent or one long: publicIp alone. Inside
   * hosts are paired with one of them (pool.ts).
   */
  publicPool?: readonly number[];
  /**
   * The pool follows the WAN interface's addresses (masquerade over every address): it may grow to
   * MAX_POOL addresses and shrink, through Translator.setPublicAddresses.
   */
  dynamicPool?: boolean;
  /** Static SNAT entries: hosts inside a prefix leave through that pool address (the most specific wins). */
  snat?: readonly SnatEntry[];
  /**
   * Whether the gateway itself has the public address (masquerade, or a static address it owns).
   * When it does not, nothing local can want an unmatched packet for it: those are dropped, because
   * written back they would be routed straight out of the WAN again.
   */
  publicIpOwned?: boolean;
  /** Range public ports are taken from (inclusive). */
  ports: readonly [number, number];
  /** Ports never mapped (the gateway's own ephemeral range). */
  excludedPorts?: readonly (readonly [number, number])[];
  maxFlows: number;
  timeouts: Timeouts;
  /** Hash seed (random in production). */
  seed: number;
  rng: Rng;
  /** RFC 4787 REQ-8 filtering; default address-dependent. */
  filtering?: FilteringName;
  forwards?: readonly PortForward[];
  /** Allowlist for new outbound flows; null allows everything. */
  egress?: EgressPolicy | null;
  /** Answer refused outbound flows with ICMP admin-prohibited / TCP RST instead of dropping silently. */
  egressReject?: boolean;
  /** Flows one LAN host may hold at once (0 = no limit). */
  maxFlowsPerHost?: number;
  /** Where hosts' flows are counted (shared between workers with --workers N; host-counts.ts). */
  hostCounts?: HostCounts;
  /** When a new flow cannot be made (table full, no ports, host limit), answer ICMP 3/13 (RFC 5508 §6). */
  icmpOnExhaustion?: boolean;
  /** Generated ICMP/RST packets per second at most (a flood must not become an ICMP flood). */
  generatedPerSecond?: number;
  fragments?: FragmentLimits;
  /**
   * This translator is data-plane worker `index` of `count` (--workers): it maps only the ports of its own
   * slice (sliceOwner in ports.ts), so no two workers can hand out one public port.
   */
  slice?: { index: number; count: number };
  /**
   * This translator is gateway `node` (0 or 1) of a pair (`--ha-node`): new mappings take ports only in its
   * half of the range (ports.ts nodeHalf); mappings replicated from the peer keep theirs.
   */
  haNode?: number | null;
  /**
   * Pick up a TCP connection from the LAN side in the middle (a segment with ACK and no flow), as
   * `nf_conntrack_tcp_loose` does: after a failover, connections the old active opened in its last moments
   * carry on. Never from the WAN side, which would open a path for unsolicited traffic.
   */
  tcpLoose?: boolean;
}

/** A static SNAT entry: the inside prefix, and the pool address it leaves through. */
export interface SnatEntry extends Cidr {
  address: number;
}

/** The protocols with a tracker and a port pool (every other protocol is translated by address only: generic.ts). */
const TRACKED = [IPPROTO.TCP, IPPROTO.UDP, IPPROTO.ICMP, IPPROTO.SCTP, IPPROTO.UDPLITE] as const;
export const NONE = -1;

function maskOf(prefix: number): number {
  return prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
}

/**
 * Which of `n` pool addresses an inside host hashes to: Fibonacci hashing (multiply by 2^32/φ, keep the
 * top bits), which spreads consecutive host addresses evenly and needs no seed, so it is the same after a
 * restart.
 */
export function poolSlot(host: number, n: number): number {
  return Math.floor(((Math.imul(host >>> 0, 0x9e3779b1) >>> 0) * n) / 4294967296);
}

/** The LAN endpoint a packet from outside reaches, as resolveTarget (inbound.ts) found it. */
export interface Target {
  addr: number;
  port: number;
  /** The mapping that admitted it, or NONE for a port forward. */
  mapping: number;
}

export class NatContext {
  // ---- Tables
  readonly flows: FlowTable;
  readonly mappings: MappingTable;
  /** Address-dependent filtering's permissions; null under the other filtering modes. */
  readonly permissions: PermissionTable | null;
  readonly fragments: FragmentTracker;

  // ---- Configuration (SIGHUP may change the mutable ones; see Translator.reconfigure)
  timeouts: Timeouts;
  readonly filtering: number;
  protected publicIp: number;
  /** More than one public address: the per-packet check for "addressed to us" looks further than publicIp. */
  multiAddress: boolean;
  /** The pool follows the WAN addresses (setPublicAddresses). */
  readonly dynamicPool: boolean;
  /**
   * The addresses a new host is paired with by hash: the static pool in its given order, or the live
   * addresses of a dynamic pool in numeric order (so a host's address does not depend on the order in
   * which addresses came).
   */
  protected pairing: Uint32Array;
  /** Static SNAT entries, most specific first. */
  readonly snatEntries: readonly SnatEntry[];
  readonly publicIpOwned: boolean;
  readonly rng: Rng;
  private readonly internalNet: Uint32Array;
  private readonly internalMask: Uint32Array;
  /** Port forwards on the primary address, by protocol: public port → index into forwardList, or NONE. */
  private readonly forwardIndex = new Map<number, Int32Array>();
  /** Forwards that name their public address: address → protocol → port index. */
  private readonly forwardAddrIndex = new Map<number, Map<number, Int32Array>>();
  /** The ports forwards hold in port pools (kept from new mappings), to let go when forwards or addresses change. */
  private forwardBlocks: { pool: PortPool; port: number }[] = [];
  forwardList: readonly PortForward[] = [];
  egress: EgressPolicy | null;
  egressReject: boolean;
  /** Gateway 0 or 1 of a pair (NatOptions.haNode), or null. */
  readonly haNode: number | null;
  readonly tcpLoose: boolean;
  /**
   * A standby gateway of a pair: it holds the replicated flows but forwards nothing (every packet is a
   * counted drop), since it does not hold the public address it would translate to.
   */
  standby = false;
  maxPerHost: number;
  icmpOnExhaustion: boolean;

  // ---- Accounting
  readonly stats: NatStats = newNatStats();
  /** Where the next search for a reclaimable port starts in the flow table (port-reclaim.ts). */
  reclaimCursor = 0;
  /** Flows each LAN host opened (counted whether or not a limit is set, so a limit set later starts from the truth). */
  readonly hostFlows: HostCounts;
  readonly observers: FlowObserver[] = [];
  /** Token bucket for generated packets (refusal.ts). */
  readonly genRate: number;
  genTokens: number;
  genLast = 0;
  /** Where generated packets and released fragments go; set by the data plane. */
  sink: PacketSink | null = null;

  // ---- The packet in hand: views re-pointed at every packet, and what it came with
  readonly ip = new Ipv4View();
  readonly udp = new UdpView();
  readonly tcp = new TcpView();
  readonly icmp = new IcmpView();
  /** A second IPv4 view: the header quoted inside an ICMP error, or a released fragment. */
  readonly innerIp = new Ipv4View();
  readonly step: TcpStep = { state: 0, detail: 0, valid: true };
  /**
   * The packet came with a partial transport checksum (virtio NEEDS_CSUM: the field holds the
   * pseudo-header sum, and whoever sends it on completes the checksum over the data).
   */
  partial = false;
  /** The packet is a GSO superpacket (set by the data plane; an ALG does not rewrite those). */
  gso = false;
  /**
   * How much a forwarded packet grew (or shrank, if negative): an ALG rewrote its payload. Reset per
   * packet; the data plane writes `len + lengthDelta` bytes.
   */
  lengthDelta = 0;
  /** Bytes a packet may grow to in its slot, from its IP header on (0: up to the end of the buffer). */
  packetRoom = 0;
  /** The FTP ALG, when switched on (alg-ftp.ts enableFtpAlg). */
  alg: FtpAlg | null = null;
  /** With --workers N and the ALG: FTP data endpoints another worker holds (alg-redirect.ts). */
  algRedirects: AlgRedirects | null = null;
  /** Verdict.HANDOFF: the worker to hand the packet to. */
  handoffTo = NONE;

  // ---- What a slow path leaves for the next step (valid only right after the call that set it)
  /** Setup.CREATED: the new flow's entry (its original direction). */
  setupEntry = NONE;
  /** Setup.REFUSED / Resolved.REFUSED: the DropReason. */
  setupReason = 0;
  readonly target: Target = { addr: 0, port: 0, mapping: NONE };

  /**
   * What the last process() call decided, for the trace and pcap taps: the entry it used (NONE if none),
   * whether it created the flow, how the port was chosen, the drop reason (NONE if forwarded) and the path.
   * Plain fields, overwritten per packet: reading them costs the hot path nothing.
   */
  lastEntry = NONE;
  lastCreated = false;
  lastPortChoice: number = PortChoice.NONE;
  lastDrop = NONE;
  lastPath = NONE;

  constructor(opts: NatOptions) {
    this.timeouts = opts.timeouts;
    this.publicIp = opts.publicIp >>> 0;
    this.publicIpOwned = opts.publicIpOwned ?? true;
    this.rng = opts.rng;
    this.internalNet = new Uint32Array(opts.internal.length);
    this.internalMask = new Uint32Array(opts.internal.length);
    opts.internal.forEach((c, i) => {
      this.internalMask[i] = maskOf(c.prefixLength);
      this.internalNet[i] = (c.network & this.internalMask[i]!) >>> 0;
    });
    this.filtering = FILTERING_NAMES.indexOf(opts.filtering ?? 'address');
    if (this.filtering < 0) throw new RangeError(`unknown filtering ${opts.filtering}`);
    this.flows = new FlowTable(opts.maxFlows, opts.seed);
    const [lo, hi] = opts.ports;
    const excluded = opts.excludedPorts ?? [];
    const slice = opts.slice ?? null;
    if (slice && !(Number.isInteger(slice.count) && slice.count >= 1 && Number.isInteger(slice.index) && slice.index >= 0 && slice.index < slice.count)) {
      throw new RangeError(`worker slice ${slice.index}/${slice.count} is impossible`);
    }
    const node = opts.haNode ?? null;
    if (node !== null && node !== 0 && node !== 1) throw new RangeError(`gateway ${node} of a pair is impossible (0 or 1)`);
    this.haNode = node;
    this.tcpLoose = opts.tcpLoose ?? false;
    const addresses = opts.publicPool && opts.publicPool.length > 0 ? opts.publicPool.map((a) => a >>> 0) : [this.publicIp];
    if (addresses[0] !== this.publicIp) throw new RangeError('the first address of the public pool must be publicIp');
    if (new Set(addresses).size !== addresses.length) throw new RangeError('the public pool names an address twice');
    this.dynamicPool = opts.dynamicPool ?? false;
    this.multiAddress = addresses.length > 1 || this.dynamicPool;
    this.pairing = this.dynamicPool ? Uint32Array.from(addresses).sort() : Uint32Array.from(addresses);
    this.snatEntries = [...(opts.snat ?? [])].sort((a, b) => b.prefixLength - a.prefixLength);
    for (const e of this.snatEntries) {
      if (!addresses.includes(e.address >>> 0)) throw new RangeError('a static SNAT entry names an address outside the public pool');
    }
    this.mappings = new MappingTable(opts.maxFlows, opts.seed ^ 0x5bd1e995, (p) =>
      // ICMP identifiers are not ports: the whole 16-bit space is usable.
      p === IPPROTO.ICMP ? new PortPool(0, 65535, [], slice, node) : new PortPool(lo, hi, excluded, slice, node), TRACKED, addresses, this.dynamicPool ? MAX_POOL : 0);
    this.permissions = this.filtering === Filtering.ADDRESS ? new PermissionTable(opts.maxFlows * 2, opts.seed ^ 0x27d4eb2f) : null;
    this.setForwards(opts.forwards ?? []);
    this.egress = opts.egress ?? null;
    this.egressReject = opts.egressReject ?? false;
    this.maxPerHost = opts.maxFlowsPerHost ?? 0;
    this.hostFlows = opts.hostCounts ?? new LocalHostCounts();
    this.icmpOnExhaustion = opts.icmpOnExhaustion ?? true;
    this.genRate = opts.generatedPerSecond ?? 100;
    this.genTokens = this.genRate;
    this.fragments = new FragmentTracker(opts.fragments ?? DEFAULT_FRAGMENT_LIMITS);
    this.flows.onRemove = (flow, reason) => this.flowRemoved(flow, reason);
  }

  get publicAddress(): number {
    return this.publicIp;
  }

  /** The public addresses, the first being publicAddress. */
  get publicAddresses(): number[] {
    const live = this.mappings.liveAddresses();
    // The primary first, as the static pool has it.
    const i = live.indexOf(this.publicIp);
    if (i > 0) live.unshift(...live.splice(i, 1));
    return live;
  }

  /** Whether `addr` is one of the public addresses (the per-packet test: one compare for a single address). */
  isPublic(addr: number): boolean {
    return addr === this.publicIp || (this.multiAddress && this.mappings.addressIndex(addr) >= 0);
  }

  /**
   * The public address a new mapping of inside host `host` goes on (paired pooling, RFC 4787 REQ-2): the
   * one it already holds while it has any mapping; else the address of the most specific static SNAT
   * entry covering it; else one picked by a hash of the host address, so that a host comes back to the
   * same address after its mappings expired or the router restarted (as the kernel's --persistent does).
   */
  addressFor(host: number): number {
    const held = this.mappings.pairedAddress(host);
    if (held >= 0) return held;
    if (!this.multiAddress) return this.publicIp;
    for (const e of this.snatEntries) {
      if (((host & maskOf(e.prefixLength)) >>> 0) === ((e.network & maskOf(e.prefixLength)) >>> 0)) return e.address >>> 0;
    }
    const a = this.pairing;
    return a[poolSlot(host, a.length)]!;
  }

  isInternal(addr: number): boolean {
    const n = this.internalNet.length;
    for (let i = 0; i < n; i++) if (((addr & this.internalMask[i]!) >>> 0) === this.internalNet[i]) return true;
    return false;
  }

  /** Install the port forwards (replacing earlier ones); a forwarded port is never handed out as a mapping. */
  protected setForwards(list: readonly PortForward[]): void {
    for (const f of this.forwardList) {
      const idx = !f.publicAddress ? this.forwardIndex.get(f.protocol) : this.forwardAddrIndex.get(f.publicAddress >>> 0)?.get(f.protocol);
      idx?.fill(NONE, f.publicPort, f.publicPort + 1);
    }
    this.forwardList = list;
    list.forEach((f, i) => {
      let byProto = this.forwardIndex;
      if (f.publicAddress) {
        const a = f.publicAddress >>> 0;
        if (!this.forwardAddrIndex.has(a)) this.forwardAddrIndex.set(a, new Map());
        byProto = this.forwardAddrIndex.get(a)!;
      }
      let idx = byProto.get(f.protocol);
      if (!idx) byProto.set(f.protocol, (idx = new Int32Array(65536).fill(NONE)));
      idx[f.publicPort] = i;
    });
    this.reserveForwardPorts();
  }

  /**
   * Keep every forwarded port from new mappings in the port pool of the address it is on now (again
   * after the public addresses changed: the primary may be another address, a named one may have come).
   */
  protected reserveForwardPorts(): void {
    for (const b of this.forwardBlocks) b.pool.setBlocked(b.port, BLOCK.FORWARD, false);
    this.forwardBlocks = [];
    for (const f of this.forwardList) {
      const pool = this.mappings.poolAt(f.protocol, f.publicAddress || this.publicIp);
      if (!pool) continue;
      pool.setBlocked(f.publicPort, BLOCK.FORWARD, true);
      this.forwardBlocks.push({ pool, port: f.publicPort });
    }
  }

  /** The port forward on public address `to`, port `port` (index into forwardList), or NONE. */
  forwardAt(proto: number, port: number, to: number = this.publicIp): number {
    to >>>= 0;
    if (this.forwardAddrIndex.size > 0) {
      const f = this.forwardAddrIndex.get(to)?.get(proto)?.[port] ?? NONE;
      if (f >= 0) return f;
    }
    if (to !== this.publicIp) return NONE;
    const idx = this.forwardIndex.get(proto);
    return idx ? idx[port]! : NONE;
  }

  /** Whether the gateway's stack, rather than the NAT, owns a public port (ports the NAT never maps). */
  gatewayOwnsPort(proto: number, port: number, addr = this.publicIp): boolean {
    const pool = this.mappings.poolAt(proto, addr) ?? this.mappings.pool(proto);
    return !pool || pool.allowed[port] === 0;
  }

  // ---- Verdicts: every path ends in one of these three

  drop(reason: number): number {
    this.stats.drops[reason]!++;
    this.lastDrop = reason;
    return Verdict.DROP;
  }

  /**
   * Count the packet on its path and write it back. The gateway routed it once into the TUN and will route
   * it again: give one hop back, so the gateway counts as a single hop. (The established path does the
   * same in one checksum update with the address rewrite: see rewriteIpv4Header.)
   */
  forward(path: number, len: number): number {
    const ttl = this.ip.ttl;
    if (ttl < 255) this.ip.setTtlWithChecksum(ttl + 1);
    return this.countForward(path, len);
  }

  /** forward() for a packet whose hop was already given back with its rewrite. */
  countForward(path: number, len: number): number {
    this.lastPath = path;
    this.stats.packets[path]!++;
    this.stats.bytes[path]! += len;
    return Verdict.FORWARD;
  }

  /** A packet from outside no flow claims: the gateway's own, if it owns the address; otherwise nobody's. */
  toGateway(len: number): number {
    return this.publicIpOwned ? this.forward(Path.LOCAL, len) : this.drop(DropReason.NO_MAPPING);
  }

  // ---- A flow's end: the inverse of commitFlow (flow-setup.ts)

  /** The LAN host a flow belongs to: the original source of an outbound flow, else the reply source. */
  lanHost(flow: number): number {
    const t = this.flows;
    return t.flags[flow]! & FLOW_INBOUND ? t.tSrc[flow * 2 + 1]! : t.tSrc[flow * 2]!;
  }

  /** The outside address a flow's mapping talks to, as the mapping sees it (the public address for hairpins). */
  peerAddress(flow: number): number {
    const t = this.flows;
    return t.flags[flow]! & FLOW_INBOUND ? t.tSrc[flow * 2]! : t.tDst[flow * 2]!;
  }

  /** Called by the flow table for every removal, whatever the reason: give back what the flow held. */
  private flowRemoved(flow: number, reason: RemoveReason): void {
    for (const o of this.observers) o.removed?.(flow, reason);
    const t = this.flows;
    const m = t.mapping[flow]!;
    const m2 = t.mapping2[flow]!;
    const perm = this.permissions;
    if (perm) {
      // The flow's permissions: its own mapping towards the peer it talks to, and (inbound/hairpin)
      // the target mapping towards the same peer.
      const peer = this.peerAddress(flow);
      if (m >= 0) perm.remove(m, peer);
      if (m2 >= 0) perm.remove(m2, peer);
    }
    if (m >= 0) this.mappings.unref(m);
    if (m2 >= 0) this.mappings.unref(m2);
    if (!(t.flags[flow]! & FLOW_INBOUND)) {
      // Only flows a host opened count: senders outside must not be able to use up its allowance.
      this.hostFlows.add(this.lanHost(flow), -1);
    }
    this.stats.flowsRemoved[reason]++;
  }
}
