import { Verdict, PATH_NAMES, DROP_REASON_NAMES, FILTERING_NAMES, PortChoice, PORT_CHOICE_NAMES } from '../nat/translator.js';
import { flowRecord, type FlowRecord } from '../conntrack/listing.js';
import { TCP_STATE_NAMES } from '../conntrack/tcp.js';
import { DIR_ORIGINAL, DIR_REPLY, FLOW_ALG, FLOW_INBOUND } from '../conntrack/table.js';
import { IPPROTO } from '../wire/ipv4.js';
import { ipToString } from '../wire/addr.js';
import { packetMatches, type PacketFilter, type PacketKey } from './filter.js';
import { checksumsValid, decodePacket, diffPackets, readKey, type FieldChange, type PacketInfo } from './decode.js';
import type { PacketTaps, TapConsumer, TapPacket } from './taps.js';

/**
 * The live trace: per packet, before and after translation, what tunnat decided and why.
 *
 * Each subscriber has its own filter and rate (a token bucket of `rate` records per second): a
 * packet that matches while the bucket is empty is only counted, and once a second the subscriber
 * hears how many were not shown. Records are built only for packets someone will see, once however
 * many subscribers see them.
 */
export interface PortDecision {
  decision: (typeof PORT_CHOICE_NAMES)[number];
  insideAddress: string;
  insidePort: number;
  publicAddress: string;
  publicPort: number;
  /** One sentence on why this port. */
  why: string;
}

export interface TraceRecord {
  seq: number;
  time: string;
  /** held: a fragment kept until its first fragment arrives (sent later, translated). */
  verdict: 'forward' | 'drop' | 'held' | 'handoff';
  /** Forwarded: outbound (LAN → WAN), inbound (WAN → LAN), local (to the gateway, unchanged). */
  path: (typeof PATH_NAMES)[number] | null;
  /** Dropped: the reason (the `reason` label of tunnat_drops_total). */
  drop: string | null;
  before: PacketInfo | null;
  after: PacketInfo | null;
  flow:
    | (FlowRecord & {
        /** Which of the flow's two tuples the packet matched (or created). */
        matched: 'original' | 'reply';
        created: boolean;
        /** The state before, when this packet changed it (TCP states; UNREPLIED for UDP and ICMP). */
        stateBefore: string | null;
      })
    | null;
  port: PortDecision | null;
  /** An ALG rewrote the payload (FTP: the command or reply line, before and after); null otherwise. */
  alg: { name: 'ftp'; old: string; new: string } | null;
  changes: FieldChange[];
  /** Every checksum of the packet as written, recomputed in full, matched (null: not forwarded). */
  checksumsVerified: boolean | null;
  /** TUN offloads: the transport checksum is partial, completed by the kernel on the way out. */
  checksumPartial: boolean;
  /** Wire packets this one stands for (more than 1: a GSO superpacket). */
  segments: number;
}

export type TraceMessage = { type: 'packet'; record: TraceRecord } | { type: 'suppressed'; count: number };

interface Subscriber {
  filter: PacketFilter;
  rate: number;
  tokens: number;
  last: number;
  suppressed: number;
  send: (m: TraceMessage) => void;
}

export const DEFAULT_TRACE_RATE = 20;
export const MAX_TRACE_RATE = 1000;

