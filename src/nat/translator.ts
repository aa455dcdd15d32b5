import { Ipv4View, Ipv4Verdict, IPPROTO } from '../wire/ipv4.js';
import { UdpView, UdpVerdict } from '../wire/udp.js';
import { TcpView, TcpVerdict } from '../wire/tcp.js';
import { IcmpView, IcmpVerdict, ICMP_TYPE } from '../wire/icmp.js';
import { csumUpdate16, csumUpdate32 } from '../wire/checksum.js';
import {
  FlowTable, DIR_ORIGINAL, DIR_REPLY, FLOW_ASSURED, FLOW_SEEN_REPLY, type RemoveReason,
} from '../conntrack/table.js';
import { tcpStep, tcpTimeout, tcpIsAssured, tcpMayCreate, tcpPacketClass, TcpClass, type TcpStep } from '../conntrack/tcp.js';
import type { Timeouts } from '../conntrack/timeouts.js';
import { MappingTable } from './mappings.js';
import { PortPool, type Rng } from './ports.js';

/**
 * The NAT engine: one call per packet, in place, no allocation.
 *
 * Every packet that reaches tunnat came out of the gateway's routing into the TUN, and whatever tunnat
 * writes back is routed again. So:
 * - a packet of a known flow, from either side, is rewritten to the inverse of the other direction's
 *   tuple (netfilter's rule: "the reply tuple is the inverse of what the other side expects");
 * - a new outbound packet (source inside --internal) gets a mapping and a flow, then the same rewrite;
 * - an inbound packet for the public address that matches no flow belongs to the gateway itself and
 *   goes back unchanged (the local table delivers it);
 * - anything else is dropped and counted by reason. Nothing from the LAN ever leaves untranslated.
 * Every packet written back gets its TTL raised by one, because the gateway routes it twice (into the
 * TUN and out of it) and must count as a single hop.
 */
export const Verdict = { FORWARD: 0, DROP: 1 } as const;

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
} as const;
export const DROP_REASON_NAMES = [
  'malformed', 'no-mapping', 'table-full', 'ports-exhausted', 'fragment', 'unsupported-protocol', 'tcp-flags',
  'checksum', 'not-ours', 'ttl',
] as const;

/** Where a forwarded packet went; index into NatStats.forwarded. */
export const Path = { OUTBOUND: 0, INBOUND: 1, LOCAL: 2 } as const;
export const PATH_NAMES = ['outbound', 'inbound', 'local'] as const;

export interface NatStats {
  /** Packets and bytes forwarded, by Path. */
  readonly packets: Float64Array;
  readonly bytes: Float64Array;
  readonly drops: Float64Array;
  flowsCreated: number;
  /** Flows removed, by reason name. */
  readonly flowsRemoved: Record<RemoveReason, number>;
  icmpErrorsTranslated: number;
}

/**
 * Who wants to hear about flows (metrics per LAN host, `conntrack --events`, the trace). Called off the
 * hot path's common case: only when a flow is created, changes TCP state, or is removed.
 */
export interface FlowObserver {
  created?(flow: number, now: number): void;
  /** A TCP flow changed state (`from` is the old TcpState). */
  updated?(flow: number, from: number, now: number): void;
  /** Called before the slot is freed: the flow's tuples and counters are still readable. */
  removed?(flow: number, reason: RemoveReason): void;
}

/** How the public port of the last new mapping was chosen (for the trace). */
export const PortChoice = { NONE: 0, EXISTING: 1, PRESERVED: 2, REMAPPED: 3 } as const;
export const PORT_CHOICE_NAMES = ['none', 'existing mapping', 'preserved', 'remapped'] as const;

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
}

const TRACKED = [IPPROTO.TCP, IPPROTO.UDP, IPPROTO.ICMP] as const;
/** How many slots one early-drop attempt looks at before giving up. */
const EARLY_DROP_BUDGET = 128;

function maskOf(prefix: number): number {
  return prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
}

export class Translator {
  readonly flows: FlowTable;
  readonly mappings: MappingTable;
  readonly stats: NatStats;
  timeouts: Timeouts;
  private publicIp: number;
  private readonly publicIpOwned: boolean;
  private readonly rng: Rng;
  private readonly internalNet: Uint32Array;
  private readonly internalMask: Uint32Array;

  // Reusable views: re-pointed at every packet.
  private readonly ip = new Ipv4View();
  private readonly udp = new UdpView();
  private readonly tcp = new TcpView();
  private readonly icmp = new IcmpView();
  private readonly step: TcpStep = { state: 0, detail: 0, valid: true };
  readonly observers: FlowObserver[] = [];

