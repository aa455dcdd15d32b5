import { FreeList } from '../conntrack/free-list.js';
import { HashIndex, auditIndexedRows } from '../conntrack/hash-index.js';

/**
 * Address-dependent filtering (RFC 4787 REQ-8, "address-dependent"): a mapping accepts inbound packets
 * from an external address only while some flow of that mapping talks to that address. This counts,
 * per (mapping, external address), how many flows do. Rows are found through the index the flow table
 * uses (conntrack/hash-index.ts), keyed (mapping, address, 0) under protocol 0; no allocation after
 * construction. Only touched when a flow is created or removed.
 */
const NONE = -1;
/** Every key has protocol 0, so no escaped protocol is ever looked up in it. */
const NO_PROTOCOLS = new Uint8Array(0);

export class PermissionTable {
  /** Per row: the mapping, the external address it accepts, and how many flows keep the row. */
  readonly mapping: Int32Array;
  readonly addr: Uint32Array;
  readonly count: Int32Array;
  private readonly index: HashIndex;
  private readonly free: FreeList;
  size = 0;

  constructor(readonly capacity: number, seed: number) {
    this.mapping = new Int32Array(capacity);
    this.addr = new Uint32Array(capacity);
    this.count = new Int32Array(capacity);
    this.index = new HashIndex(capacity, seed, NO_PROTOCOLS, 0);
    this.free = new FreeList(capacity);
  }

  private find(m: number, a: number): number {
    const index = this.index;
    return index.find(index.home(0, m, a, 0), 0, m, a, 0);
  }

  /** Whether mapping m currently accepts packets from address a. */
  has(m: number, a: number): boolean {
    return this.find(m, a | 0) !== NONE;
  }

  /** One more flow of mapping m talks to a. Returns false only if the table is full. */
  add(m: number, a: number): boolean {
    a |= 0;
    const i = this.find(m, a);
    if (i !== NONE) {
      this.count[i]!++;
      return true;
    }
    const n = this.free.take();
    if (n < 0) return false;
    this.mapping[n] = m;
    this.addr[n] = a;
    this.count[n] = 1;
    this.index.insert(0, m, a, 0, n);
    this.size++;
    return true;
  }

  /** One flow of mapping m to a ended. */
  remove(m: number, a: number): void {
    a |= 0;
    const i = this.find(m, a);
    if (i === NONE || --this.count[i]! > 0) return;
    this.index.delete(0, m, a, 0, i);
    this.free.give(i);
    this.size--;
  }

  /**
   * Everything wrong with the table, as sentences (empty when it is sound): every row in use is indexed
   * once under its (mapping, address) and nothing else is; the free list and the rows in use are disjoint
   * and together all of them; size counts the rows in use; every row in use is kept by at least one flow.
   * Walks everything: for tests and fuzzers.
   */
  checkInvariants(): string[] {
    const index = this.index;
    const { problems: out, free } = auditIndexedRows(index, this.free, 'permission', (i, j) =>
      index.holds(j, 0, this.mapping[i]!, this.addr[i]! | 0, 0) ? null : `the key is not permission ${i}'s (mapping, address)`);
    let live = 0;
    for (let i = 0; i < this.capacity; i++) {
      if (free[i]) continue;
      live++;
      if (this.count[i]! <= 0) out.push(`permission ${i} (mapping ${this.mapping[i]}) is kept by ${this.count[i]} flows`);
    }
    if (live !== this.size) out.push(`size ${this.size} but ${live} permissions in use`);
    return out;
  }
}
