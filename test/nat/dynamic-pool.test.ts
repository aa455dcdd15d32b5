/**
 * Masquerade over every WAN address (`--masquerade all`): the pool follows the interface's addresses.
 * An address that goes takes its flows with it (as a changed single address does) and frees its slot;
 * an address that stays keeps its flows and its hosts; a new one takes new hosts; pairing by hash is by
 * the live addresses in numeric order, whatever order they came in.
 */
import { describe, it, expect } from 'vitest';
import { Verdict } from '../../src/nat/translator.js';
import { poolSlot } from '../../src/nat/context.js';
import { MAX_POOL } from '../../src/nat/mappings.js';
import { udpPacket } from '../../src/wire/build.js';
import { createRegistry } from '../../src/metrics/registry.js';
import { Dataplane } from '../../src/dataplane/loop.js';
import { FakeTun } from '../../src/tun/fake.js';
import { parsePromText } from '../../src/observe/promtext.js';
import { makeNat, parse, ip, PUB, REMOTE } from './helpers.js';

const A = PUB;
const B = ip('203.0.113.20');
const C = ip('203.0.113.30');
const payload = new TextEncoder().encode('dyn');

function out(nat: ReturnType<typeof makeNat>, src: number, sport: number, now = 0) {
  const p = udpPacket({ src, dst: REMOTE, srcPort: sport, dstPort: 4000, payload });
  const v = nat.process(p, 0, p.length, now);
  return { v, ...parse(p) };
}

function back(nat: ReturnType<typeof makeNat>, to: number, dport: number, now = 1) {
  const p = udpPacket({ src: REMOTE, dst: to, srcPort: 4000, dstPort: dport, payload });
  const v = nat.process(p, 0, p.length, now);
  return { v, ...parse(p) };
}

const hosts = Array.from({ length: 40 }, (_, i) => ip(`192.168.1.${i + 1}`));