  /**
   * What the last process() call decided, for the trace and pcap taps: the entry it used (-1 if none),
   * whether it created the flow, how the port was chosen, and the drop reason (-1 if forwarded).
   * Plain fields, overwritten per packet: reading them costs the hot path nothing.
   */
  lastEntry = -1;
  lastCreated = false;
  lastPortChoice: number = PortChoice.NONE;
  lastDrop = -1;
  lastPath = -1;

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
    this.flows = new FlowTable(opts.maxFlows, opts.seed);
    const [lo, hi] = opts.ports;
    const excluded = opts.excludedPorts ?? [];
    this.mappings = new MappingTable(opts.maxFlows, opts.seed ^ 0x5bd1e995, (p) =>
      // ICMP identifiers are not ports: the whole 16-bit space is usable.
      p === IPPROTO.ICMP ? new PortPool(0, 65535) : new PortPool(lo, hi, excluded), TRACKED);
    this.stats = {
      packets: new Float64Array(PATH_NAMES.length),
      bytes: new Float64Array(PATH_NAMES.length),
      drops: new Float64Array(DROP_REASON_NAMES.length),
      flowsCreated: 0,
      flowsRemoved: { expired: 0, 'early-drop': 0, flush: 0, closed: 0 },
      icmpErrorsTranslated: 0,
    };
    this.flows.onRemove = (flow, reason) => {
      for (const o of this.observers) o.removed?.(flow, reason);
      const m = this.flows.mapping[flow]!;
      if (m >= 0) this.mappings.unref(m);
      this.stats.flowsRemoved[reason]++;
    };
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
    return this.flows.flush((f) => this.mappings.extAddr[this.flows.mapping[f]!] === old);
  }

  isInternal(addr: number): boolean {
    const n = this.internalNet.length;
    for (let i = 0; i < n; i++) if (((addr & this.internalMask[i]!) >>> 0) === this.internalNet[i]) return true;
    return false;
  }

  /** Expire idle flows, visiting at most `budget` slots. */
  sweep(now: number, budget: number): number {
    return this.flows.sweep(now, budget);
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

  /**
   * Translate one packet in place. `len` is what the TUN read returned (never trusted beyond the buffer).
   * Returns Verdict.FORWARD (write the packet back; its length is unchanged) or Verdict.DROP.
   */
  process(buf: Uint8Array, off: number, len: number, now: number): number {
    const ip = this.ip;
    this.lastEntry = -1;
    this.lastCreated = false;
    this.lastPortChoice = PortChoice.NONE;
    this.lastDrop = -1;
    this.lastPath = -1;
    const verdict = ip.wrap(buf, off, len);
    if (verdict !== Ipv4Verdict.OK) {
      // IPv6 is well-formed, just not translated (tunnat is an IPv4 NAT); everything else is garbage.
      const v6 = verdict === Ipv4Verdict.BAD_VERSION && len > 0 && buf[off]! >>> 4 === 6;
      return this.drop(v6 ? DropReason.UNSUPPORTED_PROTOCOL : DropReason.MALFORMED);
    }
    const total = ip.totalLength;
    const src = ip.sourceAddress;
    const dst = ip.destinationAddress;
    const fromInside = this.isInternal(src);
    const toPublic = dst === this.publicIp;
    if (!fromInside && !toPublic) return this.drop(DropReason.NOT_OURS);
    if (fromInside && this.isInternal(dst)) return this.drop(DropReason.NOT_OURS);

    if (ip.isFragment) {
      // Only the first fragment carries ports; without reassembly the rest could not be matched.
      if (toPublic && !fromInside) return this.toGateway(total);
      return this.drop(DropReason.FRAGMENT);
    }

    const proto = ip.protocol;
    const l4 = ip.payloadOffset;
    const l4len = ip.payloadLength;
    let sport: number;
    let dport: number;
    let tcpFlags = 0;
    if (proto === IPPROTO.UDP) {
      if (this.udp.wrap(buf, l4, l4len) !== UdpVerdict.OK) return this.drop(DropReason.MALFORMED);
      sport = this.udp.sourcePort;
      dport = this.udp.destinationPort;
    } else if (proto === IPPROTO.TCP) {
      if (this.tcp.wrap(buf, l4, l4len) !== TcpVerdict.OK) return this.drop(DropReason.MALFORMED);
      sport = this.tcp.sourcePort;
      dport = this.tcp.destinationPort;
      tcpFlags = this.tcp.flags;
    } else if (proto === IPPROTO.ICMP) {
      if (this.icmp.wrap(buf, l4, l4len) !== IcmpVerdict.OK) return this.drop(DropReason.MALFORMED);
      if (this.icmp.isError) return this.processIcmpError(buf, fromInside, total, now);
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
      if (!fromInside) return this.toGateway(total); // the gateway's own traffic
      if (proto === IPPROTO.TCP && !tcpMayCreate(tcpFlags)) {
        return this.drop(tcpPacketClass(tcpFlags) === TcpClass.INVALID ? DropReason.TCP_FLAGS : DropReason.NO_MAPPING);
      }
      if (proto === IPPROTO.ICMP && !this.icmp.isQueryRequest) return this.drop(DropReason.NO_MAPPING);
      e = this.createOutbound(proto, src, dst, sport, dport, now);
      if (e < 0) return this.drop(-e - 1);
    }
    const flow = e >> 1;
    const dir = e & 1;
    this.lastEntry = e;

    // Track state and refresh the timer.
    let timeout: number;
    if (proto === IPPROTO.TCP) {
      const before = flows.state[flow]!;
      const st = tcpStep(before, flows.detail[flow]!, dir as 0 | 1, tcpFlags, this.step);
      if (!st.valid) return this.drop(DropReason.TCP_FLAGS);
      if (st.state !== before && this.observers.length > 0) {
        flows.state[flow] = st.state;
        for (const ob of this.observers) ob.updated?.(flow, before, now);
      }
      flows.state[flow] = st.state;
      flows.detail[flow] = st.detail;
      if (tcpIsAssured(st.state)) flows.flags[flow] = flows.flags[flow]! | FLOW_ASSURED;
      timeout = tcpTimeout(st.state, this.timeouts);
    } else if (proto === IPPROTO.UDP) {
      timeout = this.timeouts.udp;
      if (dir === DIR_REPLY) flows.flags[flow] = flows.flags[flow]! | FLOW_SEEN_REPLY | FLOW_ASSURED;
    } else {
      timeout = this.timeouts.icmp;
    }
    if (dir === DIR_REPLY) flows.flags[flow] = flows.flags[flow]! | FLOW_SEEN_REPLY;
    flows.expires[flow] = now + timeout * 1000;
    flows.packets[e]!++;
    flows.bytes[e]! += total;

    // Rewrite to the inverse of the other direction's tuple.
    const o = e ^ 1;
    const newSrc = flows.tDst[o]!;
    const newDst = flows.tSrc[o]!;
    const newSport = flows.tDport[o]!;
    const newDport = flows.tSport[o]!;
    if (proto === IPPROTO.UDP) {
      const u = this.udp;
      if (newSrc !== src) u.updateChecksumForAddressChange(src, newSrc);
      if (newDst !== dst) u.updateChecksumForAddressChange(dst, newDst);
      if (newSport !== sport) u.setSourcePortWithChecksum(newSport);
      if (newDport !== dport) u.setDestinationPortWithChecksum(newDport);
    } else if (proto === IPPROTO.TCP) {
      const t = this.tcp;
      if (newSrc !== src) t.updateChecksumForAddressChange(src, newSrc);
      if (newDst !== dst) t.updateChecksumForAddressChange(dst, newDst);
      if (newSport !== sport) t.setSourcePortWithChecksum(newSport);
      if (newDport !== dport) t.setDestinationPortWithChecksum(newDport);
    } else {
      const id = this.icmp.isQueryRequest ? newSport : newDport;
      if (id !== this.icmp.identifier) this.icmp.setIdentifierWithChecksum(id);
    }
    if (newSrc !== src) ip.setSourceAddressWithChecksum(newSrc);
    if (newDst !== dst) ip.setDestinationAddressWithChecksum(newDst);
    return this.forward(fromInside ? Path.OUTBOUND : Path.INBOUND, total);
  }

  /**
   * A new connection from the LAN: find or create the endpoint-independent mapping, then the flow.
   * Returns the entry, or -(reason + 1).
   */
  private createOutbound(proto: number, src: number, dst: number, sport: number, dport: number, now: number): number {
    const flows = this.flows;
    let flow = flows.allocate();
    if (flow < 0) {
      flows.earlyDrop(now, EARLY_DROP_BUDGET);
      flow = flows.allocate();
      if (flow < 0) return -(DropReason.TABLE_FULL + 1);
    }
    const maps = this.mappings;
    // For ICMP the identifier is the internal "port"; it sits in sport for a request.
    let m = maps.lookupInternal(proto, src, sport);
    if (m < 0) {
      m = maps.create(proto, src, sport, this.publicIp, this.rng);
      if (m < 0) {
        flows.release(flow);
        return -((m === -2 ? DropReason.TABLE_FULL : DropReason.PORTS_EXHAUSTED) + 1);
      }
      this.lastPortChoice = maps.extPort[m] === sport ? PortChoice.PRESERVED : PortChoice.REMAPPED;
    } else {
      this.lastPortChoice = PortChoice.EXISTING;
    }
    maps.ref(m);
    flows.mapping[flow] = m;
    const ext = maps.extPort[m]!;
    const pub = maps.extAddr[m]!;
    flows.setTuple(flow, DIR_ORIGINAL, src, dst, sport, dport);
    flows.setTuple(flow, DIR_REPLY, dst, pub, dport, ext);
    flows.insert(flow, proto, now, now);
    this.stats.flowsCreated++;
    this.lastCreated = true;
    for (const o of this.observers) o.created?.(flow, now);
    return flow * 2 + DIR_ORIGINAL;
  }

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
    if (ip.destinationAddress === qsrc && nqsrc !== qsrc) ip.setDestinationAddressWithChecksum(nqsrc);
    if (ip.sourceAddress === qdst && nqdst !== qdst) ip.setSourceAddressWithChecksum(nqdst);
    this.stats.icmpErrorsTranslated++;
    return this.forward(fromInside ? Path.OUTBOUND : Path.INBOUND, total);
  }

  /** Called when a flow is removed from outside the packet path (tests, listing). */
  removeFlow(flow: number, reason: RemoveReason): void {
    this.flows.remove(flow, reason);
  }
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
