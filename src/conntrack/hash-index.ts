/**
 * The hash index shared by the flow, mapping and permission tables: open addressing with linear probing
 * over an Int32Array sized from the most keys it will hold so that it is at most two thirds full, and
 * backward-shift deletion.
 *
 * A slot is four int32 words: three key words (a, b, c) and `tag | value`. The value is the table's row
 * (or, for flows, the entry `flow * 2 + dir`) in the low 25 bits; the tag in the top 7 bits is the key's
 * protocol + 1, so a hit or miss is decided from the slot alone without reading the table's arrays (at a
 * million flows each further array is another trip to DRAM). Protocols from 126 up do not fit the tag and
 * share an escape tag; for those the protocol is compared against the table's own protocol array, which
 * the index is given at construction. Tag 0 marks an empty slot.
 *
 * How each table fills the key words:
 *   flows:       source, destination, sport << 16 | dport   (protocol in the tag)
 *   mappings:    internal address, 0, internal port        (protocol in the tag)
 *   permissions: mapping id, external address, 0            (tag of protocol 0)
 *
 * Deletion shifts the rest of a run back into the hole instead of leaving a tombstone, so runs hold only
 * live keys and never lengthen with churn. Nothing here allocates after construction, except the audit.
 */
import type { FreeList } from './free-list.js';

const NONE = -1;

export const VALUE_BITS = 25;
/** Largest value a slot can carry: a flow table of 2^24 flows has entries up to this. */
export const VALUE_MAX = (1 << VALUE_BITS) - 1;
const VALUE_MASK = VALUE_MAX;
const TAG_MASK = ~VALUE_MASK;
const ESCAPE = 127;
const TAG_ESCAPE = ESCAPE << VALUE_BITS;
export const SLOT_WORDS = 4;

