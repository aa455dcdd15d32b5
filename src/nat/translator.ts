import { Ipv4View, Ipv4Verdict, IPPROTO } from '../wire/ipv4.js';
import { UdpView, UdpVerdict } from '../wire/udp.js';
import { TcpView, TcpVerdict, TCP_FLAGS } from '../wire/tcp.js';
import { IcmpView, IcmpVerdict, ICMP_TYPE, ICMP_UNREACH_CODE } from '../wire/icmp.js';
import { csumUpdate16, csumUpdate32, sum16, fold16 } from '../wire/checksum.js';
import { emitIpv4IcmpError, emitIpv4Tcp, ipv4IcmpErrorLength } from '../wire/build.js';
import {
  FlowTable, DIR_ORIGINAL, DIR_REPLY, FLOW_ASSURED, FLOW_SEEN_REPLY, FLOW_INBOUND, type RemoveReason,
} from '../conntrack/table.js';
import { tcpStep, tcpTimeout, tcpIsAssured, tcpMayCreate, tcpPacketClass, TcpClass, TcpState, type TcpStep } from '../conntrack/tcp.js';
import type { Timeouts } from '../conntrack/timeouts.js';
import { MappingTable } from './mappings.js';
import { PortPool, type Rng } from './ports.js';
import { PermissionTable } from './permissions.js';
import { EgressPolicy, type PortForward } from './policy.js';
import { FragmentTracker, FragDecision, DEFAULT_FRAGMENT_LIMITS, type FragmentLimits, type FragEntry } from './fragments.js';

/**
 * The NAT engine: one call per packet, in place, no allocation on the common paths.
 *
 * Every packet that reaches tunnat came out of the gateway's routing into the TUN, and whatever tunnat
 * writes back is routed again. So:
 * - a packet of a known flow, from either side, is rewritten to the inverse of the other direction's
 *   tuple (netfilter's rule: each side sees the inverse of what the other side sends);
 * - a new packet from the LAN gets a mapping and a flow (after the egress policy and the limits); if
 *   it is addressed to the public address it is hairpinned to the LAN host behind the target port;
 * - a new packet from outside for the public address reaches a LAN host through a port forward or,
 *   as the filtering mode allows, through an existing mapping; else it belongs to the gateway itself
 *   (written back unchanged, the local table delivers it) or, on a port the NAT hands out, is dropped;
 * - anything else is dropped and counted by reason. Nothing from the LAN ever leaves untranslated.
 * Every packet written back gets its TTL raised by one, because the gateway routes it twice (into the
 * TUN and out of it) and must count as a single hop.
 */
export const Verdict = { FORWARD: 0, DROP: 1, HELD: 2 } as const;

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
} as const;
export const DROP_REASON_NAMES = [
  'malformed', 'no-mapping', 'table-full', 'ports-exhausted', 'fragment', 'unsupported-protocol', 'tcp-flags',
  'checksum', 'not-ours', 'ttl', 'filtered', 'egress-policy', 'host-limit',
] as const;

/** Where a forwarded packet went; index into NatStats.packets/bytes. */
export const Path = { OUTBOUND: 0, INBOUND: 1, LOCAL: 2, HAIRPIN: 3 } as const;
export const PATH_NAMES = ['outbound', 'inbound', 'local', 'hairpin'] as const;

/** RFC 4787 REQ-8 filtering behaviours. */
export const Filtering = { ENDPOINT: 0, ADDRESS: 1, ADDRESS_PORT: 2 } as const;
export const FILTERING_NAMES = ['endpoint', 'address', 'address-port'] as const;
export type FilteringName = (typeof FILTERING_NAMES)[number];

export interface NatStats {
  /** Packets and bytes forwarded, by Path. */
  readonly packets: Float64Array;
  readonly bytes: Float64Array;
  readonly drops: Float64Array;
  flowsCreated: number;
  /** Flows removed, by reason name. */
  readonly flowsRemoved: Record<RemoveReason, number>;
  icmpErrorsTranslated: number;
  /** ICMP errors and TCP resets tunnat generated itself (out of resources, egress rejects). */
  generated: number;
  /** Generated packets not sent: rate limit, or no room in the batch. */
  generatedSuppressed: number;
}

/**
 * Flow observers hear about flows (metrics per LAN host, `conntrack --events`, the trace). Called only
 * when a flow is created, changes TCP state, or is removed — never per packet.
 */
export interface FlowObserver {
  created?(flow: number, now: number): void;
  /** A TCP flow changed state (`from` is the old TcpState). */
  updated?(flow: number, from: number, now: number): void;
  /** Called before the slot is freed: the flow's tuples and counters are still readable. */
  removed?(flow: number, reason: RemoveReason): void;
}

/** How the public port of the last new flow was chosen (for the trace). */
export const PortChoice = { NONE: 0, EXISTING: 1, PRESERVED: 2, REMAPPED: 3, FORWARD: 4 } as const;
export const PORT_CHOICE_NAMES = ['none', 'existing mapping', 'preserved', 'remapped', 'port forward'] as const;

/** Where generated packets go: the data plane hands out room in its write batch. */
export interface PacketSink {
  readonly buf: Buffer;
  /** Offset of room for a packet of up to `maxLen` bytes, or -1 if the batch has none left. */
  alloc(maxLen: number): number;
  /** Queue the packet written at `off` for sending. */
  commit(off: number, len: number): void;
}

export interface Cidr {
  network: number;
  prefixLength: number;
}

export interface NatOptions {
  internal: readonly Cidr[];
  publicIp: number;
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
  /** When a new flow cannot be made (table full, no ports, host limit), answer ICMP 3/13 (RFC 5508 §6). */
  icmpOnExhaustion?: boolean;
  /** Generated ICMP/RST packets per second at most (a flood must not become an ICMP flood). */
  generatedPerSecond?: number;
  fragments?: FragmentLimits;
}

const TRACKED = [IPPROTO.TCP, IPPROTO.UDP, IPPROTO.ICMP] as const;
/** How many slots one early-drop attempt looks at before giving up. */
const EARLY_DROP_BUDGET = 128;
const NONE = -1;

function maskOf(prefix: number): number {
  return prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
}

export class Translator {
  readonly flows: FlowTable;
  readonly mappings: MappingTable;
  readonly stats: NatStats;
  readonly fragments: FragmentTracker;
  timeouts: Timeouts;
  readonly filtering: number;
  private publicIp: number;
  private readonly publicIpOwned: boolean;
  private readonly rng: Rng;
  private readonly internalNet: Uint32Array;
  private readonly internalMask: Uint32Array;
  private readonly permissions: PermissionTable | null;
  /** Port forwards by protocol: public port → index into forwardList, or -1. */
  private readonly forwardIndex = new Map<number, Int32Array>();
  forwardList: readonly PortForward[] = [];
  private egress: EgressPolicy | null;
  private egressReject: boolean;
  private maxPerHost: number;
  private readonly hostFlows = new Map<number, number>();
  private icmpOnExhaustion: boolean;
  private readonly genRate: number;
  private genTokens: number;
  private genLast = 0;
  /** Where generated packets go; set by the data plane. */
  sink: PacketSink | null = null;

  // Reusable views: re-pointed at every packet.
  private readonly ip = new Ipv4View();
  private readonly udp = new UdpView();
  private readonly tcp = new TcpView();
  private readonly icmp = new IcmpView();
  private readonly heldIp = new Ipv4View();
  private readonly step: TcpStep = { state: 0, detail: 0, valid: true };
  readonly observers: FlowObserver[] = [];

