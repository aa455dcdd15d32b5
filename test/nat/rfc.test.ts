import { describe, it, expect } from 'vitest';
import { Verdict, DropReason, Path } from '../../src/nat/translator.js';
import { udpPacket, tcpPacket, icmpEcho } from '../../src/wire/build.js';
import { TCP_FLAGS } from '../../src/wire/tcp.js';
import { EgressPolicy, parseEgress, parseForward, PolicyError } from '../../src/nat/policy.js';
import { makeNat, checkAllChecksums, collectingSink, parse, ip, PUB, REMOTE, HOST_A, HOST_B } from './helpers.js';

const payload = Buffer.from('rfc behaviour');
const OTHER = ip('198.51.100.7');
const internal = (a: number) => (a & 0xffffff00) >>> 0 === ip('192.168.1.0');

const udp = (src: number, dst: number, sport: number, dport: number) => udpPacket({ src, dst, srcPort: sport, dstPort: dport, payload });

describe('filtering (RFC 4787 REQ-8)', () => {
  // A opens 5000 → REMOTE:3478. Then: REMOTE from another port, OTHER, both to pub:5000.
  function scenario(filtering: 'endpoint' | 'address' | 'address-port') {
    const nat = makeNat({ filtering });
    const out = udp(HOST_A, REMOTE, 5000, 3478);
    nat.process(out, 0, out.length, 0);
    const samePort = udp(REMOTE, PUB, 3478, 5000);
    const otherPort = udp(REMOTE, PUB, 3479, 5000);
    const otherHost = udp(OTHER, PUB, 3478, 5000);
    return {
      nat,
      samePort: nat.process(samePort, 0, samePort.length, 1),
      otherPort: nat.process(otherPort, 0, otherPort.length, 1),
      otherHost: nat.process(otherHost, 0, otherHost.length, 1),
      delivered: [samePort, otherPort, otherHost].map((p) => parse(p).dst === HOST_A),
    };
  }

  it('endpoint-independent: anyone may send to the mapping', () => {
    const r = scenario('endpoint');
    expect([r.samePort, r.otherPort, r.otherHost]).toEqual([Verdict.FORWARD, Verdict.FORWARD, Verdict.FORWARD]);
    expect(r.delivered).toEqual([true, true, true]);
  });

  it('address-dependent: only addresses the host has sent to', () => {
    const r = scenario('address');
    expect([r.samePort, r.otherPort, r.otherHost]).toEqual([Verdict.FORWARD, Verdict.FORWARD, Verdict.DROP]);
    expect(r.nat.stats.drops[DropReason.FILTERED]).toBe(1);
  });

  it('address-and-port-dependent: only the exact endpoints the host has sent to', () => {
    const r = scenario('address-port');
    expect([r.samePort, r.otherPort, r.otherHost]).toEqual([Verdict.FORWARD, Verdict.DROP, Verdict.DROP]);
  });

  it('an admitted inbound flow refreshes nothing it should not and expires on its own', () => {
    const r = scenario('endpoint');
    expect(r.nat.flows.size).toBe(3);
    expect(r.nat.mappings.size).toBe(1);
    r.nat.sweep(10 * 60_000, 1 << 20);
    expect(r.nat.flows.size).toBe(0);
    expect(r.nat.mappings.size).toBe(0); // the mapping lived exactly as long as its flows
  });

  it('address-dependent permissions end with the last flow to that address', () => {
    const nat = makeNat({ filtering: 'address' });
    // Port 1 is well-known: an unanswered query to it has the query timer (udp-timer.ts).
    nat.timeouts = { ...nat.timeouts, udp: 10, udpQueryUnanswered: 10 };
    const a = udp(HOST_A, REMOTE, 5000, 1);
    nat.process(a, 0, a.length, 0);
    const keep = udp(HOST_A, OTHER, 5000, 1);
    nat.process(keep, 0, keep.length, 5000); // keeps the mapping alive past the first flow
    nat.sweep(10_001, 1 << 20); // the flow to REMOTE expired
    const back = udp(REMOTE, PUB, 9, 5000);
    expect(nat.process(back, 0, back.length, 10_002)).toBe(Verdict.DROP);
    expect(nat.stats.drops[DropReason.FILTERED]).toBe(1);
  });
});

