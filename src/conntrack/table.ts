/**
 * The connection-tracking table: fixed capacity, struct-of-arrays storage in typed arrays, and a
 * chained hash index that holds every flow twice, once per direction (netfilter's two tuplehash
 * entries), so a packet finds its flow from either side with one lookup.
 *
 * An "entry" is `flow * 2 + dir`; the tuple of that direction lives at index `entry` of the t* arrays.
 * Nothing here allocates after construction.
 *
 * Expiry is lazy plus incremental: a lookup that meets an expired flow removes it, and sweep() visits a
 * bounded number of slots per call from a rotating cursor, so no tick ever scans the whole table.
 */
export const DIR_ORIGINAL = 0;
export const DIR_REPLY = 1;

/** Flow flag bits. */
export const FLOW_IN_USE = 1;
/** A packet was seen in the reply direction. */
export const FLOW_SEEN_REPLY = 2;
/** Worth keeping when the table is full (TCP established, UDP with traffic both ways). */
export const FLOW_ASSURED = 4;
/** Created by a packet from outside (a port forward or an endpoint-independent filter). */
export const FLOW_INBOUND = 8;

export type RemoveReason = 'expired' | 'early-drop' | 'flush' | 'closed';

export interface FlowTuple {
  protocol: number;
  src: number;
  dst: number;
  srcPort: number;
  dstPort: number;
}

const NONE = -1;

