import { describe, it, expect } from 'vitest';
import { Verdict, DropReason, Path } from '../../src/nat/translator.js';
import { emitIpv4Header, icmpError } from '../../src/wire/build.js';
import { ICMP_TYPE, ICMP_UNREACH_CODE } from '../../src/wire/icmp.js';
import { internetChecksum, pseudoHeaderSum } from '../../src/wire/checksum.js';
import { crc32c, readSctpChecksum, writeSctpChecksum, sctpChecksum, SCTP_CHUNK } from '../../src/wire/crc32c.js';
import { listFlows } from '../../src/conntrack/listing.js';
import { checksumsValid, decodePacket } from '../../src/observe/decode.js';
import { makeNat, checkAllChecksums, collectingSink, parse, ip, PUB, REMOTE, HOST_A, HOST_B } from './helpers.js';

const SCTP = 132;
const UDPLITE = 136;

function ipv4(proto: number, src: number, dst: number, l4: Uint8Array, frag = 0): Buffer {
  const b = Buffer.alloc(20 + l4.length);
  emitIpv4Header(b, 0, { src, dst, protocol: proto, totalLength: b.length, id: 3 });
  if (frag) {
    b.writeUInt16BE(frag, 6);
    b.writeUInt16BE(0, 10);
    b.writeUInt16BE(internetChecksum(b, 0, 20), 10);
  }
  b.set(l4, 20);
  return b;
}

/** An SCTP packet with the given chunk types (each a 4-byte chunk header and 4 bytes of value), CRC filled in. */
function sctp(src: number, dst: number, sport: number, dport: number, chunks: number[], vtag = 0x11223344): Buffer {
  const l4 = Buffer.alloc(12 + chunks.length * 8);
  l4.writeUInt16BE(sport, 0);
  l4.writeUInt16BE(dport, 2);
  l4.writeUInt32BE(vtag, 4);
  chunks.forEach((t, i) => {
    l4[12 + i * 8] = t;
    l4.writeUInt16BE(8, 12 + i * 8 + 2);
    l4.writeUInt32BE(0xa0b0c0d0 + i, 12 + i * 8 + 4);
  });
  writeSctpChecksum(l4, 0, crc32c(l4, 0, l4.length));
  return ipv4(SCTP, src, dst, l4);
}

/** The CRC32c of a packet's SCTP part computed from scratch (field zeroed in a copy). */
function sctpCrcOk(pkt: Buffer): boolean {
  const l4 = Buffer.from(pkt.subarray(20));
  const carried = readSctpChecksum(l4, 0);
  l4.fill(0, 8, 12);
  return crc32c(l4, 0, l4.length) === carried;
}

/** A UDP-Lite datagram with checksum coverage `cov` (0: all). */
function udplite(src: number, dst: number, sport: number, dport: number, payload: Buffer, cov = 0): Buffer {
  const l4 = Buffer.alloc(8 + payload.length);
  l4.writeUInt16BE(sport, 0);
  l4.writeUInt16BE(dport, 2);
  l4.writeUInt16BE(cov, 4);
  payload.copy(l4, 8);
  const pkt = ipv4(UDPLITE, src, dst, l4);
  pkt.writeUInt16BE(udpliteChecksum(pkt), 26);
  return pkt;
}

/** UDP-Lite's checksum from scratch (RFC 3828 §3.1): pseudo-header with the IP payload length, then the covered bytes. */
function udpliteChecksum(pkt: Buffer): number {
  const b = Buffer.from(pkt);
  b.writeUInt16BE(0, 26);
  const len = b.length - 20;
  const cov = b.readUInt16BE(24) || len;
  const c = internetChecksum(b, 20, cov, pseudoHeaderSum(b.readUInt32BE(12), b.readUInt32BE(16), UDPLITE, len));
  return c === 0 ? 0xffff : c;
}

const ports = (pkt: Buffer) => [pkt.readUInt16BE(20), pkt.readUInt16BE(22)];