export class Tracer implements TapConsumer {
  private subs: Subscriber[] = [];
  private readonly kb: PacketKey = { proto: -1, src: 0, dst: 0, sport: -1, dport: -1 };
  private readonly ka: PacketKey = { proto: -1, src: 0, dst: 0, sport: -1, dport: -1 };
  private seq = 0;
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly taps: PacketTaps) {}

  get subscribers(): number {
    return this.subs.length;
  }

  subscribe(filter: PacketFilter, rate: number, send: (m: TraceMessage) => void): () => void {
    const s: Subscriber = { filter, rate, tokens: rate, last: -1, suppressed: 0, send };
    this.subs = [...this.subs, s];
    if (this.subs.length === 1) {
      this.taps.add(this);
      this.timer = setInterval(() => this.flushSuppressed(), 1000);
      this.timer.unref();
    }
    return () => {
      this.subs = this.subs.filter((x) => x !== s);
      if (this.subs.length === 0) {
        this.taps.remove(this);
        if (this.timer) clearInterval(this.timer);
        this.timer = null;
      }
    };
  }

  /** Tell each subscriber how many matching packets its rate did not let through. */
  flushSuppressed(): void {
    for (const s of this.subs) {
      if (s.suppressed === 0) continue;
      const count = s.suppressed;
      s.suppressed = 0;
      s.send({ type: 'suppressed', count });
    }
  }

  packet(p: TapPacket): void {
    readKey(p.before, 0, p.beforeLen, this.kb);
    const forwarded = p.verdict === Verdict.FORWARD;
    const ka = forwarded && readKey(p.after, p.afterOff, p.afterLen, this.ka) ? this.ka : null;
    let rec: TraceRecord | null = null;
    const subs = this.subs;
    for (let i = 0; i < subs.length; i++) {
      const s = subs[i]!;
      if (!packetMatches(s.filter, this.kb, ka)) continue;
      if (s.last < 0) s.last = p.now;
      s.tokens = Math.min(s.rate, s.tokens + ((p.now - s.last) * s.rate) / 1000);
      s.last = p.now;
      if (s.tokens < 1) {
        s.suppressed++;
        continue;
      }
      s.tokens -= 1;
      rec ??= this.build(p);
      s.send({ type: 'packet', record: rec });
    }
  }

  private build(p: TapPacket): TraceRecord {
    const nat = p.nat;
    const forwarded = p.verdict === Verdict.FORWARD;
    const before = decodePacket(p.before, 0, p.beforeLen);
    const after = forwarded ? decodePacket(p.after, p.afterOff, p.afterLen) : null;
    let flow: TraceRecord['flow'] = null;
    let port: PortDecision | null = null;
    let alg: TraceRecord['alg'] = null;
    const e = nat.lastEntry;
    if (e >= 0) {
      const f = e >> 1;
      const t = nat.flows;
      const tcp = t.proto[f] === IPPROTO.TCP;
      // For UDP and ICMP the translator reports one change only, the first reply, and what it passes as
      // the old state is not a TCP state: before that reply the flow was UNREPLIED.
      const stateBefore =
        nat.lastCreated && tcp
          ? 'NONE'
          : p.stateFlow === f && p.stateFrom >= 0
            ? tcp
              ? (TCP_STATE_NAMES[p.stateFrom] ?? String(p.stateFrom))
              : 'UNREPLIED'
            : null;
      flow = {
        ...flowRecord(t, f, p.now),
        matched: (e & 1) === DIR_ORIGINAL ? 'original' : 'reply',
        created: nat.lastCreated,
        stateBefore,
      };
      if (nat.lastPortChoice !== PortChoice.NONE) port = explainPort(p, f);
      const rw = nat.alg?.lastRewrite;
      // The ALG leaves its last rewrite until its next segment: it is this packet's only on an ALG flow.
      if (forwarded && rw && t.flags[f]! & FLOW_ALG) alg = { name: 'ftp', old: rw.old, new: rw.new };
    }
    return {
      seq: ++this.seq,
      time: new Date().toISOString(),
      verdict: forwarded ? 'forward' : p.verdict === Verdict.HELD ? 'held' : p.verdict === Verdict.HANDOFF ? 'handoff' : 'drop',
      path: forwarded && nat.lastPath >= 0 ? (PATH_NAMES[nat.lastPath] ?? null) : null,
      drop: p.verdict === Verdict.DROP && nat.lastDrop >= 0 ? (DROP_REASON_NAMES[nat.lastDrop] ?? String(nat.lastDrop)) : null,
      before,
      after,
      flow,
      port,
      alg,
      changes: before && after ? diffPackets(before, after) : [],
      checksumsVerified: forwarded ? checksumsValid(p.after, p.afterOff, p.afterLen, p.partial) : null,
      checksumPartial: p.partial,
      segments: p.segments,
    };
  }
}