function fmix(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * Seeded hash of a 5-tuple; the seed is random in production so remote hosts cannot aim at one chain.
 * One multiply per word and one final avalanche: every input bit reaches the bucket index, at a third of
 * the cost of mixing each word fully (measured in bench/lib/conntrack.ts).
 */
export function tupleHash(seed: number, proto: number, src: number, dst: number, sport: number, dport: number): number {
  let h = Math.imul(seed ^ src, 0x9e3779b1);
  h = Math.imul((h ^ (h >>> 15)) ^ dst, 0x85ebca77);
  h = Math.imul((h ^ (h >>> 15)) ^ ((sport << 16) | dport), 0xc2b2ae3d);
  return fmix(h ^ proto);
}

export class FlowTable {
  readonly capacity: number;
  size = 0;

  // Per flow.
  readonly proto: Uint8Array;
  readonly flags: Uint8Array;
  /** Protocol tracker state (TcpState for TCP; unused for UDP/ICMP). */
  readonly state: Uint8Array;
  /** Tracker detail bits (for TCP, which sides have sent FIN). */
  readonly detail: Uint8Array;
  /** Absolute expiry time in ms (same clock as the `now` arguments). */
  readonly expires: Float64Array;
  readonly created: Float64Array;
  /** NAT mapping whose external endpoint this flow's LAN side uses, or -1 (owned by src/nat). */
  readonly mapping: Int32Array;
  /** A second mapping the flow keeps alive: the target of an inbound or hairpinned flow, or -1. */
  readonly mapping2: Int32Array;

  // Per entry (flow * 2 + dir).
  readonly tSrc: Uint32Array;
  readonly tDst: Uint32Array;
  readonly tSport: Uint16Array;
  readonly tDport: Uint16Array;
  readonly packets: Float64Array;
  readonly bytes: Float64Array;
  /** TCP: the sequence number the sender of this direction will use next (valid once seen, see tcp.ts). */
  readonly seqNext: Uint32Array;
  private readonly next: Int32Array;

  private readonly heads: Int32Array;
  private readonly mask: number;
  private readonly free: Int32Array;
  private freeTop: number;
  private sweepCursor = 0;
  private dropCursor = 0;

  /** Called after a flow left the index, before its slot is reused (NAT releases the mapping here). */
  onRemove: (flow: number, reason: RemoveReason) => void = () => {};

  constructor(capacity: number, readonly seed = 0) {
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > 1 << 24) {
      throw new RangeError(`flow table capacity must be an integer in 1..${1 << 24}, got ${capacity}`);
    }
    this.capacity = capacity;
    this.proto = new Uint8Array(capacity);
    this.flags = new Uint8Array(capacity);
    this.state = new Uint8Array(capacity);
    this.detail = new Uint8Array(capacity);
    this.expires = new Float64Array(capacity);
    this.created = new Float64Array(capacity);
    this.mapping = new Int32Array(capacity).fill(NONE);
    this.mapping2 = new Int32Array(capacity).fill(NONE);
    const entries = capacity * 2;
    this.tSrc = new Uint32Array(entries);
    this.tDst = new Uint32Array(entries);
    this.tSport = new Uint16Array(entries);
    this.tDport = new Uint16Array(entries);
    this.packets = new Float64Array(entries);
    this.bytes = new Float64Array(entries);
    this.seqNext = new Uint32Array(entries);
    this.next = new Int32Array(entries).fill(NONE);
    // About one bucket per entry keeps chains short (load factor ≤ 1).
    let buckets = 1;
    while (buckets < entries) buckets <<= 1;
    this.heads = new Int32Array(buckets).fill(NONE);
    this.mask = buckets - 1;
    this.free = new Int32Array(capacity);
    for (let i = 0; i < capacity; i++) this.free[i] = capacity - 1 - i;
    this.freeTop = capacity;
  }

  /** Find the entry whose tuple matches, or -1. An expired flow met here is removed and not returned. */
  lookup(proto: number, src: number, dst: number, sport: number, dport: number, now: number): number {
    const b = tupleHash(this.seed, proto, src, dst, sport, dport) & this.mask;
    let e = this.heads[b]!;
    while (e !== NONE) {
      if (
        this.tSrc[e] === src && this.tDst[e] === dst && this.tSport[e] === sport &&
        this.tDport[e] === dport && this.proto[e >> 1] === proto
      ) {
        const flow = e >> 1;
        if (this.expires[flow]! <= now) {
          this.remove(flow, 'expired');
          return NONE;
        }
        return e;
      }
      e = this.next[e]!;
    }
    return NONE;
  }

  /** Take a free slot, or -1 when the table is full (the caller may try earlyDrop first). */
  allocate(): number {
    if (this.freeTop === 0) return NONE;
    const flow = this.free[--this.freeTop]!;
    this.flags[flow] = 0;
    this.state[flow] = 0;
    this.detail[flow] = 0;
    this.mapping[flow] = NONE;
    this.mapping2[flow] = NONE;
    const o = flow * 2;
    this.packets[o] = 0;
    this.packets[o + 1] = 0;
    this.bytes[o] = 0;
    this.bytes[o + 1] = 0;
    return flow;
  }

  /** Return a slot that was allocated but never inserted. */
  release(flow: number): void {
    this.free[this.freeTop++] = flow;
  }

  /** Set one direction's tuple of an allocated flow (before insert). */
  setTuple(flow: number, dir: number, src: number, dst: number, sport: number, dport: number): void {
    const e = flow * 2 + dir;
    this.tSrc[e] = src >>> 0;
    this.tDst[e] = dst >>> 0;
    this.tSport[e] = sport;
    this.tDport[e] = dport;
  }

  /** Put an allocated flow, both tuples set, into the index. */
  insert(flow: number, proto: number, now: number, expires: number): void {
    this.proto[flow] = proto;
    this.flags[flow] = this.flags[flow]! | FLOW_IN_USE;
    this.created[flow] = now;
    this.expires[flow] = expires;
    this.link(flow * 2);
    this.link(flow * 2 + 1);
    this.size++;
  }

  private link(e: number): void {
    const b = tupleHash(this.seed, this.proto[e >> 1]!, this.tSrc[e]!, this.tDst[e]!, this.tSport[e]!, this.tDport[e]!) & this.mask;
    this.next[e] = this.heads[b]!;
    this.heads[b] = e;
  }

  private unlink(e: number): void {
    const b = tupleHash(this.seed, this.proto[e >> 1]!, this.tSrc[e]!, this.tDst[e]!, this.tSport[e]!, this.tDport[e]!) & this.mask;
    let cur = this.heads[b]!;
    if (cur === e) {
      this.heads[b] = this.next[e]!;
    } else {
      while (cur !== NONE) {
        const nx = this.next[cur]!;
        if (nx === e) {
          this.next[cur] = this.next[e]!;
          break;
        }
        cur = nx;
      }
    }
    this.next[e] = NONE;
  }

  isInUse(flow: number): boolean {
    return (this.flags[flow]! & FLOW_IN_USE) !== 0;
  }

  /** Remove a flow from the index and free its slot. */
  remove(flow: number, reason: RemoveReason): void {
    if (!this.isInUse(flow)) return;
    this.unlink(flow * 2);
    this.unlink(flow * 2 + 1);
    this.size--;
    // The flow is out of the index but still whole (flags included) while the owner releases what it held.
    this.onRemove(flow, reason);
    this.flags[flow] = 0;
    this.mapping[flow] = NONE;
    this.mapping2[flow] = NONE;
    this.free[this.freeTop++] = flow;
  }

  /** Remove expired flows among the next `budget` slots; returns how many were removed. */
  sweep(now: number, budget: number): number {
    let removed = 0;
    const cap = this.capacity;
    for (let i = 0; i < budget && i < cap; i++) {
      const flow = this.sweepCursor;
      this.sweepCursor = flow + 1 === cap ? 0 : flow + 1;
      if (this.flags[flow]! & FLOW_IN_USE && this.expires[flow]! <= now) {
        this.remove(flow, 'expired');
        removed++;
      }
    }
    return removed;
  }

  /**
   * Make room when full: look at up to `budget` flows from a rotating cursor and evict the first that is
   * expired or not assured (netfilter's early_drop). Established flows are never evicted.
   */
  earlyDrop(now: number, budget: number): boolean {
    const cap = this.capacity;
    for (let i = 0; i < budget && i < cap; i++) {
      const flow = this.dropCursor;
      this.dropCursor = flow + 1 === cap ? 0 : flow + 1;
      const f = this.flags[flow]!;
      if (!(f & FLOW_IN_USE)) continue;
      if (this.expires[flow]! <= now) {
        this.remove(flow, 'expired');
        return true;
      }
      if (!(f & FLOW_ASSURED)) {
        this.remove(flow, 'early-drop');
        return true;
      }
    }
    return false;
  }

  /** Remove every flow for which `pred` is true (used when the public address changes). */
  flush(pred: (flow: number) => boolean = () => true): number {
    let n = 0;
    for (let flow = 0; flow < this.capacity; flow++) {
      if (this.isInUse(flow) && pred(flow)) {
        this.remove(flow, 'flush');
        n++;
      }
    }
    return n;
  }

  /** Read one direction's tuple as a plain object (for listings and tests; allocates). */
  tuple(flow: number, dir: number): FlowTuple {
    const e = flow * 2 + dir;
    return {
      protocol: this.proto[flow]!,
      src: this.tSrc[e]!,
      dst: this.tDst[e]!,
      srcPort: this.tSport[e]!,
      dstPort: this.tDport[e]!,
    };
  }

  /** Iterate the flows in use (for listings; not for the packet path). */
  *flows(): IterableIterator<number> {
    for (let flow = 0; flow < this.capacity; flow++) if (this.isInUse(flow)) yield flow;
  }

  /** Bytes of typed-array storage per flow slot, index included (for the memory-per-flow figure). */
  bytesPerFlow(): number {
    const perFlow = 1 + 1 + 1 + 1 + 8 + 8 + 4 + 4 + 4; // proto flags state detail expires created mapping mapping2 free
    const perEntry = 4 + 4 + 2 + 2 + 8 + 8 + 4 + 4; // tuple, counters, seqNext, chain
    return perFlow + 2 * perEntry + (this.heads.length * 4) / this.capacity;
  }
}
