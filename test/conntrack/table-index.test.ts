/**
 * The flow table's open-addressing index (linear probing, backward-shift deletion) and its batch
 * lookups. Layout checks go through public API only: slotOf() says where an entry sits, tupleHash()
 * and indexSlots where its probe run starts.
 */
import { describe, it, expect } from 'vitest';
import { FlowTable, FlowKeys, DIR_ORIGINAL, DIR_REPLY, tupleHash, type RemoveReason } from '../../src/conntrack/table.js';

const TCP = 6;
const UDP = 17;
const REMOTE = 0xcb007102; // 203.0.113.2
const PUBLIC = 0xcb007101; // 203.0.113.1

interface Key {
  proto: number;
  src: number;
  dst: number;
  sport: number;
  dport: number;
}

/** Outbound key of LAN host/port i; its reply comes back to the public address on port i. */
function key(i: number, proto = TCP): Key {
  return { proto, src: (0xc0a80000 + (i >>> 16) * 256 + 1) >>> 0, dst: REMOTE, sport: i & 0xffff, dport: 443 };
}

function replyOf(k: Key, i: number): Key {
  return { proto: k.proto, src: k.dst, dst: PUBLIC, sport: k.dport, dport: i & 0xffff };
}

function add(t: FlowTable, k: Key, r: Key, now = 0, ttl = 1e9): number {
  const f = t.allocate();
  expect(f).toBeGreaterThanOrEqual(0);
  t.setTuple(f, DIR_ORIGINAL, k.src, k.dst, k.sport, k.dport);
  t.setTuple(f, DIR_REPLY, r.src, r.dst, r.sport, r.dport);
  t.insert(f, k.proto, now, now + ttl);
  return f;
}

function look(t: FlowTable, k: Key, now = 0): number {
  return t.lookup(k.proto, k.src, k.dst, k.sport, k.dport, now);
}

function home(t: FlowTable, k: Key): number {
  return tupleHash(t.seed, k.proto, k.src, k.dst, k.sport, k.dport) & (t.indexSlots - 1);
}

function entryKey(t: FlowTable, e: number): Key {
  const x = t.tuple(e >> 1, e & 1);
  return { proto: x.protocol, src: x.src, dst: x.dst, sport: x.srcPort, dport: x.dstPort };
}

/**
 * The index's invariants, from outside: every live entry sits in exactly one slot, distinct from every
 * other's, and every slot from its key's home to where it sits is taken (no run is cut by a hole, so
 * every key is reachable); no entry of a removed flow is indexed.
 */
function checkIndex(t: FlowTable): void {
  expect(t.indexProblems()).toEqual([]);
  const n = t.indexSlots;
  const taken = new Map<number, number>();
  for (const f of t.flows()) {
    for (const e of [f * 2, f * 2 + 1]) {
      const s = t.slotOf(e);
      expect(s, `entry ${e} indexed`).toBeGreaterThanOrEqual(0);
      expect(taken.has(s), `slot ${s} held twice`).toBe(false);
      taken.set(s, e);
    }
  }
  expect(taken.size).toBe(t.size * 2);
  for (const [s, e] of taken) {
    for (let p = home(t, entryKey(t, e)); p !== s; p = (p + 1) % n) {
      expect(taken.has(p), `hole at slot ${p} inside the run of entry ${e} (home → ${s})`).toBe(true);
    }
  }
}

/** `count` distinct keys (by LAN port) whose home slot in `t` is `slot`, searching ports from `from`. */
function keysWithHome(t: FlowTable, slot: number, count: number, from = 1): { k: Key; i: number }[] {
  const out: { k: Key; i: number }[] = [];
  for (let i = from; out.length < count; i++) {
    expect(i).toBeLessThan(from + 1_000_000);
    const k = key(i);
    if (home(t, k) === slot) out.push({ k, i });
  }
  return out;
}