describe('hairpinning (RFC 4787 REQ-9, RFC 5382 REQ-8)', () => {
  it('lets a LAN host reach another through the public address; the target sees the public mapping', () => {
    const nat = makeNat({ filtering: 'endpoint' });
    const b = udp(HOST_B, REMOTE, 6000, 3478);
    nat.process(b, 0, b.length, 0); // B has mapping pub:6000
    const a = udp(HOST_A, PUB, 7000, 6000);
    expect(nat.process(a, 0, a.length, 1)).toBe(Verdict.FORWARD);
    checkAllChecksums(a);
    expect(parse(a)).toMatchObject({ src: PUB, sport: 7000, dst: HOST_B, dport: 6000 });
    // B answers A's public endpoint.
    const r = udp(HOST_B, PUB, 6000, 7000);
    expect(nat.process(r, 0, r.length, 2)).toBe(Verdict.FORWARD);
    checkAllChecksums(r);
    expect(parse(r)).toMatchObject({ src: PUB, sport: 6000, dst: HOST_A, dport: 7000 });
    expect(nat.stats.packets[Path.HAIRPIN]).toBe(2);
  });

  it('hairpins TCP, and a host to its own mapping (STUN’s hairpin test) even with address filtering', () => {
    const nat = makeNat({ filtering: 'address' });
    const b = tcpPacket({ src: HOST_B, dst: REMOTE, srcPort: 6000, dstPort: 80, seq: 1, ack: 0, flags: TCP_FLAGS.SYN });
    nat.process(b, 0, b.length, 0);
    const self = udp(HOST_A, REMOTE, 7000, 3478);
    nat.process(self, 0, self.length, 0);
    const toSelf = udp(HOST_A, PUB, 7000, 7000);
    expect(nat.process(toSelf, 0, toSelf.length, 1)).toBe(Verdict.FORWARD);
    expect(parse(toSelf)).toMatchObject({ src: PUB, sport: 7000, dst: HOST_A, dport: 7000 });
    // B's TCP mapping has only talked to REMOTE, but A's SYN comes from behind the NAT: the filter does
    // not apply to a hairpinned packet, so it reaches B with A's public endpoint as its source.
    const syn = tcpPacket({ src: HOST_A, dst: PUB, srcPort: 7100, dstPort: 6000, seq: 1, ack: 0, flags: TCP_FLAGS.SYN });
    expect(nat.process(syn, 0, syn.length, 1)).toBe(Verdict.FORWARD);
    expect(parse(syn)).toMatchObject({ src: PUB, sport: 7100, dst: HOST_B, dport: 6000 });
    expect(nat.stats.drops[DropReason.FILTERED]).toBe(0);
  });

  for (const filtering of ['address', 'address-port'] as const) {
    it(`RFC 5780 §4.5 under ${filtering} filtering: a fresh second socket reaches the first socket's mapping, and back`, () => {
      const nat = makeNat({ filtering });
      // Socket 1 asks the STUN server for its mapping (pub:7000) and has talked to nobody else.
      const ask = udp(HOST_A, REMOTE, 7000, 3478);
      nat.process(ask, 0, ask.length, 0);
      const answer = udp(REMOTE, PUB, 3478, 7000);
      nat.process(answer, 0, answer.length, 1);
      // Socket 2, never used before, sends to that public endpoint.
      const probe = udp(HOST_A, PUB, 7001, 7000);
      expect(nat.process(probe, 0, probe.length, 2)).toBe(Verdict.FORWARD);
      checkAllChecksums(probe);
      expect(parse(probe)).toMatchObject({ src: PUB, sport: 7001, dst: HOST_A, dport: 7000 });
      const reply = udp(HOST_A, PUB, 7000, 7001);
      expect(nat.process(reply, 0, reply.length, 3)).toBe(Verdict.FORWARD);
      expect(parse(reply)).toMatchObject({ src: PUB, sport: 7000, dst: HOST_A, dport: 7001 });
      // The same packet from outside is still filtered: only the hairpin is exempt.
      const outside = udp(OTHER, PUB, 7001, 7000);
      expect(nat.process(outside, 0, outside.length, 4)).toBe(Verdict.DROP);
      expect(nat.stats.drops[DropReason.FILTERED]).toBe(1);
    });
  }

  it('sends LAN traffic for the gateway’s own services on the public address to the gateway', () => {
    const nat = makeNat();
    const ssh = tcpPacket({ src: HOST_A, dst: PUB, srcPort: 40000, dstPort: 22, seq: 1, ack: 0, flags: TCP_FLAGS.SYN });
    expect(nat.process(ssh, 0, ssh.length, 0)).toBe(Verdict.FORWARD);
    expect(parse(ssh)).toMatchObject({ src: HOST_A, dst: PUB, dport: 22 });
    expect(nat.stats.packets[Path.LOCAL]).toBe(1);
    const ping = icmpEcho({ src: HOST_A, dst: PUB, type: 8, identifier: 5, sequence: 1 });
    expect(nat.process(ping, 0, ping.length, 0)).toBe(Verdict.FORWARD);
    expect(parse(ping).dst).toBe(PUB);
  });
});

