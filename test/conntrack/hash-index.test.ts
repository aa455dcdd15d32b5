/**
 * The index shared by the flow, mapping and permission tables (open addressing, linear probing,
 * backward-shift deletion) and the free list they share. Where a key sits is read through
 * slotOfValue() and home(), so the tests check the layout instead of assuming it.
 */
import { describe, it, expect } from 'vitest';
import { HashIndex, SLOT_WORDS, VALUE_MAX } from '../../src/conntrack/hash-index.js';
import { FreeList } from '../../src/conntrack/free-list.js';

const UDP = 17;
/** Values the tests use stay below this (the audit's bound). */
const VALUES = 4096;

interface Key {
  proto: number;
  a: number;
  b: number;
  c: number;
}

function slotOfKey(ix: HashIndex, k: Key, value: number): number {
  const i = ix.slotOfValue(k.proto, k.a, k.b, k.c, value);
  return i < 0 ? -1 : i / SLOT_WORDS;
}

function homeOf(ix: HashIndex, k: Key): number {
  return ix.home(k.proto, k.a, k.b, k.c) / SLOT_WORDS;
}

function get(ix: HashIndex, k: Key): number {
  return ix.find(ix.home(k.proto, k.a, k.b, k.c), k.proto, k.a, k.b, k.c);
}

/** `count` distinct keys whose home slot is `slot`, found by trying c = from, from + 1, ... */
function keysWithHome(ix: HashIndex, slot: number, count: number, from = 1): Key[] {
  const out: Key[] = [];
  for (let c = from; out.length < count; c++) {
    expect(c).toBeLessThan(from + 10_000_000);
    const k = { proto: UDP, a: 0x0a000001, b: -0x34ff8efe, c };
    if (homeOf(ix, k) === slot) out.push(k);
  }
  return out;
}

/** Insert each key with its position in the list as its value; returns value → key. */
function insertAll(ix: HashIndex, list: Key[]): Map<number, Key> {
  const keys = new Map<number, Key>();
  list.forEach((k, v) => {
    ix.insert(k.proto, k.a, k.b, k.c, v);
    keys.set(v, k);
  });
  return keys;
}

/** The index's own audit, with every key checked against what the test inserted. */
function audit(ix: HashIndex, keys: Map<number, Key>): string[] {
  const { problems, held } = ix.audit(VALUES, 'value', (v, j) => {
    const k = keys.get(v);
    if (!k) return `value ${v} was never inserted`;
    return ix.holds(j, k.proto, k.a, k.b, k.c) ? null : `value ${v} under the wrong key`;
  });
  for (const v of keys.keys()) if (!held[v]) problems.push(`value ${v} is not indexed`);
  return problems;
}