describe('flow table index', () => {
  it('holds both directions of every flow in a tiny table where most keys collide', () => {
    const t = new FlowTable(4, 3);
    expect(t.indexSlots).toBe(16);
    const flows = [1, 2, 3, 4].map((i) => ({ i, f: add(t, key(i), replyOf(key(i), i)) }));
    checkIndex(t);
    for (const { i, f } of flows) {
      expect(look(t, key(i))).toBe(f * 2 + DIR_ORIGINAL);
      expect(look(t, replyOf(key(i), i))).toBe(f * 2 + DIR_REPLY);
    }
    for (let i = 5; i < 200; i++) {
      expect(look(t, key(i))).toBe(-1);
      expect(look(t, replyOf(key(i), i))).toBe(-1);
    }
    expect(t.allocate()).toBe(-1);
  });

  it('keeps one run for keys that share a home slot, and closes the gap when one in the middle goes', () => {
    const t = new FlowTable(64, 11);
    const same = keysWithHome(t, 40, 4);
    const fl = same.map(({ k, i }) => add(t, k, replyOf(k, i)));
    // The replies are elsewhere (their home depends on other fields); the four originals sit 40..43 unless
    // a reply took one of those slots first, in which case the run just goes on.
    const at = fl.map((f) => t.slotOf(f * 2));
    for (let j = 1; j < at.length; j++) expect(at[j]!).toBeGreaterThan(at[j - 1]!);
    expect(at[0]).toBeGreaterThanOrEqual(40);
    checkIndex(t);

    t.remove(fl[1]!, 'closed');
    checkIndex(t);
    expect(look(t, same[1]!.k)).toBe(-1);
    expect(look(t, same[0]!.k)).toBe(fl[0]! * 2);
    expect(look(t, same[2]!.k)).toBe(fl[2]! * 2);
    expect(look(t, same[3]!.k)).toBe(fl[3]! * 2);
    // The later members moved back into the freed slot.
    expect(t.slotOf(fl[2]! * 2)).toBeLessThan(at[2]!);
    expect(t.slotOf(fl[3]! * 2)).toBeLessThan(at[3]!);
  });

  it('wraps a run around the end of the index, and shifts back across the wrap on removal', () => {
    const t = new FlowTable(8, 5);
    const last = t.indexSlots - 1;
    const wrap = keysWithHome(t, last, 3);
    const atZero = keysWithHome(t, 0, 1, wrap[2]!.i + 1)[0]!;
    // Replies go to the remote's side of the address space, far from these slots only by chance, so
    // check the layout through slotOf rather than assume it.
    const fw = wrap.map(({ k, i }) => add(t, k, replyOf(k, i)));
    const f0 = add(t, atZero.k, replyOf(atZero.k, atZero.i));
    checkIndex(t);
    const pos = fw.map((f) => t.slotOf(f * 2));
    expect(pos[0]).toBe(last);
    expect(pos[1]!).toBeLessThan(pos[2]!); // both wrapped to the start
    expect(pos[2]!).toBeLessThan(t.slotOf(f0 * 2));

    t.remove(fw[0]!, 'closed');
    checkIndex(t);
    expect(t.slotOf(fw[1]! * 2)).toBe(last); // pulled back across the end
    expect(look(t, wrap[0]!.k)).toBe(-1);
    expect(look(t, wrap[1]!.k)).toBe(fw[1]! * 2);
    expect(look(t, wrap[2]!.k)).toBe(fw[2]! * 2);
    expect(look(t, atZero.k)).toBe(f0 * 2);
  });

  it('stays consistent through heavy churn, with a full table on the way', () => {
    const cap = 64;
    const t = new FlowTable(cap, 0x9e3779b9);
    const live = new Map<number, number>();
    let seed = 7;
    const rnd = (n: number): number => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) % n);
    let sawFull = false;
    for (let round = 0; round < 6000; round++) {
      const i = 1 + rnd(200);
      if (live.has(i)) {
        t.remove(live.get(i)!, 'closed');
        live.delete(i);
      } else if (t.size < cap) {
        live.set(i, add(t, key(i), replyOf(key(i), i)));
      } else {
        sawFull = true;
        expect(t.allocate()).toBe(-1);
      }
      if (round % 97 === 0) checkIndex(t);
    }
    expect(sawFull).toBe(true);
    checkIndex(t);
    for (let i = 1; i <= 200; i++) {
      const f = live.get(i);
      expect(look(t, key(i))).toBe(f === undefined ? -1 : f * 2);
      expect(look(t, replyOf(key(i), i))).toBe(f === undefined ? -1 : f * 2 + 1);
    }
  });

  it('finds every flow of a full table and still answers misses', () => {
    const cap = 1000;
    const t = new FlowTable(cap, 1);
    for (let i = 1; i <= cap; i++) add(t, key(i), replyOf(key(i), i));
    expect(t.size).toBe(cap);
    expect(t.allocate()).toBe(-1);
    checkIndex(t);
    for (let i = 1; i <= cap; i++) {
      expect(look(t, key(i)) >> 1).toBe(look(t, replyOf(key(i), i)) >> 1);
    }
    for (let i = cap + 1; i < cap + 2000; i++) expect(look(t, key(i))).toBe(-1);
    expect(t.flush()).toBe(cap);
    for (let i = 1; i <= cap; i++) expect(look(t, key(i))).toBe(-1);
  });

  it('tells protocols apart, the ones above the tag range included', () => {
    const t = new FlowTable(16, 2);
    const base = key(9);
    const flows = [TCP, UDP, 1, 125, 126, 200, 255].map((proto) => ({ proto, f: add(t, { ...base, proto }, replyOf({ ...base, proto }, 9)) }));
    checkIndex(t);
    for (const { proto, f } of flows) expect(look(t, { ...base, proto })).toBe(f * 2);
    for (const proto of [0, 2, 127, 254]) expect(look(t, { ...base, proto })).toBe(-1);
    // A non-integer or out-of-range protocol matches nothing (a protocol is a byte).
    expect(look(t, { ...base, proto: 6.5 })).toBe(-1);
    expect(look(t, { ...base, proto: 256 + TCP })).toBe(-1);
    t.remove(flows.find((x) => x.proto === 200)!.f, 'closed');
    checkIndex(t);
    expect(look(t, { ...base, proto: 200 })).toBe(-1);
    expect(look(t, { ...base, proto: 255 })).toBe(flows.at(-1)!.f * 2);
  });

  it('lets a newer flow with the same tuple shadow the older one until it goes, as before', () => {
    const t = new FlowTable(8, 4);
    const k = key(77);
    const older = add(t, k, replyOf(k, 77));
    const newer = add(t, k, { ...replyOf(k, 77), dport: 999 });
    checkIndex(t);
    expect(look(t, k)).toBe(newer * 2);
    t.remove(newer, 'closed');
    expect(look(t, k)).toBe(older * 2);
    checkIndex(t);
  });

  it('removes an expired flow on lookup and reports it once', () => {
    const t = new FlowTable(8, 4);
    const removed: [number, RemoveReason][] = [];
    t.onRemove = (f, r) => removed.push([f, r]);
    const f = add(t, key(3), replyOf(key(3), 3), 0, 10);
    expect(look(t, key(3), 9)).toBe(f * 2);
    expect(look(t, replyOf(key(3), 3), 10)).toBe(-1);
    expect(look(t, key(3), 10)).toBe(-1);
    expect(removed).toEqual([[f, 'expired']]);
    expect(t.size).toBe(0);
    checkIndex(t);
  });

  it('encodes the entry numbers of the largest table', () => {
    // The biggest capacity there is: the top flow's reply entry, 2^25 - 1, fills every entry bit of a slot.
    const t = new FlowTable(1 << 24, 99);
    const top = (1 << 24) - 1;
    // Slots are handed out from 0 up; put the top one on the free list by hand.
    expect(t.allocate()).toBe(0);
    t.release(top);
    expect(t.allocate()).toBe(top);
    for (const proto of [TCP, 200]) {
      const k = { ...key(5), proto };
      t.setTuple(top, DIR_ORIGINAL, k.src, k.dst, k.sport, k.dport);
      t.setTuple(top, DIR_REPLY, REMOTE, PUBLIC, 443, 5);
      t.insert(top, proto, 0, 1e9);
      expect(look(t, k)).toBe(top * 2);
      expect(t.lookup(proto, REMOTE, PUBLIC, 443, 5, 0)).toBe(top * 2 + 1);
      expect(t.slotOf(top * 2 + 1)).toBeGreaterThanOrEqual(0);
      t.remove(top, 'closed');
      expect(look(t, k)).toBe(-1);
      t.allocate();
    }
  });
});

