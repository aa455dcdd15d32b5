import type { TunDevice } from '../tun/device.js';
import { Translator, Verdict } from '../nat/translator.js';
import { FlowKeys } from '../conntrack/table.js';
import { VnetHeader, VNET_HDR_LEN, vnetSegments } from './vnet.js';
import { IPPROTO, IPV4_FRAG, IPV4_MIN_HEADER_LENGTH, IPV4_OFF } from '../wire/ipv4.js';
import { rd16, rd32 } from '../wire/bytes.js';
import { HERE } from './steering.js';
import { HELD } from './fragment-steer.js';

/**
 * The packet loop: read a batch from the TUN into one buffer, translate each packet in place, write the
 * survivors back in one call. One native crossing per batch each way; nothing allocated per packet.
 *
 * With the virtio-net header (TUN offloads) every packet slot starts with a 10-byte header that says
 * whether the packet is a GSO superpacket and whether its transport checksum is still partial; the
 * packet is translated once for all the segments it stands for, and written back with the same header.
 *
 * The clock is read once per batch and handed to the translator, so tests drive time by hand.
 */
export interface LoopOptions {
  /** Packets per batch (default 64). */
  batch?: number;
  /** Bytes per slot: at least the TUN's MTU, or 64 KiB + header with offloads (default 2048). */
  slotSize?: number;
  /** Batches per wake-up before yielding to the event loop (default 16). */
  maxBatchesPerWake?: number;
  /** Monotonic milliseconds. */
  clock?: () => number;
  /** Each packet is preceded by a virtio_net_hdr (the TUN was opened with IFF_VNET_HDR). */
  vnetHdr?: boolean;
  /**
   * Busy polling, in microseconds (default 0: off). After a wake-up that found packets, keep reading the
   * TUN for this long after the last packet before going back to sleep in poll, so that the answer to
   * what was just forwarded is picked up without the cost of waking a sleeping process.
   */
  busyPollUs?: number;
  /**
   * From this many flows on, warm the flow table for a whole batch before translating it (default 16384;
   * below that the table sits in the caches and the extra pass costs more than it saves).
   */
  prefetchMinFlows?: number;
}

export interface LoopStats {
  batches: number;
  /** Packets the TUN reported longer than a slot (truncated by the kernel): dropped. */
  oversize: number;
  /** Packets whose virtio-net header was impossible (lengths, offsets, GSO type): dropped. */
  badVnet: number;
  /** GSO superpackets translated (each stands for several wire packets). */
  superpackets: number;
  /** The wire packets those superpackets stand for. */
  segments: number;
  /** Packets the TUN did not take back (its queue was full). */
  writeShort: number;
  /** Busy-poll windows run, and the packets they caught (which would otherwise each have cost a wake-up). */
  spins: number;
  spinPackets: number;
  /** Spins after which the window was halved because the thread had been preempted while spinning. */
  spinShrinks: number;
  /** Packets read from the TUN (forwarded, dropped, handed to another worker, or too long for a slot). */
  packetsRead: number;
  /** Packets handed to the worker that owns their flow (--workers), received from other workers, and
   * refused because the owner's ring was full (dropped, counted). */
  handoffsOut: number;
  handoffsIn: number;
  handoffDrops: number;
  /** Histogram of batch sizes, in buckets of 1, 2-3, 4-7, … 64+ (log2). */
  readonly batchSizes: Float64Array;
}

/**
 * How a worker (--workers) passes packets of other workers' flows on: steering names each packet's owner,
 * `send` puts a packet (with its virtio-net header) in the owner's ring, `receive` takes the next packet
 * other workers handed to this one.
 */
export interface Handoff {
  readonly self: number;
  /**
   * The packet's owner (a worker index), HERE, or HELD (kept to be passed on later). `slot`/`slotLen` span
   * the packet with its header, `off`/`len` the IP packet; `fromRing`: it was handed to this worker.
   */
  steer(buf: Buffer, slot: number, off: number, len: number, slotLen: number, fromRing: boolean): number;
  send(owner: number, buf: Buffer, off: number, len: number): boolean;
  receive(buf: Buffer, at: number): number;
}

/**
 * A packet tap (trace, pcap): sees each packet as read and, when forwarded, as written. Only set while
 * someone listens; the loop pays one null check per packet otherwise. Offsets point at the IP header.
 */