describe('port forwards (DNAT)', () => {
  const fwd = parseForward('tcp:8080=192.168.1.10:80', internal);

  it('reaches the LAN server from the WAN, which sees the real client; replies go back as pub:8080', () => {
    const nat = makeNat({ forwards: [fwd], filtering: 'address-port' });
    const syn = tcpPacket({ src: OTHER, dst: PUB, srcPort: 50000, dstPort: 8080, seq: 9, ack: 0, flags: TCP_FLAGS.SYN });
    expect(nat.process(syn, 0, syn.length, 0)).toBe(Verdict.FORWARD);
    checkAllChecksums(syn);
    expect(parse(syn)).toMatchObject({ src: OTHER, sport: 50000, dst: HOST_A, dport: 80 });
    const synack = tcpPacket({ src: HOST_A, dst: OTHER, srcPort: 80, dstPort: 50000, seq: 1, ack: 10, flags: TCP_FLAGS.SYN | TCP_FLAGS.ACK });
    expect(nat.process(synack, 0, synack.length, 1)).toBe(Verdict.FORWARD);
    checkAllChecksums(synack);
    expect(parse(synack)).toMatchObject({ src: PUB, sport: 8080, dst: OTHER, dport: 50000 });
  });

  it('works from the LAN by hairpin', () => {
    const nat = makeNat({ forwards: [fwd] });
    const syn = tcpPacket({ src: HOST_B, dst: PUB, srcPort: 41000, dstPort: 8080, seq: 9, ack: 0, flags: TCP_FLAGS.SYN });
    expect(nat.process(syn, 0, syn.length, 0)).toBe(Verdict.FORWARD);
    expect(parse(syn)).toMatchObject({ src: PUB, sport: 41000, dst: HOST_A, dport: 80 });
    const synack = tcpPacket({ src: HOST_A, dst: PUB, srcPort: 80, dstPort: 41000, seq: 1, ack: 10, flags: TCP_FLAGS.SYN | TCP_FLAGS.ACK });
    expect(nat.process(synack, 0, synack.length, 1)).toBe(Verdict.FORWARD);
    expect(parse(synack)).toMatchObject({ src: PUB, sport: 8080, dst: HOST_B, dport: 41000 });
  });

  it('keeps the forwarded port out of the dynamic pool', () => {
    const nat = makeNat({ forwards: [fwd] });
    const p = tcpPacket({ src: HOST_B, dst: REMOTE, srcPort: 8080, dstPort: 80, seq: 1, ack: 0, flags: TCP_FLAGS.SYN });
    nat.process(p, 0, p.length, 0);
    expect(parse(p).sport).not.toBe(8080);
  });

  it('rejects bad forward specs with the item named', () => {
    expect(() => parseForward('tcp:80=203.0.113.5:80', internal)).toThrow(/not inside --internal/);
    expect(() => parseForward('icmp:80=192.168.1.2:80', internal)).toThrow(PolicyError);
    expect(() => parseForward('udp:0=192.168.1.2:80', internal)).toThrow(/ports must be/);
    expect(() => parseForward('tcp:192.168.1.9:80=192.168.1.2', internal)).toThrow(/public address 192\.168\.1\.9 is inside --internal/);
    expect(() => parseForward('tcp:203.0.113:80=192.168.1.2', internal)).toThrow(/203\.0\.113 is not a public IPv4 address/);
    expect(parseForward('udp:5060=192.168.1.20', internal)).toMatchObject({ publicAddress: 0, publicPort: 5060, port: 5060 });
    expect(parseForward('sctp:2905=192.168.1.20', internal)).toMatchObject({ protocol: 132, publicPort: 2905 });
    expect(parseForward('udplite:203.0.113.11:9000=192.168.1.20:9001', internal)).toMatchObject({ protocol: 136, publicAddress: ip('203.0.113.11'), publicPort: 9000, port: 9001 });
  });
});