describe('SCTP: ports translated, CRC32c computed again', () => {
  it('INIT out, INIT-ACK back, COOKIE-ECHO/ACK: mapped like UDP, CRC valid after each rewrite, ESTABLISHED', () => {
    const nat = makeNat();
    const init = sctp(HOST_A, REMOTE, 5000, 36412, [SCTP_CHUNK.INIT], 0);
    const vtagBytes = Buffer.from(init.subarray(24, 28));
    expect(nat.process(init, 0, init.length, 0)).toBe(Verdict.FORWARD);
    expect(parse(init)).toMatchObject({ src: PUB, dst: REMOTE, proto: SCTP });
    const pub = ports(init)[0]!;
    expect(pub).toBe(5000); // preserved, as for UDP
    expect(ports(init)[1]).toBe(36412);
    expect(sctpCrcOk(init)).toBe(true);
    expect(init.subarray(24, 28)).toEqual(vtagBytes);
    checkAllChecksums(init);

    const ack = sctp(REMOTE, PUB, 36412, pub, [SCTP_CHUNK.INIT_ACK]);
    expect(nat.process(ack, 0, ack.length, 1)).toBe(Verdict.FORWARD);
    expect(parse(ack)).toMatchObject({ src: REMOTE, dst: HOST_A });
    expect(ports(ack)).toEqual([36412, 5000]);
    expect(sctpCrcOk(ack)).toBe(true);
    expect(listFlows(nat.flows, 2)[0]!.state).toBe('COOKIE_WAIT');

    const echo = sctp(HOST_A, REMOTE, 5000, 36412, [SCTP_CHUNK.COOKIE_ECHO]);
    nat.process(echo, 0, echo.length, 2);
    expect(listFlows(nat.flows, 2)[0]!.state).toBe('COOKIE_ECHOED');
    const cack = sctp(REMOTE, PUB, 36412, pub, [SCTP_CHUNK.COOKIE_ACK]);
    nat.process(cack, 0, cack.length, 3);
    const [f] = listFlows(nat.flows, 3);
    expect(f).toMatchObject({ protocol: 'sctp', state: 'ESTABLISHED', secondsLeft: nat.timeouts.sctpEstablished });
  });

  it('a remapped port (port taken by another host) still gives a valid CRC both ways', () => {
    const nat = makeNat();
    const a = sctp(HOST_A, REMOTE, 5000, 36412, [SCTP_CHUNK.INIT], 0);
    nat.process(a, 0, a.length, 0);
    const b = sctp(HOST_B, REMOTE, 5000, 36412, [SCTP_CHUNK.INIT], 0);
    expect(nat.process(b, 0, b.length, 0)).toBe(Verdict.FORWARD);
    const pubB = ports(b)[0]!;
    expect(pubB).not.toBe(5000);
    expect(sctpCrcOk(b)).toBe(true);
    const back = sctp(REMOTE, PUB, 36412, pubB, [SCTP_CHUNK.INIT_ACK]);
    nat.process(back, 0, back.length, 1);
    expect(parse(back).dst).toBe(HOST_B);
    expect(ports(back)).toEqual([36412, 5000]);
    expect(sctpCrcOk(back)).toBe(true);
  });

  it('SHUTDOWN shortens the timer, ABORT closes; DATA both ways establishes a picked-up association', () => {
    const nat = makeNat();
    const d = sctp(HOST_A, REMOTE, 6000, 80, [SCTP_CHUNK.DATA]);
    nat.process(d, 0, d.length, 0);
    expect(listFlows(nat.flows, 0)[0]!.state).toBe('COOKIE_WAIT');
    const s = sctp(REMOTE, PUB, 80, 6000, [SCTP_CHUNK.SACK, SCTP_CHUNK.DATA]);
    nat.process(s, 0, s.length, 1);
    expect(listFlows(nat.flows, 1)[0]!.state).toBe('ESTABLISHED');
    const sd = sctp(HOST_A, REMOTE, 6000, 80, [SCTP_CHUNK.SHUTDOWN]);
    nat.process(sd, 0, sd.length, 2);
    expect(listFlows(nat.flows, 2)[0]).toMatchObject({ state: 'SHUTDOWN', secondsLeft: nat.timeouts.sctpShutdown });
    const ab = sctp(REMOTE, PUB, 80, 6000, [SCTP_CHUNK.ABORT]);
    nat.process(ab, 0, ab.length, 3);
    expect(listFlows(nat.flows, 3)[0]).toMatchObject({ state: 'CLOSED', secondsLeft: nat.timeouts.sctpClosed });
    expect(nat.sweep(3 + nat.timeouts.sctpClosed * 1000 + 1, 1024)).toBe(1);
  });

  it('multi-homing: a HEARTBEAT on a secondary path opens a flow of its own, its ACK establishes it', () => {
    const nat = makeNat();
    const second = ip('198.51.100.9');
    const hb = sctp(HOST_A, second, 5000, 36412, [SCTP_CHUNK.HEARTBEAT]);
    expect(nat.process(hb, 0, hb.length, 0)).toBe(Verdict.FORWARD);
    expect(listFlows(nat.flows, 0)[0]!.state).toBe('HEARTBEAT_SENT');
    const hba = sctp(second, PUB, 36412, 5000, [SCTP_CHUNK.HEARTBEAT_ACK]);
    nat.process(hba, 0, hba.length, 1);
    expect(listFlows(nat.flows, 1)[0]!.state).toBe('ESTABLISHED');
  });

  it('drops a bad CRC (never launders it), a malformed chunk, a packet that may not open a flow, and any fragment', () => {
    const nat = makeNat();
    const bad = sctp(HOST_A, REMOTE, 5000, 80, [SCTP_CHUNK.INIT], 0);
    bad[38] = bad[38]! ^ 1; // a byte of the chunk value
    expect(nat.process(bad, 0, bad.length, 0)).toBe(Verdict.DROP);
    expect(nat.lastDrop).toBe(DropReason.CHECKSUM);
    const mal = sctp(HOST_A, REMOTE, 5000, 80, [SCTP_CHUNK.INIT], 0);
    mal.writeUInt16BE(400, 34);
    expect(nat.process(mal, 0, mal.length, 0)).toBe(Verdict.DROP);
    expect(nat.lastDrop).toBe(DropReason.MALFORMED);
    const abort = sctp(HOST_A, REMOTE, 5000, 80, [SCTP_CHUNK.ABORT]);
    expect(nat.process(abort, 0, abort.length, 0)).toBe(Verdict.DROP);
    expect(nat.lastDrop).toBe(DropReason.NO_MAPPING);
    const l4 = Buffer.from(sctp(HOST_A, REMOTE, 5000, 80, [SCTP_CHUNK.INIT, SCTP_CHUNK.DATA], 0).subarray(20));
    const first = ipv4(SCTP, HOST_A, REMOTE, l4.subarray(0, 16), 0x2000);
    expect(nat.process(first, 0, first.length, 0)).toBe(Verdict.DROP);
    expect(nat.lastDrop).toBe(DropReason.FRAGMENT);
    const later = ipv4(SCTP, HOST_A, REMOTE, l4.subarray(16), 2);
    expect(nat.process(later, 0, later.length, 0)).toBe(Verdict.DROP);
    expect(nat.lastDrop).toBe(DropReason.FRAGMENT);
    expect(nat.flows.size).toBe(0);
  });

  it('ports exhausted: refused with ICMP 3/13 quoting the packet', () => {
    const nat = makeNat({ ports: [30000, 30000], excludedPorts: [] });
    const sink = collectingSink();
    nat.sink = sink;
    const a = sctp(HOST_A, REMOTE, 5000, 80, [SCTP_CHUNK.INIT], 0);
    expect(nat.process(a, 0, a.length, 0)).toBe(Verdict.FORWARD);
    // An association still opening would give its port up to the new one (port-reclaim.ts): bring A's up,
    // so that the only port is held by an assured flow.
    for (const [pkt, t] of [
      [sctp(REMOTE, PUB, 80, 30000, [SCTP_CHUNK.INIT_ACK]), 1],
      [sctp(HOST_A, REMOTE, 5000, 80, [SCTP_CHUNK.COOKIE_ECHO]), 2],
      [sctp(REMOTE, PUB, 80, 30000, [SCTP_CHUNK.COOKIE_ACK]), 3],
    ] as const) expect(nat.process(pkt, 0, pkt.length, t)).toBe(Verdict.FORWARD);
    expect(listFlows(nat.flows, 3)[0]!.state).toBe('ESTABLISHED');
    const b = sctp(HOST_B, REMOTE, 5001, 80, [SCTP_CHUNK.INIT], 0);
    expect(nat.process(b, 0, b.length, 0)).toBe(Verdict.DROP);
    expect(nat.lastDrop).toBe(DropReason.PORTS_EXHAUSTED);
    expect(sink.sent).toHaveLength(1);
    checkAllChecksums(sink.sent[0]!);
    expect(parse(sink.sent[0]!)).toMatchObject({ src: REMOTE, dst: HOST_B });
    expect([sink.sent[0]![20], sink.sent[0]![21]]).toEqual([ICMP_TYPE.DEST_UNREACH, ICMP_UNREACH_CODE.ADMIN_PROHIBITED]);
  });

  it('an ICMP error quoting an SCTP packet gets the LAN host\'s address and port back in the quote', () => {
    const nat = makeNat({ ports: [40000, 40000], excludedPorts: [] });
    const a = sctp(HOST_A, REMOTE, 5000, 80, [SCTP_CHUNK.INIT], 0);
    nat.process(a, 0, a.length, 0);
    expect(ports(a)[0]).toBe(40000);
    const err = icmpError({ src: REMOTE, dst: PUB, type: ICMP_TYPE.DEST_UNREACH, code: ICMP_UNREACH_CODE.PORT_UNREACH, quoted: a.subarray(0, 28) });
    expect(nat.process(err, 0, err.length, 1)).toBe(Verdict.FORWARD);
    checkAllChecksums(err);
    expect(parse(err).dst).toBe(HOST_A);
    expect(err.readUInt32BE(28 + 12)).toBe(HOST_A);
    expect([err.readUInt16BE(48), err.readUInt16BE(50)]).toEqual([5000, 80]);
    expect(internetChecksum(err, 28, 20)).toBe(0);
  });
});

