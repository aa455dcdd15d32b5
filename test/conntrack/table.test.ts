import { describe, it, expect } from 'vitest';
import { FlowTable, DIR_ORIGINAL, DIR_REPLY, FLOW_ASSURED } from '../../src/conntrack/table.js';

function add(t: FlowTable, i: number, now: number, ttl: number): number {
  const f = t.allocate();
  t.setTuple(f, DIR_ORIGINAL, 0xc0a80100 + i, 0xcb007102, 1000 + i, 80);
  t.setTuple(f, DIR_REPLY, 0xcb007102, 0xcb007101, 80, 1000 + i);
  t.insert(f, 6, now, now + ttl);
  return f;
}

describe('flow table', () => {
  it('finds a flow from either direction', () => {
    const t = new FlowTable(16, 7);
    const f = add(t, 1, 0, 1000);
    expect(t.lookup(6, 0xc0a80101, 0xcb007102, 1001, 80, 0)).toBe(f * 2 + DIR_ORIGINAL);
    expect(t.lookup(6, 0xcb007102, 0xcb007101, 80, 1001, 0)).toBe(f * 2 + DIR_REPLY);
    expect(t.lookup(17, 0xc0a80101, 0xcb007102, 1001, 80, 0)).toBe(-1); // protocol is part of the key
    expect(t.lookup(6, 0xc0a80101, 0xcb007102, 1002, 80, 0)).toBe(-1);
  });

  it('survives many inserts and removals with every flow findable (chains stay consistent)', () => {
    const cap = 4096;
    const t = new FlowTable(cap, 99);
    const live = new Map<number, number>();
    let seed = 1;
    const rnd = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
    for (let round = 0; round < 20000; round++) {
      const i = Math.floor(rnd() * 8000);
      if (live.has(i)) {
        t.remove(live.get(i)!, 'closed');
        live.delete(i);
      } else if (t.size < cap) {
        live.set(i, add(t, i, 0, 1e9));
      }
    }
    expect(t.size).toBe(live.size);
    for (const [i, f] of live) {
      expect(t.lookup(6, 0xc0a80100 + i, 0xcb007102, 1000 + i, 80, 0)).toBe(f * 2);
      expect(t.lookup(6, 0xcb007102, 0xcb007101, 80, 1000 + i, 0)).toBe(f * 2 + 1);
    }
  });

  it('sweeps a bounded number of slots per call and eventually expires everything', () => {
    const t = new FlowTable(100, 1);
    const removed: number[] = [];
    t.onRemove = (f) => removed.push(f);
    for (let i = 0; i < 100; i++) add(t, i, 0, 10);
    expect(t.sweep(5, 100)).toBe(0);
    expect(t.sweep(10, 30)).toBe(30); // only 30 slots visited
    expect(t.size).toBe(70);
    t.sweep(10, 70);
    expect(t.size).toBe(0);
    expect(removed).toHaveLength(100);
  });

  it('early-drops only unassured flows, and reports when it cannot', () => {
    const t = new FlowTable(2, 1);
    const a = add(t, 1, 0, 1e9);
    const b = add(t, 2, 0, 1e9);
    t.flags[a] = t.flags[a]! | FLOW_ASSURED;
    expect(t.allocate()).toBe(-1);
    expect(t.earlyDrop(0, 10)).toBe(true);
    expect(t.isInUse(b)).toBe(false);
    expect(t.isInUse(a)).toBe(true);
    add(t, 3, 0, 1e9);
    t.flags.fill(t.flags[a]! | FLOW_ASSURED);
    expect(t.earlyDrop(0, 10)).toBe(false);
  });

  it('rejects impossible capacities', () => {
    expect(() => new FlowTable(0)).toThrow(RangeError);
    expect(() => new FlowTable(1.5)).toThrow(RangeError);
  });
});
