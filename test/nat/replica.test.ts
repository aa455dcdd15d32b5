import { describe, expect, it } from 'vitest';
import { makeNat, parse, HOST_A, HOST_B, PUB, REMOTE, ip } from './helpers.js';
import { tcpPacket, udpPacket } from '../../src/wire/build.js';
import { TCP_FLAGS } from '../../src/wire/tcp.js';
import { Verdict, DropReason } from '../../src/nat/outcome.js';
import { encodeMark, forEachRecord, REC, Replica, UPSERT_BYTES, REMOVE_BYTES } from '../../src/nat/replica.js';
import { nodeHalf } from '../../src/nat/ports.js';
import { TcpState } from '../../src/conntrack/tcp.js';
import { IPPROTO } from '../../src/wire/ipv4.js';
import type { Translator } from '../../src/nat/translator.js';

const SYN = TCP_FLAGS.SYN, ACK = TCP_FLAGS.ACK, FIN = TCP_FLAGS.FIN, RST = TCP_FLAGS.RST;

/** Run a packet through a translator; the rewritten packet, or null when it was dropped. */
function send(nat: Translator, pkt: Buffer, now: number): ReturnType<typeof parse> | null {
  return nat.process(pkt, 0, pkt.length, now) === Verdict.FORWARD ? parse(pkt) : null;
}

function pair() {
  const active = makeNat({ haNode: 0, tcpLoose: true });
  const standby = makeNat({ haNode: 1, tcpLoose: true });
  const ra = new Replica(active);
  const rb = new Replica(standby);
  ra.logging = true;
  standby.standby = true;
  return { active, standby, ra, rb };
}

/** Open a TCP connection host:sport → REMOTE:80 through `nat` (SYN, SYN-ACK, ACK); its public port. */
function connect(nat: Translator, host: number, sport: number, now: number): number {
  const out = send(nat, tcpPacket({ src: host, dst: REMOTE, srcPort: sport, dstPort: 80, seq: 100, ack: 0, flags: SYN }), now)!;
  send(nat, tcpPacket({ src: REMOTE, dst: PUB, srcPort: 80, dstPort: out.sport, seq: 500, ack: 101, flags: SYN | ACK }), now);
  send(nat, tcpPacket({ src: host, dst: REMOTE, srcPort: sport, dstPort: 80, seq: 101, ack: 501, flags: ACK }), now);
  return out.sport;
}

