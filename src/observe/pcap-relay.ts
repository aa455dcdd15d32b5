import type { TapConsumer, TapPacket } from './taps.js';
import { EPB_INBOUND, EPB_OUTBOUND, PCAP_IF_AFTER, PCAP_IF_BEFORE, packetComment, snapLength, type PcapngWriter } from './pcapng.js';
import { Verdict } from '../nat/translator.js';

/**
 * --pcap with several workers: one file, written by the main thread. Each worker's relay takes the packets
 * from its taps as the pcap writer would (the same comment, cut to the same snap length) and packs them
 * into chunks it posts every 50 ms or when a chunk is full; the main thread replays each chunk into the
 * one PcapngWriter, which drops and counts what the disk cannot take. A packet's time is wall-clock
 * microseconds, taken in the worker, so the workers' packets interleave by when they happened.
 *
 * Record: u8 interface, u8 flags, u16 comment length, u32 bytes kept, u32 length, f64 microseconds, the
 * comment (UTF-8), the bytes kept.
 */
const HEAD = 20;
const CHUNK = 256 * 1024;

export class PcapRelay implements TapConsumer {
  /** Packets too long for a chunk (not expected: a chunk holds any packet tunnat reads). */
  dropped = 0;
  private buf = Buffer.alloc(CHUNK);
  private pos = 0;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly snaplen: number,
    private readonly post: (chunk: Buffer) => void,
    flushMs = 50,
  ) {
    this.timer = setInterval(() => this.flush(), flushMs);
    this.timer.unref();
  }

  packet(p: TapPacket): void {
    const comment = packetComment(p);
    const us = Math.round((performance.timeOrigin + p.now) * 1000);
    this.put(PCAP_IF_BEFORE, EPB_INBOUND, us, p.before, 0, p.beforeLen, comment);
    if (p.verdict === Verdict.FORWARD) this.put(PCAP_IF_AFTER, EPB_OUTBOUND, us, p.after, p.afterOff, p.afterLen, null);
  }

  private put(iface: number, flags: number, us: number, buf: Buffer, off: number, len: number, comment: string | null): void {
    const cap = snapLength(this.snaplen, buf, off, len);
    const c = comment === null ? null : Buffer.from(comment);
    const need = HEAD + (c?.length ?? 0) + cap;
    if (need > CHUNK) {
      this.dropped++;
      return;
    }
    if (this.pos + need > CHUNK) this.flush();
    const b = this.buf;
    let o = this.pos;
    b[o] = iface;
    b[o + 1] = flags;
    b.writeUInt16LE(c?.length ?? 0, o + 2);
    b.writeUInt32LE(cap, o + 4);
    b.writeUInt32LE(len, o + 8);
    b.writeDoubleLE(us, o + 12);
    o += HEAD;
    if (c) o += c.copy(b, o);
    buf.copy(b, o, off, off + cap);
    this.pos = o + cap;
  }

  flush(): void {
    if (this.pos === 0) return;
    const out = this.buf.subarray(0, this.pos);
    this.buf = Buffer.alloc(CHUNK);
    this.pos = 0;
    this.post(out);
  }

  close(): void {
    clearInterval(this.timer);
    this.flush();
  }
}

/** Write a relay's chunk into the pcap file. */
export function replayPcap(writer: PcapngWriter, chunk: Uint8Array): void {
  const b = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  let o = 0;
  while (o + HEAD <= b.length) {
    const iface = b[o]!;
    const flags = b[o + 1]!;
    const clen = b.readUInt16LE(o + 2);
    const cap = b.readUInt32LE(o + 4);
    const len = b.readUInt32LE(o + 8);
    const us = b.readDoubleLE(o + 12);
    o += HEAD;
    if (o + clen + cap > b.length) return;
    const comment = clen > 0 ? b.toString('utf8', o, o + clen) : null;
    o += clen;
    writer.record(iface, us, b, o, cap, len, flags, comment);
    o += cap;
  }
}
