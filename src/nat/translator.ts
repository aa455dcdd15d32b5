import { Ipv4Verdict, IPPROTO, IPV4_OFF, IPV4_FRAG } from '../wire/ipv4.js';
import { UdpVerdict, UDP_OFF, UDP_HEADER_LENGTH } from '../wire/udp.js';
import { TcpVerdict, TCP_FLAGS } from '../wire/tcp.js';
import { IcmpVerdict } from '../wire/icmp.js';
import { rd16, rd32 } from '../wire/bytes.js';
import { rewriteIcmpIdentifier, rewriteIpv4Header, rewriteTransportEndpoints } from '../wire/rewrite.js';
import { DIR_REPLY, FLOW_ALG, FLOW_ASSURED, FLOW_LOOSE, FLOW_SEEN_REPLY } from '../conntrack/table.js';
import { tcpStep, tcpTimeout, tcpIsAssured, tcpMayCreate, tcpPacketClass, TcpClass, TcpState } from '../conntrack/tcp.js';
import type { Timeouts } from '../conntrack/timeouts.js';
import type { EgressPolicy, PortForward } from './policy.js';
import { NatContext, NONE } from './context.js';
import { MAX_POOL } from './mappings.js';
import { ipToString } from '../wire/addr.js';
import { setUpFlow } from './new-flow.js';
import { gatewayIcmp, translateIcmpError } from './icmp-error.js';
import { translateOther } from './generic.js';
import { laterFragment, openFirstFragment, settleFirstFragment } from './fragment-path.js';
import { restoreFlow, type RestoredFlow } from './restore.js';
import { udpTimer, WELL_KNOWN_BELOW } from './udp-timer.js';
import { DropReason, Path, PortChoice, Setup, Verdict } from './outcome.js';

export * from './outcome.js';
export type { Cidr, NatOptions } from './context.js';
export type { RestoredFlow, SavedMapping } from './restore.js';

/**
 * The NAT engine: one call per packet, in place, no allocation on the common paths.
 *
 * Every packet that reaches tunnat came out of the gateway's routing into the TUN, and whatever tunnat
 * writes back is routed again. So:
 * - a packet of a known flow, from either side, is rewritten to the inverse of the other direction's
 *   tuple (netfilter's rule: each side sees the inverse of what the other side sends) — the fast path,
 *   which is all of this file below process();
 * - a new packet from the LAN gets a mapping and a flow (outbound.ts); if it is addressed to the public
 *   address it is hairpinned to the LAN host behind the target port (hairpin.ts);
 * - a new packet from outside for the public address reaches a LAN host through a port forward or, as
 *   the filtering mode allows, through an existing mapping (inbound.ts); else it belongs to the gateway
 *   itself (written back unchanged, the local table delivers it) or, on a port the NAT hands out, is dropped;
 * - ICMP errors are translated with the flow they quote (icmp-error.ts), fragments follow their first
 *   fragment (fragment-path.ts);
 * - SCTP and UDP-Lite get ports translated like UDP (ported.ts), any other IP protocol address-only NAT,
 *   as Linux's generic tracker gives it (generic.ts);
 * - anything else is dropped and counted by reason. Nothing from the LAN ever leaves untranslated.
 * Every packet written back gets its TTL raised by one, because the gateway routes it twice (into the
 * TUN and out of it) and must count as a single hop.
 */

/** Flow detail bits (beside conntrack/tcp.ts's FIN bits): a sequence number was seen from this direction. */
const TCP_SEQ_ORIG = 0x10;
const TCP_SEQ_REPLY = 0x20; // together: TCP_SEQ_SEEN in restore.ts
/** How far from the expected sequence number an RST may be and still count (generous: windows scale). */
const RST_WINDOW = 1 << 24;
/** The flags that move the TCP state machine; a segment with none of them but ACK is the bulk of all TCP. */
const TCP_CONTROL = TCP_FLAGS.SYN | TCP_FLAGS.FIN | TCP_FLAGS.RST | TCP_FLAGS.ACK;

export class Translator extends NatContext {
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