describe('Replica: flow state from the active gateway to the standby', () => {
  it('the standby holds the same flows on the same public ports, and translates them once promoted', () => {
    const { active, standby, ra, rb } = pair();
    const tcpPort = connect(active, HOST_A, 40000, 1000);
    const udpOut = send(active, udpPacket({ src: HOST_B, dst: REMOTE, srcPort: 5353, dstPort: 3478, payload: new Uint8Array(8) }), 1000)!;
    const recs = ra.drain(1010)!;
    expect(recs.length).toBe(2 * UPSERT_BYTES);
    const c = rb.apply(recs, 5);
    expect(c).toMatchObject({ upserts: 2, failed: 0, malformed: 0 });
    expect(standby.flows.size).toBe(2);
    // Nothing left to send once drained.
    expect(ra.drain(1020)).toBeNull();

    // While standby it forwards nothing, and says why.
    const early = tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40000, dstPort: 80, seq: 101, ack: 501, flags: ACK });
    expect(standby.process(early, 0, early.length, 6)).toBe(Verdict.DROP);
    expect(standby.stats.drops[DropReason.STANDBY]).toBe(1);

    // Promoted: both directions of both flows, on the ports the active chose.
    standby.standby = false;
    rb.promote(10);
    const a = send(standby, tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40000, dstPort: 80, seq: 101, ack: 501, flags: ACK | TCP_FLAGS.PSH, payload: new Uint8Array(4) }), 20)!;
    expect([a.src, a.sport]).toEqual([PUB, tcpPort]);
    const back = send(standby, tcpPacket({ src: REMOTE, dst: PUB, srcPort: 80, dstPort: tcpPort, seq: 501, ack: 105, flags: ACK }), 20)!;
    expect([back.dst, back.dport]).toEqual([HOST_A, 40000]);
    const u = send(standby, udpPacket({ src: REMOTE, dst: PUB, srcPort: 3478, dstPort: udpOut.sport, payload: new Uint8Array(4) }), 20)!;
    expect([u.dst, u.dport]).toEqual([HOST_B, 5353]);
    // The TCP state came across: no new flow was made for the established connection.
    expect(standby.stats.flowsCreated).toBe(2);
    expect(standby.stats.tcpPickedUp).toBe(0);
  });

  it('a TCP state change and a removal follow; a slot reused between drains is sent as the new flow', () => {
    const { active, standby, ra, rb } = pair();
    connect(active, HOST_A, 40000, 1000);
    rb.apply(ra.drain(1000)!, 0);
    send(active, tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40000, dstPort: 80, seq: 101, ack: 501, flags: FIN | ACK }), 1100);
    rb.apply(ra.drain(1100)!, 100);
    const f = standby.flows.lookup(IPPROTO.TCP, HOST_A, REMOTE, 40000, 80, 100) >> 1;
    expect(standby.flows.state[f]).toBe(TcpState.FIN_WAIT);

    // The RST ends it on the active; a new connection from another port may take the same slot.
    send(active, tcpPacket({ src: REMOTE, dst: PUB, srcPort: 80, dstPort: active.flows.tDport[f * 2 + 1]!, seq: 501, ack: 102, flags: RST }), 1200);
    active.flows.flush();
    connect(active, HOST_A, 40002, 1300);
    const recs = ra.drain(1300)!;
    const kinds: number[] = [];
    forEachRecord(recs, (k) => kinds.push(k));
    expect(kinds).toEqual([REC.REMOVE, REC.UPSERT]);
    expect(recs.length).toBe(REMOVE_BYTES + UPSERT_BYTES);
    const c = rb.apply(recs, 200);
    expect(c).toMatchObject({ removes: 1, upserts: 1, failed: 0 });
    expect(standby.flows.lookup(IPPROTO.TCP, HOST_A, REMOTE, 40000, 80, 200)).toBeLessThan(0);
    expect(standby.flows.lookup(IPPROTO.TCP, HOST_A, REMOTE, 40002, 80, 200)).toBeGreaterThanOrEqual(0);
  });

  it('a full resync removes what it does not name, and applies what waited for that', () => {
    const { active, standby, ra, rb } = pair();
    connect(active, HOST_A, 40000, 1000);
    rb.apply(ra.drain(1000)!, 0);
    // The standby stops hearing: the connection ends on the active and the host's endpoint gets a new
    // mapping there (another public port), which the standby never learns.
    active.flows.flush();
    ra.drain(1100);
    const remapped = active.mappings.create(IPPROTO.TCP, HOST_A, 40000, PUB, () => 0.99);
    expect(remapped).toBeGreaterThanOrEqual(0);
    send(active, tcpPacket({ src: HOST_A, dst: ip('203.0.113.9'), srcPort: 40000, dstPort: 443, seq: 1, ack: 0, flags: SYN }), 1200);
    const dump = ra.dump(1200);
    expect(dump.length).toBe(UPSERT_BYTES);
    // BEGIN, the dump, END: the record for the new flow fails at first (its endpoint's mapping on the
    // standby is the stale one), and succeeds once END has swept the stale flow.
    const c = rb.apply(Buffer.concat([encodeMark(REC.BEGIN, 7), dump, encodeMark(REC.END, 7)]), 300);
    expect(c).toMatchObject({ swept: 1, upserts: 1, failed: 0, ended: 7 });
    expect(standby.flows.size).toBe(1);
    expect(standby.flows.lookup(IPPROTO.TCP, HOST_A, ip('203.0.113.9'), 40000, 443, 300)).toBeGreaterThanOrEqual(0);
  });

  it('a record that would not translate (its LAN side outside the LAN, its outside side not public) is refused', () => {
    const { active, ra, rb, standby } = pair();
    connect(active, HOST_A, 40000, 1000);
    const recs = ra.drain(1000)!;
    const bad = Uint8Array.from(recs);
    // The reply tuple's destination (the public side) becomes a private address.
    new DataView(bad.buffer).setUint32(28, ip('192.168.1.99'));
    expect(rb.apply(bad, 0)).toMatchObject({ upserts: 0, malformed: 1 });
    expect(standby.flows.size).toBe(0);
  });

  it('a picked-up TCP flow keeps a short timer until the outside answers', () => {
    const nat = makeNat({ haNode: 0, tcpLoose: true });
    const out = send(nat, tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40000, dstPort: 80, seq: 9, ack: 9, flags: ACK }), 0)!;
    const f = nat.flows.lookup(IPPROTO.TCP, HOST_A, REMOTE, 40000, 80, 0) >> 1;
    expect(nat.flows.expires[f]).toBe(nat.timeouts.tcpSynSent * 1000);
    send(nat, tcpPacket({ src: REMOTE, dst: PUB, srcPort: 80, dstPort: out.sport, seq: 9, ack: 10, flags: ACK }), 1);
    send(nat, tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40000, dstPort: 80, seq: 10, ack: 10, flags: ACK }), 2);
    expect(nat.flows.expires[f]).toBe(2 + nat.timeouts.tcpEstablished * 1000);
  });

  it('cut or unknown records stop the batch and are counted, never thrown', () => {
    const { active, ra, rb, standby } = pair();
    connect(active, HOST_A, 40000, 1000);
    const recs = ra.drain(1000)!;
    expect(rb.apply(recs.subarray(0, recs.length - 1), 0)).toMatchObject({ upserts: 0, malformed: 1 });
    expect(rb.apply(Uint8Array.of(99, 1, 2), 0)).toMatchObject({ malformed: 1 });
    expect(standby.flows.size).toBe(0);
  });
});

