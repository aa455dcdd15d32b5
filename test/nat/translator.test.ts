import { describe, it, expect } from 'vitest';
import { Verdict, DropReason, Path } from '../../src/nat/translator.js';
import { udpPacket, tcpPacket, icmpEcho, icmpError } from '../../src/wire/build.js';
import { TCP_FLAGS } from '../../src/wire/tcp.js';
import { TcpState } from '../../src/conntrack/tcp.js';
import { listFlows } from '../../src/conntrack/listing.js';
import { makeNat, checkAllChecksums, parse, ip, PUB, REMOTE, HOST_A, HOST_B } from './helpers.js';

const payload = new TextEncoder().encode('hello, odd length!');
const SYN = TCP_FLAGS.SYN, ACK = TCP_FLAGS.ACK, FIN = TCP_FLAGS.FIN, RST = TCP_FLAGS.RST;

describe('UDP', () => {
  it('translates the source of a new outbound flow, keeping the port, and gives back one hop', () => {
    const nat = makeNat();
    const p = udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40000, dstPort: 53, ttl: 63, payload });
    expect(nat.process(p, 0, p.length, 0)).toBe(Verdict.FORWARD);
    const out = parse(p);
    expect(out).toMatchObject({ src: PUB, dst: REMOTE, sport: 40000, dport: 53, ttl: 64 });
    checkAllChecksums(p);
    expect(nat.stats.packets[Path.OUTBOUND]).toBe(1);
    expect(nat.flows.size).toBe(1);
  });

  it('maps the reply back to the LAN host', () => {
    const nat = makeNat();
    const p = udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40000, dstPort: 53, payload });
    nat.process(p, 0, p.length, 0);
    const r = udpPacket({ src: REMOTE, dst: PUB, srcPort: 53, dstPort: 40000, ttl: 50, payload });
    expect(nat.process(r, 0, r.length, 1)).toBe(Verdict.FORWARD);
    expect(parse(r)).toMatchObject({ src: REMOTE, dst: HOST_A, sport: 53, dport: 40000, ttl: 51 });
    checkAllChecksums(r);
    const [rec] = listFlows(nat.flows, 1);
    // One query and its answer: replied, but not a stream (udp-timer.ts), so not assured.
    expect(rec).toMatchObject({ protocol: 'udp', state: 'REPLIED', packets: { original: 1, reply: 1 } });
  });

  it('keeps a UDP checksum of zero as zero', () => {
    const nat = makeNat();
    const p = udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40000, dstPort: 53, payload, checksum: false });
    nat.process(p, 0, p.length, 0);
    expect((p[26]! << 8) | p[27]!).toBe(0);
  });

  it('gives two LAN hosts with the same source port two mappings, the second keeping parity', () => {
    const nat = makeNat();
    const a = udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40000, dstPort: 7, payload });
    const b = udpPacket({ src: HOST_B, dst: REMOTE, srcPort: 40000, dstPort: 7, payload });
    nat.process(a, 0, a.length, 0);
    nat.process(b, 0, b.length, 0);
    const pa = parse(a).sport;
    const pb = parse(b).sport;
    expect(pa).toBe(40000);
    expect(pb).not.toBe(40000);
    expect(pb % 2).toBe(0);
    expect(pb < 20000 || pb > 29999).toBe(true); // never in the gateway's own range
    // Each reply reaches its own host.
    const ra = udpPacket({ src: REMOTE, dst: PUB, srcPort: 7, dstPort: pa, payload });
    const rb = udpPacket({ src: REMOTE, dst: PUB, srcPort: 7, dstPort: pb, payload });
    nat.process(ra, 0, ra.length, 1);
    nat.process(rb, 0, rb.length, 1);
    expect(parse(ra)).toMatchObject({ dst: HOST_A, dport: 40000 });
    expect(parse(rb)).toMatchObject({ dst: HOST_B, dport: 40000 });
  });

  it('uses one mapping for every destination of an internal endpoint (endpoint-independent mapping)', () => {
    const nat = makeNat();
    const b = udpPacket({ src: HOST_B, dst: REMOTE, srcPort: 5000, dstPort: 7, payload });
    nat.process(b, 0, b.length, 0); // takes 5000
    const a1 = udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 5000, dstPort: 7, payload });
    const a2 = udpPacket({ src: HOST_A, dst: ip('198.51.100.9'), srcPort: 5000, dstPort: 9, payload });
    nat.process(a1, 0, a1.length, 0);
    nat.process(a2, 0, a2.length, 0);
    expect(parse(a1).sport).toBe(parse(a2).sport);
    expect(nat.mappings.size).toBe(2);
    expect(nat.flows.size).toBe(3);
  });

  it('passes unmatched inbound packets for the gateway’s own ports to it, unchanged but for the TTL', () => {
    const nat = makeNat();
    // 25000 is in the gateway's own ephemeral range (excluded from the NAT's pool).
    const r = udpPacket({ src: REMOTE, dst: PUB, srcPort: 53, dstPort: 25000, ttl: 10, payload });
    const before = Buffer.from(r);
    expect(nat.process(r, 0, r.length, 0)).toBe(Verdict.FORWARD);
    expect(parse(r)).toMatchObject({ dst: PUB, dport: 25000, ttl: 11 });
    expect(r.subarray(20).equals(before.subarray(20))).toBe(true);
    checkAllChecksums(r);
    expect(nat.stats.packets[Path.LOCAL]).toBe(1);
    expect(nat.flows.size).toBe(0);
  });

  it('drops unsolicited packets to ports the NAT hands out, silently (RFC 5382 REQ-4)', () => {
    const nat = makeNat();
    const r = udpPacket({ src: REMOTE, dst: PUB, srcPort: 53, dstPort: 40000, payload });
    expect(nat.process(r, 0, r.length, 0)).toBe(Verdict.DROP);
    const syn = tcpPacket({ src: REMOTE, dst: PUB, srcPort: 5555, dstPort: 40000, seq: 1, ack: 0, flags: TCP_FLAGS.SYN });
    expect(nat.process(syn, 0, syn.length, 0)).toBe(Verdict.DROP);
    expect(nat.stats.drops[DropReason.NO_MAPPING]).toBe(2);
  });

  it('drops packets that are neither from the LAN nor for the public address', () => {
    const nat = makeNat();
    const p = udpPacket({ src: REMOTE, dst: ip('198.51.100.1'), srcPort: 1, dstPort: 2, payload });
    expect(nat.process(p, 0, p.length, 0)).toBe(Verdict.DROP);
    expect(nat.stats.drops[DropReason.NOT_OURS]).toBe(1);
  });

  it('expires idle flows on the configured timeout and frees the port', () => {
    const nat = makeNat();
    nat.timeouts = { ...nat.timeouts, udp: 2 };
    const p = udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40000, dstPort: 5000, payload });
    nat.process(p, 0, p.length, 0);
    expect(nat.sweep(1999, 10_000)).toBe(0);
    expect(nat.sweep(2000, 10_000)).toBe(1);
    expect(nat.flows.size).toBe(0);
    expect(nat.mappings.size).toBe(0);
    expect(nat.mappings.pool(17)!.used).toBe(0);
    expect(nat.stats.flowsRemoved.expired).toBe(1);
  });

  it('treats an expired flow met on lookup as gone, even before the sweep', () => {
    const nat = makeNat();
    nat.timeouts = { ...nat.timeouts, udp: 1 };
    const p = udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40000, dstPort: 5000, payload });
    nat.process(p, 0, p.length, 0);
    const r = udpPacket({ src: REMOTE, dst: PUB, srcPort: 5000, dstPort: 40000, payload });
    nat.process(r, 0, r.length, 5000);
    expect(parse(r).dst).toBe(PUB); // went to the gateway, not to the LAN host
    expect(nat.flows.size).toBe(0);
  });

  it('drops with ports-exhausted when the pool is empty, and keeps forwarding existing flows', () => {
    const nat = makeNat({ ports: [30000, 30001], excludedPorts: [] });
    const mk = (host: number) => udpPacket({ src: host, dst: REMOTE, srcPort: 50000, dstPort: 7, payload });
    const a = mk(HOST_A);
    const b = mk(HOST_B);
    const c = mk(ip('192.168.1.12'));
    expect(nat.process(a, 0, a.length, 0)).toBe(Verdict.FORWARD);
    expect(nat.process(b, 0, b.length, 0)).toBe(Verdict.FORWARD);
    // Both become streams (answered, then still talking 2 s later): assured, so neither port may be reclaimed.
    for (const port of [30000, 30001]) {
      const r = udpPacket({ src: REMOTE, dst: PUB, srcPort: 7, dstPort: port, payload });
      nat.process(r, 0, r.length, 0);
    }
    for (const host of [HOST_A, HOST_B]) {
      const again = mk(host);
      nat.process(again, 0, again.length, 2000);
    }
    expect(nat.process(c, 0, c.length, 2000)).toBe(Verdict.DROP);
    expect(nat.stats.drops[DropReason.PORTS_EXHAUSTED]).toBe(1);
    expect(nat.stats.portsReclaimed).toBe(0);
    const a2 = mk(HOST_A);
    expect(nat.process(a2, 0, a2.length, 2001)).toBe(Verdict.FORWARD);
  });

  it('early-drops an unreplied flow when the table is full, never an assured one', () => {
    const nat = makeNat({ maxFlows: 2 });
    const a = udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 1111, dstPort: 7, payload });
    nat.process(a, 0, a.length, 0);
    const ra = udpPacket({ src: REMOTE, dst: PUB, srcPort: 7, dstPort: 1111, payload });
    nat.process(ra, 0, ra.length, 0);
    const a1 = udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 1111, dstPort: 7, payload });
    nat.process(a1, 0, a1.length, 2000); // still talking 2 s on: a stream, assured
    const b = udpPacket({ src: HOST_B, dst: REMOTE, srcPort: 2222, dstPort: 7, payload });
    nat.process(b, 0, b.length, 2000); // unreplied
    const c = udpPacket({ src: HOST_B, dst: REMOTE, srcPort: 3333, dstPort: 7, payload });
    expect(nat.process(c, 0, c.length, 2000)).toBe(Verdict.FORWARD);
    expect(nat.stats.flowsRemoved['early-drop']).toBe(1);
    const flows = listFlows(nat.flows, 0).map((f) => f.original.srcPort).sort();
    expect(flows).toEqual([1111, 3333]);
    // Make 3333 assured too: now nothing can be evicted.
    const rc = udpPacket({ src: REMOTE, dst: PUB, srcPort: 7, dstPort: 3333, payload });
    nat.process(rc, 0, rc.length, 2000);
    const c1 = udpPacket({ src: HOST_B, dst: REMOTE, srcPort: 3333, dstPort: 7, payload });
    nat.process(c1, 0, c1.length, 4000);
    const d = udpPacket({ src: HOST_B, dst: REMOTE, srcPort: 4444, dstPort: 7, payload });
    expect(nat.process(d, 0, d.length, 4000)).toBe(Verdict.DROP);
    expect(nat.stats.drops[DropReason.TABLE_FULL]).toBe(1);
  });
});

