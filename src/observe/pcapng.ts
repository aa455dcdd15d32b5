import { close, closeSync, open, openSync, rename, write } from 'node:fs';
import { promisify } from 'node:util';
import { Verdict, DROP_REASON_NAMES, PORT_CHOICE_NAMES, PortChoice } from '../nat/translator.js';
import type { TapConsumer, TapPacket } from './taps.js';
import { headerBytes } from './decode.js';

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
 *
 * Two bounds keep a long capture from filling the disk:
 *   snaplen: how much of each packet is kept (the header's original length still says how long it
 *     was): all of it, the first N bytes, or its headers only (SNAP_HEADERS; see headerBytes).
 *   rotation (like `tcpdump -C/-W`): when the next block would take the file past maxFileBytes, the
 *     file is closed and renamed FILE.1 (FILE.1 becomes FILE.2 and so on, the oldest beyond
 *     `files` - 1 overwritten), and a fresh FILE starts with its own section and interface headers,
 *     so every file reads on its own. FILE is always the newest.
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
export const EPB_INBOUND = 1;
export const EPB_OUTBOUND = 2;

/** What the pcap file says about a packet: why it was dropped or held, or the flow it opened. */
export function packetComment(p: TapPacket): string | null {
  const nat = p.nat;
  if (p.verdict === Verdict.HELD) return 'held: a fragment waiting for its first fragment';
  if (p.verdict === Verdict.HANDOFF) return `handed to worker ${nat.handoffTo}: it holds this FTP data flow`;
  if (p.verdict !== Verdict.FORWARD) return `dropped: ${DROP_REASON_NAMES[nat.lastDrop] ?? 'unknown'}`;
  if (nat.lastCreated && nat.lastEntry >= 0) {
    const choice = nat.lastPortChoice !== PortChoice.NONE ? `, port ${PORT_CHOICE_NAMES[nat.lastPortChoice]}` : '';
    return `new flow ${nat.lastEntry >> 1}${choice}`;
  }
  return null;
}

/** Bytes kept of a packet of `len` bytes at buf[off] for a snap length (0 all, N the first N, SNAP_HEADERS). */
export function snapLength(snaplen: number, buf: Buffer, off: number, len: number): number {
  return snaplen === SNAP_HEADERS ? headerBytes(buf, off, len) : snaplen > 0 && snaplen < len ? snaplen : len;
}
export const PCAP_IF_BEFORE = 0;
export const PCAP_IF_AFTER = 1;

/** snaplen: keep each packet's headers only (headerBytes). 0 keeps whole packets. */
export const SNAP_HEADERS = -1;

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
  /** Bytes kept of each packet: 0 all (the default), N the first N, SNAP_HEADERS its headers. */
  snaplen?: number;
  /** Start a new file before this one passes this many bytes (0, the default: one file, no limit). */
  maxFileBytes?: number;
  /** Files kept when rotating, FILE included (default 1: FILE starts over). */
  files?: number;
}

const promisedRename = promisify(rename);
const promisedClose = promisify(close);
const promisedOpen = promisify(open);

/** A queued write, or the point where the next file starts. */
type QueueItem = { buf: Buffer; len: number } | 'rotate';