describe('egress policy', () => {
  const policy = new EgressPolicy(parseEgress('tcp:80,tcp:443,udp:53,icmp,udp:123@198.51.100.0/24'));

  it('allows what is listed and drops the rest, counted', () => {
    const nat = makeNat({ egress: policy });
    const cases: [Buffer, number][] = [
      [tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 1, dstPort: 443, seq: 1, ack: 0, flags: TCP_FLAGS.SYN }), Verdict.FORWARD],
      [tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 2, dstPort: 22, seq: 1, ack: 0, flags: TCP_FLAGS.SYN }), Verdict.DROP],
      [udp(HOST_A, REMOTE, 3, 53), Verdict.FORWARD],
      [udp(HOST_A, OTHER, 4, 123), Verdict.FORWARD],
      [udp(HOST_A, REMOTE, 5, 123), Verdict.DROP],
      [icmpEcho({ src: HOST_A, dst: REMOTE, type: 8, identifier: 1, sequence: 1 }), Verdict.FORWARD],
    ];
    for (const [p, v] of cases) expect(nat.process(p, 0, p.length, 0)).toBe(v);
    expect(nat.stats.drops[DropReason.EGRESS_POLICY]).toBe(2);
  });

  it('rejects with a TCP RST or ICMP administratively prohibited when asked', () => {
    const nat = makeNat({ egress: policy, egressReject: true });
    const sink = collectingSink();
    nat.sink = sink;
    const syn = tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40000, dstPort: 22, seq: 100, ack: 0, flags: TCP_FLAGS.SYN });
    const dgram = udp(HOST_A, REMOTE, 40001, 9999);
    nat.process(syn, 0, syn.length, 0);
    nat.process(dgram, 0, dgram.length, 0);
    expect(sink.sent).toHaveLength(2);
    sink.sent.forEach(checkAllChecksums);
    const rst = parse(sink.sent[0]!);
    expect(rst).toMatchObject({ src: REMOTE, dst: HOST_A, sport: 22, dport: 40000 });
    expect(sink.sent[0]![33]! & TCP_FLAGS.RST).toBeTruthy();
    expect(sink.sent[0]!.readUInt32BE(28)).toBe(101); // acknowledges the SYN
    const icmp = sink.sent[1]!;
    expect(parse(icmp)).toMatchObject({ src: REMOTE, dst: HOST_A });
    expect([icmp[20], icmp[21]]).toEqual([3, 13]);
  });

  it('rejects unparsable allowlists with the item named', () => {
    expect(() => parseEgress('tcp:80,pptp')).toThrow(/"pptp"/); // gre, esp, sctp, ... are protocols since every protocol is translated
    expect(() => parseEgress('icmp:8')).toThrow(/no ports/);
    expect(() => parseEgress('udp:53@300.1.1.1')).toThrow(/not an address/);
  });
});

describe('limits and exhaustion', () => {
  it('limits flows per LAN host, and answers ICMP 3/13 when out of resources (RFC 5508 §6)', () => {
    const nat = makeNat({ maxFlowsPerHost: 2 });
    const sink = collectingSink();
    nat.sink = sink;
    for (let i = 0; i < 3; i++) {
      const p = udp(HOST_A, REMOTE, 1000 + i, 53);
      nat.process(p, 0, p.length, i * 1000);
    }
    const other = udp(HOST_B, REMOTE, 1000, 53);
    expect(nat.process(other, 0, other.length, 5000)).toBe(Verdict.FORWARD);
    expect(nat.stats.drops[DropReason.HOST_LIMIT]).toBe(1);
    expect(nat.flowsOfHost(HOST_A)).toBe(2);
    expect(sink.sent).toHaveLength(1);
    checkAllChecksums(sink.sent[0]!);
    expect([sink.sent[0]![20], sink.sent[0]![21]]).toEqual([3, 13]);
    nat.sweep(10 * 60_000, 1 << 20);
    expect(nat.flowsOfHost(HOST_A)).toBe(0);
  });

  it('rate-limits generated errors and can be switched off', () => {
    const nat = makeNat({ ports: [30000, 30000], excludedPorts: [], generatedPerSecond: 5 });
    const sink = collectingSink();
    nat.sink = sink;
    // The one port is held by a stream (answered, still talking 2 s later): assured, so no new flow
    // may reclaim it.
    for (const [p, t] of [[udp(HOST_A, REMOTE, 1, 53), 0], [udp(REMOTE, PUB, 53, 30000), 0], [udp(HOST_A, REMOTE, 1, 53), 2000]] as const) {
      nat.process(p, 0, p.length, t);
    }
    for (let i = 0; i < 20; i++) {
      const p = udp(HOST_B, REMOTE, 100 + i, 53);
      nat.process(p, 0, p.length, 2000);
    }
    expect(nat.stats.drops[DropReason.PORTS_EXHAUSTED]).toBe(20);
    expect(sink.sent.length).toBe(5);
    expect(nat.stats.generatedSuppressed).toBe(15);
    const quiet = makeNat({ ports: [30000, 30000], excludedPorts: [], icmpOnExhaustion: false });
    const qs = collectingSink();
    quiet.sink = qs;
    for (const p of [udp(HOST_A, REMOTE, 1, 53), udp(HOST_B, REMOTE, 2, 53)]) quiet.process(p, 0, p.length, 0);
    expect(qs.sent).toHaveLength(0);
  });
});