describe('TCP', () => {
  const seg = (src: number, dst: number, sport: number, dport: number, flags: number) =>
    tcpPacket({ src, dst, srcPort: sport, dstPort: dport, seq: 1, ack: 0, flags, payload });

  it('creates flows only from a SYN and drops other segments with no flow', () => {
    const nat = makeNat();
    const a = seg(HOST_A, REMOTE, 40000, 80, ACK);
    expect(nat.process(a, 0, a.length, 0)).toBe(Verdict.DROP);
    expect(nat.stats.drops[DropReason.NO_MAPPING]).toBe(1);
    const x = seg(HOST_A, REMOTE, 40000, 80, SYN | FIN);
    expect(nat.process(x, 0, x.length, 0)).toBe(Verdict.DROP);
    expect(nat.stats.drops[DropReason.TCP_FLAGS]).toBe(1);
    expect(nat.flows.size).toBe(0);
  });

  it('follows a connection from handshake to close', () => {
    const nat = makeNat();
    const out = (flags: number) => {
      const p = seg(HOST_A, REMOTE, 40000, 80, flags);
      expect(nat.process(p, 0, p.length, 0)).toBe(Verdict.FORWARD);
      checkAllChecksums(p);
      return p;
    };
    const back = (flags: number) => {
      const p = seg(REMOTE, PUB, 80, 40000, flags);
      expect(nat.process(p, 0, p.length, 0)).toBe(Verdict.FORWARD);
      checkAllChecksums(p);
      expect(parse(p).dst).toBe(HOST_A);
      return p;
    };
    const state = () => nat.flows.state[0];
    out(SYN);
    expect(state()).toBe(TcpState.SYN_SENT);
    back(SYN | ACK);
    expect(state()).toBe(TcpState.SYN_RECV);
    out(ACK);
    expect(state()).toBe(TcpState.ESTABLISHED);
    expect(nat.flows.expires[0]).toBe(7440 * 1000);
    out(FIN | ACK);
    expect(state()).toBe(TcpState.FIN_WAIT);
    back(ACK);
    expect(state()).toBe(TcpState.CLOSE_WAIT);
    back(FIN | ACK);
    expect(state()).toBe(TcpState.LAST_ACK);
    out(ACK);
    expect(state()).toBe(TcpState.TIME_WAIT);
    out(SYN); // port reuse reopens
    expect(state()).toBe(TcpState.SYN_SENT);
    back(RST | ACK);
    expect(state()).toBe(TcpState.CLOSE);
  });
});