/** Two tables built by the same steps, so one can answer in batches and the other one key at a time. */
function twin(build: (t: FlowTable) => void, capacity = 256): { a: FlowTable; b: FlowTable; logA: string[]; logB: string[] } {
  const a = new FlowTable(capacity, 0x2545f491);
  const b = new FlowTable(capacity, 0x2545f491);
  build(a);
  build(b);
  const logA: string[] = [];
  const logB: string[] = [];
  a.onRemove = (f, r) => logA.push(`${f}:${r}`);
  b.onRemove = (f, r) => logB.push(`${f}:${r}`);
  return { a, b, logA, logB };
}

function fill(keys: FlowKeys, ks: Key[]): void {
  keys.clear();
  for (const k of ks) expect(keys.add(k.proto, k.src, k.dst, k.sport, k.dport)).toBeGreaterThanOrEqual(0);
}

describe('flow table batch lookups', () => {
  // 60 flows, every third one expiring at 50; keys: hits in both directions, misses, escaped protocols.
  const build = (t: FlowTable): void => {
    for (let i = 1; i <= 60; i++) add(t, key(i, i % 5 === 0 ? 200 : TCP), replyOf(key(i, i % 5 === 0 ? 200 : TCP), i), 0, i % 3 === 0 ? 50 : 1e9);
  };
  const mixed = (): Key[] => {
    const ks: Key[] = [];
    for (let i = 1; i <= 64; i++) {
      const j = 1 + ((i * 37) % 80); // 61..80 are absent
      const k = key(j, j % 5 === 0 ? 200 : TCP);
      ks.push(i % 2 ? k : replyOf(k, j));
    }
    ks[10] = ks[9]!; // the same key twice in one batch
    ks[11] = { ...key(6, 200), proto: TCP }; // present tuple, wrong protocol
    return ks;
  };

  it('answers exactly as one lookup() per key in order, expired flows removed the same way', () => {
    for (const now of [0, 50, 60]) {
      const { a, b, logA, logB } = twin(build);
      const keys = new FlowKeys(64);
      const ks = mixed();
      fill(keys, ks);
      const out = new Int32Array(64).fill(12345);
      a.lookupBatch(keys, now, out);
      const want = ks.map((k) => look(b, k, now));
      expect(Array.from(out)).toEqual(want);
      expect(logA).toEqual(logB);
      expect(a.size).toBe(b.size);
      checkIndex(a);
      if (now >= 50) expect(logA.length).toBeGreaterThan(0);
    }
  });

  it('stays exact when a removal during the batch inserts a flow a later key looks for', () => {
    const late = key(500);
    const mk = (t: FlowTable): void => {
      build(t);
      // The first expired flow met makes room for a flow the batch asks about further on.
      let once = true;
      t.onRemove = () => {
        if (!once) return;
        once = false;
        add(t, late, replyOf(late, 500));
      };
    };
    const a = new FlowTable(256, 0x2545f491);
    const b = new FlowTable(256, 0x2545f491);
    mk(a);
    mk(b);
    const ks = [key(3), key(1), late, replyOf(key(3), 3), key(2), replyOf(late, 500)];
    const keys = new FlowKeys(8);
    fill(keys, ks);
    const out = new Int32Array(8);
    a.lookupBatch(keys, 60, out);
    const want = ks.map((k) => look(b, k, 60));
    expect(Array.from(out.subarray(0, ks.length))).toEqual(want);
    expect(want[2]).toBeGreaterThanOrEqual(0); // the flow inserted mid-batch was found
    checkIndex(a);
  });

  it('stays exact when a removal during the batch takes a live flow a later key looks for with it', () => {
    const mk = (t: FlowTable): void => {
      build(t);
      // NAT-style cascade: the first expired flow takes flow of key(4) (live) with it.
      let once = true;
      t.onRemove = () => {
        if (!once) return;
        once = false;
        t.remove(t.lookup(TCP, key(4).src, key(4).dst, key(4).sport, key(4).dport, 0) >> 1, 'flush');
      };
    };
    const a = new FlowTable(256, 0x2545f491);
    const b = new FlowTable(256, 0x2545f491);
    mk(a);
    mk(b);
    const ks = [key(4), key(3), key(4), replyOf(key(4), 4), key(7)];
    const keys = new FlowKeys(8);
    fill(keys, ks);
    const out = new Int32Array(8);
    a.lookupBatch(keys, 60, out);
    const want = ks.map((k) => look(b, k, 60));
    expect(want[0]).toBeGreaterThanOrEqual(0);
    expect(want[2]).toBe(-1);
    expect(Array.from(out.subarray(0, ks.length))).toEqual(want);
    checkIndex(a);
  });

  it('handles a batch of one, an empty batch, and a full one', () => {
    const { a, b } = twin(build);
    const keys = new FlowKeys(3);
    const out = new Int32Array(3).fill(7);
    keys.clear();
    a.lookupBatch(keys, 0, out);
    expect(Array.from(out)).toEqual([7, 7, 7]);
    fill(keys, [key(4)]);
    a.lookupBatch(keys, 0, out);
    expect(out[0]).toBe(look(b, key(4)));
    fill(keys, [key(4), key(70), replyOf(key(8), 8)]);
    expect(keys.add(TCP, 1, 2, 3, 4)).toBe(-1);
    expect(keys.n).toBe(3);
    a.lookupBatch(keys, 0, out);
    expect(Array.from(out)).toEqual([key(4), key(70), replyOf(key(8), 8)].map((k) => look(b, k)));
    // An answer array shorter than the batch gets the keys it has room for.
    const short = new Int32Array(2);
    a.lookupBatch(keys, 0, short);
    expect(Array.from(short)).toEqual([key(4), key(70)].map((k) => look(b, k)));
  });

  it('prefetchBatch counts the keys present and changes nothing, expired flows included', () => {
    const { a, logA } = twin(build);
    const keys = new FlowKeys(64);
    const ks = mixed();
    fill(keys, ks);
    const ref = new FlowTable(256, 0x2545f491);
    build(ref);
    const present = ks.filter((k) => look(ref, k, 0) >= 0).length;
    expect(present).toBeGreaterThan(0);
    expect(present).toBeLessThan(ks.length);
    expect(a.prefetchBatch(keys)).toBe(present);
    expect(a.size).toBe(60);
    expect(logA).toEqual([]);
    checkIndex(a);
    // Lookups after it still see (and expire) what they would have.
    expect(look(a, key(3), 60)).toBe(-1);
    expect(logA).toHaveLength(1);
  });

  it('rejects impossible batch capacities', () => {
    expect(() => new FlowKeys(0)).toThrow(RangeError);
    expect(() => new FlowKeys(2.5)).toThrow(RangeError);
  });
});
