/**
 * A pool of public addresses: paired pooling (RFC 4787 REQ-2), a port pool per address, static SNAT
 * entries, inbound and hairpin on every address, restore keeping each mapping's address.
 */
import { describe, it, expect } from 'vitest';
import { Verdict, DropReason } from '../../src/nat/translator.js';
import { poolSlot } from '../../src/nat/context.js';
import { udpPacket, tcpPacket, icmpEcho } from '../../src/wire/build.js';
import { TCP_FLAGS } from '../../src/wire/tcp.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { takeSnapshot, writeSnapshot, restoreSnapshot } from '../../src/nat/snapshot.js';
import { FakeTun } from '../../src/tun/fake.js';
import { Dataplane } from '../../src/dataplane/loop.js';
import { createRegistry } from '../../src/metrics/registry.js';
import { parsePromText, sampleValue } from '../../src/observe/promtext.js';
import { makeNat, checkAllChecksums, parse, ip, PUB, REMOTE } from './helpers.js';

const P2 = ip('203.0.113.11');
const P3 = ip('203.0.113.12');
const POOL = [PUB, P2, P3];
const payload = new TextEncoder().encode('pool');

function out(nat: ReturnType<typeof makeNat>, src: number, sport: number, dst = REMOTE, dport = 53, now = 0) {
  const p = udpPacket({ src, dst, srcPort: sport, dstPort: dport, payload });
  const v = nat.process(p, 0, p.length, now);
  return { v, ...parse(p) };
}