describe('fragments (RFC 4787 REQ-14)', () => {
  /** Split an IP packet into fragments of `size` payload bytes (multiple of 8). */
  function fragment(pkt: Buffer, size: number): Buffer[] {
    const hl = (pkt[0]! & 0x0f) * 4;
    const data = pkt.subarray(hl);
    const out: Buffer[] = [];
    for (let off = 0; off < data.length; off += size) {
      const chunk = data.subarray(off, off + size);
      const f = Buffer.concat([pkt.subarray(0, hl), chunk]);
      f.writeUInt16BE(hl + chunk.length, 2);
      const more = off + size < data.length ? 0x2000 : 0;
      f.writeUInt16BE(more | (off / 8), 6);
      f.writeUInt16BE(0, 10);
      let sum = 0;
      for (let i = 0; i < hl; i += 2) sum += f.readUInt16BE(i);
      while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
      f.writeUInt16BE(~sum & 0xffff, 10);
      out.push(f);
    }
    return out;
  }

  const big = udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40000, dstPort: 9, id: 777, payload: Buffer.alloc(3000, 7) });

  function reassemble(frags: Buffer[]): Buffer {
    const sorted = [...frags].sort((a, b) => (a.readUInt16BE(6) & 0x1fff) - (b.readUInt16BE(6) & 0x1fff));
    const head = Buffer.from(sorted[0]!.subarray(0, 20));
    const body = Buffer.concat(sorted.map((f) => f.subarray(20)));
    const whole = Buffer.concat([head, body]);
    whole.writeUInt16BE(whole.length, 2);
    whole.writeUInt16BE(0, 6);
    whole.writeUInt16BE(0, 10);
    let sum = 0;
    for (let i = 0; i < 20; i += 2) sum += whole.readUInt16BE(i);
    while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
    whole.writeUInt16BE(~sum & 0xffff, 10);
    return whole;
  }

  it('translates fragments that arrive in order; the datagram reassembles with valid checksums', () => {
    const nat = makeNat();
    const frags = fragment(Buffer.from(big), 1480);
    expect(frags).toHaveLength(3);
    for (const f of frags) expect(nat.process(f, 0, f.length, 0)).toBe(Verdict.FORWARD);
    frags.forEach((f) => expect(parse(f).src).toBe(PUB));
    const whole = reassemble(frags);
    checkAllChecksums(whole);
    expect(parse(whole)).toMatchObject({ src: PUB, sport: 40000 });
    expect(nat.fragments.size).toBe(0); // complete sets are forgotten at once
    expect(nat.flows.packets[0]).toBe(3); // the flow counts every fragment
  });

  it('holds fragments that come before the first one and sends them when it arrives', () => {
    const nat = makeNat();
    const sink = collectingSink();
    nat.sink = sink;
    const frags = fragment(Buffer.from(big), 1480);
    expect(nat.process(frags[2]!, 0, frags[2]!.length, 0)).toBe(Verdict.HELD);
    expect(nat.process(frags[1]!, 0, frags[1]!.length, 0)).toBe(Verdict.HELD);
    expect(nat.process(frags[0]!, 0, frags[0]!.length, 1)).toBe(Verdict.FORWARD);
    expect(sink.sent).toHaveLength(2);
    const whole = reassemble([frags[0]!, ...sink.sent]);
    checkAllChecksums(whole);
    expect(parse(whole).src).toBe(PUB);
  });

  it('drops overlapping fragments, bounds what it holds, and forgets incomplete sets', () => {
    const nat = makeNat({ fragments: { maxDatagrams: 4, maxHeldBytes: 4000, timeoutMs: 1000, maxFragments: 64 } });
    const frags = fragment(Buffer.from(big), 1480);
    nat.process(frags[0]!, 0, frags[0]!.length, 0);
    const overlap = Buffer.from(frags[1]!);
    overlap.writeUInt16BE(0x2000 | 100, 6); // starts inside the first fragment
    expect(nat.process(overlap, 0, overlap.length, 0)).toBe(Verdict.DROP);
    expect(nat.stats.drops[DropReason.FRAGMENT]).toBe(1);
    // Stray later fragments of datagrams whose first never comes: held up to the byte bound, then dropped.
    let held = 0;
    for (let id = 1; id <= 4; id++) {
      const g = fragment(Buffer.from(udpPacket({ src: HOST_B, dst: REMOTE, srcPort: 1, dstPort: 2, id, payload: Buffer.alloc(3000) })), 1480);
      if (nat.process(g[1]!, 0, g[1]!.length, 0) === Verdict.HELD) held++;
    }
    expect(held).toBe(2);
    expect(nat.fragments.heldBytes).toBeLessThanOrEqual(4000);
    nat.sweep(2000, 16);
    expect(nat.fragments.size).toBe(0);
    expect(nat.fragments.heldBytes).toBe(0);
  });

  it('passes fragments for the gateway itself through unchanged', () => {
    const nat = makeNat();
    const mine = udpPacket({ src: REMOTE, dst: PUB, srcPort: 9, dstPort: 25000, id: 5, payload: Buffer.alloc(2000) });
    const frags = fragment(Buffer.from(mine), 1480);
    for (const f of frags) expect(nat.process(f, 0, f.length, 0)).toBe(Verdict.FORWARD);
    expect(frags.map((f) => parse(f).dst)).toEqual([PUB, PUB]);
    expect(nat.stats.packets[Path.LOCAL]).toBe(2);
  });
});