  /**
   * Masquerade: the WAN address changed. New flows use the new address; flows on the old one can no
   * longer receive replies, so they are flushed (what the kernel's MASQUERADE does on a change).
   * Returns how many flows went.
   */
  setPublicAddress(addr: number): number {
    addr >>>= 0;
    if (addr === this.publicIp) return 0;
    // Flushed while the port pools still answer to the old address, so every port goes back to its pool;
    // only then does the first pool slot take the new address.
    const gone = this.flushAddresses([this.publicIp]);
    this.publicIp = addr;
    this.mappings.setAddress(0, addr);
    this.reserveForwardPorts();
    return gone;
  }

  /**
   * Masquerade over every WAN address: the interface's addresses are now `addresses`, `primary` first
   * among them (forwards and the gateway's own traffic use it). Flows on an address that went are
   * flushed, as a change of the single address flushes them; an address that stayed keeps its flows and
   * its hosts; a new one takes new hosts from now on. Returns how many flows went.
   */
  setPublicAddresses(primary: number, addresses: readonly number[]): number {
    if (!this.dynamicPool) throw new Error('setPublicAddresses needs a dynamic pool (use setPublicAddress)');
    const next = [...new Set(addresses.map((a) => a >>> 0))].slice(0, MAX_POOL);
    primary >>>= 0;
    if (!next.includes(primary)) throw new RangeError('the primary address must be one of the addresses');
    const gone = this.mappings.liveAddresses().filter((a) => !next.includes(a));
    const flushed = gone.length > 0 ? this.flushAddresses(gone) : 0;
    for (const a of gone) {
      // Every port of the address went with its flows and expectations.
      if (!this.mappings.removeAddress(a)) throw new Error(`public address ${ipToString(a)} still has ports in use after its flows went`);
    }
    for (const a of next) this.mappings.addAddress(a);
    this.publicIp = primary;
    this.pairing = Uint32Array.from(this.mappings.liveAddresses()).sort();
    this.reserveForwardPorts();
    return flushed;
  }

  /**
   * Public addresses go (masquerade): flush every flow on one of them and the FTP expectations waiting on
   * them. A flow is on an address if either mapping it holds is (a hairpin holds its target's too, which
   * may be on another address of a pool than its own), or, holding none (address-only, or in through a
   * forward), if either tuple names it. Fragments translated to an old address must not follow it either.
   * Returns how many flows went.
   */
  private flushAddresses(gone: readonly number[]): number {
    this.fragments.clear();
    const flows = this.flows;
    const maps = this.mappings;
    const flushed = flows.flush((f) => {
      const m = flows.mapping[f]!;
      const m2 = flows.mapping2[f]!;
      if (m2 >= 0 && gone.includes(maps.extAddr[m2]!)) return true;
      return m < 0 ? gone.includes(flows.tDst[f * 2]!) || gone.includes(flows.tDst[f * 2 + 1]!) : gone.includes(maps.extAddr[m]!);
    });
    for (const a of gone) this.alg?.forgetAddress(this, a);
    return flushed;
  }

  /** Expire idle flows, visiting at most `budget` slots, and fragment sets that never completed. */
  sweep(now: number, budget: number): number {
    if (this.fragments.size > 0) this.fragments.expire(now);
    if (this.alg !== null && this.alg.pending > 0) this.alg.expire(this, now);
    if (this.algRedirects !== null && this.algRedirects.size > 0) this.algRedirects.prune(this.mappings);
    return this.flows.sweep(now, budget);
  }

  /** Flows a LAN host holds. */
  flowsOfHost(addr: number): number {
    return this.hostFlows.get(addr >>> 0);
  }

  /** Put back a flow saved by a previous run (restore.ts); false, changing nothing, when it cannot be exact. */
  restoreFlow(r: RestoredFlow, now: number): boolean {
    return restoreFlow(this, r, now);
  }

