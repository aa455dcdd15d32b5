/**
 * The mapping and permission tables' checkInvariants(): silent on a sound table, and naming what is wrong
 * in one corrupted on purpose through its public arrays and calls.
 */
import { describe, it, expect } from 'vitest';
import { MappingTable } from '../../src/nat/mappings.js';
import { PermissionTable } from '../../src/nat/permissions.js';
import { PortPool } from '../../src/nat/ports.js';

const TCP = 6;
const UDP = 17;
const REMOTE = 0xcb007102; // 203.0.113.2
const PUBLIC = 0xcb007101; // 203.0.113.1
const LAN = 0xc0a80105; // 192.168.1.5

function has(problems: string[], part: string): boolean {
  return problems.some((p) => p.includes(part));
}

function mappingTable(): { maps: MappingTable; ids: number[] } {
  const maps = new MappingTable(8, 7, () => new PortPool(40000, 40100), [TCP, UDP], [PUBLIC]);
  let r = 0;
  const rng = (): number => (r = (r + 0.37) % 1);
  const ids = [1, 2, 3].map((i) => maps.create(i === 2 ? TCP : UDP, LAN + i, 5000 + i, PUBLIC, rng));
  for (const m of ids) {
    expect(m).toBeGreaterThanOrEqual(0);
    maps.ref(m);
  }
  return { maps, ids };
}

describe('MappingTable.checkInvariants', () => {
  it('is silent on a sound table, and after a mapping is freed', () => {
    const { maps, ids } = mappingTable();
    expect(maps.checkInvariants()).toEqual([]);
    maps.unref(ids[1]!);
    expect(maps.checkInvariants()).toEqual([]);
    expect(Array.from(maps.liveRows())).toEqual([1, 0, 1, 0, 0, 0, 0, 0]);
  });

  it('holds as many mappings as its pools have ports, however large its capacity', () => {
    // The index is sized by the ports, not the capacity: filling every port must still work.
    const maps = new MappingTable(1000, 3, () => new PortPool(40000, 40009), [UDP], [PUBLIC]);
    const rng = (): number => 0.5;
    const ids = Array.from({ length: 10 }, (_, i) => maps.create(UDP, LAN + i, 5000, PUBLIC, rng));
    expect(ids.every((m) => m >= 0)).toBe(true);
    expect(maps.create(UDP, LAN + 10, 5000, PUBLIC, rng)).toBe(-1);
    ids.forEach((m, i) => expect(maps.lookupInternal(UDP, LAN + i, 5000)).toBe(m));
    expect(maps.lookupInternal(UDP, LAN + 10, 5000)).toBe(-1);
    expect(maps.checkInvariants()).toEqual([]);
  });

  it("reports a public port that its pool says another mapping owns", () => {
    const { maps, ids } = mappingTable();
    const m = ids[0]!;
    maps.pool(UDP)!.owner[maps.extPort[m]!] = ids[2]!;
    expect(has(maps.checkInvariants(), `its public port is owned by ${ids[2]}`)).toBe(true);
  });

  it('reports an internal endpoint changed under the index', () => {
    const { maps, ids } = mappingTable();
    maps.intPort[ids[2]!] = 1;
    expect(has(maps.checkInvariants(), `the key is not mapping ${ids[2]}'s internal endpoint`)).toBe(true);
  });

  it('reports a mapping freed twice, a negative reference count and a wrong size', () => {
    const { maps, ids } = mappingTable();
    maps.unref(ids[0]!);
    maps.unref(ids[0]!);
    maps.refs[ids[1]!] = -1;
    const p = maps.checkInvariants();
    expect(p).toContain(`mapping ${ids[0]} is on the free list twice`);
    expect(has(p, `mapping ${ids[1]} (protocol ${TCP}, port 5002 → ${maps.extPort[ids[1]!]}) has -1 references`)).toBe(true);
    // The second unref counted it out again.
    expect(has(p, 'size 1 but 2 mappings in use')).toBe(true);
  });
});

describe('PermissionTable.checkInvariants', () => {
  it('is silent on a sound table, through adds and removes', () => {
    const perm = new PermissionTable(8, 5);
    perm.add(1, REMOTE);
    perm.add(1, REMOTE);
    perm.add(2, REMOTE);
    perm.add(1, PUBLIC);
    expect(perm.checkInvariants()).toEqual([]);
    perm.remove(1, REMOTE);
    perm.remove(2, REMOTE);
    expect(perm.checkInvariants()).toEqual([]);
    expect(perm.size).toBe(2);
    expect(perm.has(1, REMOTE)).toBe(true);
    expect(perm.has(2, REMOTE)).toBe(false);
  });

  it('reports a count that is not positive, a key changed under the index, and a wrong size', () => {
    const perm = new PermissionTable(8, 5);
    perm.add(1, REMOTE); // row 0
    perm.add(2, REMOTE); // row 1
    perm.add(3, REMOTE); // row 2
    perm.count[0] = 0;
    perm.addr[1] = PUBLIC;
    perm.size = 4;
    const p = perm.checkInvariants();
    expect(has(p, 'permission 0 (mapping 1) is kept by 0 flows')).toBe(true);
    expect(has(p, "the key is not permission 1's (mapping, address)")).toBe(true);
    expect(has(p, 'size 4 but 3 permissions in use')).toBe(true);
  });
});