export interface PacketTap {
  /** Before translation; return false to skip `after` for this packet (e.g. filtered out). */
  before(buf: Buffer, off: number, len: number, now: number): boolean;
  /** After translation; `verdict` is the translator's (the packet bytes are the rewritten ones). */
  after(buf: Buffer, off: number, len: number, verdict: number, now: number): void;
  /** A packet tunnat made itself (ICMP error, TCP reset, a held fragment released), as it is sent. */
  generated?(buf: Buffer, off: number, len: number): void;
}

export class Dataplane {
  readonly batch: number;
  readonly slotSize: number;
  readonly vnetHdr: boolean;
  private readonly hdrLen: number;
  private readonly buf: Buffer;
  private readonly lens: Uint32Array;
  private readonly outOffsets: Uint32Array;
  private readonly outLens: Uint32Array;
  private readonly maxBatches: number;
  private readonly clock: () => number;
  private readonly busyPollMs: number;
  /** The spin's current window (adaptive: see spin()), between busyPollMs / 16 and busyPollMs. */
  private spinMs: number;
  private readonly prefetchMinFlows: number;
  private readonly keys: FlowKeys;
  private readonly vnet = new VnetHeader();
  readonly stats: LoopStats;
  private running = false;
  private outCount = 0;
  private genNext = 0;
  private readonly genBase: number;
  /** Called after each batch with the clock value used (for metrics of loop time). */
  onBatch: ((packets: number, startedAt: number) => void) | null = null;
  /** Trace/pcap tap; null when nobody listens. */
  tap: PacketTap | null = null;
  /** Set when this loop is one worker of several (--workers). */
  handoff: Handoff | null = null;

  constructor(
    private readonly tun: TunDevice,
    readonly nat: Translator,
    opts: LoopOptions = {},
  ) {
    this.batch = opts.batch ?? 64;
    this.vnetHdr = opts.vnetHdr ?? false;
    this.hdrLen = this.vnetHdr ? VNET_HDR_LEN : 0;
    this.slotSize = opts.slotSize ?? 2048;
    this.maxBatches = opts.maxBatchesPerWake ?? 16;
    this.clock = opts.clock ?? (() => performance.now());
    const busy = opts.busyPollUs ?? 0;
    if (!Number.isInteger(busy) || busy < 0 || busy > 10_000) throw new RangeError(`busyPollUs must be an integer in 0..10000, got ${busy}`);
    this.busyPollMs = busy / 1000;
    this.spinMs = this.busyPollMs;
    this.prefetchMinFlows = opts.prefetchMinFlows ?? 16384;
    this.keys = new FlowKeys(this.batch);
    // The lower half takes what is read; the upper half what the translator generates (ICMP errors,
    // resets, fragments it held back), so one call writes both. Generated packets are small: their
    // slots are 2 KiB whatever the read slots are.
    this.genBase = this.batch * this.slotSize;
    const genSlot = 2048;
    const genEnd = this.genBase + this.batch * genSlot;
    this.buf = Buffer.alloc(genEnd);
    this.lens = new Uint32Array(this.batch);
    this.outOffsets = new Uint32Array(this.batch * 2);
    this.outLens = new Uint32Array(this.batch * 2);
    this.stats = { packetsRead: 0, batches: 0, oversize: 0, badVnet: 0, superpackets: 0, segments: 0, writeShort: 0, spins: 0, spinPackets: 0, spinShrinks: 0, handoffsOut: 0, handoffsIn: 0, handoffDrops: 0, batchSizes: new Float64Array(8) };
    const hdr = this.hdrLen;
    nat.packetRoom = this.slotSize - this.hdrLen;
    const loop = this;
    nat.sink = {
      buf: this.buf,
      alloc(maxLen: number): number {
        if (maxLen + hdr > genSlot || loop.genNext >= genEnd || loop.outCount >= loop.outOffsets.length) return -1;
        const at = loop.genNext;
        loop.genNext += genSlot;
        // A generated packet is complete: an all-zero header says "no offload, checksum done".
        if (hdr) loop.buf.fill(0, at, at + hdr);
        return at + hdr;
      },
      commit(off: number, len: number): void {
        loop.tap?.generated?.(loop.buf, off, len);
        loop.outOffsets[loop.outCount] = off - hdr;
        loop.outLens[loop.outCount] = len + hdr;
        loop.outCount++;
      },
    };
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    this.tun.onReadable(() => this.drain());
  }