function fmix(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * Seeded hash of a key as the index stores it (c is both ports packed for flows); the seed is random in
 * production so remote hosts cannot aim at one run. One multiply per word and one final avalanche: every
 * input bit reaches the slot number, at a third of the cost of mixing each word fully (measured in
 * bench/lib/conntrack.ts).
 */
export function keyHash(seed: number, proto: number, a: number, b: number, c: number): number {
  let h = Math.imul(seed ^ a, 0x9e3779b1);
  h = Math.imul((h ^ (h >>> 15)) ^ b, 0x85ebca77);
  h = Math.imul((h ^ (h >>> 15)) ^ c, 0xc2b2ae3d);
  return fmix(h ^ proto);
}

/** The tag a key of this protocol carries: protocol + 1, or the escape for anything that is not a byte below 126. */
export function protoTag(proto: number): number {
  return proto >= 0 && proto < 126 && (proto | 0) === proto ? (proto + 1) << VALUE_BITS : TAG_ESCAPE;
}

/**
 * The smallest power of two of slots that keeps `keys` keys at most two thirds of them (four at least).
 * Half would double the array whenever `keys` lies just above a power of two (a table of 1.1 M flows got
 * 8 M slots, 128 MB, touched page by page as flows spread over it: 134 B per flow of its 342). Linear
 * probing at two thirds full reads about 2 slots for a hit and 5 for a miss on average (1.5 and 2.5 at
 * half); that is the worst case, a table at its limit, and four slots share a cache line.
 */
export function slotsFor(keys: number): number {
  let slots = 4;
  while (slots * 2 < keys * 3) slots *= 2;
  return slots;
}

/**
 * HashIndex.find over a slot array given directly, for a caller on the packet path that keeps the array
 * and masks in its own fields (FlowTable): one dependent load fewer per lookup than going through the
 * index object, which measured 3-10 % on single lookups.
 */
export function findIn(
  s: Int32Array, wordMask: number, protoOf: Uint8Array, rowShift: number,
  i: number, proto: number, a: number, b: number, c: number,
): number {
  for (;;) {
    const w = s[i + 3]!;
    if (w === 0) return NONE;
    if (s[i] === a && s[i + 1] === b && s[i + 2] === c) {
      const tag = protoTag(proto);
      if ((w & TAG_MASK) === tag) {
        const v = w & VALUE_MASK;
        if (tag !== TAG_ESCAPE || protoOf[v >> rowShift] === proto) return v;
      }
    }
    i = (i + SLOT_WORDS) & wordMask;
  }
}

export class HashIndex {
  /** SLOT_WORDS int32 words per slot; all zero is an empty slot. */
  readonly slots: Int32Array;
  /** Number of slots, a power of two. */
  readonly slotCount: number;
  readonly slotMask: number;
  /** Wraps a word offset of a slot around the end of the array. */
  readonly wordMask: number;

  /**
   * `keys`: the most keys the table will ever hold. `protoOf[value >> rowShift]` is the protocol of the row
   * a value names; it is read only for escaped protocols (a table whose keys all have protocol 0 may pass
   * an empty array).
   */
  constructor(
    keys: number,
    readonly seed: number,
    private readonly protoOf: Uint8Array,
    private readonly rowShift: number,
  ) {
    if (!Number.isInteger(keys) || keys < 1 || keys > VALUE_MAX + 1) {
      throw new RangeError(`an index holds 1..${VALUE_MAX + 1} keys, asked for ${keys}`);
    }
    this.slotCount = slotsFor(keys);
    this.slotMask = this.slotCount - 1;
    this.wordMask = this.slotCount * SLOT_WORDS - 1;
    this.slots = new Int32Array(this.slotCount * SLOT_WORDS);
  }

  /** Word offset of the home slot of a key, where its probe starts. */
  home(proto: number, a: number, b: number, c: number): number {
    return (keyHash(this.seed, proto, a, b, c) & this.slotMask) * SLOT_WORDS;
  }

  /** The value stored under this key, or -1, probing from word offset i (the key's home); reads only. */
  find(i: number, proto: number, a: number, b: number, c: number): number {
    return findIn(this.slots, this.wordMask, this.protoOf, this.rowShift, i, proto, a, b, c);
  }

  /**
   * Index `value` under a key. A key indexed already is shadowed: the new value takes the earlier slot (so
   * find() returns it) and the older one moves on down the run, to be found again once the newer goes.
   */
  insert(proto: number, a: number, b: number, c: number, value: number): void {
    const tag = protoTag(proto);
    const s = this.slots;
    let i = this.home(proto, a, b, c);
    let carry = tag | value;
    for (;;) {
      const w = s[i + 3]!;
      if (w === 0) break;
      if (
        s[i] === a && s[i + 1] === b && s[i + 2] === c && (w & TAG_MASK) === tag &&
        (tag !== TAG_ESCAPE || this.protoOf[(w & VALUE_MASK) >> this.rowShift] === proto)
      ) {
        s[i + 3] = carry;
        carry = w;
      }
      i = (i + SLOT_WORDS) & this.wordMask;
    }
    s[i] = a;
    s[i + 1] = b;
    s[i + 2] = c;
    s[i + 3] = carry;
  }

  /** Word offset of the slot holding `value`, whose key this is, or -1 if it is not indexed. */
  slotOfValue(proto: number, a: number, b: number, c: number, value: number): number {
    const s = this.slots;
    let i = this.home(proto, a, b, c);
    for (;;) {
      const w = s[i + 3]!;
      if (w === 0) return NONE;
      if ((w & VALUE_MASK) === value) return i;
      i = (i + SLOT_WORDS) & this.wordMask;
    }
  }

  /** Take `value`, indexed under this key, out of the index; false if it was not there. */
  delete(proto: number, a: number, b: number, c: number, value: number): boolean {
    const hole = this.slotOfValue(proto, a, b, c, value);
    if (hole < 0) return false;
    this.deleteAt(hole);
    return true;
  }

  /**
   * Backward-shift deletion of the slot at word offset `hole`: a later key of the run moves into the hole
   * when the hole lies on its probe path (between its home and where it sits), so no run is ever cut
   * short by an empty slot.
   */
  private deleteAt(hole: number): void {
    const s = this.slots;
    const m = this.wordMask;
    for (let j = (hole + SLOT_WORDS) & m; ; j = (j + SLOT_WORDS) & m) {
      const w = s[j + 3]!;
      if (w === 0) break;
      if (((j - this.homeOfSlot(j)) & m) >= ((j - hole) & m)) {
        s[hole] = s[j]!;
        s[hole + 1] = s[j + 1]!;
        s[hole + 2] = s[j + 2]!;
        s[hole + 3] = w;
        hole = j;
      }
    }
    s[hole] = 0;
    s[hole + 1] = 0;
    s[hole + 2] = 0;
    s[hole + 3] = 0;
  }

  /** The protocol of the key held at word offset j. */
  private protoAt(j: number): number {
    const w = this.slots[j + 3]!;
    const code = w >>> VALUE_BITS;
    return code === ESCAPE ? this.protoOf[(w & VALUE_MASK) >> this.rowShift]! : code - 1;
  }

  /** Word offset of the home slot of the key held at word offset j. */
  private homeOfSlot(j: number): number {
    const s = this.slots;
    return this.home(this.protoAt(j), s[j]!, s[j + 1]!, s[j + 2]!);
  }

  /** Whether the slot at word offset j holds exactly this key (whatever its value). */
  holds(j: number, proto: number, a: number, b: number, c: number): boolean {
    const s = this.slots;
    // No key has tag 0, so an empty slot never matches.
    return s[j] === a && s[j + 1] === b && s[j + 2] === c && (s[j + 3]! & TAG_MASK) === protoTag(proto);
  }

  /** Empty every slot. */
  clear(): void {
    this.slots.fill(0);
  }

  /**
   * Everything wrong with the index itself, as sentences, plus which values it holds: empty slots are
   * cleared, no value is held twice or is `values` or more, and no key sits beyond an empty slot on its way
   * from its home (a probe would stop short of it). `keyOk(value, j)` judges whether the key in slot j
   * (word offset) is the one the table has for that value, returning a sentence when it is not. `name`
   * says what a value is in the sentences. Walks the whole array: for tests and fuzzers, not the packet path.
   */
  audit(values: number, name: string, keyOk: (value: number, j: number) => string | null): { problems: string[]; held: Uint8Array } {
    const problems: string[] = [];
    const held = new Uint8Array(values);
    const s = this.slots;
    const slots = this.slotCount;
    // Walking on from an empty slot meets every run from its start; a key must sit closer to its home
    // than to the last empty slot before it.
    let empty = -1;
    for (let j = slots - 1; j >= 0 && empty < 0; j--) if (s[j * SLOT_WORDS + 3] === 0) empty = j;
    if (empty < 0) return { problems: ['the index has no empty slot'], held };
    const start = empty;
    for (let step = 1; step <= slots; step++) {
      const j = (start + step) % slots;
      const i = j * SLOT_WORDS;
      const w = s[i + 3]!;
      if (w === 0) {
        if (s[i] !== 0 || s[i + 1] !== 0 || s[i + 2] !== 0) problems.push(`empty slot ${j} is not cleared`);
        empty = j;
        continue;
      }
      const v = w & VALUE_MASK;
      if (v >= values) {
        problems.push(`slot ${j} names ${name} ${v}, beyond the table`);
        continue;
      }
      if (held[v]) problems.push(`${name} ${v} is indexed twice`);
      held[v] = 1;
      const wrong = keyOk(v, i);
      if (wrong !== null) problems.push(`slot ${j}: ${wrong}`);
      const home = this.homeOfSlot(i) / SLOT_WORDS;
      if (((j - home + slots) % slots) >= ((j - empty + slots) % slots)) {
        problems.push(`${name} ${v} in slot ${j} is cut off from its home slot ${home} by an empty slot`);
      }
    }
    return { problems, held };
  }
}

/**
 * The audit of a table whose rows are in use exactly while indexed (mappings, permissions): the index's own
 * problems, then the free list against what the index holds, so a row both indexed and free, or neither,
 * is reported. Returns the sentences and which rows are free.
 */
export function auditIndexedRows(
  index: HashIndex,
  free: FreeList,
  name: string,
  keyOk: (row: number, j: number) => string | null,
): { problems: string[]; free: Uint8Array } {
  const audit = index.audit(free.capacity, name, keyOk);
  const problems = audit.problems.map((p) => `index: ${p}`);
  const rows = free.audit(name, (row) => audit.held[row] === 1);
  problems.push(...rows.problems);
  return { problems, free: rows.free };
}