  /**
   * Translate one packet in place. `len` is what the TUN read returned (never trusted beyond the buffer).
   * Returns Verdict.FORWARD (write the packet back; its length is unchanged), Verdict.DROP, or
   * Verdict.HELD (a fragment kept until its first fragment arrives; sent later through the sink), or
   * Verdict.HANDOFF (another worker holds its flow: the packet is unchanged, handoffTo names the worker).
   */
  process(buf: Uint8Array, off: number, len: number, now: number, csumPartial = false): number {
    this.partial = csumPartial;
    this.lastEntry = NONE;
    this.lastCreated = false;
    this.lastPortChoice = PortChoice.NONE;
    this.lastDrop = NONE;
    this.lastPath = NONE;
    this.lengthDelta = 0;
    const verdict = this.ip.wrap(buf, off, len);
    if (verdict !== Ipv4Verdict.OK) {
      // IPv6 is well-formed, just not translated (tunnat is an IPv4 NAT); everything else is garbage.
      const v6 = verdict === Ipv4Verdict.BAD_VERSION && len > 0 && buf[off]! >>> 4 === 6;
      return this.drop(v6 ? DropReason.UNSUPPORTED_PROTOCOL : DropReason.MALFORMED);
    }
    // Straight from the bytes wrap() validated: the view's getters are not always inlined this deep.
    const src = rd32(buf, off + IPV4_OFF.SOURCE);
    const dst = rd32(buf, off + IPV4_OFF.DESTINATION);
    const fromInside = this.isInternal(src);
    // One compare for a single address; a pool looks further only when that one fails.
    const toPublic = dst === this.publicIp || (this.multiAddress && this.isPublic(dst));
    // A standby of a pair translates nothing: it does not hold the public address it would send from. (The
    // gateway's own ICMP, below, is its own address's business and goes on.)
    if (this.standby && (fromInside || toPublic)) return this.drop(DropReason.STANDBY);
    if (!fromInside && !toPublic) {
      // Neither side is ours to translate. The routing sends the gateway's own ICMP to the WAN through the
      // TUN (rule 998), so that its errors about packets tunnat translated into the LAN do not quote LAN
      // addresses; nothing from outside reaches the TUN with such addresses.
      return buf[off + IPV4_OFF.PROTOCOL] === IPPROTO.ICMP ? gatewayIcmp(this, buf, now, this.ip.totalLength) : this.drop(DropReason.NOT_OURS);
    }
    if (fromInside && this.isInternal(dst)) return this.drop(DropReason.NOT_OURS);
    const frag = rd16(buf, off + IPV4_OFF.FLAGS_FRAGMENT) & (IPV4_FRAG.MORE_FRAGMENTS | IPV4_FRAG.OFFSET_MASK); // any fragment
    if (frag === 0) return this.translate(buf, now, fromInside, toPublic, false);
    if ((frag & IPV4_FRAG.OFFSET_MASK) !== 0) return laterFragment(this, buf, off, now, src, dst, fromInside);
    // A first fragment carries the ports: translate it as a whole packet, then the rest follow it.
    const datagram = openFirstFragment(this, src, dst, now);
    if (datagram === null) return this.drop(DropReason.FRAGMENT);
    return settleFirstFragment(this, datagram, this.translate(buf, now, fromInside, toPublic, true));
  }

