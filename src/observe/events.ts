import type { FlowObserver, Translator } from '../nat/translator.js';
import { DIR_ORIGINAL, type RemoveReason } from '../conntrack/table.js';
import { flowRecord, formatFlow, type FlowRecord } from '../conntrack/listing.js';
import { TcpState, TCP_STATE_NAMES, tcpTimeout } from '../conntrack/tcp.js';
import { sctpTimeout } from '../conntrack/sctp.js';
import { IPPROTO } from '../wire/ipv4.js';
import { flowMatches, type FlowFilter } from './filter.js';

/**
 * Flow lifecycle events, like `conntrack -E`: NEW when a flow is created, UPDATE when a TCP flow
 * changes state or a UDP/ICMP flow sees its first reply, DESTROY when it is removed (with why: expired, closed, early-drop, flush).
 *
 * The hub is one of the translator's observers only while someone subscribes, so with nobody
 * listening nothing is built. With listeners, each event costs one small object per flow change
 * (never per packet of an established flow).
 */
export type FlowEventType = 'new' | 'update' | 'destroy';

export interface FlowEvent {
  type: FlowEventType;
  /** Wall-clock time, ISO 8601. */
  time: string;
  flow: FlowRecord;
  /** UPDATE: the state before. */
  from?: string;
  /** DESTROY: why the flow was removed. */
  reason?: RemoveReason;
}

export type FlowEventListener = (ev: FlowEvent) => void;

interface Subscription {
  filter: FlowFilter;
  fn: FlowEventListener;
}

export class FlowEvents implements FlowObserver {
  private subs: Subscription[] = [];
  private attached = false;

  constructor(
    private readonly nat: Translator,
    /** The loop's clock (ms), for the seconds left of flows that are removed. */
    private readonly clock: () => number,
  ) {}

  get subscribers(): number {
    return this.subs.length;
  }

  /** Call `fn` for every event matching `filter`; returns the unsubscribe function. */
  subscribe(filter: FlowFilter, fn: FlowEventListener): () => void {
    const sub: Subscription = { filter, fn };
    this.subs = [...this.subs, sub];
    if (!this.attached) {
      this.nat.observers.push(this);
      this.attached = true;
    }
    return () => {
      this.subs = this.subs.filter((s) => s !== sub);
      if (this.subs.length === 0 && this.attached) {
        const i = this.nat.observers.indexOf(this);
        if (i >= 0) this.nat.observers.splice(i, 1);
        this.attached = false;
      }
    };
  }

  private emit(ev: FlowEvent): void {
    for (const s of this.subs) {
      if (!flowMatches(s.filter, ev.flow)) continue;
      try {
        s.fn(ev);
      } catch {
        // A listener's failure (a closed socket) must never reach the packet path.
      }
    }
  }

  /**
   * The translator announces a flow change while it tracks the packet that caused it: before that
   * packet is counted and before the flow's timer is set (src/nat/translator.ts, step 3). Add what
   * that packet does, so that each line shows the flow as the packet left it, as conntrack -E does.
   * Only the copy in the event changes; the table is untouched. `nat.ip` still views the packet.
   */
  private withPacket(rec: FlowRecord, dir: number): FlowRecord {
    const len = this.nat.ip.totalLength;
    if (dir === DIR_ORIGINAL) {
      rec.packets.original++;
      rec.bytes.original += len;
    } else {
      rec.packets.reply++;
      rec.bytes.reply += len;
    }
    return rec;
  }

  /** The timer the translator is about to set for this flow in its current state. */
  private timeout(flow: number): number {
    const t = this.nat.flows;
    const to = this.nat.timeouts;
    const proto = t.proto[flow]!;
    if (proto === IPPROTO.TCP) return tcpTimeout(t.state[flow]!, to);
    if (proto === IPPROTO.SCTP) return sctpTimeout(t.state[flow]!, to);
    if (proto === IPPROTO.UDP || proto === IPPROTO.UDPLITE) return to.udp;
    return proto === IPPROTO.ICMP ? to.icmp : to.generic;
  }

  created(flow: number, now: number): void {
    const t = this.nat.flows;
    // A new flow is always made by a packet in its original direction. A TCP flow is still NONE here:
    // show what that first packet (always a SYN) makes of it.
    const rec = this.withPacket(flowRecord(t, flow, now), DIR_ORIGINAL);
    if (t.proto[flow] === IPPROTO.TCP) {
      rec.state = TCP_STATE_NAMES[TcpState.SYN_SENT];
      rec.secondsLeft = tcpTimeout(TcpState.SYN_SENT, this.nat.timeouts);
    } else {
      rec.secondsLeft = this.timeout(flow);
    }
    this.emit({ type: 'new', time: new Date().toISOString(), flow: rec });
  }

  updated(flow: number, from: number, now: number): void {
    const t = this.nat.flows;
    const tcp = t.proto[flow] === IPPROTO.TCP;
    // The NONE → SYN_SENT step of a new flow was already shown as its NEW.
    if (tcp && from === TcpState.NONE) return;
    // The packet in hand is the one that changed the state (its entry is set before tracking).
    const rec = this.withPacket(flowRecord(t, flow, now), this.nat.lastEntry & 1);
    rec.secondsLeft = this.timeout(flow);
    // UDP and ICMP report one change only, their first reply; `from` is then not a TCP state.
    const was = tcp ? (TCP_STATE_NAMES[from] ?? String(from)) : 'UNREPLIED';
    this.emit({ type: 'update', time: new Date().toISOString(), flow: rec, from: was });
  }

  removed(flow: number, reason: RemoveReason): void {
    const rec = flowRecord(this.nat.flows, flow, this.clock());
    this.emit({ type: 'destroy', time: new Date().toISOString(), flow: rec, reason });
  }
}

/** One line per event in the style of `conntrack -E`. */
export function formatEvent(ev: FlowEvent): string {
  const tag = `[${ev.type.toUpperCase()}]`.padStart(9);
  let line = `${tag} ${formatFlow(ev.flow)}`;
  if (ev.type === 'update' && ev.from) line += ` (was ${ev.from})`;
  if (ev.type === 'destroy' && ev.reason) line += ` (${ev.reason})`;
  return line;
}
