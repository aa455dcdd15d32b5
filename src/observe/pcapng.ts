import { closeSync, openSync, write } from 'node:fs';
import { Verdict, DROP_REASON_NAMES, PORT_CHOICE_NAMES, PortChoice } from '../nat/translator.js';
import type { TapConsumer, TapPacket } from './taps.js';

/**
 * `--pcap FILE`: every packet as it entered tunnat and, when forwarded, as it left, in one pcapng
 * file (tcpdump -r and Wireshark read it) with one interface per side:
 *   interface 0 "before": as read from the TUN, before translation;
 *   interface 1 "after":  as written back to the TUN, translated.
 * Packets are raw IPv4 (LINKTYPE_IPV4). Dropped packets appear on "before" only, with a comment giving
 * the reason; the first packet of a new flow carries a comment with the port decision (Wireshark
 * shows comments as frame.comment; tcpdump ignores them).
 *
 * The packet path never waits on the disk: packets are copied into fixed chunks that are written
 * asynchronously, and when every chunk is still waiting for the disk a packet is left out and counted.
 * A write error (disk full, file gone) stops the capture with one log line; routing carries on.
 */
const BLOCK = { SHB: 0x0a0d0d0a, IDB: 0x00000001, EPB: 0x00000006 } as const;
const BYTE_ORDER_MAGIC = 0x1a2b3c4d;
/**
 * LINKTYPE_IPV4: each packet starts with its IPv4 header. Not LINKTYPE_RAW (101): libpcap turns 101
 * into DLT_RAW for the first interface and then refuses a second interface of "type 101" as different.
 */
const LINKTYPE_IPV4 = 228;
const OPT = { END: 0, COMMENT: 1, SHB_USERAPPL: 4, IF_NAME: 2, IF_DESCRIPTION: 3, IF_TSRESOL: 9, EPB_FLAGS: 2 } as const;
/** epb_flags direction bits (pcapng §4.3.1): 01 inbound, 10 outbound. */
const EPB_INBOUND = 1;
const EPB_OUTBOUND = 2;
export const PCAP_IF_BEFORE = 0;
export const PCAP_IF_AFTER = 1;

const CHUNK_SIZE = 1 << 20;
const CHUNKS = 8;
const FLUSH_MS = 200;

function pad4(n: number): number {
  return (n + 3) & ~3;
}

/** Length of one option carrying `len` bytes of value. */
function optLen(len: number): number {
  return 4 + pad4(len);
}

export interface PcapngOptions {
  /** Wall-clock milliseconds for a loop clock value (default: performance.timeOrigin + now). */
  wallClock?: (now: number) => number;
  /** The name of the TUN, for the interface names. */
  tunName?: string;
  /** Called once when writing fails (the capture has stopped). */
  onError?: (err: Error) => void;
}

export class PcapngWriter implements TapConsumer {
  readonly packets = { before: 0, after: 0 };
  /** Packets left out (the disk was behind, or the capture failed). */
  dropped = 0;
  /** Bytes handed to the file so far. */
  bytes = 0;
  private readonly free: Buffer[] = [];
  private cur: Buffer;
  private pos = 0;
  private readonly queue: { buf: Buffer; len: number }[] = [];
  private writing = false;
  private failed: Error | null = null;
  private closed = false;
  private readonly timer: NodeJS.Timeout;
  private idle: (() => void)[] = [];
  private readonly wallClock: (now: number) => number;

  /** Open (create or truncate) `path`; throws an Error naming the file when it cannot be written. */
  static open(path: string, opts: PcapngOptions = {}): PcapngWriter {
    let fd: number;
    try {
      fd = openSync(path, 'w', 0o640);
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      throw new Error(`cannot write the pcap file ${path}: ${e.code ?? ''} ${e.message}`.replace(/\s+/g, ' '));
    }
    return new PcapngWriter(fd, path, opts);
  }