  /**
   * A whole packet or a first fragment: read its tuple, find its flow (or set one up), track its state,
   * and rewrite it to the inverse of the other direction's tuple.
   *
   * The addresses are read again here rather than passed in: an IPv4 address is a 32-bit number, too wide
   * for V8's small integers, so passing it to a function that is not inlined (this one is too big to be)
   * boxes it in a new heap number — two allocations per packet, garbage the collector then has to sweep.
   */
  private translate(buf: Uint8Array, now: number, fromInside: boolean, toPublic: boolean, firstFragment: boolean): number {
    const ip = this.ip;
    const src = rd32(buf, ip.off + IPV4_OFF.SOURCE);
    const dst = rd32(buf, ip.off + IPV4_OFF.DESTINATION);
    const total = ip.totalLength;
    const proto = buf[ip.off + IPV4_OFF.PROTOCOL]!;
    const l4 = ip.off + ip.headerLength;
    const l4len = total - ip.headerLength;

    // 1. The tuple. An ICMP query's identifier sits in the "port" of the querying side: the source for
    //    requests, the destination for replies.
    let sport: number;
    let dport: number;
    let tcpFlags = 0;
    if (proto === IPPROTO.UDP) {
      // A first fragment's UDP length counts the later fragments too: only its header must be here.
      if (firstFragment ? l4len < UDP_HEADER_LENGTH : this.udp.wrap(buf, l4, l4len) !== UdpVerdict.OK) return this.drop(DropReason.MALFORMED);
      sport = rd16(buf, l4 + UDP_OFF.SOURCE_PORT);
      dport = rd16(buf, l4 + UDP_OFF.DESTINATION_PORT);
    } else if (proto === IPPROTO.TCP) {
      if (this.tcp.wrap(buf, l4, l4len) !== TcpVerdict.OK) return this.drop(DropReason.MALFORMED);
      sport = this.tcp.sourcePort;
      dport = this.tcp.destinationPort;
      tcpFlags = this.tcp.flags;
    } else if (proto === IPPROTO.ICMP) {
      const icmp = this.icmp;
      if (icmp.wrap(buf, l4, l4len) !== IcmpVerdict.OK) return this.drop(DropReason.MALFORMED);
      // A big echo may come in fragments (only its identifier matters); an error never should.
      if (icmp.isError) return firstFragment ? this.drop(DropReason.FRAGMENT) : translateIcmpError(this, buf, fromInside, total, now);
      if (!icmp.isQuery) {
        // Redirects, router adverts and the like never cross a NAT; the gateway may want them itself.
        return fromInside ? this.drop(DropReason.UNSUPPORTED_PROTOCOL) : this.toGateway(total);
      }
      const request = icmp.isQueryRequest;
      sport = request ? icmp.identifier : 0;
      dport = request ? 0 : icmp.identifier;
    } else {
      // Every other protocol, out of line: SCTP and UDP-Lite with ports, the rest by address (generic.ts).
      return translateOther(this, buf, proto, src, dst, fromInside, toPublic, firstFragment, now);
    }

    // 2. The flow, from either direction; or a new one, if this packet may open one.
    const flows = this.flows;
    let e = flows.lookup(proto, src, dst, sport, dport, now);
    if (e < 0) {
      // An FTP data endpoint whose flow another worker holds: that worker translates it (alg-redirect.ts).
      if (this.algRedirects !== null && proto === IPPROTO.TCP && fromInside && !firstFragment && this.redirected(src, sport)) return Verdict.HANDOFF;
      const pickUp = !this.mayOpen(proto, tcpFlags);
      if (pickUp && !this.mayPickUp(proto, tcpFlags, fromInside, toPublic)) return this.notOpened(proto, tcpFlags, fromInside, toPublic, dport, total);
      const setup = setUpFlow(this, buf, proto, src, dst, sport, dport, fromInside, toPublic, now);
      if (setup === Setup.TO_GATEWAY) return this.toGateway(total);
      if (setup === Setup.REFUSED) return this.drop(this.setupReason);
      e = this.setupEntry;
      if (pickUp) this.pickedUp(e >> 1);
      if (proto === IPPROTO.TCP && this.alg !== null) this.alg.flowCreated(this, e >> 1, dport, fromInside, toPublic);
    }
    const flow = e >> 1;
    const dir = e & 1;
    this.lastEntry = e;
    // Read once for the three tests below (picked up, seen reply, ALG): nothing in between changes those bits
    // (firstReply changes the first two, after their tests; nothing here changes the ALG's).
    const flowFlags = flows.flags[flow]!;

    // 3. State and timer.
    let timeout: number;
    if (proto === IPPROTO.TCP) {
      // Remember where this direction's sequence numbers are, to judge a later RST.
      const t = this.tcp;
      const seen = dir === 0 ? TCP_SEQ_ORIG : TCP_SEQ_REPLY;
      if (tcpFlags & TCP_FLAGS.RST) {
        // An RST whose sequence number is nowhere near what this side sends is ignored, as the endpoint
        // itself would (RFC 5961 §3): otherwise anyone who guesses the 4-tuple could end the flow.
        if (flows.detail[flow]! & seen && Math.abs(((t.sequenceNumber - flows.seqNext[e]!) | 0)) > RST_WINDOW) {
          return this.drop(DropReason.TCP_FLAGS);
        }
      } else {
        // SYN and FIN each take one sequence number.
        const controls = tcpFlags & (TCP_FLAGS.SYN | TCP_FLAGS.FIN) ? 1 : 0;
        flows.seqNext[e] = (t.sequenceNumber + t.payloadLength + controls) >>> 0;
        flows.detail[flow] = flows.detail[flow]! | seen;
      }
      if (flows.state[flow] === TcpState.ESTABLISHED && (tcpFlags & TCP_CONTROL) === TCP_FLAGS.ACK) {
        // An ACK (maybe with data or PSH) on an established connection changes nothing in the state
        // machine: skip it. A connection picked up in the middle keeps a short timer until its first reply.
        timeout = flowFlags & FLOW_LOOSE ? this.timeouts.tcpSynSent : this.timeouts.tcpEstablished;
      } else {
        if (!this.tcpTransition(flow, dir, tcpFlags, now)) return this.drop(DropReason.TCP_FLAGS);
        timeout = tcpTimeout(flows.state[flow]!, this.timeouts);
      }
    } else if (proto === IPPROTO.UDP) {
      // A stream (assured) keeps the long timer, and so does a flow to a port of 1024 or above until it has a
      // reply; a replied flow that may yet become a stream, and a query to a well-known port, are judged
      // out of line (udp-timer.ts).
      const uf = flowFlags;
      timeout =
        uf & FLOW_ASSURED || (!(uf & FLOW_SEEN_REPLY) && flows.tDport[flow * 2]! >= WELL_KNOWN_BELOW)
          ? this.timeouts.udp
          : udpTimer(this, flow, dir, now);
    } else {
      timeout = this.timeouts.icmp;
    }
    if (dir === DIR_REPLY && !(flowFlags & FLOW_SEEN_REPLY)) this.firstReply(flow, proto, now);
    flows.expires[flow] = now + timeout * 1000;
    // A GSO superpacket counts as one packet of its own length, as the kernel's interface and conntrack
    // counters count it, so tunnat's figures line up with `ip -s link` and `conntrack -L`.
    flows.packets[e]!++;
    flows.bytes[e]! += total;

    // 4. The rewrite: to the inverse of the other direction's tuple, checksums patched, one hop given back.
    const o = e ^ 1;
    const newSrc = flows.tDst[o]!;
    const newDst = flows.tSrc[o]!;
    if (proto === IPPROTO.ICMP) {
      rewriteIcmpIdentifier(buf, l4, this.partial, this.icmp.isQueryRequest ? flows.tDport[o]! : flows.tSport[o]!);
    } else {
      rewriteTransportEndpoints(buf, l4, proto, this.partial, src, dst, sport, dport, newSrc, newDst, flows.tDport[o]!, flows.tSport[o]!);
    }
    rewriteIpv4Header(buf, ip.off, src, dst, newSrc, newDst, true);
    if (flowFlags & FLOW_ALG) return this.algSegment(buf, e, l4, total, now, fromInside, toPublic);
    return this.countForward(fromInside ? (toPublic ? Path.HAIRPIN : Path.OUTBOUND) : Path.INBOUND, total);
  }

