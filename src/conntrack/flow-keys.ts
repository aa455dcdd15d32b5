const NONE = -1;

/**
 * The keys of one batch of packets (struct of arrays, filled by add() in packet order and reused batch
 * after batch), for FlowTable.lookupBatch and prefetchBatch. Stored as the index stores them: addresses
 * as int32 (same bits), both ports in one word, so the batch passes read each key with four loads instead of five.
 */
export class FlowKeys {
  n = 0;
  /** Protocol numbers (a byte, as in the IP header). */
  readonly proto: Uint8Array;
  /** Source and destination addresses, as int32. */
  readonly src: Int32Array;
  readonly dst: Int32Array;
  /** sport << 16 | dport. */
  readonly ports: Int32Array;
  /** Scratch of the batch calls (each key's home slot, entry); rewritten by every call, meaningless between. */
  readonly home: Int32Array;
  readonly entry: Int32Array;

  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError(`key batch capacity must be a positive integer, got ${capacity}`);
    this.proto = new Uint8Array(capacity);
    this.src = new Int32Array(capacity);
    this.dst = new Int32Array(capacity);
    this.ports = new Int32Array(capacity);
    this.home = new Int32Array(capacity);
    this.entry = new Int32Array(capacity);
  }

  /** Append a key; returns its index, or -1 when the batch is full. */
  add(proto: number, src: number, dst: number, sport: number, dport: number): number {
    const k = this.n;
    if (k === this.capacity) return NONE;
    this.proto[k] = proto;
    this.src[k] = src;
    this.dst[k] = dst;
    this.ports[k] = ((sport & 0xffff) << 16) | (dport & 0xffff);
    this.n = k + 1;
    return k;
  }

  clear(): void {
    this.n = 0;
  }
}