describe('a pair never hands out one public port twice', () => {
  it('each gateway maps new ports only in its half; a replicated mapping keeps its port in the other half', () => {
    expect(nodeHalf(1024, 65535, 0)).toEqual([1024, 33279]);
    expect(nodeHalf(1024, 65535, 1)).toEqual([33280, 65535]);
    // The gateway's own range (excluded) does not count: each half has as many mappable ports.
    const excluded: [number, number][] = [[20000, 29999]];
    const [, top0] = nodeHalf(1024, 65535, 0, excluded);
    const [bottom1] = nodeHalf(1024, 65535, 1, excluded);
    expect(top0 + 1).toBe(bottom1);
    expect(bottom1 % 2).toBe(0);
    const mappable = (a: number, b: number) => b - a + 1 - (a <= 20000 && b >= 29999 ? 10000 : 0);
    expect(Math.abs(mappable(1024, top0) - mappable(bottom1, 65535))).toBeLessThanOrEqual(2);
    const { active, standby, ra, rb } = pair();
    // Port preservation gives way to the half: 50000 lies in node 1's half.
    const p0 = connect(active, HOST_A, 50000, 1000);
    expect(p0).toBeLessThanOrEqual(top0);
    rb.apply(ra.drain(1000)!, 0);
    // Split brain: both make mappings at once, each in its own half.
    standby.standby = false;
    const p1 = connect(standby, HOST_B, 50000, 10);
    expect(p1).toBeGreaterThanOrEqual(bottom1);
    expect(p1).not.toBe(p0);
    // The standby holds the active's port too, in its pool, without counting it as its own.
    expect(standby.mappings.pool(IPPROTO.TCP)!.owner[p0]).toBeGreaterThanOrEqual(0);
    expect(standby.mappings.pool(IPPROTO.TCP)!.peerHeld).toBe(1);
  });
});

describe('TCP pick-up after a failover (tcpLoose)', () => {
  it('a mid-stream segment from the LAN opens an established flow; one from the WAN never does', () => {
    const nat = makeNat({ haNode: 1, tcpLoose: true });
    const fromWan = tcpPacket({ src: REMOTE, dst: PUB, srcPort: 80, dstPort: 40000, seq: 9, ack: 9, flags: ACK });
    expect(nat.process(fromWan, 0, fromWan.length, 0)).toBe(Verdict.DROP);
    expect(nat.flows.size).toBe(0);
    const rst = tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40000, dstPort: 80, seq: 9, ack: 9, flags: RST | ACK });
    expect(nat.process(rst, 0, rst.length, 0)).toBe(Verdict.DROP);
    const out = send(nat, tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40000, dstPort: 80, seq: 9, ack: 9, flags: ACK, payload: new Uint8Array(3) }), 0)!;
    expect(out.src).toBe(PUB);
    const f = nat.flows.lookup(IPPROTO.TCP, HOST_A, REMOTE, 40000, 80, 0) >> 1;
    expect(nat.flows.state[f]).toBe(TcpState.ESTABLISHED);
    expect(nat.stats.tcpPickedUp).toBe(1);
    // Without tcpLoose the same segment is a counted drop.
    const strict = makeNat();
    const again = tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40000, dstPort: 80, seq: 9, ack: 9, flags: ACK });
    expect(strict.process(again, 0, again.length, 0)).toBe(Verdict.DROP);
    expect(strict.stats.drops[DropReason.NO_MAPPING]).toBe(1);
  });
});
