/**
 * The connection-tracking table: fixed capacity, struct-of-arrays storage in typed arrays, and a hash
 * index that holds every flow twice, once per direction (netfilter's two tuplehash entries), so a
 * packet finds its flow from either side with one lookup.
 *
 * An "entry" is `flow * 2 + dir`; the tuple of that direction lives at index `entry` of the t* arrays.
 * Nothing here allocates after construction.
 *
 * The index (hash-index.ts, shared with the NAT's mapping and permission tables) is open addressing with
 * linear probing, at most half full. A 16-byte slot holds the whole key (source, destination, both
 * ports, protocol) next to the entry number, so deciding hit or miss reads a few neighbouring slots (one
 * cache line, sometimes two) and never the t* arrays: at a million flows every array touched is another
 * trip to DRAM, and the chained index it replaced touched five per lookup. Deletion shifts the rest of
 * the run back instead of leaving tombstones, so runs hold only live keys and never grow with churn.
 *
 * Expiry is lazy plus incremental: a lookup that meets an expired flow removes it, and sweep() visits a
 * bounded number of slots per call from a rotating cursor, so no tick ever scans the whole table.
 *
 * For a batch of packets, lookupBatch() and prefetchBatch() first hash every key and load every home
 * slot, then resolve: the loads of different keys do not depend on each other, so the CPU keeps many
 * cache misses in flight at once instead of paying them one after another (the DPDK rte_hash bulk
 * lookup idea, done with plain loads since JavaScript has no prefetch instruction).
 */
import { FreeList } from './free-list.js';
import { HashIndex, SLOT_WORDS, findIn, keyHash } from './hash-index.js';
import { FlowKeys } from './flow-keys.js';

export { FlowKeys };

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
/** An ALG watches this flow's payload (an FTP control connection: src/nat/alg-ftp.ts). */
export const FLOW_ALG = 16;
/** Admitted by an ALG's expectation (an FTP data connection). */
export const FLOW_EXPECTED = 32;
/**
 * A TCP connection picked up in the middle from the LAN side (a gateway of a pair, after a failover) that
 * has had no reply yet: it keeps a short timer until one comes.
 */
export const FLOW_LOOSE = 64;

export type RemoveReason = 'expired' | 'early-drop' | 'flush' | 'closed';

export interface FlowTuple {
  protocol: number;
  src: number;
  dst: number;
  srcPort: number;
  dstPort: number;
}

const NONE = -1;

/**
 * Seeded hash of a 5-tuple, as the index computes it (tests use it to predict where a key's run starts).
 */