  stop(): void {
    this.running = false;
    this.tun.onReadable(() => {});
  }

  /** Read and translate until the TUN is empty or the per-wake budget is spent. Returns packets read. */
  drain(): number {
    let total = 0;
    for (let i = 0; i < this.maxBatches; i++) {
      const n = this.runBatch();
      total += n;
      if (n < this.batch) break;
    }
    if (total > 0 && this.busyPollMs > 0) total += this.spin();
    // What other workers handed over (and fragments this one passed to itself) waits in the rings.
    if (this.handoff !== null) total += this.drainHandoffs();
    return total;
  }

  /** The busy-poll window now, in microseconds (it adapts; see spin()). */
  get spinWindowUs(): number {
    return this.spinMs * 1000;
  }

  /**
   * Keep reading for a short window after the last packet (the kernel's busy_poll, in userspace). Bounded by
   * the per-wake batch budget, so a steady stream still returns to the event loop (timers, metrics, clients)
   * as often as without busy polling. Real time, not `clock`: tests drive that one by hand.
   *
   * The window adapts to whether this core is shared. Linux stops a busy poll as soon as another task needs
   * the CPU (need_resched); userspace cannot see that directly, but it can see afterwards that the thread was
   * switched out while it still wanted to run (involuntary context switches). A spin that was preempted held
   * up other work on its core (the LAN's endpoints, the kernel's softirq on a small machine), so the next one
   * polls half as long, down to 1/16 of --busy-poll; a spin that ran alone and caught packets doubles it back
   * up to --busy-poll. A device that cannot count preemptions keeps the window fixed.
   */
  private spin(): number {
    this.stats.spins++;
    const tun = this.tun;
    const before = tun.preemptions !== undefined ? tun.preemptions() : -1;
    const window = this.spinMs;
    let total = 0;
    let batches = 0;
    let deadline = performance.now() + window;
    for (;;) {
      const n = this.runBatch();
      const t = performance.now();
      if (n > 0) {
        total += n;
        if (++batches >= this.maxBatches) break;
        deadline = t + window;
      } else if (t >= deadline) break;
    }
    this.stats.spinPackets += total;
    if (before >= 0) {
      const after = (tun.preemptions as () => number)();
      if (after > before) {
        this.spinMs = Math.max(this.busyPollMs / 16, window / 2);
        this.stats.spinShrinks++;
      } else if (total > 0 && window < this.busyPollMs) this.spinMs = Math.min(this.busyPollMs, window * 2);
    }
    return total;
  }

  /**
   * Warm the flow table for this batch's TCP and UDP packets: their index slots and flow data are loaded
   * together, so the cache misses of a large table overlap instead of coming one packet after another.
   * Reads only (FlowTable.prefetchBatch), so nothing goes stale when an earlier packet creates or ends a
   * flow; a malformed packet is skipped here and judged by the translator as usual.
   */
  private prefetch(n: number): void {
    const keys = this.keys;
    collectFlowKeys(this.buf, this.lens, 0, n, this.slotSize, this.hdrLen, keys);
    if (keys.n > 0) this.nat.flows.prefetchBatch(keys);
  }

  /** One batch: read, translate, write. Returns the number of packets read. */
  runBatch(): number {
    const n = this.tun.readBatch(this.buf, this.slotSize, this.lens);
    if (n === 0) return 0;
    this.stats.packetsRead += n;
    this.translateBatch(n, this.handoff, false);
    return n;
  }

  /**
   * Translate the packets other workers handed to this one, a batch at a time, until none are left or the
   * per-wake budget is spent. They are at their owner (fragments may still be on their way to it: see
   * fragment-steer.ts). Returns packets taken.
   */
  drainHandoffs(): number {
    const h = this.handoff;
    if (h === null) return 0;
    let total = 0;
    for (let b = 0; b < this.maxBatches; b++) {
      let n = 0;
      while (n < this.batch) {
        const len = h.receive(this.buf, n * this.slotSize);
        if (len < 0) break;
        this.lens[n++] = len;
      }
      if (n === 0) break;
      this.stats.handoffsIn += n;
      total += n;
      this.translateBatch(n, h, true);
      if (n < this.batch) break;
    }
    return total;
  }

