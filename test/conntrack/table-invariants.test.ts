/**
 * The flow table's checkInvariants(): silent on a sound table, and naming what is wrong in one corrupted on
 * purpose through its public arrays and calls.
 */
import { describe, it, expect } from 'vitest';
import { FlowTable, DIR_ORIGINAL, DIR_REPLY } from '../../src/conntrack/table.js';

const TCP = 6;
const REMOTE = 0xcb007102; // 203.0.113.2
const PUBLIC = 0xcb007101; // 203.0.113.1
const LAN = 0xc0a80105; // 192.168.1.5

function flowTable(n: number): { t: FlowTable; flows: number[] } {
  const t = new FlowTable(16, 3);
  const flows: number[] = [];
  for (let i = 0; i < n; i++) {
    const f = t.allocate();
    t.setTuple(f, DIR_ORIGINAL, LAN, REMOTE, 1000 + i, 443);
    t.setTuple(f, DIR_REPLY, REMOTE, PUBLIC, 443, 1000 + i);
    t.insert(f, TCP, 0, 1e9);
    flows.push(f);
  }
  return { t, flows };
}

function has(problems: string[], part: string): boolean {
  return problems.some((p) => p.includes(part));
}

describe('FlowTable.checkInvariants', () => {
  it('is silent on a sound table, through inserts and removals', () => {
    const { t, flows } = flowTable(6);
    expect(t.checkInvariants()).toEqual([]);
    t.remove(flows[2]!, 'closed');
    t.remove(flows[0]!, 'expired');
    expect(t.checkInvariants()).toEqual([]);
  });

  it('reports a flow whose tuple changed under the index', () => {
    const { t, flows } = flowTable(3);
    t.tSport[flows[1]! * 2] = 9;
    const p = t.checkInvariants();
    expect(has(p, `the key is not entry ${flows[1]! * 2}'s tuple`)).toBe(true);
  });

  it('reports a flow in use that is also on the free list', () => {
    const { t, flows } = flowTable(3);
    t.release(flows[0]!);
    expect(t.checkInvariants()).toContain(`flow slot ${flows[0]} is in use and on the free list`);
  });

  it('reports a slot allocated and never inserted or released, and a live flow marked free', () => {
    const { t, flows } = flowTable(3);
    const lost = t.allocate();
    t.flags[flows[1]!] = 0;
    const p = t.checkInvariants();
    expect(p).toContain(`flow slot ${lost} is neither in use nor free: lost`);
    expect(p).toContain(`flow slot ${flows[1]} is neither in use nor free: lost`);
    expect(has(p, `entry ${flows[1]! * 2} of a free flow slot is indexed`)).toBe(true);
    expect(has(p, 'size 3 but 2 flow slots in use')).toBe(true);
  });

  it('reports a size that does not count the flows, and a free slot that still names a mapping', () => {
    const { t } = flowTable(2);
    t.size++;
    t.mapping[10] = 4;
    const p = t.checkInvariants();
    expect(has(p, 'size 3 but 2 flow slots in use')).toBe(true);
    expect(p).toContain('free flow slot 10 still names mappings');
  });
});
