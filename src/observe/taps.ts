import type { Dataplane, PacketTap } from '../dataplane/loop.js';
import { VnetHeader, VNET_HDR_LEN, vnetSegments } from '../dataplane/vnet.js';
import type { FlowObserver, Translator } from '../nat/translator.js';

/**
 * One place where the trace and the pcap writer hook into the packet loop.
 *
 * The loop has a single `tap` slot, null while nobody listens (then the loop pays one null check per
 * packet and nothing else). When the first consumer arrives this mux takes the slot; when the last
 * leaves it gives it back. While installed it copies each packet as read into a scratch buffer (the
 * translator rewrites in place, so "before" would be gone otherwise) and hands both versions to the
 * consumers after translation, with the translator's decision fields still describing that packet.
 */
export interface TapPacket {
  /** The packet as read from the TUN (a copy; valid only during the call). */
  before: Buffer;
  beforeLen: number;
  /** The packet as translated (the loop's buffer; valid only during the call). */
  after: Buffer;
  afterOff: number;
  afterLen: number;
  /** The translator's verdict (Verdict.FORWARD or DROP). */
  verdict: number;
  /** The loop's clock for this batch (ms). */
  now: number;
  nat: Translator;
  /**
   * A state change this packet caused: the flow and, for TCP, its state before (for UDP and ICMP the
   * change is the first reply, and stateFrom is not a state name's index); -1 when none.
   */
  stateFlow: number;
  stateFrom: number;
  /**
   * TUN offloads: the transport checksum is partial (the field holds the pseudo-header sum; the kernel
   * completes it on the way out), and how many wire packets this one stands for (a GSO superpacket).
   */
  partial: boolean;
  segments: number;
}

export interface TapConsumer {
  packet(p: TapPacket): void;
}

export class PacketTaps implements PacketTap, FlowObserver {
  private consumers: TapConsumer[] = [];
  private readonly scratch: Buffer;
  private readonly p: TapPacket;
  private readonly vnet = new VnetHeader();

  constructor(
    private readonly loop: Dataplane,
    private readonly nat: Translator,
  ) {
    this.scratch = Buffer.alloc(loop.slotSize);
    this.p = {
      before: this.scratch, beforeLen: 0, after: this.scratch, afterOff: 0, afterLen: 0,
      verdict: 0, now: 0, nat, stateFlow: -1, stateFrom: -1, partial: false, segments: 1,
    };
  }

  get active(): boolean {
    return this.consumers.length > 0;
  }

  add(c: TapConsumer): void {
    if (this.consumers.includes(c)) return;
    this.consumers = [...this.consumers, c];
    if (this.consumers.length === 1) {
      this.nat.observers.push(this);
      this.loop.tap = this;
    }
  }

  remove(c: TapConsumer): void {
    if (!this.consumers.includes(c)) return;
    this.consumers = this.consumers.filter((x) => x !== c);
    if (this.consumers.length === 0) {
      this.loop.tap = null;
      const i = this.nat.observers.indexOf(this);
      if (i >= 0) this.nat.observers.splice(i, 1);
    }
  }

  before(buf: Buffer, off: number, len: number, _now: number): boolean {
    buf.copy(this.scratch, 0, off, off + len);
    const p = this.p;
    p.beforeLen = len;
    p.stateFlow = -1;
    p.stateFrom = -1;
    p.partial = false;
    p.segments = 1;
    // With offloads the loop has already checked the header that sits right before the packet.
    if (this.loop.vnetHdr && off >= VNET_HDR_LEN && this.vnet.read(buf, off - VNET_HDR_LEN, len)) {
      p.partial = this.vnet.needsCsum;
      if (this.vnet.gsoType !== 0) p.segments = vnetSegments(this.vnet, len);
    }
    return true;
  }

  updated(flow: number, from: number): void {
    this.p.stateFlow = flow;
    this.p.stateFrom = from;
  }

  after(buf: Buffer, off: number, len: number, verdict: number, now: number): void {
    const p = this.p;
    p.after = buf;
    p.afterOff = off;
    p.afterLen = len;
    p.verdict = verdict;
    p.now = now;
    const cs = this.consumers;
    for (let i = 0; i < cs.length; i++) {
      try {
        cs[i]!.packet(p);
      } catch {
        // An observer's bug must not take the router down; the packet goes on regardless.
      }
    }
  }
}
