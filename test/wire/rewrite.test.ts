/**
 * The NAT's in-place rewrites (src/wire/rewrite.ts), each checked against a full recomputation of every
 * checksum it patches, on packets built at odd places in buffers pre-filled with 0xa5.
 */
import { describe, expect, it } from 'vitest';
import { emitIpv4IcmpEcho, emitIpv4Tcp, emitIpv4Udp } from '../../src/wire/build.js';
import { csumApply, csumDiff16, csumDiff32, csumUpdate16, csumUpdate32, fold16, internetChecksum, pseudoHeaderSum, sum16 } from '../../src/wire/checksum.js';
import { rd16 } from '../../src/wire/bytes.js';
import { IPPROTO } from '../../src/wire/ipv4.js';
import { TCP_FLAGS } from '../../src/wire/tcp.js';
import { l4ChecksumOffset, rewriteIcmpIdentifier, rewriteIpv4Header, rewritePorts, rewriteTransportEndpoints } from '../../src/wire/rewrite.js';
import { prng, randomBytes } from '../fixtures/wire/fixtures.js';

const AT = 37; // an odd offset: nothing may assume alignment

function buffer(): Buffer {
  return Buffer.alloc(2048, 0xa5);
}

/** The transport checksum as a full computation gives it (UDP: 0 → 0xffff). */
function fullL4(buf: Uint8Array, ip: number, proto: number): number {
  const hl = (buf[ip]! & 0x0f) * 4;
  const total = rd16(buf, ip + 2);
  const at = ip + hl + (proto === IPPROTO.UDP ? 6 : 16);
  const copy = Uint8Array.from(buf.subarray(0, ip + total));
  copy[at] = 0;
  copy[at + 1] = 0;
  const src = rd16(buf, ip + 12) * 0x10000 + rd16(buf, ip + 14);
  const dst = rd16(buf, ip + 16) * 0x10000 + rd16(buf, ip + 18);
  const c = internetChecksum(copy, ip + hl, total - hl, pseudoHeaderSum(src, dst, proto, total - hl));
  return proto === IPPROTO.UDP && c === 0 ? 0xffff : c;
}

function ipHeaderValid(buf: Uint8Array, ip: number): boolean {
  return fold16(sum16(buf, ip, (buf[ip]! & 0x0f) * 4)) === 0xffff;
}

describe('csumDiff16 / csumDiff32 / csumApply', () => {
  it('agree with csumUpdate16/32 applied one after the other', () => {
    const r = prng(11);
    for (let i = 0; i < 2000; i++) {
      const c = r.u16();
      const [o16, n16, o32, n32] = [r.u16(), r.u16(), r.u32(), r.u32()];
      expect(csumApply(c, csumDiff16(o16, n16) + csumDiff32(o32, n32))).toBe(csumUpdate32(csumUpdate16(c, o16, n16), o32, n32));
    }
  });
});

describe('rewriteTransportEndpoints + rewriteIpv4Header, full checksums', () => {
  for (const proto of [IPPROTO.UDP, IPPROTO.TCP]) {
    it(`${proto === IPPROTO.UDP ? 'UDP' : 'TCP'}: addresses, ports and TTL patched equal a full recomputation`, () => {
      const r = prng(proto);
      for (let i = 0; i < 500; i++) {
        const buf = buffer();
        const o = { src: r.u32(), dst: r.u32(), srcPort: r.u16(), dstPort: r.u16(), payload: randomBytes(r, r.int(200)), ttl: 1 + r.int(255) };
        const len = proto === IPPROTO.UDP
          ? emitIpv4Udp(buf, AT, o)
          : emitIpv4Tcp(buf, AT, { ...o, seq: r.u32(), ack: r.u32(), flags: TCP_FLAGS.ACK });
        // Change any subset of the four fields (also none).
        const n = {
          src: r.int(2) ? r.u32() : o.src, dst: r.int(2) ? r.u32() : o.dst,
          sport: r.int(2) ? r.u16() : o.srcPort, dport: r.int(2) ? r.u16() : o.dstPort,
        };
        const l4 = AT + 20;
        rewriteTransportEndpoints(buf, l4, proto, false, o.src, o.dst, o.srcPort, o.dstPort, n.src, n.dst, n.sport, n.dport);
        rewriteIpv4Header(buf, AT, o.src, o.dst, n.src, n.dst, true);
        expect(buf.readUInt32BE(AT + 12)).toBe(n.src);
        expect(buf.readUInt32BE(AT + 16)).toBe(n.dst);
        expect(rd16(buf, l4)).toBe(n.sport);
        expect(rd16(buf, l4 + 2)).toBe(n.dport);
        expect(buf[AT + 8]).toBe(o.ttl === 255 ? 255 : o.ttl + 1);
        expect(ipHeaderValid(buf, AT)).toBe(true);
        expect(rd16(buf, l4 + (proto === IPPROTO.UDP ? 6 : 16))).toBe(fullL4(buf, AT, proto));
        expect(buf[AT - 1]).toBe(0xa5);
        expect(buf[AT + len]).toBe(0xa5);
      }
    });
  }

  it('UDP checksum 0 ("none") stays 0', () => {
    const buf = buffer();
    const len = emitIpv4Udp(buf, AT, { src: 1, dst: 2, srcPort: 3, dstPort: 4, payload: new Uint8Array(10), checksum: false });
    rewriteTransportEndpoints(buf, AT + 20, IPPROTO.UDP, false, 1, 2, 3, 4, 0xc0a80001, 2, 5000, 4);
    expect(rd16(buf, AT + 26)).toBe(0);
  });

  it('a quote cut before the TCP checksum gets its ports (rewritePorts), and nothing past them is touched', () => {
    const buf = buffer();
    emitIpv4Tcp(buf, AT, { src: 1, dst: 2, srcPort: 3, dstPort: 4, seq: 5, ack: 6, flags: TCP_FLAGS.SYN });
    const end = AT + 20 + 8; // 8 bytes of TCP header quoted, as RFC 792 asks
    expect(l4ChecksumOffset(IPPROTO.TCP) + 2).toBeGreaterThan(8); // so icmp-error.ts takes rewritePorts here
    const after = Buffer.from(buf.subarray(AT + 24, end + 40));
    rewritePorts(buf, AT + 20, 7, 8);
    expect(rd16(buf, AT + 20)).toBe(7);
    expect(rd16(buf, AT + 22)).toBe(8);
    expect(Buffer.from(buf.subarray(AT + 24, end + 40))).toEqual(after);
  });

  it('a header quoted in an ICMP error keeps its TTL', () => {
    const buf = buffer();
    emitIpv4Udp(buf, AT, { src: 1, dst: 2, srcPort: 3, dstPort: 4, payload: new Uint8Array(4), ttl: 7 });
    rewriteIpv4Header(buf, AT, 1, 2, 0xcb007101, 2, false);
    expect(buf[AT + 8]).toBe(7);
    expect(ipHeaderValid(buf, AT)).toBe(true);
  });
});

