import { tupleHash } from '../conntrack/table.js';

/**
 * Address-dependent filtering (RFC 4787 REQ-8, "address-dependent"): a mapping accepts inbound packets
 * from an external address only while some flow of that mapping talks to that address. This counts,
 * per (mapping, external address), how many flows do. Typed arrays with chaining; no allocation after
 * construction. Only touched when a flow is created or removed.
 */
const NONE = -1;

export class PermissionTable {
  private readonly mapping: Int32Array;
  private readonly addr: Uint32Array;
  private readonly count: Int32Array;
  private readonly next: Int32Array;
  private readonly heads: Int32Array;
  private readonly mask: number;
  private readonly free: Int32Array;
  private freeTop: number;
  size = 0;

  constructor(readonly capacity: number, private readonly seed: number) {
    this.mapping = new Int32Array(capacity);
    this.addr = new Uint32Array(capacity);
    this.count = new Int32Array(capacity);
    this.next = new Int32Array(capacity).fill(NONE);
    let buckets = 1;
    while (buckets < capacity) buckets <<= 1;
    this.heads = new Int32Array(buckets).fill(NONE);
    this.mask = buckets - 1;
    this.free = new Int32Array(capacity);
    for (let i = 0; i < capacity; i++) this.free[i] = capacity - 1 - i;
    this.freeTop = capacity;
  }

  private bucket(m: number, a: number): number {
    return tupleHash(this.seed, 0, m, a, 0, 0) & this.mask;
  }

  private find(m: number, a: number): number {
    let i = this.heads[this.bucket(m, a)]!;
    while (i !== NONE) {
      if (this.mapping[i] === m && this.addr[i] === a) return i;
      i = this.next[i]!;
    }
    return NONE;
  }

  /** Whether mapping m currently accepts packets from address a. */
  has(m: number, a: number): boolean {
    return this.find(m, a >>> 0) !== NONE;
  }

  /** One more flow of mapping m talks to a. Returns false only if the table is full. */
  add(m: number, a: number): boolean {
    a >>>= 0;
    const i = this.find(m, a);
    if (i !== NONE) {
      this.count[i]!++;
      return true;
    }
    if (this.freeTop === 0) return false;
    const n = this.free[--this.freeTop]!;
    this.mapping[n] = m;
    this.addr[n] = a;
    this.count[n] = 1;
    const b = this.bucket(m, a);
    this.next[n] = this.heads[b]!;
    this.heads[b] = n;
    this.size++;
    return true;
  }

  /** One flow of mapping m to a ended. */
  remove(m: number, a: number): void {
    a >>>= 0;
    const b = this.bucket(m, a);
    let prev = NONE;
    let i = this.heads[b]!;
    while (i !== NONE) {
      if (this.mapping[i] === m && this.addr[i] === a) {
        if (--this.count[i]! > 0) return;
        if (prev === NONE) this.heads[b] = this.next[i]!;
        else this.next[prev] = this.next[i]!;
        this.next[i] = NONE;
        this.free[this.freeTop++] = i;
        this.size--;
        return;
      }
      prev = i;
      i = this.next[i]!;
    }
  }
}
