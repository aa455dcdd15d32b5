import { describe, expect, it } from 'vitest';
import { emitIpv4IcmpEcho, emitIpv4IcmpError, emitIpv4Udp, emitIpv4Tcp } from '../../src/wire/build.js';
import { csumUpdate16, csumUpdate32 } from '../../src/wire/checksum.js';
import {
  ICMP_TYPE,
  ICMP_UNREACH_CODE,
  ICMP_VERDICT_NAMES,
  IcmpVerdict,
  IcmpView,
} from '../../src/wire/icmp.js';
import { IPPROTO, Ipv4Verdict, Ipv4View } from '../../src/wire/ipv4.js';
import { TCP_FLAGS, TCP_OFF, TcpVerdict, TcpView } from '../../src/wire/tcp.js';
import { UDP_OFF, UdpVerdict, UdpView } from '../../src/wire/udp.js';
import {
  PACKETS,
  atOddOffset,
  bytesOf,
  fixture,
  ip,
  prng,
  randomBytes,
  referenceChecksum,
  type IcmpFields,
} from '../fixtures/wire/fixtures.js';

const icmpFixtures = PACKETS.filter((p) => p.l4?.kind === 'icmp');

describe('IcmpView on scapy fixtures', () => {
  it.each(icmpFixtures.map((p) => [p.name, p] as const))('%s: every field, class, checksum', (_n, p) => {
    const want = p.l4 as IcmpFields;
    for (const bytes of [bytesOf(p), atOddOffset(bytesOf(p))]) {
      const v = new Ipv4View();
      const m = new IcmpView();
      expect(v.wrap(bytes, 0, bytes.length)).toBe(Ipv4Verdict.OK);
      expect(m.wrap(bytes, v.payloadOffset, v.payloadLength)).toBe(IcmpVerdict.OK);
      expect(m.type).toBe(want.type);
      expect(m.code).toBe(want.code);
      expect(m.checksum).toBe(want.checksum);
      expect(m.length).toBe(v.payloadLength);
      if (want.identifier !== undefined) {
        expect(m.identifier).toBe(want.identifier);
        expect(m.sequence).toBe(want.sequence);
      }
      expect(m.nextHopMtu).toBe(want.nextHopMtu ?? 0);
      expect(m.verifyChecksum()).toBe(true);
      m.checksum = 0;
      expect(m.verifyChecksum()).toBe(false);
      m.fillChecksum();
      expect(m.checksum).toBe(want.checksum);
    }
  });

  it.each(icmpFixtures.filter((p) => p.inner !== undefined).map((p) => [p.name, p] as const))(
    '%s: the quoted packet parses at innerOffset',
    (_n, p) => {
      const bytes = atOddOffset(bytesOf(p));
      const outer = new Ipv4View();
      const m = new IcmpView();
      const inner = new Ipv4View();
      outer.wrap(bytes, 0, bytes.length);
      m.wrap(bytes, outer.payloadOffset, outer.payloadLength);
      expect(m.isError).toBe(true);
      expect(m.innerOffset).toBe(outer.payloadOffset + 8);
      expect(m.innerLength).toBe(outer.payloadLength - 8);
      expect(inner.wrapQuoted(bytes, m.innerOffset, m.innerLength)).toBe(Ipv4Verdict.OK);
      const want = p.inner!;
      expect(inner.sourceAddress).toBe(ip(want.ip.src));
      expect(inner.destinationAddress).toBe(ip(want.ip.dst));
      expect(inner.protocol).toBe(want.ip.protocol);
      expect(inner.totalLength).toBe(want.ip.totalLength);
      expect(inner.headerChecksum).toBe(want.ip.headerChecksum);
      // Ports are in the first 8 bytes of L4, which every quote carries.
      const l4 = inner.payloadOffset;
      expect((bytes[l4]! << 8) | bytes[l4 + 1]!).toBe(want.l4 && 'sourcePort' in want.l4 ? want.l4.sourcePort : -1);
      expect((bytes[l4 + 2]! << 8) | bytes[l4 + 3]!).toBe(want.l4 && 'destinationPort' in want.l4 ? want.l4.destinationPort : -1);
    },
  );
});