describe('masquerade follows the WAN address', () => {
  it('uses the new address for new flows and flushes flows on the old one', () => {
    const nat = makeNat();
    const a = udp(HOST_A, REMOTE, 5000, 53);
    nat.process(a, 0, a.length, 0);
    const NEW = ip('203.0.113.50');
    expect(nat.setPublicAddress(NEW)).toBe(1);
    expect(nat.flows.size).toBe(0);
    const b = udp(HOST_A, REMOTE, 5000, 53);
    nat.process(b, 0, b.length, 1);
    expect(parse(b).src).toBe(NEW);
    const oldReply = udp(REMOTE, PUB, 53, 5000);
    expect(nat.process(oldReply, 0, oldReply.length, 2)).toBe(Verdict.DROP); // no longer ours
  });
});

describe('ICMP error checks (RFC 5508 REQ-3)', () => {
  it('drops an error whose quoted IP header checksum is wrong', async () => {
    const { icmpError } = await import('../../src/wire/build.js');
    const nat = makeNat();
    const a = udp(HOST_A, REMOTE, 33434, 33435);
    nat.process(a, 0, a.length, 0);
    const bad = Buffer.from(a);
    bad[10]! ^= 0x55; // quoted header checksum corrupted; the ICMP checksum is computed over it, so it is valid
    const err = icmpError({ src: OTHER, dst: PUB, type: 11, code: 0, quoted: bad });
    expect(nat.process(err, 0, err.length, 1)).toBe(Verdict.DROP);
    expect(nat.stats.drops[DropReason.CHECKSUM]).toBe(1);
  });

  it('drops an error whose quoted header is not a sane IPv4 header (total length below its header length)', async () => {
    const { icmpError } = await import('../../src/wire/build.js');
    const { internetChecksum } = await import('../../src/wire/checksum.js');
    const nat = makeNat();
    const a = udp(HOST_A, REMOTE, 33434, 33435);
    nat.process(a, 0, a.length, 0);
    const bad = Buffer.from(a);
    bad.writeUInt16BE(12, 2); // total length 12 < IHL 20; the quoted header checksum made right again
    bad.writeUInt16BE(0, 10);
    bad.writeUInt16BE(internetChecksum(bad, 0, 20), 10);
    const err = icmpError({ src: OTHER, dst: PUB, type: 11, code: 0, quoted: bad });
    expect(nat.process(err, 0, err.length, 1)).toBe(Verdict.DROP);
    expect(nat.stats.drops[DropReason.MALFORMED]).toBe(1);
    // The same error with the quote intact is translated: the check, not the lookup, refused it.
    const good = icmpError({ src: OTHER, dst: PUB, type: 11, code: 0, quoted: a });
    expect(nat.process(good, 0, good.length, 2)).toBe(Verdict.FORWARD);
  });
});