describe('UDP-Lite: ports translated, partial-coverage checksum kept exact', () => {
  const payload = Buffer.from('udp-lite payload, partly covered');

  it.each([[0], [8], [12]])('coverage %i: out and back, checksum equal to one computed from scratch', (cov) => {
    const nat = makeNat({ ports: [40000, 40010], excludedPorts: [] });
    // Port 5000 is outside the pool, so the public port is remapped and the port words change too.
    const out = udplite(HOST_A, REMOTE, 5000, 9000, payload, cov);
    expect(nat.process(out, 0, out.length, 0)).toBe(Verdict.FORWARD);
    expect(parse(out)).toMatchObject({ src: PUB, dst: REMOTE, proto: UDPLITE });
    const pub = ports(out)[0]!;
    expect(pub).toBeGreaterThanOrEqual(40000);
    expect(out.readUInt16BE(26)).toBe(udpliteChecksum(out));
    checkAllChecksums(out);
    const back = udplite(REMOTE, PUB, 9000, pub, payload, cov);
    expect(nat.process(back, 0, back.length, 1)).toBe(Verdict.FORWARD);
    expect(parse(back).dst).toBe(HOST_A);
    expect(ports(back)).toEqual([9000, 5000]);
    expect(back.readUInt16BE(26)).toBe(udpliteChecksum(back));
    const [f] = listFlows(nat.flows, 1);
    expect(f).toMatchObject({ protocol: 'udplite', state: 'ASSURED', secondsLeft: nat.timeouts.udp });
    expect(nat.lastPath).toBe(Path.INBOUND);
  });

  it('a zero checksum and an impossible coverage are counted drops', () => {
    const nat = makeNat();
    const z = udplite(HOST_A, REMOTE, 5000, 9000, payload);
    z.writeUInt16BE(0, 26);
    expect(nat.process(z, 0, z.length, 0)).toBe(Verdict.DROP);
    expect(nat.lastDrop).toBe(DropReason.CHECKSUM);
    for (const cov of [4, payload.length + 9]) {
      const c = udplite(HOST_A, REMOTE, 5000, 9000, payload, cov);
      expect(nat.process(c, 0, c.length, 0)).toBe(Verdict.DROP);
      expect(nat.lastDrop).toBe(DropReason.MALFORMED);
    }
    expect(nat.flows.size).toBe(0);
  });

  it('fragments: the first fragment carries the ports and is translated, the rest follow', () => {
    const nat = makeNat();
    const whole = udplite(HOST_A, REMOTE, 5000, 9000, payload);
    const l4 = whole.subarray(20);
    const first = ipv4(UDPLITE, HOST_A, REMOTE, l4.subarray(0, 24), 0x2000);
    expect(nat.process(first, 0, first.length, 0)).toBe(Verdict.FORWARD);
    expect(parse(first).src).toBe(PUB);
    const later = ipv4(UDPLITE, HOST_A, REMOTE, l4.subarray(24), 3);
    expect(nat.process(later, 0, later.length, 0)).toBe(Verdict.FORWARD);
    expect(parse(later).src).toBe(PUB);
    // Put together again, the datagram's checksum is right for its new addresses.
    const joined = ipv4(UDPLITE, PUB, REMOTE, Buffer.concat([first.subarray(20), later.subarray(20)]));
    expect(joined.readUInt16BE(26)).toBe(udpliteChecksum(joined));
  });

  it('an ICMP error quoting a UDP-Lite datagram is translated with its quoted checksum patched', () => {
    const nat = makeNat();
    const out = udplite(HOST_A, REMOTE, 5000, 9000, payload);
    nat.process(out, 0, out.length, 0);
    const err = icmpError({ src: REMOTE, dst: PUB, type: ICMP_TYPE.DEST_UNREACH, code: ICMP_UNREACH_CODE.PORT_UNREACH, quoted: out });
    expect(nat.process(err, 0, err.length, 1)).toBe(Verdict.FORWARD);
    checkAllChecksums(err);
    const quoted = Buffer.from(err.subarray(28));
    expect(quoted.readUInt32BE(12)).toBe(HOST_A);
    expect(ports(quoted)).toEqual([5000, 9000]);
    expect(quoted.readUInt16BE(26)).toBe(udpliteChecksum(quoted));
  });
});

