/**
 * A bounded single-producer, single-consumer ring of packets in shared memory: how a worker hands a
 * packet that belongs to another worker's flow to that worker (--workers). One ring per ordered pair of
 * workers, so each end has exactly one writer and no lock is needed: the producer alone moves `head`, the
 * consumer alone moves `tail`, and Atomics order a record's bytes before the index that publishes them.
 *
 * Records are variable-length (a 4-byte length, the packet, padding to 8 bytes), so a ring of a few MiB
 * holds thousands of small packets or dozens of 64 KiB superpackets. A record never wraps: when it does
 * not fit before the end, the producer leaves a skip mark and starts again at 0. head and tail count
 * bytes and wrap at 2^32; the capacity, a power of two, divides that, so positions stay consistent. A
 * full ring refuses the packet; the caller counts it.
 */
const HEAD = 0;
const TAIL = 1;
const CTRL_BYTES = 64;
const SKIP = -1;

export class PacketRing {
  readonly capacity: number;
  private readonly ctrl: Int32Array;
  private readonly words: Int32Array;
  private readonly data: Buffer;

  static create(capacity: number): PacketRing {
    return new PacketRing(new SharedArrayBuffer(CTRL_BYTES + capacity), capacity);
  }

  /** The ring another thread made (create), over its memory. */
  static over(sab: SharedArrayBuffer): PacketRing {
    return new PacketRing(sab, sab.byteLength - CTRL_BYTES);
  }

  constructor(readonly sab: SharedArrayBuffer, capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 64 || (capacity & (capacity - 1)) !== 0) throw new RangeError(`ring capacity must be a power of two of at least 64 bytes, got ${capacity}`);
    if (sab.byteLength < CTRL_BYTES + capacity) throw new RangeError('ring memory too small');
    this.capacity = capacity;
    this.ctrl = new Int32Array(sab, 0, 2);
    this.words = new Int32Array(sab, CTRL_BYTES, capacity / 4);
    this.data = Buffer.from(sab, CTRL_BYTES, capacity);
  }

  /** The largest packet the ring takes (a quarter of it, so one big packet cannot fill it alone). */
  get maxPacket(): number {
    return this.capacity / 4 - 4;
  }

  /** Bytes in use (records, their headers and skipped ends). */
  get used(): number {
    return (Atomics.load(this.ctrl, HEAD) - Atomics.load(this.ctrl, TAIL)) >>> 0;
  }

  get empty(): boolean {
    return Atomics.load(this.ctrl, HEAD) === Atomics.load(this.ctrl, TAIL);
  }

  /**
   * Producer: copy buf[off, off + len) into the ring. Returns 1 if the ring was empty before (the consumer
   * may be asleep: wake it), 0 if not, -1 if the ring is full or the packet is too big.
   */
  push(buf: Buffer, off: number, len: number): number {
    if (len > this.maxPacket || len < 0) return -1;
    let h = Atomics.load(this.ctrl, HEAD);
    const t = Atomics.load(this.ctrl, TAIL);
    const used = (h - t) >>> 0;
    const need = (4 + len + 7) & ~7;
    let pos = h & (this.capacity - 1);
    const room = this.capacity - pos;
    const skip = room < need ? room : 0;
    if (used + skip + need > this.capacity) return -1;
    if (skip > 0) {
      this.words[pos >>> 2] = SKIP;
      h = (h + skip) | 0;
      pos = 0;
    }
    buf.copy(this.data, pos + 4, off, off + len); // a copy without a view allocated per packet
    this.words[pos >>> 2] = len;
    Atomics.store(this.ctrl, HEAD, (h + need) | 0);
    return used === 0 ? 1 : 0;
  }

  /** Consumer: copy the oldest packet to dst[at…); returns its length, or -1 when the ring is empty. */
  pop(dst: Buffer, at: number): number {
    let t = Atomics.load(this.ctrl, TAIL);
    const h = Atomics.load(this.ctrl, HEAD);
    if (t === h) return -1;
    let pos = t & (this.capacity - 1);
    let len = this.words[pos >>> 2]!;
    if (len === SKIP) {
      t = (t + (this.capacity - pos)) | 0;
      pos = 0;
      len = this.words[0]!;
    }
    this.data.copy(dst, at, pos + 4, pos + 4 + len);
    Atomics.store(this.ctrl, TAIL, (t + ((4 + len + 7) & ~7)) | 0);
    return len;
  }
}
