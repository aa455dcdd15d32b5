import type { FlowObserver, Translator } from '../nat/translator.js';
import type { RemoveReason } from '../conntrack/table.js';
import { flowRecord, formatFlow, type FlowRecord } from '../conntrack/listing.js';
import { TcpState, TCP_STATE_NAMES, tcpTimeout } from '../conntrack/tcp.js';
import { IPPROTO } from '../wire/ipv4.js';
import { flowMatches, type FlowFilter } from './filter.js';

/**
 * Flow lifecycle events, like `conntrack -E`: NEW when a flow is created, UPDATE when a TCP flow
 * changes state, DESTROY when it is removed (with why: expired, closed, early-drop, flush).
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

  created(flow: number, now: number): void {
    const t = this.nat.flows;
    const rec = flowRecord(t, flow, now);
    // The translator announces a flow before the packet that made it has been tracked: the timer is
    // not set yet and a TCP flow is still NONE. Show what that first packet (always a SYN for TCP)
    // makes of it, as conntrack -E does.
    const proto = t.proto[flow]!;
    const to = this.nat.timeouts;
    if (proto === IPPROTO.TCP) {
      rec.state = TCP_STATE_NAMES[TcpState.SYN_SENT];
      rec.secondsLeft = tcpTimeout(TcpState.SYN_SENT, to);
    } else {
      rec.secondsLeft = proto === IPPROTO.UDP ? to.udp : to.icmp;
    }
    this.emit({ type: 'new', time: new Date().toISOString(), flow: rec });
  }

  updated(flow: number, from: number, now: number): void {
    // The NONE → SYN_SENT step of a new flow was already shown as its NEW.
    if (from === TcpState.NONE) return;
    const t = this.nat.flows;
    const rec = flowRecord(t, flow, now);
    rec.secondsLeft = tcpTimeout(t.state[flow]!, this.nat.timeouts);
    this.emit({ type: 'update', time: new Date().toISOString(), flow: rec, from: TCP_STATE_NAMES[from] ?? String(from) });
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