  private translateBatch(n: number, handoff: Handoff | null, fromRing: boolean): void {
    const { buf, lens, slotSize, nat, hdrLen } = this;
    const now = this.clock();
    if (nat.flows.size >= this.prefetchMinFlows) this.prefetch(n);
    this.outCount = 0;
    this.genNext = this.genBase;
    const vnet = this.vnet;
    for (let i = 0; i < n; i++) {
      const slot = i * slotSize;
      const len = lens[i]!;
      // The kernel's length is checked, never trusted: a packet that did not fit its slot was cut.
      if (len > slotSize) {
        this.stats.oversize++;
        continue;
      }
      let partial = false;
      if (hdrLen) {
        // Never trust the header's lengths either: it must describe this very packet.
        if (len < hdrLen || !vnet.read(buf, slot, len - hdrLen)) {
          this.stats.badVnet++;
          continue;
        }
        partial = vnet.needsCsum;
      }
      const off = slot + hdrLen;
      const plen = len - hdrLen;
      if (handoff !== null) {
        const owner = handoff.steer(buf, slot, off, plen, len, fromRing);
        if (owner === HELD) continue;
        if (owner !== HERE && owner !== handoff.self) {
          if (handoff.send(owner, buf, slot, len)) this.stats.handoffsOut++;
          else this.stats.handoffDrops++;
          continue;
        }
      }
      if (hdrLen) {
        nat.gso = vnet.gsoType !== 0;
        if (vnet.gsoType !== 0) {
          this.stats.superpackets++;
          this.stats.segments += vnetSegments(vnet, len - hdrLen);
        }
      }
      const tap = this.tap;
      const tapped = tap !== null && tap.before(buf, off, plen, now);
      const verdict = nat.process(buf, off, plen, now, partial);
      // An ALG may have changed the packet's length (within its slot: the translator knows the room).
      const grown = nat.lengthDelta;
      if (tapped) tap.after(buf, off, plen + grown, verdict, now);
      if (verdict === Verdict.FORWARD) {
        this.outOffsets[this.outCount] = slot;
        this.outLens[this.outCount] = len + grown;
        this.outCount++;
      } else if (verdict === Verdict.HANDOFF && handoff !== null) {
        if (handoff.send(nat.handoffTo, buf, slot, len)) this.stats.handoffsOut++;
        else this.stats.handoffDrops++;
      }
    }
    const out = this.outCount;
    if (out > 0) {
      const written = this.tun.writeBatch(buf, this.outOffsets, this.outLens, out);
      if (written < out) this.stats.writeShort += out - written;
    }
    this.stats.batches++;
    this.stats.batchSizes[Math.min(7, 31 - Math.clz32(n))]!++;
    this.onBatch?.(n, now);
  }
}

/**
 * The 5-tuples of the TCP and UDP packets in slots [first, first + count) of a batch buffer, into `keys`
 * (cleared first), for FlowTable.prefetchBatch. Only what the flow lookup needs is read, within each
 * packet's length; anything else (other protocols, later fragments, malformed headers) is skipped and
 * left to the translator to judge.
 */
export function collectFlowKeys(
  buf: Uint8Array, lens: ArrayLike<number>, first: number, count: number, slotSize: number, hdrLen: number, keys: FlowKeys,
): void {
  keys.clear();
  for (let i = first; i < first + count; i++) {
    const len = lens[i]!;
    if (len > slotSize || len < hdrLen + 24) continue;
    const o = i * slotSize + hdrLen;
    const ihl = (buf[o]! & 15) * 4;
    const proto = buf[o + IPV4_OFF.PROTOCOL]!;
    if (buf[o]! >> 4 !== 4 || ihl < IPV4_MIN_HEADER_LENGTH || len - hdrLen < ihl + 4 || (proto !== IPPROTO.TCP && proto !== IPPROTO.UDP)) continue;
    if ((rd16(buf, o + IPV4_OFF.FLAGS_FRAGMENT) & IPV4_FRAG.OFFSET_MASK) !== 0) continue; // later fragments carry no ports
    const src = rd32(buf, o + IPV4_OFF.SOURCE);
    const dst = rd32(buf, o + IPV4_OFF.DESTINATION);
    // The ports open both the TCP and the UDP header.
    const sport = rd16(buf, o + ihl);
    const dport = rd16(buf, o + ihl + 2);
    keys.add(proto, src, dst, sport, dport);
  }
}