  private constructor(
    private readonly fd: number,
    readonly path: string,
    private readonly opts: PcapngOptions,
  ) {
    for (let i = 0; i < CHUNKS; i++) this.free.push(Buffer.alloc(CHUNK_SIZE));
    this.cur = this.free.pop()!;
    this.wallClock = opts.wallClock ?? ((now) => performance.timeOrigin + now);
    this.writeHeader();
    this.timer = setInterval(() => {
      if (this.pos > 0 && !this.writing) this.submit();
    }, FLUSH_MS);
    this.timer.unref();
  }

  get error(): Error | null {
    return this.failed;
  }

  private writeHeader(): void {
    const app = Buffer.from('tunnat');
    const tun = this.opts.tunName ?? 'tun';
    // Section header block.
    const shbLen = 28 + optLen(app.length) + 4;
    let o = this.pos;
    const b = this.cur;
    b.writeUInt32LE(BLOCK.SHB, o);
    b.writeUInt32LE(shbLen, o + 4);
    b.writeUInt32LE(BYTE_ORDER_MAGIC, o + 8);
    b.writeUInt16LE(1, o + 12);
    b.writeUInt16LE(0, o + 14);
    // Section length unknown: -1.
    b.writeInt32LE(-1, o + 16);
    b.writeInt32LE(-1, o + 20);
    o = this.option(o + 24, OPT.SHB_USERAPPL, app);
    o = this.option(o, OPT.END, null);
    b.writeUInt32LE(shbLen, o);
    this.pos = o + 4;
    this.interface(`${tun}:before`, `packets as tunnat read them from ${tun}, before translation`);
    this.interface(`${tun}:after`, `packets as tunnat wrote them back to ${tun}, translated`);
  }

  private interface(name: string, description: string): void {
    const n = Buffer.from(name);
    const d = Buffer.from(description);
    const len = 20 + optLen(n.length) + optLen(d.length) + optLen(1) + 4;
    const b = this.cur;
    let o = this.pos;
    b.writeUInt32LE(BLOCK.IDB, o);
    b.writeUInt32LE(len, o + 4);
    b.writeUInt16LE(LINKTYPE_IPV4, o + 8);
    b.writeUInt16LE(0, o + 10);
    b.writeUInt32LE(0, o + 12); // snaplen 0: no limit
    o = this.option(o + 16, OPT.IF_NAME, n);
    o = this.option(o, OPT.IF_DESCRIPTION, d);
    o = this.option(o, OPT.IF_TSRESOL, Buffer.from([6])); // microseconds
    o = this.option(o, OPT.END, null);
    b.writeUInt32LE(len, o);
    this.pos = o + 4;
  }

  /** Write one option at `o` in the current chunk; returns the offset after it. */
  private option(o: number, code: number, value: Buffer | null): number {
    const b = this.cur;
    const len = value ? value.length : 0;
    b.writeUInt16LE(code, o);
    b.writeUInt16LE(len, o + 2);
    if (value) {
      value.copy(b, o + 4);
      b.fill(0, o + 4 + len, o + 4 + pad4(len));
    }
    return o + 4 + pad4(len);
  }

  /** Make room for `n` bytes in the current chunk; false when every chunk is waiting for the disk. */
  private reserve(n: number): boolean {
    if (this.pos + n <= this.cur.length) return true;
    if (this.free.length === 0) return false;
    this.submit();
    return this.pos + n <= this.cur.length;
  }

  /** Queue the current chunk for writing and start a fresh one (if one is free). */
  private submit(): void {
    if (this.pos === 0) return;
    this.queue.push({ buf: this.cur, len: this.pos });
    const next = this.free.pop();
    if (next) {
      this.cur = next;
      this.pos = 0;
    } else {
      // No chunk left: keep writing into nothing until one comes back (reserve() refuses meanwhile).
      this.cur = Buffer.alloc(0);
      this.pos = 0;
    }
    this.pump();
  }