describe('public address pool', () => {
  it('keeps one inside host on one public address across many flows and all protocols (paired)', () => {
    const nat = makeNat({ publicPool: POOL });
    const host = ip('192.168.1.20');
    const seen = new Set<number>();
    for (let i = 0; i < 100; i++) {
      const r = out(nat, host, 30000 + i, ip(`198.51.100.${1 + (i % 50)}`), 1000 + i);
      expect(r.v).toBe(Verdict.FORWARD);
      seen.add(r.src);
    }
    const t = tcpPacket({ src: host, dst: REMOTE, srcPort: 41000, dstPort: 80, seq: 1, ack: 0, flags: TCP_FLAGS.SYN });
    expect(nat.process(t, 0, t.length, 0)).toBe(Verdict.FORWARD);
    seen.add(parse(t).src);
    const e = icmpEcho({ src: host, dst: REMOTE, type: 8, identifier: 9, sequence: 1 });
    expect(nat.process(e, 0, e.length, 0)).toBe(Verdict.FORWARD);
    seen.add(parse(e).src);
    expect(seen.size).toBe(1);
    expect([...seen][0]).toBe(POOL[poolSlot(host, 3)]);
    expect(nat.mappings.checkInvariants()).toEqual([]);
  });

  it('spreads hosts over the pool by a hash of their address, the same for every translator', () => {
    const a = makeNat({ publicPool: POOL });
    const b = makeNat({ publicPool: POOL, seed: 99 });
    const used = new Set<number>();
    for (let i = 1; i <= 30; i++) {
      const h = ip(`192.168.1.${i}`);
      const ra = out(a, h, 5000);
      const rb = out(b, h, 5000);
      expect(ra.src).toBe(POOL[poolSlot(h, 3)]);
      expect(rb.src).toBe(ra.src);
      used.add(ra.src);
    }
    expect(used.size).toBe(3);
  });

  it('keeps a port pool per address: two hosts on different addresses both keep the same port', () => {
    const nat = makeNat({ publicPool: POOL });
    const hosts = [1, 2, 3, 4, 5, 6, 7, 8].map((i) => ip(`192.168.1.${i}`));
    const x = hosts.find((h) => poolSlot(h, 3) === 0)!;
    const y = hosts.find((h) => poolSlot(h, 3) === 1)!;
    const rx = out(nat, x, 6000);
    const ry = out(nat, y, 6000);
    expect([rx.src, rx.sport]).toEqual([PUB, 6000]);
    expect([ry.src, ry.sport]).toEqual([P2, 6000]);
    expect(nat.mappings.lookupExternal(17, PUB, 6000)).not.toBe(nat.mappings.lookupExternal(17, P2, 6000));
    // Each reply reaches its own host.
    const bx = udpPacket({ src: REMOTE, dst: PUB, srcPort: 53, dstPort: 6000, payload });
    const by = udpPacket({ src: REMOTE, dst: P2, srcPort: 53, dstPort: 6000, payload });
    expect(nat.process(bx, 0, bx.length, 1)).toBe(Verdict.FORWARD);
    expect(nat.process(by, 0, by.length, 1)).toBe(Verdict.FORWARD);
    expect(parse(bx)).toMatchObject({ dst: x, dport: 6000 });
    expect(parse(by)).toMatchObject({ dst: y, dport: 6000 });
    checkAllChecksums(by);
    // A port nobody holds on the third address is refused there.
    const bz = udpPacket({ src: REMOTE, dst: P3, srcPort: 53, dstPort: 6000, payload });
    expect(nat.process(bz, 0, bz.length, 1)).toBe(Verdict.DROP);
    expect(nat.lastDrop).toBe(DropReason.NO_MAPPING);
  });

  it('refuses a host whose address has no port left rather than moving it to another address', () => {
    const nat = makeNat({ publicPool: [PUB, P2], ports: [40000, 40003], excludedPorts: [] });
    const hosts = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10].map((i) => ip(`192.168.1.${i}`));
    const h = hosts.find((x) => poolSlot(x, 2) === 0)!;
    for (let i = 0; i < 4; i++) expect(out(nat, h, 40000 + i).src).toBe(PUB);
    // Make each of the four a stream (a reply, then traffic 2 s later), so that none gives its port up to
    // the new flow (port-reclaim.ts takes ports only from unassured flows).
    for (let i = 0; i < 4; i++) {
      const back = udpPacket({ src: REMOTE, dst: PUB, srcPort: 53, dstPort: 40000 + i, payload });
      expect(nat.process(back, 0, back.length, 10)).toBe(Verdict.FORWARD);
      expect(out(nat, h, 40000 + i, REMOTE, 53, 2100).src).toBe(PUB);
    }
    const r = out(nat, h, 50000, REMOTE, 53, 2200);
    expect(r.v).toBe(Verdict.DROP);
    expect(nat.lastDrop).toBe(DropReason.PORTS_EXHAUSTED);
    // The other address still has all its ports for the hosts paired with it.
    const g = hosts.find((x) => poolSlot(x, 2) === 1)!;
    expect(out(nat, g, 50000).src).toBe(P2);
  });

  it('moves a host to its hashed address again only after all its mappings went', () => {
    const nat = makeNat({ publicPool: POOL, snat: [{ network: ip('192.168.1.0'), prefixLength: 24, address: P3 }] });
    const h = ip('192.168.1.7');
    expect(out(nat, h, 7000).src).toBe(P3);
    expect(nat.mappings.pairedAddress(h)).toBe(P3);
    nat.sweep(10_000_000, 1 << 20);
    expect(nat.flows.size).toBe(0);
    expect(nat.mappings.pairedAddress(h)).toBe(-1);
  });

  it('sends a subnet through its static SNAT entry, the most specific entry winning', () => {
    const nat = makeNat({
      publicPool: POOL,
      internal: [{ network: ip('192.168.0.0'), prefixLength: 16 }],
      snat: [
        { network: ip('192.168.0.0'), prefixLength: 16, address: P2 },
        { network: ip('192.168.5.0'), prefixLength: 24, address: P3 },
      ],
    });
    for (let i = 1; i < 20; i++) {
      expect(out(nat, ip(`192.168.5.${i}`), 1234).src).toBe(P3);
      expect(out(nat, ip(`192.168.9.${i}`), 1234).src).toBe(P2);
    }
  });

  it('refuses a static entry whose address is not in the pool, and a pool not starting with publicIp', () => {
    expect(() => makeNat({ publicPool: POOL, snat: [{ network: ip('192.168.1.0'), prefixLength: 24, address: ip('203.0.113.99') }] }))
      .toThrow(/outside the public pool/);
    expect(() => makeNat({ publicPool: [P2, PUB] })).toThrow(/first address/);
    expect(() => makeNat({ publicPool: [PUB, P2, P2] })).toThrow(/twice/);
  });

  it('hairpins a LAN host sending to any pool address, showing it the sender’s paired address', () => {
    const nat = makeNat({ publicPool: POOL, filtering: 'endpoint' });
    const hosts = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10].map((i) => ip(`192.168.1.${i}`));
    const b = hosts.find((x) => poolSlot(x, 3) === 2)!; // B is on P3
    const a = hosts.find((x) => poolSlot(x, 3) === 0)!; // A is on PUB
    const rb = out(nat, b, 9000);
    expect(rb.src).toBe(P3);
    // A sends to B's public endpoint on P3.
    const p = udpPacket({ src: a, dst: P3, srcPort: 4444, dstPort: 9000, payload });
    expect(nat.process(p, 0, p.length, 1)).toBe(Verdict.FORWARD);
    expect(parse(p)).toMatchObject({ src: PUB, dst: b, dport: 9000 });
    checkAllChecksums(p);
    const aPort = parse(p).sport;
    // B answers A's public endpoint; A sees the answer from the address it sent to.
    const q = udpPacket({ src: b, dst: PUB, srcPort: 9000, dstPort: aPort, payload });
    expect(nat.process(q, 0, q.length, 2)).toBe(Verdict.FORWARD);
    expect(parse(q)).toMatchObject({ src: P3, dst: a, sport: 9000, dport: 4444 });
    checkAllChecksums(q);
  });

  it('treats every pool address as public for unmatched packets (the gateway’s own ports)', () => {
    const nat = makeNat({ publicPool: POOL });
    const r = udpPacket({ src: REMOTE, dst: P2, srcPort: 53, dstPort: 25000, payload });
    expect(nat.process(r, 0, r.length, 0)).toBe(Verdict.FORWARD);
    expect(nat.lastDrop).toBe(-1);
    const other = udpPacket({ src: REMOTE, dst: ip('203.0.113.50'), srcPort: 53, dstPort: 6000, payload });
    expect(nat.process(other, 0, other.length, 0)).toBe(Verdict.DROP);
    expect(nat.lastDrop).toBe(DropReason.NOT_OURS);
  });

  it('restores saved flows with their own public address, pairing included', () => {
    const a = makeNat({ publicPool: POOL });
    const hosts = [1, 2, 3, 4, 5, 6].map((i) => ip(`192.168.1.${i}`));
    const before = hosts.map((h) => out(a, h, 7777));
    const dir = mkdtempSync(join(tmpdir(), 'tunnat-pool-'));
    try {
      const file = join(dir, 'flows.json');
      writeSnapshot(file, takeSnapshot(a, ['192.168.1.0/24'], 0));
      const b = makeNat({ publicPool: POOL, seed: 5 });
      expect(restoreSnapshot(b, file, ['192.168.1.0/24'], 0)).toMatchObject({ restored: 6, skipped: 0 });
      hosts.forEach((h, i) => {
        expect(b.mappings.pairedAddress(h)).toBe(before[i]!.src);
        // A reply to each address reaches its host.
        const r = udpPacket({ src: REMOTE, dst: before[i]!.src, srcPort: 53, dstPort: before[i]!.sport, payload });
        expect(b.process(r, 0, r.length, 1)).toBe(Verdict.FORWARD);
        expect(parse(r).dst).toBe(h);
      });
      expect(b.mappings.checkInvariants()).toEqual([]);
      // A translator whose pool lacks an address restores only the flows of the others.
      const c = makeNat({ publicPool: [PUB, P2], seed: 6 });
      const onP3 = before.filter((r) => r.src === P3).length;
      expect(restoreSnapshot(c, file, ['192.168.1.0/24'], 0).restored).toBe(6 - onP3);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('reports port-pool use per public address', async () => {
    const nat = makeNat({ publicPool: POOL, snat: [{ network: ip('192.168.1.64'), prefixLength: 26, address: P2 }] });
    for (let i = 0; i < 5; i++) out(nat, ip(`192.168.1.${70 + i}`), 8000 + i);
    const loop = new Dataplane(new FakeTun(), nat, { batch: 4, slotSize: 2048, clock: () => 0 });
    const s = parsePromText(await createRegistry(nat, loop).metrics());
    expect(sampleValue(s, 'tunnat_port_pool_used', { protocol: 'udp', address: '203.0.113.11' })).toBe(5);
    expect(sampleValue(s, 'tunnat_port_pool_used', { protocol: 'udp', address: '203.0.113.1' })).toBe(0);
    expect(sampleValue(s, 'tunnat_port_pool_size', { protocol: 'udp', address: '203.0.113.12' })).toBeGreaterThan(0);
    // SCTP and UDP-Lite have pools of their own on every address, reported like the others.
    for (const protocol of ['sctp', 'udplite']) expect(sampleValue(s, 'tunnat_port_pool_size', { protocol, address: '203.0.113.12' })).toBeGreaterThan(0);
  });

  it('a forward may name a pool address: each address routes its own port, the others do not have it', () => {
    const nat = makeNat({
      publicPool: POOL,
      forwards: [
        { protocol: 6, publicAddress: P2, publicPort: 8080, address: ip('192.168.1.20'), port: 80 },
        { protocol: 6, publicPort: 8080, address: ip('192.168.1.21'), port: 80 },
      ],
    });
    const syn = (dst: number) => tcpPacket({ src: REMOTE, dst, srcPort: 50000, dstPort: 8080, seq: 1, ack: 0, flags: TCP_FLAGS.SYN });
    const onP2 = syn(P2);
    expect(nat.process(onP2, 0, onP2.length, 0)).toBe(Verdict.FORWARD);
    expect(parse(onP2)).toMatchObject({ dst: ip('192.168.1.20'), dport: 80 });
    const onFirst = syn(PUB);
    expect(nat.process(onFirst, 0, onFirst.length, 0)).toBe(Verdict.FORWARD);
    expect(parse(onFirst)).toMatchObject({ dst: ip('192.168.1.21'), dport: 80 });
    // P3 has no forward on 8080: nothing there, and its pool may hand 8080 out.
    const onP3 = syn(P3);
    expect(nat.process(onP3, 0, onP3.length, 0)).toBe(Verdict.DROP);
    expect(nat.mappings.poolAt(6, P3)!.isFree(8080)).toBe(true);
    expect(nat.mappings.poolAt(6, P2)!.isFree(8080)).toBe(false);
    expect(nat.mappings.poolAt(6, PUB)!.isFree(8080)).toBe(false);
    // The server's answer leaves from the address and port it was reached on.
    const synack = tcpPacket({ src: ip('192.168.1.20'), dst: REMOTE, srcPort: 80, dstPort: 50000, seq: 9, ack: 2, flags: TCP_FLAGS.SYN | TCP_FLAGS.ACK });
    expect(nat.process(synack, 0, synack.length, 1)).toBe(Verdict.FORWARD);
    expect(parse(synack)).toMatchObject({ src: P2, sport: 8080 });
  });

  it('forwards follow a dynamic pool: a named address works while the WAN has it, the primary\'s move with it', () => {
    const C = ip('203.0.113.30');
    const nat = makeNat({
      publicPool: [PUB, P2],
      dynamicPool: true,
      forwards: [
        { protocol: 17, publicAddress: C, publicPort: 5060, address: ip('192.168.1.20'), port: 5060 },
        { protocol: 17, publicPort: 6000, address: ip('192.168.1.21'), port: 6000 },
      ],
    });
    const dgram = (dst: number, dport: number) => udpPacket({ src: REMOTE, dst, srcPort: 53, dstPort: dport, payload });
    const early = dgram(C, 5060);
    expect(nat.process(early, 0, early.length, 0)).toBe(Verdict.DROP); // C is not (yet) ours
    nat.setPublicAddresses(P2, [P2, C]);
    const late = dgram(C, 5060);
    expect(nat.process(late, 0, late.length, 1)).toBe(Verdict.FORWARD);
    expect(parse(late).dst).toBe(ip('192.168.1.20'));
    expect(nat.mappings.poolAt(17, C)!.isFree(5060)).toBe(false);
    // The unnamed forward is on the primary, now P2, and holds its port there.
    const prim = dgram(P2, 6000);
    expect(nat.process(prim, 0, prim.length, 2)).toBe(Verdict.FORWARD);
    expect(parse(prim).dst).toBe(ip('192.168.1.21'));
    expect(nat.mappings.poolAt(17, P2)!.isFree(6000)).toBe(false);
  });
});
