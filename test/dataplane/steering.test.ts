import { describe, expect, it } from 'vitest';
import { HERE, Steering } from '../../src/dataplane/steering.js';
import { sliceOwner, PortPool, BLOCK } from '../../src/nat/ports.js';
import { icmpEcho, icmpError, udpPacket, tcpPacket } from '../../src/wire/build.js';
import { IPPROTO } from '../../src/wire/ipv4.js';
import { Verdict } from '../../src/nat/outcome.js';
import { makeNat, parse, ip, PUB, REMOTE, HOST_A, HOST_B } from '../nat/helpers.js';
import type { Translator } from '../../src/nat/translator.js';
import { restoredOwner } from '../../src/router/workers-proto.js';
import type { RestoredFlow } from '../../src/nat/restore.js';

const REMOTE2 = ip('198.51.100.7');
const payload = Buffer.from('x');

function steering(count: number): Steering {
  const s = new Steering(count);
  s.setPublicAddresses([PUB]);
  return s;
}

describe('sliceOwner', () => {
  it('deals port pairs round robin, keeping 2k and 2k+1 together', () => {
    expect([0, 1, 2, 3, 4, 5, 6, 7].map((p) => sliceOwner(p, 2))).toEqual([0, 0, 1, 1, 0, 0, 1, 1]);
    expect([0, 2, 4, 6, 8].map((p) => sliceOwner(p, 3))).toEqual([0, 1, 2, 0, 1]);
    expect(sliceOwner(40001, 1)).toBe(0);
  });

  it('a pool for one slice maps only ports of that slice, and the slices partition the range', () => {
    const pools = [0, 1, 2].map((index) => new PortPool(1024, 65535, [[20000, 29999]], { index, count: 3 }));
    const whole = new PortPool(1024, 65535, [[20000, 29999]]);
    expect(pools.reduce((n, p) => n + p.size, 0)).toBe(whole.size);
    for (let port = 1024; port <= 65535; port += 97) {
      const owners = pools.filter((p) => p.allowed[port] === 1).length;
      expect(owners).toBe(whole.allowed[port]);
    }
    // A reason lifted later (a forward removed) does not open another worker's port.
    const other = sliceOwner(1024, 3) === 0 ? 1026 : 1024;
    pools[0]!.setBlocked(other, BLOCK.FORWARD, true);
    pools[0]!.setBlocked(other, BLOCK.FORWARD, false);
    expect(pools[0]!.isFree(other)).toBe(sliceOwner(other, 3) === 0);
  });
});

describe('Steering.ownerOf', () => {
  it('one worker: everything stays where it was read', () => {
    const p = udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40000, dstPort: 53, payload });
    expect(steering(1).ownerOf(p, 0, p.length)).toBe(HERE);
  });

  it('from the LAN by the inside port, to a public address by the public port', () => {
    const s = steering(4);
    for (const port of [1024, 1026, 40000, 40003, 65535]) {
      const out = udpPacket({ src: HOST_A, dst: REMOTE, srcPort: port, dstPort: 53, payload });
      expect(s.ownerOf(out, 0, out.length)).toBe(sliceOwner(port, 4));
      const back = tcpPacket({ src: REMOTE, dst: PUB, srcPort: 443, dstPort: port, flags: 0x12, seq: 1, ack: 1 });
      expect(s.ownerOf(back, 0, back.length)).toBe(sliceOwner(port, 4));
    }
  });

  it("a forward's LAN side goes to the owner of the forward's public port", () => {
    const s = steering(2);
    s.setForwards([{ protocol: IPPROTO.TCP, publicPort: 8082, address: HOST_B, port: 80 }]);
    expect(sliceOwner(8082, 2)).not.toBe(sliceOwner(80, 2));
    const reply = tcpPacket({ src: HOST_B, dst: REMOTE, srcPort: 80, dstPort: 5555, flags: 0x12, seq: 1, ack: 1 });
    expect(s.ownerOf(reply, 0, reply.length)).toBe(sliceOwner(8082, 2));
    // Another host's port 80 is its own endpoint.
    const other = tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 80, dstPort: 5555, flags: 0x02, seq: 1, ack: 0 });
    expect(s.ownerOf(other, 0, other.length)).toBe(sliceOwner(80, 2));
  });

  it('ICMP by identifier; a ping to the gateway itself and the gateway own packets stay', () => {
    const s = steering(2);
    const req = icmpEcho({ src: HOST_A, dst: REMOTE, type: 8, identifier: 6, sequence: 1 });
    const rep = icmpEcho({ src: REMOTE, dst: PUB, type: 0, identifier: 6, sequence: 1 });
    expect(s.ownerOf(req, 0, req.length)).toBe(sliceOwner(6, 2));
    expect(s.ownerOf(rep, 0, rep.length)).toBe(sliceOwner(6, 2));
    const toGw = icmpEcho({ src: REMOTE, dst: PUB, type: 8, identifier: 6, sequence: 1 });
    expect(s.ownerOf(toGw, 0, toGw.length)).toBe(HERE);
    const own = udpPacket({ src: PUB, dst: REMOTE, srcPort: 6, dstPort: 53, payload });
    expect(s.ownerOf(own, 0, own.length)).toBe(HERE);
  });

  it('an ICMP error goes with the flow of the packet it quotes, from either side', () => {
    const s = steering(2);
    const sent = udpPacket({ src: PUB, dst: REMOTE, srcPort: 40002, dstPort: 53, payload });
    const fromWan = icmpError({ src: REMOTE, dst: PUB, type: 3, code: 3, quoted: sent });
    expect(s.ownerOf(fromWan, 0, fromWan.length)).toBe(sliceOwner(40002, 2));
    const delivered = udpPacket({ src: REMOTE, dst: HOST_A, srcPort: 53, dstPort: 40002, payload });
    const fromLan = icmpError({ src: HOST_A, dst: REMOTE, type: 3, code: 3, quoted: delivered });
    expect(s.ownerOf(fromLan, 0, fromLan.length)).toBe(sliceOwner(40002, 2));
  });

  it('address-only protocols by the remote address, the same both ways', () => {
    const s = steering(3);
    for (const remote of [REMOTE, REMOTE2, ip('198.51.100.200')]) {
      const out = Buffer.from(udpPacket({ src: HOST_A, dst: remote, srcPort: 1, dstPort: 1, payload }));
      out[9] = 47 /* GRE */;
      const back = Buffer.from(udpPacket({ src: remote, dst: PUB, srcPort: 1, dstPort: 1, payload }));
      back[9] = 47 /* GRE */;
      const o = s.ownerOf(out, 0, out.length);
      expect(o).toBeGreaterThanOrEqual(0);
      expect(s.ownerOf(back, 0, back.length)).toBe(o);
    }
  });

  it('malformed packets and later fragments stay with the worker that read them', () => {
    const s = steering(2);
    const p = udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40002, dstPort: 53, payload });
    expect(s.ownerOf(p, 0, 10)).toBe(HERE);
    const v6 = Buffer.from(p);
    v6[0] = 0x65;
    expect(s.ownerOf(v6, 0, v6.length)).toBe(HERE);
    const later = Buffer.from(p);
    later[6] = 0x00;
    later[7] = 0x10; // fragment offset 16 × 8 bytes
    expect(s.ownerOf(later, 0, later.length)).toBe(HERE);
    // A first fragment has its ports: it goes to their owner.
    const first = Buffer.from(p);
    first[6] = 0x20; // MF
    expect(s.ownerOf(first, 0, first.length)).toBe(sliceOwner(40002, 2));
  });
});