describe('partial checksums (virtio NEEDS_CSUM)', () => {
  it('the field keeps the pseudo-header sum of the new addresses; finishing it gives the full checksum', () => {
    const r = prng(5);
    for (const proto of [IPPROTO.UDP, IPPROTO.TCP]) {
      for (let i = 0; i < 200; i++) {
        const buf = buffer();
        const o = { src: r.u32(), dst: r.u32(), srcPort: r.u16(), dstPort: r.u16(), payload: randomBytes(r, 1 + r.int(100)) };
        const len = proto === IPPROTO.UDP
          ? emitIpv4Udp(buf, AT, o)
          : emitIpv4Tcp(buf, AT, { ...o, seq: r.u32(), ack: r.u32(), flags: TCP_FLAGS.ACK });
        const l4 = AT + 20;
        const at = l4 + (proto === IPPROTO.UDP ? 6 : 16);
        // What a sender with checksum offload hands over: the folded pseudo-header sum, not complemented.
        buf.writeUInt16BE(fold16(pseudoHeaderSum(o.src, o.dst, proto, len - 20)), at);
        const n = { src: r.u32(), dst: r.u32(), sport: r.u16(), dport: r.u16() };
        rewriteTransportEndpoints(buf, l4, proto, true, o.src, o.dst, o.srcPort, o.dstPort, n.src, n.dst, n.sport, n.dport);
        rewriteIpv4Header(buf, AT, o.src, o.dst, n.src, n.dst, true);
        expect(fold16(rd16(buf, at))).toBe(fold16(pseudoHeaderSum(n.src, n.dst, proto, len - 20)));
        // The device completes it: sum over the L4 bytes starting from the stored pseudo-header sum.
        const stored = rd16(buf, at);
        buf.writeUInt16BE(0, at);
        let c = internetChecksum(buf, l4, len - 20, stored);
        if (proto === IPPROTO.UDP && c === 0) c = 0xffff;
        buf.writeUInt16BE(c, at);
        expect(c).toBe(fullL4(buf, AT, proto));
      }
    }
  });
});

describe('rewriteIcmpIdentifier', () => {
  it('patches the checksum as a full recomputation would, and leaves a partial one alone', () => {
    const r = prng(9);
    for (let i = 0; i < 500; i++) {
      const buf = buffer();
      const len = emitIpv4IcmpEcho(buf, AT, { src: 1, dst: 2, type: 8, identifier: r.u16(), sequence: r.u16(), payload: randomBytes(r, r.int(64)) });
      const id = r.u16();
      rewriteIcmpIdentifier(buf, AT + 20, false, id);
      expect(rd16(buf, AT + 24)).toBe(id);
      expect(fold16(sum16(buf, AT + 20, len - 20))).toBe(0xffff);
    }
    const buf = buffer();
    emitIpv4IcmpEcho(buf, AT, { src: 1, dst: 2, type: 8, identifier: 1, sequence: 2 });
    const before = rd16(buf, AT + 22);
    rewriteIcmpIdentifier(buf, AT + 20, true, 0x4242);
    expect(rd16(buf, AT + 24)).toBe(0x4242);
    expect(rd16(buf, AT + 22)).toBe(before);
  });
});