export function tupleHash(seed: number, proto: number, src: number, dst: number, sport: number, dport: number): number {
  return keyHash(seed, proto, src, dst, (sport << 16) | dport);
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

  /** Both entries of every flow in use, under their tuples; at least four slots per flow. */
  private readonly index: HashIndex;
  /** Slots in the index (a power of two). */
  readonly indexSlots: number;
  // The index's array and masks, held here as well so that a lookup reaches them in one load (see findIn).
  private readonly slots: Int32Array;
  private readonly slotMask: number;
  private readonly wordMask: number;
  /** Counts changes to the index, so a batch knows whether what it read from the index still holds. */
  private generation = 0;
  /** Where the batch calls leave the sum of what they loaded only to warm the cache (see hashBatch). */
  private sink = 0;
  private fsink = 0;
  /** expires as int32 pairs, for loads whose value does not matter (see lookupBatch). */
  private readonly expiresBits: Int32Array;
  private readonly free: FreeList;
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
    this.expiresBits = new Int32Array(this.expires.buffer);
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
    // At most half full: linear probing stays short (about 1.5 probes for a hit and 2.5 for a miss at load
    // 0.5, Knuth) and the free slot that ends every run always exists. An entry's row is its flow.
    this.index = new HashIndex(entries, seed, this.proto, 1);
    this.indexSlots = this.index.slotCount;
    this.slots = this.index.slots;
    this.slotMask = this.index.slotMask;
    this.wordMask = this.index.wordMask;
    this.free = new FreeList(capacity);
  }

  /** Find the entry whose tuple matches, or -1. An expired flow met here is removed and not returned. */
  lookup(proto: number, src: number, dst: number, sport: number, dport: number, now: number): number {
    // The key as the index stores it: addresses as int32 (same bits), ports as the 16 bits they have.
    const a = src | 0;
    const b = dst | 0;
    const ports = ((sport & 0xffff) << 16) | (dport & 0xffff);
    const e = this.find((keyHash(this.seed, proto, a, b, ports) & this.slotMask) * SLOT_WORDS, proto, a, b, ports);
    return e < 0 ? NONE : this.unlessExpired(e, now);
  }

  /** The entry with this key, or -1, probing from word offset i (the key's home slot); reads only. */
  private find(i: number, proto: number, a: number, b: number, ports: number): number {
    return findIn(this.slots, this.wordMask, this.proto, 1, i, proto, a, b, ports);
  }

  private unlessExpired(e: number, now: number): number {
    const flow = e >> 1;
    if (this.expires[flow]! <= now) {
      this.remove(flow, 'expired');
      return NONE;
    }
    return e;
  }

  /**
   * Look up every key of a batch, as many lookup() calls in key order would (same answers, expired flows
   * removed the same way), into out[0 .. keys.n) (out must be that long; keys beyond it are skipped).
   *
   * Passes over the whole batch, so that the cache misses of different keys are in flight together
   * instead of one after another: hash every key, then load every home slot; probe every key (its slots
   * now in cache) for its entry, then load every such flow's expiry; then check the expiries. Only the
   * last pass changes anything (it removes expired flows); once the index has changed, the keys after
   * that are probed afresh, so the answers are those of lookups made one after another.
   */
  lookupBatch(keys: FlowKeys, now: number, out: Int32Array): void {
    const all = this.hashBatch(keys);
    const n = all < out.length ? all : out.length;
    const { proto, src, dst, ports, home } = keys;
    for (let k = 0; k < n; k++) {
      out[k] = this.find(home[k]!, proto[k]!, src[k]!, dst[k]!, ports[k]!);
    }
    const expires = this.expires;
    // The expiry of every hit, loaded in a loop as small as the first pass's (a miss reads flow 0's), through
    // an int32 view so that the sum stays integer.
    const bits = this.expiresBits;
    let sink = 0;
    for (let k = 0; k < n; k++) {
      const e = out[k]!;
      sink = (sink + bits[(e & ~(e >> 31)) | 1]!) | 0;
    }
    this.sink = sink;
    const generation = this.generation;
    for (let k = 0; k < n; k++) {
      let e = out[k]!;
      if (this.generation !== generation) {
        e = this.find(home[k]!, proto[k]!, src[k]!, dst[k]!, ports[k]!);
        out[k] = e;
      }
      if (e >= 0 && expires[e >> 1]! <= now) {
        this.remove(e >> 1, 'expired');
        out[k] = NONE;
      }
    }
  }

  /**
   * Warm the cache for the lookups of a batch without changing anything: the index slots of every key
   * and, for keys present, the lines of the flow that a lookup and the translation of an established
   * packet read (flags, state, detail, expiry; this direction's counters and sequence number; the other
   * direction's tuple). For a data plane that then looks up and translates one packet at a time: it only
   * loads, so whatever earlier packets of the batch change, nothing here goes stale. Returns how many
   * keys are present.
   */
  prefetchBatch(keys: FlowKeys): number {
    const n = this.hashBatch(keys);
    const { proto, src, dst, ports, home, entry } = keys;
    let found = 0;
    for (let k = 0; k < n; k++) {
      const e = this.find(home[k]!, proto[k]!, src[k]!, dst[k]!, ports[k]!);
      // A miss touches entry 0, so the loop below needs no branch.
      entry[k] = e & ~(e >> 31);
      found += e >= 0 ? 1 : 0;
    }
    // Only loads that do not depend on one another, and nothing else, so that as many as the CPU can
    // track are in flight; the sums only keep the loads from being optimised away.
    let sink = 0;
    let fsink = 0;
    for (let k = 0; k < n; k++) {
      const e = entry[k]!;
      const flow = e >> 1;
      const o = e ^ 1;
      sink = (sink + this.flags[flow]! + this.state[flow]! + this.detail[flow]! + this.seqNext[e]! +
        this.tSrc[o]! + this.tDst[o]! + this.tSport[o]! + this.tDport[o]!) | 0;
      fsink += this.expires[flow]! + this.packets[e]! + this.bytes[e]!;
    }
    this.sink = sink;
    this.fsink = fsink;
    return found;
  }

  /**
   * First pass of the batch calls: the word offset of each key's home slot into keys.home. Loading the
   * slot is the point: the loads of all keys are independent, so they are in flight together.
   */
  private hashBatch(keys: FlowKeys): number {
    const n = keys.n < keys.capacity ? keys.n : keys.capacity;
    const { proto, src, dst, ports, home } = keys;
    const s = this.slots;
    const seed = this.seed;
    const mask = this.slotMask;
    for (let k = 0; k < n; k++) {
      home[k] = (keyHash(seed, proto[k]!, src[k]!, dst[k]!, ports[k]!) & mask) * SLOT_WORDS;
    }
    // A loop of its own, as small as can be: the CPU keeps as many of these loads in flight as its
    // reorder window holds instructions, so the fewer per load, the more misses overlap.
    let sink = 0;
    for (let k = 0; k < n; k++) sink = (sink + s[home[k]! + 3]!) | 0;
    this.sink = sink;
    return n;
  }

  /** Take a free slot, or -1 when the table is full (the caller may try earlyDrop first). */
  allocate(): number {
    const flow = this.free.take();
    if (flow < 0) return NONE;
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
    this.free.give(flow);
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
    // Same key indexed already (a reused tuple): the newer entry shadows the older one until it is
    // removed, as it did when chains were pushed at the head.
    this.index.insert(this.proto[e >> 1]!, this.tSrc[e]! | 0, this.tDst[e]! | 0, this.portsOf(e), e);
    this.generation++;
  }

  private unlink(e: number): void {
    if (this.index.delete(this.proto[e >> 1]!, this.tSrc[e]! | 0, this.tDst[e]! | 0, this.portsOf(e), e)) this.generation++;
  }

  private portsOf(e: number): number {
    return (this.tSport[e]! << 16) | this.tDport[e]!;
  }

  /** Index slot that holds entry e, or -1 if it is not indexed (for tests and diagnostics). */
  slotOf(e: number): number {
    const i = this.index.slotOfValue(this.proto[e >> 1]!, this.tSrc[e]! | 0, this.tDst[e]! | 0, this.portsOf(e), e);
    return i < 0 ? NONE : i / SLOT_WORDS;
  }

  /**
   * Everything wrong with the index, as sentences (empty when it is sound): every slot names an entry of
   * a flow in use, once, under that entry's current tuple and protocol; no key sits beyond an empty slot
   * on its way from its home; both entries of every flow in use are indexed. Walks the whole index: not
   * for the packet path.
   */
  indexProblems(): string[] {
    const index = this.index;
    const { problems, held } = index.audit(this.capacity * 2, 'entry', (e, j) => {
      const flow = e >> 1;
      if (!this.isInUse(flow)) return `entry ${e} of a free flow slot is indexed`;
      if (!index.holds(j, this.proto[flow]!, this.tSrc[e]! | 0, this.tDst[e]! | 0, this.portsOf(e))) {
        return `the key is not entry ${e}'s tuple`;
      }
      return null;
    });
    let used = 0;
    for (let e = 0; e < held.length; e++) used += held[e]!;
    for (let flow = 0; flow < this.capacity; flow++) {
      if (!this.isInUse(flow)) continue;
      if (!held[flow * 2]) problems.push(`flow ${flow} is not indexed in its original direction`);
      if (!held[flow * 2 + 1]) problems.push(`flow ${flow} is not indexed in its reply direction`);
    }
    if (used !== this.size * 2) problems.push(`${used} entries indexed for ${this.size} flows`);
    return problems;
  }

  /**
   * Everything wrong with the table, as sentences (empty when it is sound): the index (indexProblems),
   * the free list (every flow slot either in use or free, never both), size, and free slots that still
   * name mappings. Walks the whole table: for tests and fuzzers.
   */
  checkInvariants(): string[] {
    const out = this.indexProblems().map((p) => `index: ${p}`);
    const { problems } = this.free.audit('flow slot', (flow) => this.isInUse(flow));
    out.push(...problems);
    let inUse = 0;
    for (let flow = 0; flow < this.capacity; flow++) {
      if (this.isInUse(flow)) inUse++;
      else if (this.mapping[flow] !== NONE || this.mapping2[flow] !== NONE) out.push(`free flow slot ${flow} still names mappings`);
    }
    if (inUse !== this.size) out.push(`size ${this.size} but ${inUse} flow slots in use`);
    return out;
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
    this.free.give(flow);
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
    const perEntry = 4 + 4 + 2 + 2 + 8 + 8 + 4; // tuple, counters, seqNext
    return perFlow + 2 * perEntry + this.index.slots.byteLength / this.capacity;
  }
}