  private pump(): void {
    if (this.writing || this.failed) return;
    const item = this.queue.shift();
    if (!item) {
      for (const fn of this.idle.splice(0)) fn();
      return;
    }
    this.writing = true;
    write(this.fd, item.buf, 0, item.len, null, (err) => {
      this.writing = false;
      if (err) {
        this.fail(err);
        return;
      }
      this.bytes += item.len;
      if (this.cur.length === 0) {
        this.cur = item.buf;
        this.pos = 0;
      } else {
        this.free.push(item.buf);
      }
      this.pump();
    });
  }

  private fail(err: Error): void {
    if (this.failed) return;
    this.failed = err;
    // What was queued is lost with the file; later packets are counted as dropped.
    this.queue.length = 0;
    clearInterval(this.timer);
    for (const fn of this.idle.splice(0)) fn();
    this.opts.onError?.(err);
  }

  private epb(iface: number, now: number, buf: Buffer, off: number, len: number, flags: number, comment: string | null): void {
    const c = comment ? Buffer.from(comment) : null;
    const total = 28 + pad4(len) + (c ? optLen(c.length) : 0) + optLen(4) + 4 + 4;
    if (this.closed || this.failed || !this.reserve(total)) {
      this.dropped++;
      return;
    }
    const b = this.cur;
    let o = this.pos;
    const us = Math.round(this.wallClock(now) * 1000);
    const hi = Math.floor(us / 0x100000000);
    b.writeUInt32LE(BLOCK.EPB, o);
    b.writeUInt32LE(total, o + 4);
    b.writeUInt32LE(iface, o + 8);
    b.writeUInt32LE(hi >>> 0, o + 12);
    b.writeUInt32LE((us - hi * 0x100000000) >>> 0, o + 16);
    b.writeUInt32LE(len, o + 20);
    b.writeUInt32LE(len, o + 24);
    buf.copy(b, o + 28, off, off + len);
    b.fill(0, o + 28 + len, o + 28 + pad4(len));
    o += 28 + pad4(len);
    if (c) o = this.option(o, OPT.COMMENT, c);
    b.writeUInt16LE(OPT.EPB_FLAGS, o);
    b.writeUInt16LE(4, o + 2);
    b.writeUInt32LE(flags, o + 4);
    o += 8;
    o = this.option(o, OPT.END, null);
    b.writeUInt32LE(total, o);
    this.pos = o + 4;
    if (iface === PCAP_IF_BEFORE) this.packets.before++;
    else this.packets.after++;
  }

  packet(p: TapPacket): void {
    const nat = p.nat;
    const forwarded = p.verdict === Verdict.FORWARD;
    let comment: string | null = null;
    if (p.verdict === Verdict.HELD) {
      comment = 'held: a fragment waiting for its first fragment';
    } else if (!forwarded) {
      comment = `dropped: ${DROP_REASON_NAMES[nat.lastDrop] ?? 'unknown'}`;
    } else if (nat.lastCreated && nat.lastEntry >= 0) {
      const choice = nat.lastPortChoice !== PortChoice.NONE ? `, port ${PORT_CHOICE_NAMES[nat.lastPortChoice]}` : '';
      comment = `new flow ${nat.lastEntry >> 1}${choice}`;
    }
    // Direction as seen from tunnat: everything arrives from the TUN and leaves into it.
    this.epb(PCAP_IF_BEFORE, p.now, p.before, 0, p.beforeLen, EPB_INBOUND, comment);
    if (forwarded) this.epb(PCAP_IF_AFTER, p.now, p.after, p.afterOff, p.afterLen, EPB_OUTBOUND, null);
  }

  /** Write what is buffered and close the file. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    if (!this.failed && this.pos > 0 && this.cur.length > 0) this.submit();
    if (this.writing || this.queue.length > 0) await new Promise<void>((r) => this.idle.push(r));
    try {
      closeSync(this.fd);
    } catch {
      // Already gone; nothing more to save.
    }
  }
}