describe('port forwards for SCTP and UDP-Lite', () => {
  it('an SCTP INIT from outside reaches the LAN server behind sctp:2905, CRC valid both ways; its reply leaves from the forwarded port', () => {
    const nat = makeNat({ forwards: [{ protocol: SCTP, publicPort: 2905, address: HOST_B, port: 2906 }] });
    const init = sctp(REMOTE, PUB, 40001, 2905, [SCTP_CHUNK.INIT]);
    expect(nat.process(init, 0, init.length, 0)).toBe(Verdict.FORWARD);
    expect(parse(init).dst).toBe(HOST_B);
    expect(ports(init)).toEqual([40001, 2906]);
    expect(sctpCrcOk(init)).toBe(true);
    const ack = sctp(HOST_B, REMOTE, 2906, 40001, [SCTP_CHUNK.INIT_ACK]);
    expect(nat.process(ack, 0, ack.length, 1)).toBe(Verdict.FORWARD);
    expect(parse(ack).src).toBe(PUB);
    expect(ports(ack)).toEqual([2905, 40001]);
    expect(sctpCrcOk(ack)).toBe(true);
    expect(nat.mappings.pool(SCTP)!.isFree(2905)).toBe(false);
  });

  it('a UDP-Lite datagram to udplite:9000 reaches its LAN host with the checksum exact', () => {
    const nat = makeNat({ forwards: [{ protocol: UDPLITE, publicPort: 9000, address: HOST_A, port: 9000 }] });
    const d = udplite(REMOTE, PUB, 7000, 9000, Buffer.from('forwarded'), 8);
    expect(nat.process(d, 0, d.length, 0)).toBe(Verdict.FORWARD);
    expect(parse(d).dst).toBe(HOST_A);
    expect(d.readUInt16BE(26)).toBe(udpliteChecksum(d));
  });
});