export class PcapngWriter implements TapConsumer {
  readonly packets = { before: 0, after: 0 };
  /** Packets left out (the disk was behind, or the capture failed). */
  dropped = 0;
  /** Bytes handed to the files so far (all of them). */
  bytes = 0;
  /** Files started after the first (rotations). */
  rotations = 0;
  private readonly free: Buffer[] = [];
  private cur: Buffer;
  private pos = 0;
  private readonly queue: QueueItem[] = [];
  /** Bytes the current file will hold once its queued chunks are written (rotation's measure). */
  private fileBytes = 0;
  private packetsInFile = 0;
  private readonly snaplen: number;
  private readonly maxFileBytes: number;
  private readonly files: number;
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
    private fd: number,
    readonly path: string,
    private readonly opts: PcapngOptions,
  ) {
    for (let i = 0; i < CHUNKS; i++) this.free.push(Buffer.alloc(CHUNK_SIZE));
    this.cur = this.free.pop()!;
    this.wallClock = opts.wallClock ?? ((now) => performance.timeOrigin + now);
    this.snaplen = opts.snaplen ?? 0;
    this.maxFileBytes = opts.maxFileBytes ?? 0;
    this.files = Math.max(1, opts.files ?? 1);
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
    this.fileBytes = shbLen;
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
    // A fixed snaplen is announced; 0 means no limit, which is also true of headers-only capture in the
    // sense that the cut varies per packet (each block's captured length says where).
    b.writeUInt32LE(this.snaplen > 0 ? this.snaplen : 0, o + 12);
    o = this.option(o + 16, OPT.IF_NAME, n);
    o = this.option(o, OPT.IF_DESCRIPTION, d);
    o = this.option(o, OPT.IF_TSRESOL, Buffer.from([6])); // microseconds
    o = this.option(o, OPT.END, null);
    b.writeUInt32LE(len, o);
    this.pos = o + 4;
    this.fileBytes += len;
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

  /**
   * Close the current file and start the next one's headers in a fresh chunk, behind what is queued for
   * the old one; false (the packet is left out) when no chunk is free.
   */
  private rotate(): boolean {
    if (this.free.length === 0) return false;
    this.submit();
    this.queue.push('rotate');
    this.rotations++;
    this.writeHeader();
    this.pump();
    return true;
  }

  /** FILE → FILE.1 → FILE.2 …, the oldest overwritten, then a new FILE. Off the packet path. */
  private async nextFile(): Promise<void> {
    const old = this.fd;
    // No longer ours once closed: the number may be reused by any file the process opens next.
    this.fd = -1;
    await promisedClose(old);
    for (let k = this.files - 1; k >= 1; k--) {
      const from = k === 1 ? this.path : `${this.path}.${k - 1}`;
      try {
        await promisedRename(from, `${this.path}.${k}`);
      } catch (err) {
        // A file the ring has not reached yet.
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
    }
    this.fd = await promisedOpen(this.path, 'w', 0o640);
  }

  private pump(): void {
    if (this.writing || this.failed) return;
    const item = this.queue.shift();
    if (!item) {
      for (const fn of this.idle.splice(0)) fn();
      return;
    }
    this.writing = true;
    if (item === 'rotate') {
      this.nextFile().then(
        () => {
          this.writing = false;
          this.pump();
        },
        (err: Error) => {
          this.writing = false;
          this.fail(new Error(`cannot start the next pcap file ${this.path}: ${err.message}`));
        },
      );
      return;
    }
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
    const cap = snapLength(this.snaplen, buf, off, len);
    this.record(iface, Math.round(this.wallClock(now) * 1000), buf, off, cap, len, flags, comment);
  }

  /**
   * One Enhanced Packet Block: `cap` bytes of the packet at buf[off] (already cut to the snap length), `len`
   * its length on the wire, `us` wall-clock microseconds. Public for packets captured elsewhere (a
   * data-plane worker's PcapRelay).
   */
  record(iface: number, us: number, buf: Buffer, off: number, cap: number, len: number, flags: number, comment: string | null): void {
    const c = comment ? Buffer.from(comment) : null;
    const total = 28 + pad4(cap) + (c ? optLen(c.length) : 0) + optLen(4) + 4 + 4;
    if (this.closed || this.failed) {
      this.dropped++;
      return;
    }
    // A file holds at least one packet, however small the limit.
    const full = this.maxFileBytes > 0 && this.fileBytes + total > this.maxFileBytes && this.packetsInFile > 0;
    if ((full && !this.rotate()) || !this.reserve(total)) {
      this.dropped++;
      return;
    }
    if (full) this.packetsInFile = 0;
    const b = this.cur;
    let o = this.pos;
    const hi = Math.floor(us / 0x100000000);
    b.writeUInt32LE(BLOCK.EPB, o);
    b.writeUInt32LE(total, o + 4);
    b.writeUInt32LE(iface, o + 8);
    b.writeUInt32LE(hi >>> 0, o + 12);
    b.writeUInt32LE((us - hi * 0x100000000) >>> 0, o + 16);
    b.writeUInt32LE(cap, o + 20);
    b.writeUInt32LE(len, o + 24);
    buf.copy(b, o + 28, off, off + cap);
    b.fill(0, o + 28 + cap, o + 28 + pad4(cap));
    o += 28 + pad4(cap);
    if (c) o = this.option(o, OPT.COMMENT, c);
    b.writeUInt16LE(OPT.EPB_FLAGS, o);
    b.writeUInt16LE(4, o + 2);
    b.writeUInt32LE(flags, o + 4);
    o += 8;
    o = this.option(o, OPT.END, null);
    b.writeUInt32LE(total, o);
    this.pos = o + 4;
    this.fileBytes += total;
    this.packetsInFile++;
    if (iface === PCAP_IF_BEFORE) this.packets.before++;
    else this.packets.after++;
  }

  packet(p: TapPacket): void {
    const comment = packetComment(p);
    // Direction as seen from tunnat: everything arrives from the TUN and leaves into it.
    this.epb(PCAP_IF_BEFORE, p.now, p.before, 0, p.beforeLen, EPB_INBOUND, comment);
    if (p.verdict === Verdict.FORWARD) this.epb(PCAP_IF_AFTER, p.now, p.after, p.afterOff, p.afterLen, EPB_OUTBOUND, null);
  }

  /** Write what is buffered and close the file. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    if (!this.failed && this.pos > 0 && this.cur.length > 0) this.submit();
    if (this.writing || this.queue.length > 0) await new Promise<void>((r) => this.idle.push(r));
    try {
      if (this.fd >= 0) closeSync(this.fd);
    } catch {
      // Already gone; nothing more to save.
    }
  }
}