describe('ICMP', () => {
  it('maps echo identifiers per host and maps replies back', () => {
    const nat = makeNat();
    const a = icmpEcho({ src: HOST_A, dst: REMOTE, type: 8, identifier: 77, sequence: 1 });
    const b = icmpEcho({ src: HOST_B, dst: REMOTE, type: 8, identifier: 77, sequence: 1 });
    nat.process(a, 0, a.length, 0);
    nat.process(b, 0, b.length, 0);
    checkAllChecksums(a);
    checkAllChecksums(b);
    const ia = parse(a).id;
    const ib = parse(b).id;
    expect(ia).toBe(77);
    expect(ib).not.toBe(77);
    const rb = icmpEcho({ src: REMOTE, dst: PUB, type: 0, identifier: ib, sequence: 1 });
    expect(nat.process(rb, 0, rb.length, 1)).toBe(Verdict.FORWARD);
    checkAllChecksums(rb);
    expect(parse(rb)).toMatchObject({ dst: HOST_B, id: 77 });
  });

  it('translates an error quoting an outbound UDP datagram back to the LAN host', () => {
    const nat = makeNat();
    const b = udpPacket({ src: HOST_B, dst: REMOTE, srcPort: 33434, dstPort: 9, payload });
    nat.process(b, 0, b.length, 0); // takes 33434
    const a = udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 33434, dstPort: 33435, ttl: 2, payload });
    nat.process(a, 0, a.length, 0); // remapped
    const mapped = parse(a).sport;
    expect(mapped).not.toBe(33434);
    const router = ip('198.51.100.254');
    const err = icmpError({ src: router, dst: PUB, type: 11, code: 0, quoted: a });
    const flowsBefore = nat.flows.expires.slice();
    expect(nat.process(err, 0, err.length, 5)).toBe(Verdict.FORWARD);
    checkAllChecksums(err);
    expect(parse(err)).toMatchObject({ src: router, dst: HOST_A });
    const quoted = err.subarray(28);
    expect(parse(Buffer.from(quoted))).toMatchObject({ src: HOST_A, dst: REMOTE, sport: 33434, dport: 33435 });
    // The whole datagram was quoted, so its own IP and UDP checksums must be right again.
    checkAllChecksums(Buffer.from(quoted));
    expect(nat.flows.expires.slice()).toEqual(flowsBefore); // errors never refresh a flow
    expect(nat.stats.icmpErrorsTranslated).toBe(1);
  });

  it('passes errors about unknown flows to the gateway and drops errors with a bad checksum', () => {
    const nat = makeNat();
    const q = udpPacket({ src: PUB, dst: REMOTE, srcPort: 25000, dstPort: 9, payload });
    const err = icmpError({ src: REMOTE, dst: PUB, type: 3, code: 3, quoted: q });
    expect(nat.process(err, 0, err.length, 0)).toBe(Verdict.FORWARD);
    expect(parse(err).dst).toBe(PUB);
    expect(nat.stats.packets[Path.LOCAL]).toBe(1);
    const bad = icmpError({ src: REMOTE, dst: PUB, type: 3, code: 3, quoted: q });
    bad[bad.length - 1]! ^= 0xff;
    expect(nat.process(bad, 0, bad.length, 0)).toBe(Verdict.DROP);
    expect(nat.stats.drops[DropReason.CHECKSUM]).toBe(1);
  });

  describe("the gateway's own ICMP to the WAN (routed through the TUN)", () => {
    it('restores the public side in an error about a packet translated into the LAN', () => {
      const nat = makeNat();
      const out = udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 4444, dstPort: 7, payload });
      nat.process(out, 0, out.length, 0);
      const pubPort = parse(out).sport;
      const reply = udpPacket({ src: REMOTE, dst: PUB, srcPort: 7, dstPort: pubPort, payload });
      expect(nat.process(reply, 0, reply.length, 0)).toBe(Verdict.FORWARD);
      expect(parse(reply)).toMatchObject({ dst: HOST_A, dport: 4444 });
      // The LAN host never answered ARP: the gateway's kernel reports the packet as tunnat delivered it.
      const err = icmpError({ src: PUB, dst: REMOTE, type: 3, code: 1, quoted: reply });
      expect(nat.process(err, 0, err.length, 1)).toBe(Verdict.FORWARD);
      checkAllChecksums(err);
      expect(parse(err)).toMatchObject({ src: PUB, dst: REMOTE, ttl: 65 });
      expect(parse(Buffer.from(err.subarray(28)))).toMatchObject({ src: REMOTE, dst: PUB, sport: 7, dport: pubPort });
      expect(nat.stats.icmpErrorsTranslated).toBe(1);
    });

    it('drops an error quoting a LAN address that no flow explains', () => {
      const nat = makeNat();
      const ghost = udpPacket({ src: REMOTE, dst: HOST_B, srcPort: 7, dstPort: 5555, payload });
      const err = icmpError({ src: PUB, dst: REMOTE, type: 3, code: 1, quoted: ghost });
      expect(nat.process(err, 0, err.length, 0)).toBe(Verdict.DROP);
      expect(nat.stats.drops[DropReason.NO_MAPPING]).toBe(1);
    });

    it("passes the gateway's echoes and its errors about its own traffic unchanged, and nothing else", () => {
      const nat = makeNat();
      const echo = icmpEcho({ src: PUB, dst: REMOTE, type: 8, identifier: 3, sequence: 1 });
      const before = Buffer.from(echo);
      expect(nat.process(echo, 0, echo.length, 0)).toBe(Verdict.FORWARD);
      // Only the hop the way out of the TUN will take is given back.
      expect(parse(echo).ttl).toBe(parse(before).ttl + 1);
      expect(Buffer.compare(echo.subarray(20), before.subarray(20))).toBe(0);
      const own = udpPacket({ src: REMOTE, dst: PUB, srcPort: 9, dstPort: 22000, payload });
      const unreachable = icmpError({ src: PUB, dst: REMOTE, type: 3, code: 3, quoted: own });
      expect(nat.process(unreachable, 0, unreachable.length, 0)).toBe(Verdict.FORWARD);
      expect(nat.stats.packets[Path.LOCAL]).toBe(2);
      expect(nat.flows.size).toBe(0);
      const udp = udpPacket({ src: PUB, dst: REMOTE, srcPort: 1, dstPort: 2, payload });
      expect(nat.process(udp, 0, udp.length, 0)).toBe(Verdict.DROP);
      expect(nat.stats.drops[DropReason.NOT_OURS]).toBe(1);
    });
  });
});