describe('shared hash index', () => {
  it('inserts, finds and deletes, and tells protocols apart (escaped ones through the table)', () => {
    const protoOf = new Uint8Array(8);
    const ix = new HashIndex(8, 5, protoOf, 0);
    expect(ix.slotCount).toBe(16);
    const keys = new Map<number, Key>();
    [6, 17, 1, 125, 126, 200].forEach((proto, v) => {
      protoOf[v] = proto;
      const k = { proto, a: 0xc0a80001 | 0, b: 0, c: 5000 };
      ix.insert(k.proto, k.a, k.b, k.c, v);
      keys.set(v, k);
    });
    expect(audit(ix, keys)).toEqual([]);
    for (const [v, k] of keys) expect(get(ix, k)).toBe(v);
    for (const proto of [0, 2, 127, 255, 6.5, 256 + 6]) expect(get(ix, { proto, a: 0xc0a80001 | 0, b: 0, c: 5000 })).toBe(-1);
    expect(get(ix, { proto: 6, a: 0xc0a80001 | 0, b: 0, c: 5001 })).toBe(-1);

    expect(ix.delete(200, 0xc0a80001 | 0, 0, 5000, 5)).toBe(true);
    keys.delete(5);
    expect(ix.delete(200, 0xc0a80001 | 0, 0, 5000, 5)).toBe(false);
    expect(get(ix, { proto: 200, a: 0xc0a80001 | 0, b: 0, c: 5000 })).toBe(-1);
    expect(get(ix, { proto: 126, a: 0xc0a80001 | 0, b: 0, c: 5000 })).toBe(4);
    expect(audit(ix, keys)).toEqual([]);
  });

  it('keeps keys with one home in one run, and shifts the rest back when one in the middle goes', () => {
    const ix = new HashIndex(32, 11, new Uint8Array(0), 0);
    const same = keysWithHome(ix, 20, 5);
    const keys = insertAll(ix, same);
    expect(same.map((k, v) => slotOfKey(ix, k, v))).toEqual([20, 21, 22, 23, 24]);
    expect(audit(ix, keys)).toEqual([]);

    expect(ix.delete(UDP, same[1]!.a, same[1]!.b, same[1]!.c, 1)).toBe(true);
    keys.delete(1);
    expect(get(ix, same[1]!)).toBe(-1);
    expect([0, 2, 3, 4].map((v) => slotOfKey(ix, same[v]!, v))).toEqual([20, 21, 22, 23]);
    expect([0, 2, 3, 4].map((v) => get(ix, same[v]!))).toEqual([0, 2, 3, 4]);
    // The slot the run no longer needs is cleared, all four words.
    expect(Array.from(ix.slots.subarray(24 * SLOT_WORDS, 25 * SLOT_WORDS))).toEqual([0, 0, 0, 0]);
    expect(audit(ix, keys)).toEqual([]);
  });

  it('does not pull a key back before its own home', () => {
    const ix = new HashIndex(32, 3, new Uint8Array(0), 0);
    const [x, y] = keysWithHome(ix, 10, 2);
    const [z] = keysWithHome(ix, 11, 1);
    ix.insert(UDP, x!.a, x!.b, x!.c, 0);
    ix.insert(UDP, y!.a, y!.b, y!.c, 1); // slot 11, displaced
    ix.insert(UDP, z!.a, z!.b, z!.c, 2); // slot 12, displaced from 11
    ix.delete(UDP, y!.a, y!.b, y!.c, 1);
    // z moves back to its home, 11; nothing moves into 10's run from further on.
    expect(slotOfKey(ix, z!, 2)).toBe(11);
    expect(slotOfKey(ix, x!, 0)).toBe(10);
    ix.delete(UDP, x!.a, x!.b, x!.c, 0);
    // z's home is 11: the hole at 10 is not on its path, so it stays.
    expect(slotOfKey(ix, z!, 2)).toBe(11);
    expect(get(ix, z!)).toBe(2);
  });

  it('wraps a run around the end of the slots, and shifts back across the end on deletion', () => {
    const ix = new HashIndex(8, 5, new Uint8Array(0), 0);
    const last = ix.slotCount - 1;
    const wrap = keysWithHome(ix, last, 3);
    const [atZero] = keysWithHome(ix, 0, 1);
    const keys = insertAll(ix, [...wrap, atZero!]);
    expect([0, 1, 2, 3].map((v) => slotOfKey(ix, keys.get(v)!, v))).toEqual([last, 0, 1, 2]);
    expect(audit(ix, keys)).toEqual([]);

    ix.delete(UDP, wrap[0]!.a, wrap[0]!.b, wrap[0]!.c, 0);
    keys.delete(0);
    expect([1, 2, 3].map((v) => slotOfKey(ix, keys.get(v)!, v))).toEqual([last, 0, 1]);
    expect([1, 2, 3].map((v) => get(ix, keys.get(v)!))).toEqual([1, 2, 3]);
    expect(get(ix, wrap[0]!)).toBe(-1);
    expect(audit(ix, keys)).toEqual([]);
  });

  it('holds as many keys as it was sized for, answers misses when full, and empties completely', () => {
    const n = 256;
    const ix = new HashIndex(n, 1, new Uint8Array(0), 0);
    expect(ix.slotCount).toBe(2 * n);
    const key = (v: number): Key => ({ proto: UDP, a: v * 7919, b: -v, c: v & 0xffff });
    for (let v = 0; v < n; v++) ix.insert(UDP, key(v).a, key(v).b, key(v).c, v);
    const keys = new Map(Array.from({ length: n }, (_, v) => [v, key(v)] as const));
    expect(audit(ix, keys)).toEqual([]);
    for (let v = 0; v < n; v++) expect(get(ix, key(v))).toBe(v);
    for (let v = n; v < 4 * n; v++) expect(get(ix, key(v))).toBe(-1);
    for (let v = 0; v < n; v++) expect(ix.delete(UDP, key(v).a, key(v).b, key(v).c, v)).toBe(true);
    expect(ix.slots.every((w) => w === 0)).toBe(true);
  });

  it('survives adversarial keys that all share one home, deleted in scrambled order', () => {
    const n = 32;
    const ix = new HashIndex(n, 0x9e3779b9, new Uint8Array(0), 0);
    const same = keysWithHome(ix, 50, n);
    const keys = insertAll(ix, same);
    // One run of n slots, wrapped past the end of the 64.
    expect(same.map((k, v) => slotOfKey(ix, k, v))).toEqual(same.map((_, v) => (50 + v) % ix.slotCount));
    expect(audit(ix, keys)).toEqual([]);
    // A colliding key that is absent walks the whole run and misses.
    const [absent] = keysWithHome(ix, 50, 1, same.at(-1)!.c + 1);
    expect(get(ix, absent!)).toBe(-1);
    for (let step = 0; step < n; step++) {
      const v = (step * 13) % n;
      const k = keys.get(v)!;
      expect(ix.delete(k.proto, k.a, k.b, k.c, v)).toBe(true);
      keys.delete(v);
      expect(audit(ix, keys)).toEqual([]);
      for (const [w, kw] of keys) expect(get(ix, kw)).toBe(w);
    }
    expect(ix.slots.every((w) => w === 0)).toBe(true);
  });

  it('lets a newer value under the same key shadow the older one until it goes', () => {
    const ix = new HashIndex(4, 2, new Uint8Array(0), 0);
    const k = { proto: UDP, a: 1, b: 2, c: 3 };
    ix.insert(k.proto, k.a, k.b, k.c, 0);
    ix.insert(k.proto, k.a, k.b, k.c, 1);
    expect(get(ix, k)).toBe(1);
    ix.delete(k.proto, k.a, k.b, k.c, 1);
    expect(get(ix, k)).toBe(0);
  });

  it('carries the largest value, and refuses a size it cannot encode', () => {
    const ix = new HashIndex(4, 9, new Uint8Array(0), 0);
    ix.insert(UDP, 1, 2, 3, VALUE_MAX);
    expect(get(ix, { proto: UDP, a: 1, b: 2, c: 3 })).toBe(VALUE_MAX);
    expect(() => new HashIndex(VALUE_MAX + 2, 0, new Uint8Array(0), 0)).toThrow(RangeError);
    expect(() => new HashIndex(0, 0, new Uint8Array(0), 0)).toThrow(RangeError);
  });

  it('audits: a hole cut into a run, a value held twice, a stray value and an uncleared slot are reported', () => {
    const ix = new HashIndex(32, 11, new Uint8Array(0), 0);
    const same = keysWithHome(ix, 20, 3);
    const keys = insertAll(ix, same);
    expect(audit(ix, keys)).toEqual([]);
    const s = ix.slots;
    // Empty the middle of the run by hand: the third key is now cut off from its home.
    s.fill(0, 21 * SLOT_WORDS, 22 * SLOT_WORDS);
    const cut = audit(ix, keys);
    expect(cut.some((p) => p.includes('cut off from its home slot 20'))).toBe(true);
    expect(cut).toContain('value 1 is not indexed');
    // Copy slot 20 into an empty slot elsewhere: value 0 is held twice.
    s.copyWithin(40 * SLOT_WORDS, 20 * SLOT_WORDS, 21 * SLOT_WORDS);
    expect(audit(ix, keys)).toContain('value 0 is indexed twice');
    // An empty slot with key words left in it.
    s[50 * SLOT_WORDS + 1] = 7;
    expect(audit(ix, keys)).toContain('empty slot 50 is not cleared');
  });
});

describe('shared free list', () => {
  it('hands rows out from 0 up, takes them back last in first out, and says when it is empty', () => {
    const f = new FreeList(3);
    expect(f.peek()).toBe(0);
    expect([f.take(), f.take()]).toEqual([0, 1]);
    f.give(0);
    expect(f.available).toBe(2);
    expect([f.take(), f.take(), f.take()]).toEqual([0, 2, -1]);
    expect(f.peek()).toBe(-1);
  });

  it('audits against the rows in use: disjoint, covering, no row twice', () => {
    const f = new FreeList(4);
    const live = new Set<number>();
    for (let i = 0; i < 2; i++) live.add(f.take());
    expect(f.audit('row', (r) => live.has(r)).problems).toEqual([]);
    // A row in use given back as well, a row listed twice, a row lost.
    f.give(0);
    expect(f.audit('row', (r) => live.has(r)).problems).toEqual(['row 0 is in use and on the free list']);
    f.give(3);
    expect(f.audit('row', (r) => live.has(r)).problems).toContain('row 3 is on the free list twice');
    live.delete(1);
    expect(f.audit('row', (r) => live.has(r)).problems).toContain('row 1 is neither in use nor free: lost');
  });
});