  /**
   * What the last process() call decided, for the trace and pcap taps: the entry it used (-1 if none),
   * whether it created the flow, how the port was chosen, the drop reason (-1 if forwarded) and the path.
   * Plain fields, overwritten per packet: reading them costs the hot path nothing.
   */
  lastEntry = -1;
  lastCreated = false;
  lastPortChoice: number = PortChoice.NONE;
  lastDrop = -1;
  lastPath = -1;
  /**
   * The packet in hand came with a partial transport checksum (virtio NEEDS_CSUM: the field holds the
   * pseudo-header sum, and whoever sends it on completes the checksum over the data).
   */
  private partial = false;

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
    this.mappings = new MappingTable(opts.maxFlows, opts.seed ^ 0x5bd1e995, (p) =>
      // ICMP identifiers are not ports: the whole 16-bit space is usable.
      p === IPPROTO.ICMP ? new PortPool(0, 65535) : new PortPool(lo, hi, excluded), TRACKED);
    this.permissions = this.filtering === Filtering.ADDRESS ? new PermissionTable(opts.maxFlows * 2, opts.seed ^ 0x27d4eb2f) : null;
    this.setForwards(opts.forwards ?? []);
    this.egress = opts.egress ?? null;
    this.egressReject = opts.egressReject ?? false;
    this.maxPerHost = opts.maxFlowsPerHost ?? 0;
    this.icmpOnExhaustion = opts.icmpOnExhaustion ?? true;
    this.genRate = opts.generatedPerSecond ?? 100;
    this.genTokens = this.genRate;
    this.fragments = new FragmentTracker(opts.fragments ?? DEFAULT_FRAGMENT_LIMITS);
    this.stats = {
      packets: new Float64Array(PATH_NAMES.length),
      bytes: new Float64Array(PATH_NAMES.length),
      drops: new Float64Array(DROP_REASON_NAMES.length),
      flowsCreated: 0,
      flowsRemoved: { expired: 0, 'early-drop': 0, flush: 0, closed: 0 },
      icmpErrorsTranslated: 0,
      generated: 0,
      generatedSuppressed: 0,
    };
    this.flows.onRemove = (flow, reason) => this.flowRemoved(flow, reason);
  }

  /** Install the port forwards (replacing earlier ones); a forwarded port is never handed out as a mapping. */
  private setForwards(list: readonly PortForward[]): void {
    for (const f of this.forwardList) {
      this.forwardIndex.get(f.protocol)?.fill(NONE, f.publicPort, f.publicPort + 1);
      this.mappings.pool(f.protocol)?.setAllowed(f.publicPort, true);
    }
    this.forwardList = list;
    list.forEach((f, i) => {
      let idx = this.forwardIndex.get(f.protocol);
      if (!idx) this.forwardIndex.set(f.protocol, (idx = new Int32Array(65536).fill(NONE)));
      idx[f.publicPort] = i;
      this.mappings.pool(f.protocol)?.setAllowed(f.publicPort, false);
    });
  }

  /**
   * SIGHUP: change what can change without touching a flow. Timeouts apply from each flow's next packet;
   * the egress policy, limits and forwards apply to new flows. Flows and mappings are kept as they are.
   */
  reconfigure(o: {
    timeouts?: Timeouts;
    egress?: EgressPolicy | null;
    egressReject?: boolean;
    maxFlowsPerHost?: number;
    icmpOnExhaustion?: boolean;
    forwards?: readonly PortForward[];
  }): void {
    if (o.timeouts) this.timeouts = o.timeouts;
    if (o.egress !== undefined) this.egress = o.egress;
    if (o.egressReject !== undefined) this.egressReject = o.egressReject;
    if (o.maxFlowsPerHost !== undefined) this.maxPerHost = o.maxFlowsPerHost;
    if (o.icmpOnExhaustion !== undefined) this.icmpOnExhaustion = o.icmpOnExhaustion;
    if (o.forwards) this.setForwards(o.forwards);
  }

  get publicAddress(): number {
    return this.publicIp;
  }

  /**
   * Masquerade: the WAN address changed. New flows use the new address; flows on the old one can no
   * longer receive replies, so they are flushed (what the kernel's MASQUERADE does on a change).
   */
  setPublicAddress(addr: number): number {
    addr >>>= 0;
    if (addr === this.publicIp) return 0;
    const old = this.publicIp;
    this.publicIp = addr;
    // Fragments whose first fragment was translated to the old address must not follow with it.
    this.fragments.clear();
    return this.flows.flush((f) => {
      const m = this.flows.mapping[f]!;
      return m < 0 || this.mappings.extAddr[m] === old;
    });
  }

  isInternal(addr: number): boolean {
    const n = this.internalNet.length;
    for (let i = 0; i < n; i++) if (((addr & this.internalMask[i]!) >>> 0) === this.internalNet[i]) return true;
    return false;
  }

  /** Expire idle flows, visiting at most `budget` slots, and fragment sets that never completed. */
  sweep(now: number, budget: number): number {
    if (this.fragments.size > 0) this.fragments.expire(now);
    return this.flows.sweep(now, budget);
  }

  /** Flows a LAN host holds. */
  flowsOfHost(addr: number): number {
    return this.hostFlows.get(addr >>> 0) ?? 0;
  }

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
      // Counted whether or not a limit is set, so a limit switched on by SIGHUP starts from the truth.
      // Only flows a host opened count: senders outside must not be able to use up its allowance.
      const host = this.lanHost(flow);
      const n = (this.hostFlows.get(host) ?? 1) - 1;
      if (n <= 0) this.hostFlows.delete(host);
      else this.hostFlows.set(host, n);
    }
    this.stats.flowsRemoved[reason]++;
  }

  /** The LAN host a flow belongs to: the original source of an outbound flow, else the reply source. */
  private lanHost(flow: number): number {
    const t = this.flows;
    return t.flags[flow]! & FLOW_INBOUND ? t.tSrc[flow * 2 + 1]! : t.tSrc[flow * 2]!;
  }

  /** The outside address a flow's mapping talks to, as the mapping sees it (the public address for hairpins). */
  private peerAddress(flow: number): number {
    const t = this.flows;
    return t.flags[flow]! & FLOW_INBOUND ? t.tSrc[flow * 2]! : t.tDst[flow * 2]!;
  }

  private drop(reason: number): number {
    this.stats.drops[reason]!++;
    this.lastDrop = reason;
    return Verdict.DROP;
  }

  private forward(path: number, len: number): number {
    this.lastPath = path;
    this.stats.packets[path]!++;
    this.stats.bytes[path]! += len;
    // The gateway routed this packet once into the TUN and will route it again: give one hop back.
    const ttl = this.ip.ttl;
    if (ttl < 255) this.ip.setTtlWithChecksum(ttl + 1);
    return Verdict.FORWARD;
  }

  /** An inbound packet no flow claims: the gateway's own, if it owns the address; otherwise nobody's. */
  private toGateway(len: number): number {
    return this.publicIpOwned ? this.forward(Path.LOCAL, len) : this.drop(DropReason.NO_MAPPING);
  }

  /** Whether the gateway's stack, rather than the NAT, owns a public port (ports the NAT never maps). */
  private gatewayOwnsPort(proto: number, port: number): boolean {
    const pool = this.mappings.pool(proto);
    return !pool || pool.allowed[port] === 0;
  }

  /**
   * Translate one packet in place. `len` is what the TUN read returned (never trusted beyond the buffer).
   * Returns Verdict.FORWARD (write the packet back; its length is unchanged), Verdict.DROP, or
   * Verdict.HELD (a fragment kept until its first fragment arrives; sent later through the sink).
   */
  process(buf: Uint8Array, off: number, len: number, now: number, csumPartial = false): number {
    this.partial = csumPartial;
    const ip = this.ip;
    this.lastEntry = NONE;
    this.lastCreated = false;
    this.lastPortChoice = PortChoice.NONE;
    this.lastDrop = NONE;
    this.lastPath = NONE;
    const verdict = ip.wrap(buf, off, len);
    if (verdict !== Ipv4Verdict.OK) {
      // IPv6 is well-formed, just not translated (tunnat is an IPv4 NAT); everything else is garbage.
      const v6 = verdict === Ipv4Verdict.BAD_VERSION && len > 0 && buf[off]! >>> 4 === 6;
      return this.drop(v6 ? DropReason.UNSUPPORTED_PROTOCOL : DropReason.MALFORMED);
    }
    // Straight from the bytes wrap() validated: the view's getters are not always inlined this deep.
    const src = rd32(buf, off + 12);
    const dst = rd32(buf, off + 16);
    const fromInside = this.isInternal(src);
    const toPublic = dst === this.publicIp;
    if (!fromInside && !toPublic) {
      // Neither side is ours to translate. The routing sends the gateway's own ICMP to the WAN through the
      // TUN (rule 998), so that its errors about packets tunnat translated into the LAN do not quote LAN
      // addresses; nothing from outside reaches the TUN with such addresses.
      return buf[off + 9] === IPPROTO.ICMP ? this.gatewayIcmp(buf, now, ip.totalLength) : this.drop(DropReason.NOT_OURS);
    }
    if (fromInside && this.isInternal(dst)) return this.drop(DropReason.NOT_OURS);
    const frag = rd16(buf, off + 6) & 0x3fff; // MF and the offset: any fragment
    if (frag === 0) return this.translate(buf, now, src, dst, fromInside, toPublic, false);
    if ((frag & 0x1fff) !== 0) return this.laterFragment(buf, off, now, src, dst, fromInside);
    return this.firstFragment(buf, now, src, dst, fromInside, toPublic);
  }

  /**
   * ICMP the gateway itself sends towards the WAN. An error about a packet tunnat translated inbound (the
   * gateway could not deliver it into the LAN: no ARP answer, too big, …) quotes it as it left tunnat,
   * with the LAN address: restore the quote to the public side, as an error from the LAN side of that
   * flow would be. An error quoting a LAN address that no flow explains is dropped; everything else (the
   * gateway's echo replies and requests, errors about its own traffic) passes unchanged.
   */
  private gatewayIcmp(buf: Uint8Array, now: number, total: number): number {
    const ip = this.ip;
    if (ip.isFragment || this.icmp.wrap(buf, ip.payloadOffset, ip.payloadLength) !== IcmpVerdict.OK) {
      return this.drop(DropReason.NOT_OURS);
    }
    if (this.icmp.isError) {
      const q = this.icmp.innerOffset;
      const quotesLan = this.icmp.innerLength >= 20 && (this.isInternal(rd32(buf, q + 12)) || this.isInternal(rd32(buf, q + 16)));
      if (quotesLan) return this.processIcmpError(buf, true, total, now);
    }
    // forward() gives back the hop the way out of the TUN will take: the gateway is this packet's source,
    // not a router on its path, so it leaves with the TTL it was made with.
    return this.forward(Path.LOCAL, total);
  }

  /** Everything but fragment bookkeeping, for a whole packet or a first fragment. */
  private translate(
    buf: Uint8Array, now: number, src: number, dst: number, fromInside: boolean, toPublic: boolean, firstFragment: boolean,
  ): number {
    const ip = this.ip;
    const total = ip.totalLength;
    const proto = buf[ip.off + 9]!;
    const l4 = ip.off + ip.headerLength;
    const l4len = total - ip.headerLength;
    let sport: number;
    let dport: number;
    let tcpFlags = 0;
    if (proto === IPPROTO.UDP) {
      // A first fragment's UDP length counts the later fragments too: only its header must be here.
      if (firstFragment ? l4len < 8 : this.udp.wrap(buf, l4, l4len) !== UdpVerdict.OK) return this.drop(DropReason.MALFORMED);
      sport = rd16(buf, l4);
      dport = rd16(buf, l4 + 2);
    } else if (proto === IPPROTO.TCP) {
      if (this.tcp.wrap(buf, l4, l4len) !== TcpVerdict.OK) return this.drop(DropReason.MALFORMED);
      sport = this.tcp.sourcePort;
      dport = this.tcp.destinationPort;
      tcpFlags = this.tcp.flags;
    } else if (proto === IPPROTO.ICMP) {
      if (this.icmp.wrap(buf, l4, l4len) !== IcmpVerdict.OK) return this.drop(DropReason.MALFORMED);
      // A big echo may come in fragments (only its identifier matters); an error never should.
      if (this.icmp.isError) return firstFragment ? this.drop(DropReason.FRAGMENT) : this.processIcmpError(buf, fromInside, total, now);
      if (!this.icmp.isQuery) {
        // Redirects, router adverts and the like never cross a NAT; the gateway may want them itself.
        return fromInside ? this.drop(DropReason.UNSUPPORTED_PROTOCOL) : this.toGateway(total);
      }
      // The identifier sits in the "port" of the querying side: source for requests, destination for replies.
      if (this.icmp.isQueryRequest) {
        sport = this.icmp.identifier;
        dport = 0;
      } else {
        sport = 0;
        dport = this.icmp.identifier;
      }
    } else {
      return fromInside ? this.drop(DropReason.UNSUPPORTED_PROTOCOL) : this.toGateway(total);
    }

    const flows = this.flows;
    let e = flows.lookup(proto, src, dst, sport, dport, now);
    if (e < 0) {
      if (proto === IPPROTO.TCP && !tcpMayCreate(tcpFlags)) {
        if (tcpPacketClass(tcpFlags) === TcpClass.INVALID) return this.drop(DropReason.TCP_FLAGS);
        // Segments of the gateway's own connections; on NAT ports, stray segments of nobody's.
        if (!fromInside) return this.gatewayOwnsPort(proto, dport) ? this.toGateway(total) : this.drop(DropReason.NO_MAPPING);
        if (toPublic && this.gatewayOwnsPort(proto, dport) && this.forwardAt(proto, dport) < 0) return this.toGateway(total);
        return this.drop(DropReason.NO_MAPPING);
      }
      if (proto === IPPROTO.ICMP && !this.icmp.isQueryRequest) {
        return fromInside ? this.drop(DropReason.NO_MAPPING) : this.toGateway(total);
      }
      if (fromInside && !toPublic) e = this.createOutbound(buf, proto, src, dst, sport, dport, now);
      else if (fromInside) e = this.createHairpin(buf, proto, src, sport, dport, now);
      else e = this.createInbound(proto, src, sport, dport, now);
      if (e < 0) {
        if (e === GATEWAY) return this.toGateway(total);
        return this.drop(-e - 1);
      }
    }
    const flow = e >> 1;
    const dir = e & 1;
    this.lastEntry = e;

    // Track state and refresh the timer.
    let timeout: number;
    if (proto === IPPROTO.TCP) {
      // Remember where this direction's sequence numbers are, to judge a later RST (below).
      const t = this.tcp;
      const seqEnd = (t.sequenceNumber + t.payloadLength + (tcpFlags & 0x03 ? 1 : 0)) >>> 0;
      if (tcpFlags & 0x04) {
        // An RST whose sequence number is nowhere near what this side sends is ignored, as the endpoint
        // itself would (RFC 5961 §3): otherwise anyone who guesses the 4-tuple could end the flow.
        const known = flows.detail[flow]! & (dir === 0 ? TCP_SEQ_ORIG : TCP_SEQ_REPLY);
        if (known && Math.abs(((t.sequenceNumber - flows.seqNext[e]!) | 0)) > RST_WINDOW) return this.drop(DropReason.TCP_FLAGS);
      } else {
        flows.seqNext[e] = seqEnd;
        flows.detail[flow] = flows.detail[flow]! | (dir === 0 ? TCP_SEQ_ORIG : TCP_SEQ_REPLY);
      }
    }
    if (proto === IPPROTO.TCP && flows.state[flow] === TcpState.ESTABLISHED && (tcpFlags & 0x17) === 0x10) {
      // The bulk of all TCP: an ACK (maybe with data or PSH) on an established connection changes nothing
      // in the state machine; skip it.
      timeout = this.timeouts.tcpEstablished;
    } else if (proto === IPPROTO.TCP) {
      const before = flows.state[flow]!;
      const st = tcpStep(before, flows.detail[flow]!, dir as 0 | 1, tcpFlags, this.step);
      if (!st.valid) return this.drop(DropReason.TCP_FLAGS);
      flows.state[flow] = st.state;
      flows.detail[flow] = st.detail;
      if (st.state !== before) {
        if (tcpIsAssured(st.state)) flows.flags[flow] = flows.flags[flow]! | FLOW_ASSURED;
        for (const ob of this.observers) ob.updated?.(flow, before, now);
      }
      timeout = tcpTimeout(st.state, this.timeouts);
    } else if (proto === IPPROTO.UDP) {
      timeout = this.timeouts.udp;
      if (dir === DIR_REPLY) flows.flags[flow] = flows.flags[flow]! | FLOW_ASSURED;
    } else {
      timeout = this.timeouts.icmp;
    }
    if (dir === DIR_REPLY && !(flows.flags[flow]! & FLOW_SEEN_REPLY)) {
      flows.flags[flow] = flows.flags[flow]! | FLOW_SEEN_REPLY;
      // The first reply is a state change for UDP and ICMP too (UNREPLIED → REPLIED), as conntrack -E shows.
      if (proto !== IPPROTO.TCP) for (const ob of this.observers) ob.updated?.(flow, flows.state[flow]!, now);
    }
    flows.expires[flow] = now + timeout * 1000;
    // A GSO superpacket counts as one packet of its own length, as the kernel's interface and conntrack
    // counters count it, so tunnat's figures line up with `ip -s link` and `conntrack -L`.
    flows.packets[e]!++;
    flows.bytes[e]! += total;

    // Rewrite to the inverse of the other direction's tuple.
    const o = e ^ 1;
    const newSrc = flows.tDst[o]!;
    const newDst = flows.tSrc[o]!;
    if (proto === IPPROTO.ICMP) {
      const id = this.icmp.isQueryRequest ? flows.tDport[o]! : flows.tSport[o]!;
      if (id !== this.icmp.identifier) {
        if (this.partial) wr16(buf, l4 + 4, id); // the checksum is completed later, over the new bytes
        else this.icmp.setIdentifierWithChecksum(id);
      }
    } else if (this.partial) {
      rewritePartial(buf, l4, proto, src, dst, newSrc, newDst, flows.tDport[o]!, flows.tSport[o]!);
    } else {
      rewriteTransport(buf, l4, proto, src, dst, sport, dport, newSrc, newDst, flows.tDport[o]!, flows.tSport[o]!);
    }
    const path = fromInside ? (toPublic ? Path.HAIRPIN : Path.OUTBOUND) : Path.INBOUND;
    this.lastPath = path;
    this.stats.packets[path]!++;
    this.stats.bytes[path]! += total;
    // Addresses and the hop given back (see forward()) in one checksum update.
    rewriteIpHeader(buf, ip.off, src, dst, newSrc, newDst);
    return Verdict.FORWARD;
  }

  private forwardAt(proto: number, port: number): number {
    const idx = this.forwardIndex.get(proto);
    return idx ? idx[port]! : NONE;
  }

  /** Allocate a flow slot, evicting an unassured flow if the table is full; -(reason+1) on failure. */
  private allocateFlow(now: number): number {
    const flows = this.flows;
    let flow = flows.allocate();
    if (flow < 0) {
      flows.earlyDrop(now, EARLY_DROP_BUDGET);
      flow = flows.allocate();
      if (flow < 0) return -(DropReason.TABLE_FULL + 1);
    }
    return flow;
  }

  /** The LAN endpoint's mapping (endpoint-independent, RFC 4787 REQ-1), created if needed; -(reason+1) on failure. */
  private mappingFor(proto: number, addr: number, port: number): number {
    const maps = this.mappings;
    let m = maps.lookupInternal(proto, addr, port);
    if (m >= 0) {
      this.lastPortChoice = PortChoice.EXISTING;
      return m;
    }
    m = maps.create(proto, addr, port, this.publicIp, this.rng);
    if (m < 0) return -((m === -2 ? DropReason.TABLE_FULL : DropReason.PORTS_EXHAUSTED) + 1);
    this.lastPortChoice = maps.extPort[m] === port ? PortChoice.PRESERVED : PortChoice.REMAPPED;
    return m;
  }

  /** Refuse a new LAN flow: count it, and where asked, tell the LAN host (ICMP 3/13 or TCP RST). */
  private refuse(buf: Uint8Array, reason: number, proto: number, tellHost: boolean, now: number): number {
    if (tellHost) this.generateRefusal(buf, proto, now);
    return -(reason + 1);
  }

  private hostLimitReached(host: number): boolean {
    return this.maxPerHost > 0 && (this.hostFlows.get(host) ?? 0) >= this.maxPerHost;
  }

  private noteHostFlow(host: number): void {
    this.hostFlows.set(host, (this.hostFlows.get(host) ?? 0) + 1);
  }

  /** Finish a new flow: index it, take the mapping references and permissions, tell the observers. */
  private commitFlow(flow: number, proto: number, m: number, m2: number, flags: number, host: number, peer: number, now: number): number {
    const t = this.flows;
    t.mapping[flow] = m;
    t.mapping2[flow] = m2;
    if (m >= 0) this.mappings.ref(m);
    if (m2 >= 0) this.mappings.ref(m2);
    t.insert(flow, proto, now, now);
    t.flags[flow] = t.flags[flow]! | flags;
    if (this.permissions) {
      if (m >= 0) this.permissions.add(m, peer);
      if (m2 >= 0) this.permissions.add(m2, peer);
    }
    if (!(flags & FLOW_INBOUND)) this.noteHostFlow(host);
    this.stats.flowsCreated++;
    this.lastCreated = true;
    for (const o of this.observers) o.created?.(flow, now);
    return flow * 2 + DIR_ORIGINAL;
  }

  /** A new connection from the LAN to the outside. Returns the entry, or -(reason + 1). */
  private createOutbound(buf: Uint8Array, proto: number, src: number, dst: number, sport: number, dport: number, now: number): number {
    if (this.egress && !this.egress.allows(proto, dst, dport)) {
      return this.refuse(buf, DropReason.EGRESS_POLICY, proto, this.egressReject, now);
    }
    if (this.hostLimitReached(src)) return this.refuse(buf, DropReason.HOST_LIMIT, proto, this.icmpOnExhaustion, now);
    // A flow that will find no public port must not evict another flow first.
    if (this.mappings.lookupInternal(proto, src, sport) < 0 && this.mappings.pool(proto)!.available <= 0) {
      return this.refuse(buf, DropReason.PORTS_EXHAUSTED, proto, this.icmpOnExhaustion, now);
    }
    const flow = this.allocateFlow(now);
    if (flow < 0) return this.refuse(buf, -flow - 1, proto, this.icmpOnExhaustion, now);
    const m = this.mappingFor(proto, src, sport);
    if (m < 0) {
      this.flows.release(flow);
      return this.refuse(buf, -m - 1, proto, this.icmpOnExhaustion, now);
    }
    const maps = this.mappings;
    this.flows.setTuple(flow, DIR_ORIGINAL, src, dst, sport, dport);
    this.flows.setTuple(flow, DIR_REPLY, dst, maps.extAddr[m]!, dport, maps.extPort[m]!);
    return this.commitFlow(flow, proto, m, NONE, 0, src, dst, now);
  }

  /**
   * Which LAN endpoint a packet from outside to public `port` reaches: a port forward, or a mapping whose
   * filtering (RFC 4787 REQ-8) admits the sender. Writes the endpoint to `target`; returns the mapping
   * used (or -1 for a forward), GATEWAY when the port is the gateway's own, or -(reason + 1).
   */
  private resolveTarget(proto: number, port: number, from: number, selfMapping: number): number {
    const f = this.forwardAt(proto, port);
    if (f >= 0) {
      const fw = this.forwardList[f]!;
      target.addr = fw.address;
      target.port = fw.port;
      this.lastPortChoice = PortChoice.FORWARD;
      return NONE;
    }
    if (proto === IPPROTO.ICMP) return GATEWAY; // echo requests to the public address are the gateway's to answer
    const m = this.mappings.lookupExternal(proto, port);
    if (m < 0) return this.gatewayOwnsPort(proto, port) ? GATEWAY : -(DropReason.NO_MAPPING + 1);
    // Address-and-port-dependent filtering admits only packets that match an existing flow, and those
    // never get here: so it admits nothing new.
    const allowed =
      m === selfMapping ||
      this.filtering === Filtering.ENDPOINT ||
      (this.filtering === Filtering.ADDRESS && this.permissions!.has(m, from));
    if (!allowed) return -(DropReason.FILTERED + 1);
    target.addr = this.mappings.intAddr[m]!;
    target.port = this.mappings.intPort[m]!;
    this.lastPortChoice = PortChoice.EXISTING;
    return m;
  }

  /** A new flow from outside to the public address: a port forward or a filtered mapping. */
  private createInbound(proto: number, src: number, sport: number, dport: number, now: number): number {
    // Only a packet that will become a flow may make room for one: an unsolicited packet never evicts.
    const first = this.resolveTarget(proto, dport, src, NONE);
    if (first < NONE) return first;
    // Making room may evict a flow, and that flow may be the last one holding the target mapping: hold it
    // meanwhile, so the packet that caused the eviction still gets the flow it was admitted for.
    if (first >= 0) this.mappings.ref(first);
    const flow = this.allocateFlow(now);
    if (first >= 0) this.mappings.unrefKeep(first);
    const e = flow < 0 ? flow : this.finishInbound(flow, proto, src, sport, dport, now);
    // Whatever happened, a held mapping that no flow took is freed now.
    if (first >= 0) this.mappings.releaseIfUnused(first);
    return e;
  }

  private finishInbound(flow: number, proto: number, src: number, sport: number, dport: number, now: number): number {
    const m = this.resolveTarget(proto, dport, src, NONE);
    if (m < NONE) {
      this.flows.release(flow);
      return m;
    }
    // The flow's LAN side must not already be a flow of its own (a server behind a forward that opened
    // the same connection outwards): one tuple, one flow.
    if (this.flows.lookup(proto, target.addr, src, target.port, sport, now) >= 0) {
      this.flows.release(flow);
      return -(DropReason.NO_MAPPING + 1);
    }
    const t = this.flows;
    t.setTuple(flow, DIR_ORIGINAL, src, this.publicIp, sport, dport);
    t.setTuple(flow, DIR_REPLY, target.addr, src, target.port, sport);
    return this.commitFlow(flow, proto, NONE, m, FLOW_INBOUND, target.addr, src, now);
  }

  /**
   * Hairpinning (RFC 4787 REQ-9, RFC 5382 REQ-8): a LAN host sends to the public address and a port that
   * leads to another LAN host. The sender gets its own mapping, and the target sees the sender's public
   * endpoint, exactly as an outside host would. One flow: original (A → pub:P), reply (B → pub:Pa).
   */
  private createHairpin(buf: Uint8Array, proto: number, src: number, sport: number, dport: number, now: number): number {
    if (proto === IPPROTO.ICMP) return GATEWAY; // the gateway answers pings to its own address
    const pub = this.publicIp;
    // A host may hairpin to its own mapping (STUN's hairpin test does): that mapping talks to pub by now.
    const first = this.resolveTarget(proto, dport, pub, this.mappings.lookupInternal(proto, src, sport));
    if (first < NONE) return first === GATEWAY || first === -(DropReason.NO_MAPPING + 1) ? GATEWAY : first;
    if (this.hostLimitReached(src)) return this.refuse(buf, DropReason.HOST_LIMIT, proto, this.icmpOnExhaustion, now);
    // The slot first (making room may free mappings), then resolve again against what is left.
    if (first >= 0) this.mappings.ref(first);
    const flow = this.allocateFlow(now);
    if (first >= 0) this.mappings.unrefKeep(first);
    const e = flow < 0 ? flow : this.finishHairpin(flow, proto, src, sport, dport, now);
    if (first >= 0) this.mappings.releaseIfUnused(first);
    return e;
  }

  private finishHairpin(flow: number, proto: number, src: number, sport: number, dport: number, now: number): number {
    const pub = this.publicIp;
    const m2 = this.resolveTarget(proto, dport, pub, this.mappings.lookupInternal(proto, src, sport));
    if (m2 < NONE) {
      this.flows.release(flow);
      return m2 === GATEWAY || m2 === -(DropReason.NO_MAPPING + 1) ? GATEWAY : m2;
    }
    const choice = this.lastPortChoice;
    const m = this.mappingFor(proto, src, sport);
    if (m < 0) {
      this.flows.release(flow);
      return m;
    }
    if (choice === PortChoice.FORWARD) this.lastPortChoice = PortChoice.FORWARD;
    const t = this.flows;
    if (t.lookup(proto, target.addr, pub, target.port, this.mappings.extPort[m]!, now) >= 0) {
      // The reply side is already a flow (the target talked to this public endpoint first): one tuple, one flow.
      t.release(flow);
      this.mappings.releaseIfUnused(m);
      return -(DropReason.NO_MAPPING + 1);
    }
    t.setTuple(flow, DIR_ORIGINAL, src, pub, sport, dport);
    t.setTuple(flow, DIR_REPLY, target.addr, pub, target.port, this.mappings.extPort[m]!);
    return this.commitFlow(flow, proto, m, m2, 0, src, pub, now);
  }

  // ---------------------------------------------------------------------------------------------
  // Fragments

  /** The first fragment carries the ports: translate it, then remember the decision for the rest. */
  private firstFragment(buf: Uint8Array, now: number, src: number, dst: number, fromInside: boolean, toPublic: boolean): number {
    const ip = this.ip;
    const key = FragmentTracker.key(src, dst, ip.protocol, ip.identification);
    const fr = this.fragments;
    const e = fr.open(key, now);
    if (!e || !fr.addRange(e, 0, ip.payloadLength, false)) return this.drop(DropReason.FRAGMENT);
    const result = this.translate(buf, now, src, dst, fromInside, toPublic, true);
    if (result === Verdict.FORWARD) {
      e.decision = this.lastPath === Path.LOCAL ? FragDecision.LOCAL : FragDecision.TRANSLATE;
      e.newSrc = ip.sourceAddress;
      e.newDst = ip.destinationAddress;
      e.entry = this.lastEntry;
    } else {
      e.decision = FragDecision.DROP;
    }
    if (e.held.length > 0) this.releaseHeld(e);
    if (fr.complete(e)) fr.delete(key);
    return result;
  }

  /** A fragment without the transport header: follow its first fragment's decision, or wait for it. */
  private laterFragment(buf: Uint8Array, off: number, now: number, src: number, dst: number, fromInside: boolean): number {
    const ip = this.ip;
    const total = ip.totalLength;
    const key = FragmentTracker.key(src, dst, ip.protocol, ip.identification);
    const fr = this.fragments;
    const e = fr.open(key, now);
    if (!e) return this.drop(DropReason.FRAGMENT);
    const start = ip.fragmentOffset * 8;
    if (!fr.addRange(e, start, start + ip.payloadLength, !ip.moreFragments)) return this.drop(DropReason.FRAGMENT);
    let result: number;
    if (e.decision === FragDecision.PENDING) {
      if (!fr.hold(e, buf.subarray(off, off + total))) return this.drop(DropReason.FRAGMENT);
      return Verdict.HELD;
    }
    if (e.decision === FragDecision.DROP) result = this.drop(DropReason.FRAGMENT);
    else result = this.applyFragmentDecision(ip, e, toPathOf(e, fromInside, dst === this.publicIp));
    if (fr.complete(e)) fr.delete(key);
    return result;
  }

  private applyFragmentDecision(v: Ipv4View, e: FragEntry, path: number): number {
    const len = v.totalLength;
    if (e.decision === FragDecision.TRANSLATE) {
      if (v.sourceAddress !== e.newSrc) v.setSourceAddressWithChecksum(e.newSrc);
      if (v.destinationAddress !== e.newDst) v.setDestinationAddressWithChecksum(e.newDst);
      // The flow's counters include every fragment, so per-host byte counts stay exact.
      const flows = this.flows;
      if (e.entry >= 0 && flows.isInUse(e.entry >> 1)) {
        flows.packets[e.entry]!++;
        flows.bytes[e.entry]! += len;
      }
    }
    this.stats.packets[path]!++;
    this.stats.bytes[path]! += len;
    const ttl = v.ttl;
    if (ttl < 255) v.setTtlWithChecksum(ttl + 1);
    return Verdict.FORWARD;
  }

  /** Send the fragments that waited for their first fragment, through the sink. */
  private releaseHeld(e: FragEntry): void {
    const held = this.fragments.takeHeld(e);
    if (e.decision === FragDecision.DROP) {
      this.stats.drops[DropReason.FRAGMENT]! += held.length;
      return;
    }
    for (const pkt of held) {
      const sink = this.sink;
      const at = sink ? sink.alloc(pkt.length) : -1;
      if (!sink || at < 0) {
        this.stats.drops[DropReason.FRAGMENT]!++;
        continue;
      }
      sink.buf.set(pkt, at);
      const v = this.heldIp;
      if (v.wrap(sink.buf, at, pkt.length) !== Ipv4Verdict.OK) continue;
      const fromInside = this.isInternal(v.sourceAddress);
      this.applyFragmentDecision(v, e, toPathOf(e, fromInside, v.destinationAddress === this.publicIp));
      sink.commit(at, pkt.length);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Generated packets

  /** Token bucket: generated packets per second, so a flood never turns into an ICMP flood. */
  private mayGenerate(now: number): boolean {
    const elapsed = now - this.genLast;
    this.genLast = now;
    if (elapsed > 0) this.genTokens = Math.min(this.genRate, this.genTokens + (elapsed * this.genRate) / 1000);
    if (this.genTokens < 1) return false;
    this.genTokens -= 1;
    return true;
  }

  /**
   * Tell a LAN host its new flow was refused: a TCP RST for TCP (what a closed port would say), else ICMP
   * destination unreachable, code 13 "communication administratively prohibited" (RFC 5508 §6 for
   * resource exhaustion; also what an egress reject means). The source is the destination the host
   * tried to reach, as a firewall's REJECT does, so the host's stack matches it to its socket.
   */
  private generateRefusal(buf: Uint8Array, proto: number, now: number): void {
    const sink = this.sink;
    if (!sink || !this.mayGenerate(now)) {
      this.stats.generatedSuppressed++;
      return;
    }
    const ip = this.ip;
    const pkt = buf.subarray(ip.off, ip.off + ip.totalLength);
    if (proto === IPPROTO.TCP) {
      const at = sink.alloc(40);
      if (at < 0) {
        this.stats.generatedSuppressed++;
        return;
      }
      const t = this.tcp;
      const len = emitIpv4Tcp(sink.buf, at, {
        src: ip.destinationAddress,
        dst: ip.sourceAddress,
        srcPort: t.destinationPort,
        dstPort: t.sourcePort,
        seq: 0,
        ack: (t.sequenceNumber + t.payloadLength + 1) >>> 0,
        flags: TCP_FLAGS.RST | TCP_FLAGS.ACK,
        window: 0,
      });
      sink.commit(at, len);
    } else {
      const need = ipv4IcmpErrorLength(pkt.length);
      const at = sink.alloc(need);
      if (at < 0) {
        this.stats.generatedSuppressed++;
        return;
      }
      const len = emitIpv4IcmpError(sink.buf, at, {
        src: ip.destinationAddress,
        dst: ip.sourceAddress,
        type: ICMP_TYPE.DEST_UNREACH,
        code: ICMP_UNREACH_CODE.ADMIN_PROHIBITED,
        quoted: pkt,
      });
      sink.commit(at, len);
    }
    this.stats.generated++;
  }

  // ---------------------------------------------------------------------------------------------
  // ICMP errors

  /**
   * ICMP errors (RFC 5508 §4.2): find the flow of the packet the error quotes, then rewrite the outer
   * header and the quoted IP and transport headers so each side sees its own view of the flow. Errors
   * never create, refresh or remove a flow. The quoted packet is usually truncated, so its fields are
   * read from raw offsets rather than through the length-checking views.
   */
  private processIcmpError(buf: Uint8Array, fromInside: boolean, total: number, now: number): number {
    const icmp = this.icmp;
    if (!icmp.verifyChecksum()) return this.drop(DropReason.CHECKSUM);
    const q = icmp.innerOffset;
    const qlen = icmp.innerLength;
    if (qlen < 20) return this.drop(DropReason.MALFORMED);
    const vihl = buf[q]!;
    const qhl = (vihl & 0x0f) << 2;
    if (vihl >>> 4 !== 4 || qhl < 20 || qhl + 8 > qlen) return this.drop(DropReason.MALFORMED);
    // RFC 5508 REQ-3: a quoted IP header with a bad checksum makes the whole error suspect. (The quoted
    // transport checksum is not checked: the quote is usually cut short, REQ-3c.)
    if (fold16(sum16(buf, q, qhl)) !== 0xffff) return this.drop(DropReason.CHECKSUM);
    const qproto = buf[q + 9]!;
    const qsrc = rd32(buf, q + 12);
    const qdst = rd32(buf, q + 16);
    const ql4 = q + qhl;
    let qsport: number;
    let qdport: number;
    let icmpRequest = false;
    if (qproto === IPPROTO.UDP || qproto === IPPROTO.TCP) {
      qsport = rd16(buf, ql4);
      qdport = rd16(buf, ql4 + 2);
    } else if (qproto === IPPROTO.ICMP) {
      const qtype = buf[ql4]!;
      icmpRequest = qtype === ICMP_TYPE.ECHO_REQUEST || qtype === ICMP_TYPE.TIMESTAMP;
      if (!icmpRequest && qtype !== ICMP_TYPE.ECHO_REPLY && qtype !== ICMP_TYPE.TIMESTAMP_REPLY) {
        return fromInside ? this.drop(DropReason.NO_MAPPING) : this.toGateway(total);
      }
      const id = rd16(buf, ql4 + 4);
      qsport = icmpRequest ? id : 0;
      qdport = icmpRequest ? 0 : id;
    } else {
      return fromInside ? this.drop(DropReason.NO_MAPPING) : this.toGateway(total);
    }

    // The error travels against the quoted packet: look up the inverse of the quoted tuple.
    const e = this.flows.lookup(qproto, qdst, qsrc, qdport, qsport, now);
    if (e < 0) return fromInside ? this.drop(DropReason.NO_MAPPING) : this.toGateway(total);
    const flows = this.flows;
    // An error goes to the sender of the packet it quotes (RFC 792), and it travels the way the flow's
    // side it comes from sends: from inside only along a tuple whose source is inside, from outside only
    // along one whose source is outside. Anything else is forged, and translating it would carry a LAN
    // address out in the quote.
    if (this.ip.destinationAddress !== qsrc || this.isInternal(flows.tSrc[e]!) !== fromInside) {
      return this.drop(DropReason.NOT_OURS);
    }
    this.lastEntry = e;
    // The quoted packet travelled in the other direction; restore it to that direction's tuple as
    // the receiver of this error knows it.
    const qe = e ^ 1;
    const nqsrc = flows.tSrc[qe]!;
    const nqdst = flows.tDst[qe]!;
    const nqsport = flows.tSport[qe]!;
    const nqdport = flows.tDport[qe]!;

    // Quoted transport header: ports and (when quoted) its checksum, which covers the quoted addresses.
    if (qproto === IPPROTO.ICMP) {
      const oldId = rd16(buf, ql4 + 4);
      const newId = icmpRequest ? nqsport : nqdport;
      if (newId !== oldId) {
        wr16(buf, ql4 + 4, newId);
        icmp.updateChecksumFor16(oldId, newId);
        const oldQc = rd16(buf, ql4 + 2);
        const newQc = csumUpdate16(oldQc, oldId, newId);
        wr16(buf, ql4 + 2, newQc);
        icmp.updateChecksumFor16(oldQc, newQc);
      }
    } else {
      const csumAt = qproto === IPPROTO.UDP ? ql4 + 6 : ql4 + 16;
      const haveCsum = csumAt + 2 <= q + qlen;
      let qc = haveCsum ? rd16(buf, csumAt) : 0;
      const udpNoCsum = qproto === IPPROTO.UDP && qc === 0;
      const oldQc = qc;
      if (nqsport !== qsport) {
        wr16(buf, ql4, nqsport);
        icmp.updateChecksumFor16(qsport, nqsport);
        qc = csumUpdate16(qc, qsport, nqsport);
      }
      if (nqdport !== qdport) {
        wr16(buf, ql4 + 2, nqdport);
        icmp.updateChecksumFor16(qdport, nqdport);
        qc = csumUpdate16(qc, qdport, nqdport);
      }
      if (nqsrc !== qsrc) qc = csumUpdate32(qc, qsrc, nqsrc);
      if (nqdst !== qdst) qc = csumUpdate32(qc, qdst, nqdst);
      if (haveCsum && !udpNoCsum && qc !== oldQc) {
        if (qproto === IPPROTO.UDP && qc === 0) qc = 0xffff;
        wr16(buf, csumAt, qc);
        icmp.updateChecksumFor16(oldQc, qc);
      }
    }
    // Quoted IP header: addresses and its own header checksum.
    let qipc = rd16(buf, q + 10);
    const oldQipc = qipc;
    if (nqsrc !== qsrc) {
      wr32(buf, q + 12, nqsrc);
      icmp.updateChecksumFor32(qsrc, nqsrc);
      qipc = csumUpdate32(qipc, qsrc, nqsrc);
    }
    if (nqdst !== qdst) {
      wr32(buf, q + 16, nqdst);
      icmp.updateChecksumFor32(qdst, nqdst);
      qipc = csumUpdate32(qipc, qdst, nqdst);
    }
    if (qipc !== oldQipc) {
      wr16(buf, q + 10, qipc);
      icmp.updateChecksumFor16(oldQipc, qipc);
    }
    // Outer header: whichever outer address named the translated side follows it.
    const ip = this.ip;
    const osrc = ip.sourceAddress;
    const odst = ip.destinationAddress;
    if (odst === qsrc && nqsrc !== qsrc) ip.setDestinationAddressWithChecksum(nqsrc);
    if (osrc === qdst && nqdst !== qdst) ip.setSourceAddressWithChecksum(nqdst);
    else if (fromInside && !this.isInternal(ip.destinationAddress) && osrc !== this.publicIp) {
      // An error from another LAN device (a router, a firewall) about a flow leaving through the NAT leaves
      // with the public address as its source, like any other packet of that flow (Linux SNATs it too).
      ip.setSourceAddressWithChecksum(this.publicIp);
    }
    this.stats.icmpErrorsTranslated++;
    const path = fromInside ? (odst === this.publicIp ? Path.HAIRPIN : Path.OUTBOUND) : Path.INBOUND;
    return this.forward(path, total);
  }

  /**
   * Put back a flow saved by a previous run (src/nat/snapshot.ts), with its mappings on the same public
   * ports. Returns false (and changes nothing) when that cannot be done exactly: the table is full, a
   * public port is taken, or the flow no longer belongs to this configuration.
   */
  restoreFlow(r: RestoredFlow, now: number): boolean {
    const maps = this.mappings;
    const t = this.flows;
    if (t.lookup(r.protocol, r.original[0], r.original[1], r.original[2], r.original[3], now) >= 0) return false;
    if (t.lookup(r.protocol, r.reply[0], r.reply[1], r.reply[2], r.reply[3], now) >= 0) return false;
    const created: number[] = [];
    const mappingOf = (saved: SavedMapping | null): number => {
      if (saved === null) return NONE;
      if (saved.externalAddress !== this.publicIp) return -2;
      const m = maps.lookupInternal(r.protocol, saved.internalAddress, saved.internalPort);
      if (m >= 0) return maps.extPort[m] === saved.externalPort ? m : -2;
      const n = maps.create(r.protocol, saved.internalAddress, saved.internalPort, this.publicIp, this.rng, saved.externalPort);
      if (n < 0) return -2;
      created.push(n);
      return n;
    };
    const undo = (): false => {
      // A mapping made here has no flow yet: free it again.
      for (const n of created) maps.releaseIfUnused(n);
      return false;
    };
    const m = mappingOf(r.mapping);
    if (m === -2) return undo();
    const m2 = mappingOf(r.mapping2);
    if (m2 === -2) return undo();
    const flow = t.allocate();
    if (flow < 0) return undo();
    t.setTuple(flow, DIR_ORIGINAL, r.original[0], r.original[1], r.original[2], r.original[3]);
    t.setTuple(flow, DIR_REPLY, r.reply[0], r.reply[1], r.reply[2], r.reply[3]);
    const inbound = (r.flags & FLOW_INBOUND) !== 0;
    const host = inbound ? r.reply[0] : r.original[0];
    const peer = inbound ? r.original[0] : r.original[1];
    this.commitFlow(flow, r.protocol, m, m2, r.flags, host, peer, now);
    t.state[flow] = r.state;
    t.detail[flow] = r.detail;
    t.expires[flow] = now + r.msLeft;
    t.packets[flow * 2] = r.packets[0];
    t.packets[flow * 2 + 1] = r.packets[1];
    t.bytes[flow * 2] = r.bytes[0];
    t.bytes[flow * 2 + 1] = r.bytes[1];
    return true;
  }

  /** Called when a flow is removed from outside the packet path (tests, listing). */
  removeFlow(flow: number, reason: RemoveReason): void {
    this.flows.remove(flow, reason);
  }
}

/** A mapping as saved: internal endpoint and its public endpoint. */
export interface SavedMapping {
  internalAddress: number;
  internalPort: number;
  externalAddress: number;
  externalPort: number;
}

/** A flow as saved across a restart (src/nat/snapshot.ts). Tuples are [src, dst, srcPort, dstPort]. */
export interface RestoredFlow {
  protocol: number;
  flags: number;
  state: number;
  detail: number;
  msLeft: number;
  original: [number, number, number, number];
  reply: [number, number, number, number];
  packets: [number, number];
  bytes: [number, number];
  mapping: SavedMapping | null;
  mapping2: SavedMapping | null;
}

/** Flow detail bits (beside tcp.ts's FIN bits): a sequence number was seen from this direction. */
const TCP_SEQ_ORIG = 0x10;
const TCP_SEQ_REPLY = 0x20;
/** How far from the expected sequence number an RST may be and still count (generous: windows scale). */
const RST_WINDOW = 1 << 24;

/** resolveTarget: "the gateway's own stack should have it". */
const GATEWAY = -1000;
/** resolveTarget's answer (one per translator would do; the packet path is single-threaded). */
const target = { addr: 0, port: 0 };

function toPathOf(e: FragEntry, fromInside: boolean, toPublic: boolean): number {
  if (e.decision === FragDecision.LOCAL) return Path.LOCAL;
  return fromInside ? (toPublic ? Path.HAIRPIN : Path.OUTBOUND) : Path.INBOUND;
}

/**
 * Rewrite a TCP or UDP header's ports and patch its checksum for the new ports and the new addresses in
 * the pseudo-header (RFC 1624), reading the header from raw offsets so it also works on a first fragment,
 * whose UDP length field counts bytes that are still to come. UDP checksum 0 ("none") stays 0; a computed
 * 0 is sent as 0xffff (RFC 768).
 */
function rewriteTransport(
  buf: Uint8Array, l4: number, proto: number,
  src: number, dst: number, sport: number, dport: number,
  nsrc: number, ndst: number, nsport: number, ndport: number,
): void {
  const at = l4 + (proto === IPPROTO.UDP ? 6 : 16);
  const c = rd16(buf, at);
  // Every changed word's difference is summed and folded once (RFC 1624 eqn. 3 over all of them).
  let acc = 0;
  if (nsport !== sport) {
    wr16(buf, l4, nsport);
    acc += (~sport & 0xffff) + nsport;
  }
  if (ndport !== dport) {
    wr16(buf, l4 + 2, ndport);
    acc += (~dport & 0xffff) + ndport;
  }
  if (nsrc !== src) acc += diff32(src, nsrc);
  if (ndst !== dst) acc += diff32(dst, ndst);
  if (acc === 0 || (proto === IPPROTO.UDP && c === 0)) return; // UDP checksum 0 means "none": stays 0
  let n = applyDiff(c, acc);
  if (proto === IPPROTO.UDP && n === 0) n = 0xffff;
  wr16(buf, at, n);
}

/** One's-complement difference of replacing a 32-bit value, as two 16-bit words, for applyDiff. */
function diff32(old: number, nw: number): number {
  return (~old >>> 16 & 0xffff) + (~old & 0xffff) + (nw >>> 16) + (nw & 0xffff);
}

/** RFC 1624 eqn. 3 with the summed differences of several words: HC' = ~(~HC + Σ(~m + m')). */
function applyDiff(csum: number, acc: number): number {
  let s = (~csum & 0xffff) + acc;
  s = (s & 0xffff) + (s >>> 16);
  s = (s & 0xffff) + (s >>> 16);
  return ~s & 0xffff;
}

/**
 * Write the new addresses into an IPv4 header and give back the hop the TUN round trip costs (TTL + 1,
 * see Translator.forward), patching the header checksum once for all of it.
 */
function rewriteIpHeader(buf: Uint8Array, ip: number, src: number, dst: number, nsrc: number, ndst: number): void {
  let acc = 0;
  if (nsrc !== src) {
    wr32(buf, ip + 12, nsrc);
    acc += diff32(src, nsrc);
  }
  if (ndst !== dst) {
    wr32(buf, ip + 16, ndst);
    acc += diff32(dst, ndst);
  }
  const ttl = buf[ip + 8]!;
  if (ttl < 255) {
    const old = (ttl << 8) | buf[ip + 9]!;
    buf[ip + 8] = ttl + 1;
    acc += (~old & 0xffff) + (old + 0x100);
  }
  if (acc !== 0) wr16(buf, ip + 10, applyDiff(rd16(buf, ip + 10), acc));
}

/**
 * The same rewrite for a partial checksum (virtio NEEDS_CSUM, from TUN offloads): the checksum field holds
 * the pseudo-header sum, not yet complemented, and the sender of the packet completes it over the data.
 * So a new address is added into that sum (the complement of RFC 1624's update), and a new port changes
 * nothing there: it is part of the data the final checksum will cover.
 */
function rewritePartial(
  buf: Uint8Array, l4: number, proto: number,
  src: number, dst: number, nsrc: number, ndst: number, nsport: number, ndport: number,
): void {
  wr16(buf, l4, nsport);
  wr16(buf, l4 + 2, ndport);
  if (nsrc === src && ndst === dst) return;
  const at = l4 + (proto === IPPROTO.UDP ? 6 : 16);
  let sum = ~rd16(buf, at) & 0xffff;
  if (nsrc !== src) sum = csumUpdate32(sum, src, nsrc);
  if (ndst !== dst) sum = csumUpdate32(sum, dst, ndst);
  wr16(buf, at, ~sum & 0xffff);
}

function rd16(b: Uint8Array, i: number): number {
  return (b[i]! << 8) | b[i + 1]!;
}
function wr16(b: Uint8Array, i: number, v: number): void {
  b[i] = v >>> 8;
  b[i + 1] = v;
}
function rd32(b: Uint8Array, i: number): number {
  return ((b[i]! << 24) | (b[i + 1]! << 16) | (b[i + 2]! << 8) | b[i + 3]!) >>> 0;
}
function wr32(b: Uint8Array, i: number, v: number): void {
  b[i] = v >>> 24;
  b[i + 1] = v >>> 16;
  b[i + 2] = v >>> 8;
  b[i + 3] = v;
}