describe('malformed input', () => {
  it('drops and counts truncated or inconsistent packets without touching state', () => {
    const nat = makeNat();
    const good = udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40000, dstPort: 53, payload });
    nat.process(good, 0, good.length, 0);
    const cases: Uint8Array[] = [
      good.subarray(0, 10),
      (() => { const p = Buffer.from(good); p[0] = 0x35; return p; })(), // version 3
      (() => { const p = Buffer.from(good); p[0] = 0x44; return p; })(), // IHL 4
      (() => { const p = Buffer.from(good); p[3] = 0xff; return p; })(), // total length beyond buffer
      (() => { const p = udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 1, dstPort: 2, payload }); p[24] = 0xff; return p; })(), // UDP length too big
      (() => { const p = tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 1, dstPort: 2, seq: 0, ack: 0, flags: SYN }); p[32] = 0x10; return p; })(), // data offset 1
    ];
    for (const c of cases) expect(nat.process(c, 0, c.length, 1)).toBe(Verdict.DROP);
    expect(nat.stats.drops[DropReason.MALFORMED]).toBe(cases.length);
    expect(nat.flows.size).toBe(1);
  });

  it('counts IPv6 as an unsupported protocol, not as garbage', () => {
    const nat = makeNat();
    const v6 = Buffer.alloc(48);
    v6[0] = 0x60;
    expect(nat.process(v6, 0, v6.length, 0)).toBe(Verdict.DROP);
    expect(nat.stats.drops[DropReason.UNSUPPORTED_PROTOCOL]).toBe(1);
  });

  it('translates other protocols from the LAN by address only, never leaving a LAN source (generic.test.ts has the rest)', () => {
    const nat = makeNat();
    const g = udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 1, dstPort: 2, payload });
    g[9] = 47; // GRE
    const ports = g.readUInt32BE(20);
    expect(nat.process(g, 0, g.length, 0)).toBe(Verdict.FORWARD);
    expect(g.readUInt32BE(12)).toBe(PUB);
    expect(g.readUInt32BE(20)).toBe(ports); // not a UDP header any more: nothing past the IP header changes
    expect(nat.stats.drops[DropReason.UNSUPPORTED_PROTOCOL]).toBe(0);
  });
});