describe('a dynamic pool (masquerade over every WAN address)', () => {
  it('pairs hosts by the live addresses in numeric order, whatever order they came in', () => {
    const x = makeNat({ publicPool: [A, C, B], dynamicPool: true });
    const y = makeNat({ publicIp: B, publicPool: [B, A, C], dynamicPool: true });
    const sorted = [A, B, C].sort((p, q) => p - q);
    for (const h of hosts) {
      const rx = out(x, h, 5000);
      const ry = out(y, h, 5000);
      expect(rx.v).toBe(Verdict.FORWARD);
      expect(rx.src).toBe(sorted[poolSlot(h, 3)]);
      expect(ry.src).toBe(rx.src);
    }
    expect(x.publicAddresses).toEqual([A, C, B]);
    expect(y.publicAddresses[0]).toBe(B);
  });

  it('a single address is still a pool: a second one that comes takes new hosts, the old hosts stay', () => {
    const nat = makeNat({ dynamicPool: true });
    const first = hosts.slice(0, 20).map((h) => out(nat, h, 6000));
    expect(first.every((r) => r.v === Verdict.FORWARD && r.src === A)).toBe(true);
    expect(nat.setPublicAddresses(A, [A, B])).toBe(0);
    // Every earlier host keeps its address while it holds mappings, for new flows too.
    for (const h of hosts.slice(0, 20)) expect(out(nat, h, 6001).src).toBe(A);
    // New hosts spread over both.
    const later = new Set(hosts.slice(20).map((h) => out(nat, h, 6000).src));
    expect(later).toEqual(new Set([A, B]));
    for (const h of hosts.slice(20)) {
      const expected = [A, B].sort((p, q) => p - q)[poolSlot(h, 2)];
      expect(nat.mappings.info(nat.mappings.lookupInternal(17, h, 6000)).externalAddress).toBe(expected);
    }
    expect(nat.mappings.checkInvariants()).toEqual([]);
  });

  it('an address that goes takes its flows; the other address keeps its own, replies and all', () => {
    const nat = makeNat({ publicPool: [A, B], dynamicPool: true });
    const placed = hosts.map((h) => ({ h, r: out(nat, h, 7000) }));
    const onA = placed.filter((p) => p.r.src === A);
    const onB = placed.filter((p) => p.r.src === B);
    expect(onA.length).toBeGreaterThan(0);
    expect(onB.length).toBeGreaterThan(0);
    const flushed = nat.setPublicAddresses(A, [A]);
    expect(flushed).toBe(onB.length);
    expect(nat.flows.size).toBe(onA.length);
    expect(nat.publicAddresses).toEqual([A]);
    // A reply to the address that went is not ours any more; replies on the other still arrive.
    expect(nat.isPublic(B)).toBe(false);
    for (const { h, r } of onA) {
      const b = back(nat, A, r.sport);
      expect(b.v).toBe(Verdict.FORWARD);
      expect(b.dst).toBe(h);
    }
    // The hosts that were on B come back on A.
    for (const { h } of onB) expect(out(nat, h, 7001).src).toBe(A);
    expect(nat.mappings.checkInvariants()).toEqual([]);
    expect(nat.flows.checkInvariants()).toEqual([]);
  });

  it('the primary address moving to another live address keeps every flow', () => {
    const nat = makeNat({ publicPool: [A, B], dynamicPool: true });
    for (const h of hosts) out(nat, h, 8000);
    const before = nat.flows.size;
    expect(nat.setPublicAddresses(B, [B, A])).toBe(0);
    expect(nat.flows.size).toBe(before);
    expect(nat.publicAddress).toBe(B);
    expect(nat.publicAddresses).toEqual([B, A]);
  });

  it('a slot freed by a gone address is reused, with a fresh port pool, and the pool has a ceiling', () => {
    const nat = makeNat({ publicPool: [A, B], dynamicPool: true });
    const h = hosts.find((x) => [A, B].sort((p, q) => p - q)[poolSlot(x, 2)] === B)!;
    expect(out(nat, h, 9000).src).toBe(B);
    nat.setPublicAddresses(A, [A]);
    nat.setPublicAddresses(A, [A, C]);
    expect(nat.mappings.slots).toBe(2);
    expect(nat.mappings.poolAt(17, C)!.used).toBe(0);
    expect(nat.mappings.poolAt(17, B)).toBeUndefined();
    const many = Array.from({ length: MAX_POOL + 10 }, (_, i) => ip(`198.18.0.${i + 1}`));
    nat.setPublicAddresses(A, [A, ...many]);
    expect(nat.mappings.slots).toBe(MAX_POOL);
    expect(nat.publicAddresses).toHaveLength(MAX_POOL);
  });

  it('refuses a primary that is not among the addresses, and a static pool', () => {
    const nat = makeNat({ publicPool: [A, B], dynamicPool: true });
    expect(() => nat.setPublicAddresses(C, [A, B])).toThrow(RangeError);
    expect(() => makeNat({ publicPool: [A, B] }).setPublicAddresses(A, [A])).toThrow(/dynamic/);
  });

  it('the metrics show a port pool per live address, and forget an address that went', async () => {
    const nat = makeNat({ publicPool: [A, B], dynamicPool: true });
    const loop = new Dataplane(new FakeTun(), nat, { batch: 8 });
    const registry = createRegistry(nat, loop);
    for (const h of hosts) out(nat, h, 10000);
    const count = async (addr: string) =>
      (parsePromText(await registry.metrics()).get('tunnat_port_pool_used') ?? []).find((s) => s.labels['protocol'] === 'udp' && s.labels['address'] === addr)?.value;
    const a = await count('203.0.113.1');
    const b = await count('203.0.113.20');
    expect((a ?? 0) + (b ?? 0)).toBe(hosts.length);
    nat.setPublicAddresses(A, [A, C]);
    expect(await count('203.0.113.20')).toBeUndefined();
    expect(await count('203.0.113.30')).toBe(0);
  });
});