describe('ICMP type classes', () => {
  const queries = new Set([0, 8, 13, 14]);
  const requests = new Set([8, 13]);
  const errors = new Set([3, 4, 5, 11, 12]);
  it('classifies all 256 types', () => {
    const b = Buffer.alloc(8);
    const m = new IcmpView();
    m.wrap(b, 0, 8);
    for (let t = 0; t < 256; t++) {
      m.type = t;
      expect([m.isQuery, m.isQueryRequest, m.isError], `type ${t}`).toEqual([queries.has(t), requests.has(t), errors.has(t)]);
    }
  });

  it('names the types and codes NAT uses', () => {
    expect(ICMP_TYPE).toMatchObject({ ECHO_REPLY: 0, DEST_UNREACH: 3, ECHO_REQUEST: 8, TIME_EXCEEDED: 11, PARAM_PROBLEM: 12 });
    expect(ICMP_UNREACH_CODE).toMatchObject({ HOST_UNREACH: 1, PORT_UNREACH: 3, FRAG_NEEDED: 4, ADMIN_PROHIBITED: 13 });
  });

  it.each([
    { name: 'frag needed', hex: '0304000000000578', mtu: 1400 },
    { name: 'frag needed from a pre-RFC 1191 router', hex: '0304000000000000', mtu: 0 },
    { name: 'port unreachable', hex: '0303000000000578', mtu: 0 },
    { name: 'time exceeded with code 4', hex: '0b04000000000578', mtu: 0 },
  ])('nextHopMtu: $name → $mtu', ({ hex, mtu }) => {
    const b = Buffer.from(hex, 'hex');
    const m = new IcmpView();
    m.wrap(b, 0, 8);
    expect(m.nextHopMtu).toBe(mtu);
  });
});

function reference(m: IcmpView): number {
  const msg = Uint8Array.from(m.buf.subarray(m.off, m.off + m.length));
  msg[2] = 0;
  msg[3] = 0;
  return referenceChecksum(msg);
}

describe('IcmpView incremental updates against a full recompute', () => {
  it('setIdentifierWithChecksum over 3000 random echo messages (odd payloads, zero-sum targets)', () => {
    const rng = prng(0x1c);
    const m = new IcmpView();
    let zeros = 0;
    for (let i = 0; i < 3000; i++) {
      const payload = randomBytes(rng, rng.int(64));
      const buf = new Uint8Array(28 + payload.length + 3);
      const n = emitIpv4IcmpEcho(buf, 1, {
        src: rng.u32(),
        dst: rng.u32(),
        type: rng.int(2) === 0 ? 0 : 8,
        identifier: rng.u16(),
        sequence: rng.u16(),
        payload,
      });
      expect(m.wrap(buf, 21, n - 20)).toBe(IcmpVerdict.OK);
      let id = rng.u16();
      if (i % 4 === 0) {
        // The identifier that makes the message sum -0.
        const msg = Uint8Array.from(buf.subarray(21, 1 + n));
        msg.fill(0, 2, 6);
        id = referenceChecksum(msg);
      }
      m.setIdentifierWithChecksum(id);
      expect(m.identifier).toBe(id);
      expect(m.checksum, `message ${i}`).toBe(reference(m));
      expect(m.verifyChecksum()).toBe(true);
      if (m.checksum === 0) zeros++;
    }
    expect(zeros).toBeGreaterThanOrEqual(750);
  });

  /**
   * What NAT does to an ICMP error travelling back to the LAN: rewrite the quoted packet's source
   * address (and its IP checksum) and source port (and its L4 checksum, when quoted), patching
   * the ICMP checksum for every word changed, then the outer destination.
   */
  function translateError(buf: Uint8Array, n: number, newAddr: number, newPort: number): void {
    const outer = new Ipv4View();
    const m = new IcmpView();
    const inner = new Ipv4View();
    expect(outer.wrap(buf, 0, n)).toBe(Ipv4Verdict.OK);
    expect(m.wrap(buf, outer.payloadOffset, outer.payloadLength)).toBe(IcmpVerdict.OK);
    expect(inner.wrapQuoted(buf, m.innerOffset, m.innerLength)).toBe(Ipv4Verdict.OK);
    const l4 = inner.payloadOffset;
    const oldAddr = inner.sourceAddress;
    const oldIpCsum = inner.headerChecksum;
    inner.setSourceAddressWithChecksum(newAddr);
    m.updateChecksumFor32(oldAddr, newAddr);
    m.updateChecksumFor16(oldIpCsum, inner.headerChecksum);
    const oldPort = (buf[l4]! << 8) | buf[l4 + 1]!;
    buf[l4] = newPort >>> 8;
    buf[l4 + 1] = newPort & 0xff;
    m.updateChecksumFor16(oldPort, newPort);
    const csumAt = l4 + (inner.protocol === IPPROTO.UDP ? UDP_OFF.CHECKSUM : TCP_OFF.CHECKSUM);
    if (csumAt + 2 > m.innerOffset + m.innerLength) return; // L4 checksum not quoted
    const oldL4 = (buf[csumAt]! << 8) | buf[csumAt + 1]!;
    if (inner.protocol === IPPROTO.UDP && oldL4 === 0) return; // "no checksum" stays 0
    let c = csumUpdate16(csumUpdate32(oldL4, oldAddr, newAddr), oldPort, newPort);
    if (inner.protocol === IPPROTO.UDP && c === 0) c = 0xffff;
    buf[csumAt] = c >>> 8;
    buf[csumAt + 1] = c & 0xff;
    m.updateChecksumFor16(oldL4, c);
  }

  it('rewriting the quoted packet with updateChecksumFor16/32 keeps every checksum exact', () => {
    const rng = prng(0x2e);
    const outer = new Ipv4View();
    const m = new IcmpView();
    const inner = new Ipv4View();
    const u = new UdpView();
    const t = new TcpView();
    for (let i = 0; i < 1000; i++) {
      const quoted = new Uint8Array(1600);
      const kind = rng.int(3); // 0: UDP with checksum, 1: UDP without, 2: TCP
      const common = { src: rng.u32(), dst: rng.u32(), srcPort: rng.u16(), dstPort: rng.u16(), payload: randomBytes(rng, rng.int(1000)) };
      const qn =
        kind === 2
          ? emitIpv4Tcp(quoted, 0, { ...common, seq: rng.u32(), ack: rng.u32(), flags: TCP_FLAGS.ACK })
          : emitIpv4Udp(quoted, 0, { ...common, checksum: kind === 0 });
      // Some routers quote only the RFC 792 minimum (IP header + 8 bytes); Linux quotes up to 576.
      const quoteLen = rng.int(3) === 0 ? 28 : qn;
      const buf = new Uint8Array(600);
      const n = emitIpv4IcmpError(buf, 0, {
        src: rng.u32(),
        dst: rng.u32(),
        type: ICMP_TYPE.DEST_UNREACH,
        code: ICMP_UNREACH_CODE.PORT_UNREACH,
        quoted: quoted.subarray(0, quoteLen),
      });
      translateError(buf, n, rng.u32(), rng.u16());
      outer.wrap(buf, 0, n);
      m.wrap(buf, outer.payloadOffset, outer.payloadLength);
      expect(inner.wrapQuoted(buf, m.innerOffset, m.innerLength)).toBe(Ipv4Verdict.OK);
      expect(m.checksum, `error ${i}`).toBe(reference(m));
      expect(m.verifyChecksum()).toBe(true);
      expect(outer.verifyChecksum()).toBe(true);
      expect(inner.verifyChecksum()).toBe(true);
      if (inner.truncated) continue;
      // A whole quoted datagram or segment can be checked end to end.
      if (kind === 2) {
        expect(t.wrap(buf, inner.payloadOffset, inner.payloadLength)).toBe(TcpVerdict.OK);
        expect(t.verifyChecksum(inner.sourceAddress, inner.destinationAddress)).toBe(true);
      } else {
        expect(u.wrap(buf, inner.payloadOffset, inner.payloadLength)).toBe(UdpVerdict.OK);
        expect(u.checksum === 0).toBe(kind === 1);
        expect(u.verifyChecksum(inner.sourceAddress, inner.destinationAddress)).toBe(true);
      }
    }
  });
});