describe('the trace sees SCTP and UDP-Lite', () => {
  it('decodes their ports and checks their checksums from scratch (CRC32c, UDP-Lite coverage)', () => {
    const nat = makeNat();
    const s = sctp(HOST_A, REMOTE, 5000, 80, [SCTP_CHUNK.INIT], 0);
    nat.process(s, 0, s.length, 0);
    expect(checksumsValid(s, 0, s.length)).toBe(true);
    expect(decodePacket(s, 0, s.length)).toMatchObject({ protocol: 'sctp', srcPort: 5000, dstPort: 80 });
    s[s.length - 1] = s[s.length - 1]! ^ 0xff;
    expect(checksumsValid(s, 0, s.length)).toBe(false);
    const u = udplite(HOST_A, REMOTE, 5000, 9000, Buffer.from('covered only in part'), 10);
    nat.process(u, 0, u.length, 0);
    expect(checksumsValid(u, 0, u.length)).toBe(true);
    expect(decodePacket(u, 0, u.length)).toMatchObject({ protocol: 'udplite', srcPort: 5000, dstPort: 9000 });
    u[u.length - 1] = u[u.length - 1]! ^ 0xff; // outside the coverage: still valid
    expect(checksumsValid(u, 0, u.length)).toBe(true);
    u[29] = u[29]! ^ 0xff; // inside it
    expect(checksumsValid(u, 0, u.length)).toBe(false);
  });
});