/**
 * Two translators, each over its own slice, behind one steering function: the data plane of --workers 2
 * without threads. Every packet is translated by the worker the steering picks.
 */
describe('two workers translating by steering', () => {
  const count = 2;
  const workers: Translator[] = [0, 1].map((index) => makeNat({ slice: { index, count }, seed: 77 + index }));
  const s = steering(count);
  const run = (pkt: Buffer, now: number): { worker: number; verdict: number } => {
    const o = s.ownerOf(pkt, 0, pkt.length);
    const worker = o === HERE ? 0 : o;
    return { worker, verdict: workers[worker]!.process(pkt, 0, pkt.length, now) };
  };

  it('both directions of every flow are handled by one worker, and each endpoint keeps one public port', () => {
    const seen = new Map<string, number>();
    const used = new Map<number, string>();
    const byWorker = [0, 0];
    for (let i = 0; i < 400; i++) {
      const host = i % 2 === 0 ? HOST_A : HOST_B;
      const sport = 30000 + (i % 100);
      const remote = i % 3 === 0 ? REMOTE : REMOTE2;
      const out = udpPacket({ src: host, dst: remote, srcPort: sport, dstPort: 3478, payload });
      const a = run(out, i);
      expect(a.verdict).toBe(Verdict.FORWARD);
      const t = parse(out);
      expect(t.src).toBe(PUB);
      // One public port per inside endpoint, whatever the remote; no port given to two endpoints.
      const key = `${host}:${sport}`;
      if (seen.has(key)) expect(t.sport).toBe(seen.get(key));
      seen.set(key, t.sport);
      expect(used.get(t.sport) ?? key).toBe(key);
      used.set(t.sport, key);
      expect(sliceOwner(t.sport, count)).toBe(a.worker);
      const reply = udpPacket({ src: remote, dst: PUB, srcPort: 3478, dstPort: t.sport, payload });
      const b = run(reply, i);
      expect(b.worker).toBe(a.worker);
      expect(b.verdict).toBe(Verdict.FORWARD);
      expect(parse(reply).dst).toBe(host);
      expect(parse(reply).dport).toBe(sport);
      byWorker[a.worker]!++;
    }
    expect(byWorker[0]).toBeGreaterThan(0);
    expect(byWorker[1]).toBeGreaterThan(0);
    // Inside ports are kept: each is in its own worker's slice.
    for (const [key, pub] of seen) expect(pub).toBe(Number(key.split(':')[1]));
  });
});

describe('restoredOwner', () => {
  const s = steering(2);
  const saved = (protocol: number, original: [number, number, number, number]): RestoredFlow => ({
    protocol, flags: 0, state: 0, detail: 0, msLeft: 1000, original, reply: [original[1], PUB, original[3], original[2]],
    packets: [1, 1], bytes: [1, 1], mapping: null, mapping2: null,
  });

  it('gives a saved flow to the worker its first packet would be steered to', () => {
    for (const port of [40000, 40002, 40004, 40006]) {
      expect(restoredOwner(s, saved(IPPROTO.UDP, [HOST_A, REMOTE, port, 53]))).toBe(sliceOwner(port, 2));
      expect(restoredOwner(s, saved(IPPROTO.TCP, [HOST_A, REMOTE, port, 443]))).toBe(sliceOwner(port, 2));
      expect(restoredOwner(s, saved(IPPROTO.ICMP, [HOST_A, REMOTE, port, port]))).toBe(sliceOwner(port, 2));
    }
    // A flow a forward let in: its original direction is the WAN's, to the public port.
    expect(restoredOwner(s, saved(IPPROTO.TCP, [REMOTE, PUB, 5555, 8082]))).toBe(sliceOwner(8082, 2));
  });
});