  /**
   * A TCP segment that may move the state machine (anything but a plain ACK on an established flow):
   * step it, mark the flow assured where the new state says so, tell the observers of a change.
   * False, changing nothing, for a segment the state machine refuses.
   * Out of line: it runs for a handful of segments per connection, and translate() stays small.
   */
  private tcpTransition(flow: number, dir: number, tcpFlags: number, now: number): boolean {
    const flows = this.flows;
    const before = flows.state[flow]!;
    const st = tcpStep(before, flows.detail[flow]!, dir as 0 | 1, tcpFlags, this.step);
    if (!st.valid) return false;
    flows.state[flow] = st.state;
    flows.detail[flow] = st.detail;
    if (st.state !== before) {
      if (tcpIsAssured(st.state)) flows.flags[flow] = flows.flags[flow]! | FLOW_ASSURED;
      for (const ob of this.observers) ob.updated?.(flow, before, now);
    }
    return true;
  }

  /** Whether another worker published the LAN endpoint addr:port (left in handoffTo). Out of line. */
  private redirected(addr: number, port: number): boolean {
    const r = this.algRedirects!;
    const w = r.ownerOf(addr, port);
    if (w < 0 || w === r.self) return false;
    this.handoffTo = w;
    return true;
  }

  /** A segment of a connection an ALG watches (FLOW_ALG): its payload and sequence numbers, out of line. */
  private algSegment(buf: Uint8Array, e: number, l4: number, total: number, now: number, fromInside: boolean, toPublic: boolean): number {
    const alg = this.alg;
    const delta = alg !== null ? alg.segment(this, buf, e, l4, total, now) : 0;
    return this.countForward(fromInside ? (toPublic ? Path.HAIRPIN : Path.OUTBOUND) : Path.INBOUND, total + delta);
  }