describe('IcmpView impossible lengths', () => {
  const echo = bytesOf(fixture('icmp_echo_reply_odd')).subarray(20);
  it.each([
    { name: 'empty', len: 0, want: IcmpVerdict.TRUNCATED },
    { name: '7 bytes', len: 7, want: IcmpVerdict.TRUNCATED },
    { name: 'len beyond the buffer', len: echo.length + 1, want: IcmpVerdict.TRUNCATED },
    { name: 'header only', len: 8, want: IcmpVerdict.OK },
    { name: 'whole', len: echo.length, want: IcmpVerdict.OK },
  ])('$name → $want', ({ len, want }) => {
    const m = new IcmpView();
    expect(ICMP_VERDICT_NAMES[m.wrap(echo, 0, len)]).toBe(ICMP_VERDICT_NAMES[want]);
  });

  it('the checksum covers exactly the wrapped length', () => {
    const m = new IcmpView();
    m.wrap(echo, 0, echo.length);
    expect(m.verifyChecksum()).toBe(true);
    m.wrap(echo, 0, echo.length - 1);
    expect(m.verifyChecksum()).toBe(false);
  });

  it('a failed wrap keeps the previous message', () => {
    const m = new IcmpView();
    m.wrap(echo, 0, echo.length);
    expect(m.wrap(echo, 3, echo.length)).toBe(IcmpVerdict.TRUNCATED);
    expect(m.off).toBe(0);
    expect(m.identifier).toBe(45123);
  });

  it('a quote too short for an IP header is rejected by the inner view', () => {
    const b = bytesOf(fixture('icmp_port_unreach_udp'));
    const m = new IcmpView();
    m.wrap(b, 20, 8 + 19);
    expect(new Ipv4View().wrapQuoted(b, m.innerOffset, m.innerLength)).toBe(Ipv4Verdict.TRUNCATED);
  });
});

