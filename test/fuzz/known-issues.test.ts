/**
 * Bugs the data-plane fuzzer found, each reduced to a few packets (docs/reliability.md lists them with
 * their input as hex), kept as regression tests now that src/ is fixed. Each test states the correct
 * behaviour; the comments say what used to happen.
 */
import { describe, expect, it } from 'vitest';
import { DropReason, Verdict } from '../../src/nat/translator.js';
import { udpPacket, icmpError, tcpPacket } from '../../src/wire/build.js';
import { TCP_FLAGS } from '../../src/wire/tcp.js';
import { fragment } from './lib/packets.js';
import { makeNat, collectingSink, parse, ip, PUB, REMOTE, HOST_A, HOST_B } from '../nat/helpers.js';
import { checkState, leaks } from './lib/invariants.js';
import { addr } from './lib/packets.js';

const payload = Buffer.from('known issue');
const OTHER_REMOTE = addr('198.51.100.9');
const LAN_ROUTER = ip('192.168.1.254');
const isInternal = (a: number): boolean => a >>> 8 === ip('192.168.1.0') >>> 8;
const SYN = TCP_FLAGS.SYN, ACK = TCP_FLAGS.ACK, RST = TCP_FLAGS.RST, PSH = TCP_FLAGS.PSH;

describe('bugs the fuzzer found (regressions)', () => {
  it('an ICMP error from a LAN router about an inbound flow leaves with the public source, not its own', () => {
    // Time exceeded from 192.168.1.254 to 203.0.113.2, quoting a datagram 203.0.113.2:7 → 192.168.1.10:40000
    // that tunnat had translated inbound: it used to leave with 192.168.1.254 as its source.
    const nat = makeNat({ filtering: 'endpoint' });
    const out = udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40000, dstPort: 7, payload });
    expect(nat.process(out, 0, out.length, 0)).toBe(Verdict.FORWARD);
    const inbound = udpPacket({ src: REMOTE, dst: PUB, srcPort: 7, dstPort: 40000, payload });
    expect(nat.process(inbound, 0, inbound.length, 1)).toBe(Verdict.FORWARD);
    const err = icmpError({ src: LAN_ROUTER, dst: REMOTE, type: 11, code: 0, quoted: inbound.subarray(0, 28) });
    const verdict = nat.process(err, 0, err.length, 2);
    // Either translated to come from the public address (what Linux does: the error gets its own SNAT),
    // or dropped; never forwarded to the WAN with 192.168.1.254 as its source.
    if (verdict === Verdict.FORWARD) expect(parse(err).src).toBe(PUB);
    else expect(verdict).toBe(Verdict.DROP);
  });

  it('an ICMP error from inside that quotes the WAN side of a flow never leaves naming the LAN host', () => {
    // A LAN host quotes a packet "from the public address" (the flow as the remote sees it). tunnat used
    // to find the flow from that side and restore the quote to the LAN side, naming HOST_A.
    const nat = makeNat();
    const sink = collectingSink();
    nat.sink = sink;
    const out = udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40000, dstPort: 7, payload });
    expect(nat.process(out, 0, out.length, 0)).toBe(Verdict.FORWARD);
    const wanSide = udpPacket({ src: PUB, dst: REMOTE, srcPort: 40000, dstPort: 7, payload });
    const err = icmpError({ src: HOST_B, dst: REMOTE, type: 3, code: 3, quoted: wanSide });
    // Dropped: HOST_B is no party to the flow it quotes, so nothing about it may leave, and nothing
    // tunnat sends in its place may name a LAN address towards the WAN.
    expect(nat.process(err, 0, err.length, 1)).toBe(Verdict.DROP);
    expect(sink.sent.flatMap((p) => leaks(p, isInternal, PUB))).toEqual([]);
  });

  it('an ICMP error from inside about a hairpin flow is not sent to an unrelated outside address', () => {
    // HOST_A hairpins to HOST_B's mapping; a LAN sender then addresses an error "about" that flow to an
    // outside host: the quote used to be rewritten to name HOST_B and leave for the WAN.
    const nat = makeNat({ filtering: 'endpoint' });
    const sink = collectingSink();
    nat.sink = sink;
    const b = udpPacket({ src: HOST_B, dst: REMOTE, srcPort: 9000, dstPort: 7, payload });
    expect(nat.process(b, 0, b.length, 0)).toBe(Verdict.FORWARD);
    const hp = udpPacket({ src: HOST_A, dst: PUB, srcPort: 41000, dstPort: parse(b).sport, payload });
    expect(nat.process(hp, 0, hp.length, 1)).toBe(Verdict.FORWARD);
    const quoted = udpPacket({ src: PUB, dst: HOST_A, srcPort: parse(b).sport, dstPort: 41000, payload });
    const err = icmpError({ src: LAN_ROUTER, dst: OTHER_REMOTE, type: 3, code: 3, quoted });
    // Dropped: the hairpin flow's ends are both inside, and OTHER_REMOTE is neither of them.
    expect(nat.process(err, 0, err.length, 2)).toBe(Verdict.DROP);
    expect(sink.sent.flatMap((p) => leaks(p, isInternal, PUB))).toEqual([]);
  });

  it('removing an inbound flow releases the LAN host\'s flow count', () => {
    // A port forward brings inbound flows to HOST_A; each expires. With --max-flows-per-host 2 the
    // host must still be able to open its own flows afterwards (the count used to stay at 3 forever).
    const nat = makeNat({ maxFlowsPerHost: 2, forwards: [{ protocol: 17, publicPort: 5060, address: HOST_A, port: 5060 }] });
    for (let i = 0; i < 3; i++) {
      const p = udpPacket({ src: OTHER_REMOTE, dst: PUB, srcPort: 1000 + i, dstPort: 5060, payload });
      expect(nat.process(p, 0, p.length, i)).toBe(Verdict.FORWARD);
    }
    nat.sweep(10_000_000, nat.flows.capacity); // every UDP timeout has passed
    expect(nat.flows.size).toBe(0);
    expect(nat.flowsOfHost(HOST_A)).toBe(0);
    const own = udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40000, dstPort: 53, payload });
    expect(nat.process(own, 0, own.length, 10_000_001)).toBe(Verdict.FORWARD);
  });

  it('removing an inbound flow releases its address-dependent filtering permission', () => {
    // HOST_A talks to REMOTE, so REMOTE may reach HOST_A's mapping from another port (an inbound flow).
    // Once every flow is gone the permission must be gone too; it used to stay, and a later mapping that
    // reused the slot (another host's) accepted REMOTE without ever having talked to it.
    const nat = makeNat({ filtering: 'address' });
    const out = udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40000, dstPort: 7, payload });
    nat.process(out, 0, out.length, 0);
    const other = udpPacket({ src: REMOTE, dst: PUB, srcPort: 9999, dstPort: 40000, payload });
    expect(nat.process(other, 0, other.length, 1)).toBe(Verdict.FORWARD);
    nat.sweep(10_000_000, nat.flows.capacity);
    expect(nat.flows.size).toBe(0);
    // HOST_B gets a new mapping (the freed slot) on a port REMOTE has never been sent anything from.
    const b = udpPacket({ src: HOST_B, dst: OTHER_REMOTE, srcPort: 40000, dstPort: 7, payload });
    nat.process(b, 0, b.length, 10_000_001);
    const port = parse(b).sport;
    const probe = udpPacket({ src: REMOTE, dst: PUB, srcPort: 9999, dstPort: port, payload });
    expect(nat.process(probe, 0, probe.length, 10_000_002)).toBe(Verdict.DROP);
    expect(checkState(nat)).toEqual([]);
  });

  it('early drop for an inbound flow never frees the mapping that flow is about to use', () => {
    // A full table. HOST_A's unreplied UDP flow holds mapping m (public port 40000). An endpoint-
    // independent inbound packet to port 40000 needs a slot: early drop evicted HOST_A's flow, which
    // freed m, and the new inbound flow then referenced the freed m. The next mapping reused m's slot,
    // and when the inbound flow expired it released that mapping under its live flow: the port could
    // then be given to a third host while the second still used it.
    const nat = makeNat({ filtering: 'endpoint', maxFlows: 2 });
    const a = udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40000, dstPort: 7, payload });
    nat.process(a, 0, a.length, 0);
    const filler = udpPacket({ src: HOST_B, dst: REMOTE, srcPort: 1, dstPort: 7, payload });
    nat.process(filler, 0, filler.length, 0);
    // Table full (2 unassured flows); the cursor evicts flow 0 (HOST_A's) first.
    const inbound = udpPacket({ src: OTHER_REMOTE, dst: PUB, srcPort: 5, dstPort: 40000, payload });
    nat.process(inbound, 0, inbound.length, 1);
    expect(checkState(nat)).toEqual([]);
  });

  it('a port forward never makes a second flow with a tuple an outbound flow already holds', () => {
    // HOST_B (behind tcp:8080 → HOST_B:80) opens a connection from port 80 to REMOTE:5555; REMOTE:5555
    // then connects to the forward. The new flow's reply tuple (HOST_B:80 → REMOTE:5555) would be the
    // first flow's original tuple: the table used to hold it twice, and HOST_B's packets matched either.
    const nat = makeNat({ forwards: [{ protocol: 6, publicPort: 8080, address: HOST_B, port: 80 }] });
    const out = tcpPacket({ src: HOST_B, dst: REMOTE, srcPort: 80, dstPort: 5555, seq: 1, ack: 0, flags: SYN });
    expect(nat.process(out, 0, out.length, 0)).toBe(Verdict.FORWARD);
    const inbound = tcpPacket({ src: REMOTE, dst: PUB, srcPort: 5555, dstPort: 8080, seq: 1, ack: 0, flags: SYN });
    nat.process(inbound, 0, inbound.length, 1);
    expect(checkState(nat)).toEqual([]);
  });

  it('after the public address changes, no fragment leaves with the old address', () => {
    // The first fragment went out with 203.0.113.1; the address changes (masquerade). The second fragment
    // must not follow with the old address, which may by now belong to someone else: the change forgets
    // the datagram, so the second fragment waits for a first one like any stray, and leaves only with
    // the new address (here, when the host sends the datagram again).
    const nat = makeNat();
    const sink = collectingSink();
    nat.sink = sink;
    const newAddress = ip('203.0.113.9');
    const [first, second] = fragment(udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40000, dstPort: 7, payload: Buffer.alloc(400) }), [200]);
    const firstAgain = Buffer.from(first!);
    expect(nat.process(first!, 0, first!.length, 0)).toBe(Verdict.FORWARD);
    nat.setPublicAddress(newAddress);
    expect(nat.process(second!, 0, second!.length, 1)).toBe(Verdict.HELD);
    expect(sink.sent).toEqual([]);
    expect(nat.process(firstAgain, 0, firstAgain.length, 2)).toBe(Verdict.FORWARD);
    expect(parse(firstAgain).src).toBe(newAddress);
    expect(sink.sent.map((p) => parse(p).src)).toEqual([newAddress]);
  });

  it('an RST the endpoints would ignore does not cut an idle established connection short', () => {
    // An off-path sender who knows the 4-tuple (the public port is usually the LAN port, preserved)
    // sends an RST with an arbitrary sequence number. The LAN host's stack ignores it (RFC 5961); tunnat
    // used to move the flow to CLOSE (10 s) without looking at the sequence number, so after 11 s of
    // idling the next segment of the still-open connection found no flow and was dropped.
    const nat = makeNat();
    const send = (p: Buffer, t: number): number => nat.process(p, 0, p.length, t);
    const syn = tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 33000, dstPort: 443, seq: 1000, ack: 0, flags: SYN });
    send(syn, 0);
    const port = parse(syn).sport;
    send(tcpPacket({ src: REMOTE, dst: PUB, srcPort: 443, dstPort: port, seq: 5000, ack: 1001, flags: SYN | ACK }), 0);
    send(tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 33000, dstPort: 443, seq: 1001, ack: 5001, flags: ACK }), 0);
    const spoofed = tcpPacket({ src: REMOTE, dst: PUB, srcPort: 443, dstPort: port, seq: 0xdeadbeef, ack: 0, flags: RST });
    send(spoofed, 1_000);
    const later = tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 33000, dstPort: 443, seq: 1001, ack: 5001, flags: ACK | PSH, payload });
    expect(send(later, 12_000)).toBe(Verdict.FORWARD);
  });

  // Bug 7, found after the fixes above: createInbound took a table slot before it resolved the target,
  // so with a full table an unsolicited packet from outside evicted an unreplied LAN flow (early drop)
  // and was then refused anyway; with a table of replied flows it was counted as table-full rather than
  // no-mapping.
  it('an unsolicited packet from outside neither evicts a flow nor is counted as table-full', () => {
    const nat = makeNat({ maxFlows: 4 });
    for (let i = 0; i < 4; i++) {
      const p = udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40000 + i, dstPort: 53, payload });
      expect(nat.process(p, 0, p.length, 0)).toBe(Verdict.FORWARD);
    }
    const syn = tcpPacket({ src: OTHER_REMOTE, dst: PUB, srcPort: 1000, dstPort: 45000, seq: 1, ack: 0, flags: SYN });
    expect(nat.process(syn, 0, syn.length, 1)).toBe(Verdict.DROP);
    expect(nat.lastDrop).toBe(DropReason.NO_MAPPING);
    expect(nat.flows.size).toBe(4);
    expect(nat.stats.flowsRemoved['early-drop']).toBe(0);
  });

  // Bug 7 from the LAN: the table and the port pool both full, a new endpoint's flow evicted an unreplied
  // flow and was then refused for want of a port.
  it('a new flow refused for want of a port has not evicted another flow first', () => {
    const nat = makeNat({ maxFlows: 4, ports: [40000, 40001], excludedPorts: [] });
    for (const [host, dport] of [[HOST_A, 53], [HOST_A, 54], [HOST_B, 53], [HOST_B, 54]] as const) {
      const p = udpPacket({ src: host, dst: REMOTE, srcPort: 5000, dstPort: dport, payload });
      expect(nat.process(p, 0, p.length, 0)).toBe(Verdict.FORWARD);
    }
    const third = udpPacket({ src: ip('192.168.1.12'), dst: REMOTE, srcPort: 5000, dstPort: 53, payload });
    expect(nat.process(third, 0, third.length, 1)).toBe(Verdict.DROP);
    expect(nat.lastDrop).toBe(DropReason.PORTS_EXHAUSTED);
    expect(nat.flows.size).toBe(4);
  });
});