/** Why the new flow got the public port it got (RFC 4787 §4.1's preferences, in order). */
function explainPort(p: TapPacket, flow: number): PortDecision {
  const nat = p.nat;
  const t = nat.flows;
  const o = flow * 2 + DIR_ORIGINAL;
  const r = flow * 2 + DIR_REPLY;
  const proto = t.proto[flow]!;
  const icmp = proto === IPPROTO.ICMP;
  const inbound = (t.flags[flow]! & FLOW_INBOUND) !== 0;
  // Outbound and hairpin flows: the LAN side is the original source, its public endpoint the reply's
  // destination. Flows opened from outside: the LAN side is the reply source, reached through the
  // public endpoint the packet was sent to (the original destination).
  const insideAddress = ipToString(inbound ? t.tSrc[r]! : t.tSrc[o]!);
  const insidePort = inbound ? t.tSport[r]! : t.tSport[o]!;
  const publicAddress = ipToString(inbound ? t.tDst[o]! : t.tDst[r]!);
  const publicPort = inbound ? t.tDport[o]! : t.tDport[r]!;
  const what = icmp ? 'identifier' : 'port';
  const choice = nat.lastPortChoice;
  const decision = PORT_CHOICE_NAMES[choice] ?? 'none';
  let why: string;
  if (choice === PortChoice.FORWARD) {
    why = `public ${what} ${publicPort} is a port forward (--forward) to ${insideAddress}:${insidePort}`;
  } else if (choice === PortChoice.EXISTING && inbound) {
    why =
      `${publicAddress}:${publicPort} is the mapping of ${insideAddress}:${insidePort}, and the filtering ` +
      `(--filtering ${FILTERING_NAMES[nat.filtering] ?? '?'}, RFC 4787 REQ-8) admits this sender`;
  } else if (choice === PortChoice.EXISTING) {
    why =
      `${insideAddress}:${insidePort} already had a mapping to ${publicAddress}:${publicPort}; every flow from one inside ` +
      `endpoint shares it, whatever the destination (endpoint-independent mapping, RFC 4787 REQ-1)`;
  } else if (choice === PortChoice.PRESERVED) {
    why = `${what} ${insidePort} was free on ${publicAddress}, so the inside ${what} was kept (port preservation, RFC 4787 REQ-3)`;
  } else {
    // The port pool of the public address the flow got (each address of a pool has its own).
    const pool = nat.mappings.poolAt(proto, inbound ? t.tDst[o]! : t.tDst[r]!) ?? nat.mappings.pool(proto);
    let taken = `${what} ${insidePort} could not be kept`;
    if (pool) {
      if (!pool.allowed[insidePort]) {
        taken = icmp
          ? `identifier ${insidePort} is not available`
          : `port ${insidePort} may not be mapped (outside --ports ${pool.lo}-${pool.hi}, forwarded, or one the gateway itself uses)`;
      } else {
        const owner = pool.owner[insidePort]!;
        const m = t.mapping[flow]!;
        if (owner >= 0 && owner !== m) {
          taken = `${what} ${insidePort} on ${publicAddress} is already mapped to ${ipToString(nat.mappings.intAddr[owner]!)}:${nat.mappings.intPort[owner]!}`;
        }
      }
    }
    const parity = publicPort % 2 === insidePort % 2 ? 'with the same parity (RFC 4787 REQ-4)' : 'of the other parity (none of the same was free)';
    why = `${taken}; chose ${publicPort} at random ${parity}`;
  }
  return { decision, insideAddress, insidePort, publicAddress, publicPort, why };
}