  /** The first packet of a flow's reply direction. For UDP and ICMP that is their state change (UNREPLIED → REPLIED), as conntrack -E shows it. */
  private firstReply(flow: number, proto: number, now: number): void {
    const flows = this.flows;
    const f = flows.flags[flow]!;
    // A picked-up connection the outside answered: a connection like any other from now on.
    flows.flags[flow] = f & FLOW_LOOSE ? (f & ~FLOW_LOOSE) | FLOW_SEEN_REPLY | FLOW_ASSURED : f | FLOW_SEEN_REPLY;
    if (proto !== IPPROTO.TCP) for (const ob of this.observers) ob.updated?.(flow, flows.state[flow]!, now);
  }

  /** Whether a packet that matched no flow may open one: a TCP SYN, an ICMP query request, any UDP. */
  private mayOpen(proto: number, tcpFlags: number): boolean {
    if (proto === IPPROTO.TCP) return tcpMayCreate(tcpFlags);
    return proto !== IPPROTO.ICMP || this.icmp.isQueryRequest;
  }

  /**
   * A TCP segment with no flow that is not a SYN may still be picked up as an established connection
   * (NatOptions.tcpLoose): only from the LAN side, only to the outside, only a segment with ACK (FIN+ACK
   * included) and no RST. A segment from the WAN never opens a flow this way.
   */
  private mayPickUp(proto: number, tcpFlags: number, fromInside: boolean, toPublic: boolean): boolean {
    if (!this.tcpLoose || proto !== IPPROTO.TCP || !fromInside || toPublic) return false;
    const c = tcpPacketClass(tcpFlags);
    return c === TcpClass.ACK || c === TcpClass.FIN;
  }

  /**
   * A connection picked up in the middle: established as far as anyone can tell, but on the short timer of
   * a connection attempt (tcpSynSent) until the outside answers: a stray ACK or an ACK scan from the LAN
   * must not hold a public port for the established timeout (Linux keeps such a flow 300 s).
   */
  private pickedUp(flow: number): void {
    this.flows.state[flow] = TcpState.ESTABLISHED;
    this.flows.flags[flow] = this.flows.flags[flow]! | FLOW_LOOSE;
    this.stats.tcpPickedUp++;
  }

  /** The verdict for a packet that matched no flow and may not open one. */
  private notOpened(proto: number, tcpFlags: number, fromInside: boolean, toPublic: boolean, dport: number, total: number): number {
    if (proto === IPPROTO.TCP) {
      if (tcpPacketClass(tcpFlags) === TcpClass.INVALID) return this.drop(DropReason.TCP_FLAGS);
      // Segments of the gateway's own connections; on NAT ports, stray segments of nobody's.
      const dst = this.ip.destinationAddress;
      if (!fromInside) return this.gatewayOwnsPort(proto, dport, dst) ? this.toGateway(total) : this.drop(DropReason.NO_MAPPING);
      if (toPublic && this.gatewayOwnsPort(proto, dport, dst) && this.forwardAt(proto, dport, dst) < 0) return this.toGateway(total);
      return this.drop(DropReason.NO_MAPPING);
    }
    // An ICMP query reply: the gateway's own, from outside.
    return fromInside ? this.drop(DropReason.NO_MAPPING) : this.toGateway(total);
  }
}

