import { describe, expect, it } from 'vitest';
import { internetChecksum } from '../../src/wire/checksum.js';
import { IPPROTO, IPV4_OFF, Ipv4Verdict, Ipv4View, IPV4_VERDICT_NAMES } from '../../src/wire/ipv4.js';
import { PACKETS, atOddOffset, bytesOf, fixture, ip, prng, randomBytes, referenceChecksum, type Rng } from '../fixtures/wire/fixtures.js';

describe('Ipv4View on scapy fixtures', () => {
  it.each(PACKETS.map((p) => [p.name, p] as const))('%s: every field', (_name, p) => {
    for (const bytes of [bytesOf(p), atOddOffset(bytesOf(p))]) {
      const v = new Ipv4View();
      expect(v.wrap(bytes, 0, bytes.length)).toBe(Ipv4Verdict.OK);
      expect(v.version).toBe(p.ip.version);
      expect(v.headerLength).toBe(p.ip.headerLength);
      expect(v.dscpEcn).toBe(p.ip.dscpEcn);
      expect(v.totalLength).toBe(p.ip.totalLength);
      expect(v.identification).toBe(p.ip.identification);
      expect(v.dontFragment).toBe(p.ip.dontFragment);
      expect(v.moreFragments).toBe(p.ip.moreFragments);
      expect(v.fragmentOffset).toBe(p.ip.fragmentOffset);
      expect(v.isFragment).toBe(p.ip.moreFragments || p.ip.fragmentOffset !== 0);
      expect(v.ttl).toBe(p.ip.ttl);
      expect(v.protocol).toBe(p.ip.protocol);
      expect(v.headerChecksum).toBe(p.ip.headerChecksum);
      expect(v.sourceAddress).toBe(ip(p.ip.src));
      expect(v.destinationAddress).toBe(ip(p.ip.dst));
      expect(v.payloadOffset).toBe(p.ip.headerLength);
      expect(v.payloadLength).toBe(p.ip.totalLength - p.ip.headerLength);
      expect(v.truncated).toBe(false);
      expect(v.verifyChecksum()).toBe(true);
    }
  });

  it('fillChecksum reproduces the stored checksum, options included', () => {
    for (const p of PACKETS) {
      const b = bytesOf(p);
      const v = new Ipv4View();
      v.wrap(b, 0, b.length);
      v.headerChecksum = 0x5a5a;
      expect(v.verifyChecksum()).toBe(false);
      v.fillChecksum();
      expect(v.headerChecksum, p.name).toBe(p.ip.headerChecksum);
      expect(b.toString('hex')).toBe(p.hex);
    }
  });

  it('plain setters write the bytes and round-trip through the getters', () => {
    const b = bytesOf(fixture('udp_dns_query'));
    const v = new Ipv4View();
    v.wrap(b, 0, b.length);
    v.dscpEcn = 0x2e << 2;
    v.identification = 0xfedc;
    v.dontFragment = false;
    v.moreFragments = true;
    v.fragmentOffset = 0x1abc;
    v.ttl = 3;
    v.protocol = IPPROTO.TCP;
    v.sourceAddress = ip('203.0.113.1');
    v.destinationAddress = 0xffffffff;
    expect([v.dscpEcn, v.identification, v.dontFragment, v.moreFragments, v.fragmentOffset, v.ttl, v.protocol]).toEqual([
      0xb8, 0xfedc, false, true, 0x1abc, 3, 6,
    ]);
    expect(v.sourceAddress).toBe(ip('203.0.113.1'));
    expect(v.destinationAddress).toBe(0xffffffff);
    expect(b.subarray(6, 8).toString('hex')).toBe('3abc');
    v.dontFragment = true;
    v.moreFragments = false;
    expect(b.subarray(6, 8).toString('hex')).toBe('5abc');
    expect(v.isFragment).toBe(true);
    v.fragmentOffset = 0;
    expect(v.isFragment).toBe(false);
    expect(v.verifyChecksum()).toBe(false); // plain setters leave the checksum alone
    v.fillChecksum();
    expect(v.verifyChecksum()).toBe(true);
  });
});

/** A random valid IPv4 header with IHL 5..15 and random options and payload bytes. */
function randomPacket(rng: Rng): Buffer {
  const ihl = 5 + (rng.int(3) === 0 ? rng.int(11) : 0);
  const payload = rng.int(40);
  const b = randomBytes(rng, ihl * 4 + payload);
  b[0] = 0x40 | ihl;
  b.writeUInt16BE(b.length, IPV4_OFF.TOTAL_LENGTH);
  b.writeUInt16BE(0, IPV4_OFF.CHECKSUM);
  b.writeUInt16BE(internetChecksum(b, 0, ihl * 4), IPV4_OFF.CHECKSUM);
  return b;
}

function fullChecksum(b: Uint8Array, hlen: number): number {
  const h = Uint8Array.from(b.subarray(0, hlen));
  h[IPV4_OFF.CHECKSUM] = 0;
  h[IPV4_OFF.CHECKSUM + 1] = 0;
  return referenceChecksum(h);
}

/** An address that drives the new header sum to -0, so the new checksum is 0x0000. */
function addressForZeroChecksum(v: Ipv4View, field: number, rng: Rng): number {
  const b = Uint8Array.from(v.buf.subarray(v.off, v.off + v.headerLength));
  b.fill(0, field, field + 4);
  b[IPV4_OFF.CHECKSUM] = 0;
  b[IPV4_OFF.CHECKSUM + 1] = 0;
  const hi = rng.u16();
  b[field] = hi >>> 8;
  b[field + 1] = hi & 0xff;
  // Checksum of the rest is ~sum; putting exactly that in the low word makes the sum -0.
  const lo = internetChecksum(b, 0, b.length);
  return (hi * 0x10000 + lo) >>> 0;
}

describe('Ipv4View incremental setters against a full recompute', () => {
  const setters = [
    {
      name: 'setSourceAddressWithChecksum',
      apply: (v: Ipv4View, rng: Rng, edge: boolean) =>
        v.setSourceAddressWithChecksum(edge ? addressForZeroChecksum(v, IPV4_OFF.SOURCE, rng) : rng.u32()),
    },
    {
      name: 'setDestinationAddressWithChecksum',
      apply: (v: Ipv4View, rng: Rng, edge: boolean) =>
        v.setDestinationAddressWithChecksum(edge ? addressForZeroChecksum(v, IPV4_OFF.DESTINATION, rng) : rng.u32()),
    },
    { name: 'setTtlWithChecksum', apply: (v: Ipv4View, rng: Rng) => v.setTtlWithChecksum(rng.int(256)) },
  ] as const;

  it.each(setters)('$name over 3000 random headers', ({ apply }) => {
    const rng = prng(0x1b4);
    const v = new Ipv4View();
    for (let i = 0; i < 3000; i++) {
      const pkt = atOddOffset(randomPacket(rng));
      expect(v.wrap(pkt, 0, pkt.length)).toBe(Ipv4Verdict.OK);
      apply(v, rng, i % 5 === 0);
      expect(v.headerChecksum, `packet ${i}`).toBe(fullChecksum(pkt, v.headerLength));
      expect(v.verifyChecksum()).toBe(true);
    }
  });

  it('address setters hit the 0x0000 result and never produce 0xffff', () => {
    const rng = prng(77);
    const v = new Ipv4View();
    let zeros = 0;
    for (let i = 0; i < 500; i++) {
      const pkt = randomPacket(rng);
      v.wrap(pkt, 0, pkt.length);
      v.setSourceAddressWithChecksum(addressForZeroChecksum(v, IPV4_OFF.SOURCE, rng));
      if (v.headerChecksum === 0) zeros++;
      expect(v.headerChecksum).not.toBe(0xffff);
      expect(v.headerChecksum).toBe(fullChecksum(pkt, v.headerLength));
      // And back away from zero again.
      v.setSourceAddressWithChecksum(rng.u32());
      expect(v.headerChecksum).toBe(fullChecksum(pkt, v.headerLength));
    }
    expect(zeros).toBe(500);
  });

  it('chained rewrites (SNAT + TTL restore, then the reverse) stay exact', () => {
    const rng = prng(9);
    const v = new Ipv4View();
    for (let i = 0; i < 500; i++) {
      const pkt = randomPacket(rng);
      const orig = Buffer.from(pkt);
      v.wrap(pkt, 0, pkt.length);
      const src = v.sourceAddress;
      const ttl = v.ttl;
      v.setSourceAddressWithChecksum(rng.u32());
      v.setTtlWithChecksum((ttl + 1) & 0xff);
      v.setDestinationAddressWithChecksum(rng.u32());
      expect(v.headerChecksum).toBe(fullChecksum(pkt, v.headerLength));
      v.setDestinationAddressWithChecksum(orig.readUInt32BE(16));
      v.setTtlWithChecksum(ttl);
      v.setSourceAddressWithChecksum(src);
      expect(Buffer.from(pkt).equals(orig)).toBe(true);
    }
  });
});

describe('Ipv4View impossible lengths', () => {
  const good = bytesOf(fixture('udp_dns_query')); // 57 bytes, IHL 5
  const withOptions = bytesOf(fixture('udp_ip_options')); // IHL 6
  const mod = (src: Buffer, f: (b: Buffer) => void): Buffer => {
    const b = Buffer.from(src);
    f(b);
    return b;
  };
  it.each([
    { name: 'empty', bytes: Buffer.alloc(0), len: 0, want: Ipv4Verdict.TRUNCATED },
    { name: '19 bytes', bytes: good.subarray(0, 19), len: 19, want: Ipv4Verdict.TRUNCATED },
    { name: 'len beyond the buffer', bytes: good, len: good.length + 1, want: Ipv4Verdict.TRUNCATED },
    { name: 'version 6', bytes: mod(good, (b) => (b[0] = 0x65)), len: 57, want: Ipv4Verdict.BAD_VERSION },
    { name: 'version 0', bytes: mod(good, (b) => (b[0] = 0x05)), len: 57, want: Ipv4Verdict.BAD_VERSION },
    { name: 'IHL 0', bytes: mod(good, (b) => (b[0] = 0x40)), len: 57, want: Ipv4Verdict.BAD_IHL },
    { name: 'IHL 4', bytes: mod(good, (b) => (b[0] = 0x44)), len: 57, want: Ipv4Verdict.BAD_IHL },
    { name: 'IHL 15 (60) > total 57', bytes: mod(good, (b) => (b[0] = 0x4f)), len: 57, want: Ipv4Verdict.BAD_IHL },
    { name: 'IHL 14 (56) <= total 57', bytes: mod(good, (b) => (b[0] = 0x4e)), len: 57, want: Ipv4Verdict.OK },
    { name: 'total 0', bytes: mod(good, (b) => b.writeUInt16BE(0, 2)), len: 57, want: Ipv4Verdict.BAD_TOTAL_LENGTH },
    { name: 'total 19', bytes: mod(good, (b) => b.writeUInt16BE(19, 2)), len: 57, want: Ipv4Verdict.BAD_TOTAL_LENGTH },
    { name: 'total > buffer', bytes: mod(good, (b) => b.writeUInt16BE(58, 2)), len: 57, want: Ipv4Verdict.BAD_TOTAL_LENGTH },
    { name: 'total 65535', bytes: mod(good, (b) => b.writeUInt16BE(0xffff, 2)), len: 57, want: Ipv4Verdict.BAD_TOTAL_LENGTH },
    { name: 'total = header (no payload)', bytes: mod(good, (b) => b.writeUInt16BE(20, 2)), len: 57, want: Ipv4Verdict.OK },
    { name: 'options: total 23 < IHL 24', bytes: mod(withOptions, (b) => b.writeUInt16BE(23, 2)), len: 34, want: Ipv4Verdict.BAD_IHL },
    { name: 'options: header cut at 22 bytes', bytes: withOptions.subarray(0, 22), len: 22, want: Ipv4Verdict.BAD_TOTAL_LENGTH },
    { name: 'len shorter than total (truncated read)', bytes: good, len: 56, want: Ipv4Verdict.BAD_TOTAL_LENGTH },
    { name: 'trailing padding after total', bytes: Buffer.concat([good, Buffer.alloc(6)]), len: 63, want: Ipv4Verdict.OK },
  ])('$name → $want', ({ bytes, len, want }) => {
    const v = new Ipv4View();
    expect(IPV4_VERDICT_NAMES[v.wrap(bytes, 0, len)]).toBe(IPV4_VERDICT_NAMES[want]);
    // The same bytes at a non-zero byteOffset give the same verdict.
    expect(v.wrap(atOddOffset(bytes.subarray(0, Math.min(len, bytes.length))), 0, len)).toBe(
      len > bytes.length ? Ipv4Verdict.TRUNCATED : want,
    );
  });

  it.each([
    { name: 'negative offset', off: -1, len: 20 },
    { name: 'fractional offset', off: 0.5, len: 20 },
    { name: 'NaN length', off: 0, len: Number.NaN },
    { name: 'fractional length', off: 0, len: 56.5 },
    { name: 'offset past the end', off: 58, len: 0 },
  ])('$name → TRUNCATED', ({ off, len }) => {
    expect(new Ipv4View().wrap(good, off, len)).toBe(Ipv4Verdict.TRUNCATED);
  });

  it('payloadLength comes from the total length, not from trailing padding', () => {
    const padded = Buffer.concat([good, Buffer.alloc(6, 0xee)]);
    const v = new Ipv4View();
    expect(v.wrap(padded, 0, padded.length)).toBe(Ipv4Verdict.OK);
    expect(v.payloadLength).toBe(37);
  });

  it('a failed wrap keeps the previous packet and writes nothing', () => {
    const v = new Ipv4View();
    const a = bytesOf(fixture('tcp_syn_mss'));
    v.wrap(a, 0, a.length);
    const bad = mod(good, (b) => (b[0] = 0x46));
    const before = Buffer.from(bad);
    expect(v.wrap(bad, 0, 20)).toBe(Ipv4Verdict.BAD_TOTAL_LENGTH);
    expect(bad.equals(before)).toBe(true);
    expect(v.buf).toBe(a);
    expect(v.sourceAddress).toBe(ip('192.168.1.20'));
    expect(v.totalLength).toBe(44);
  });

  it('addresses a packet inside a larger buffer by absolute offsets', () => {
    const big = Buffer.alloc(300, 0xa5);
    good.copy(big, 101);
    const view = big.subarray(50); // byteOffset 50 in the parent, packet at index 51 of the view
    const v = new Ipv4View();
    expect(v.wrap(view, 51, good.length)).toBe(Ipv4Verdict.OK);
    expect(v.payloadOffset).toBe(71);
    expect(v.sourceAddress).toBe(ip('192.168.1.10'));
    v.setSourceAddressWithChecksum(ip('203.0.113.1'));
    expect(big.readUInt32BE(101 + 12)).toBe(ip('203.0.113.1'));
    expect(v.verifyChecksum()).toBe(true);
    expect(big[100]).toBe(0xa5);
    expect(big[101 + good.length]).toBe(0xa5);
  });
});

describe('Ipv4View.wrapQuoted (the header inside an ICMP error)', () => {
  it('accepts a quote cut short of the total length and counts only the bytes present', () => {
    const p = fixture('icmp_frag_needed_tcp');
    const b = bytesOf(p);
    const outer = new Ipv4View();
    outer.wrap(b, 0, b.length);
    const inner = new Ipv4View();
    const at = outer.payloadOffset + 8;
    const avail = outer.payloadLength - 8;
    expect(inner.wrap(b, at, avail)).toBe(Ipv4Verdict.BAD_TOTAL_LENGTH);
    expect(inner.wrapQuoted(b, at, avail)).toBe(Ipv4Verdict.OK);
    expect(inner.totalLength).toBe(p.inner?.ip.totalLength);
    expect(inner.truncated).toBe(true);
    expect(inner.payloadLength).toBe(548 - 20);
    expect(inner.sourceAddress).toBe(ip('192.168.1.20'));
    expect(inner.verifyChecksum()).toBe(true);
  });

  it('a complete quote is not truncated', () => {
    const b = bytesOf(fixture('icmp_port_unreach_udp'));
    const inner = new Ipv4View();
    expect(inner.wrapQuoted(b, 28, b.length - 28)).toBe(Ipv4Verdict.OK);
    expect(inner.truncated).toBe(false);
    expect(inner.payloadLength).toBe(13);
  });

  it.each([
    { name: 'header cut inside the options', quote: bytesOf(fixture('udp_ip_options')).subarray(0, 22), want: Ipv4Verdict.TRUNCATED },
    { name: '8 bytes only', quote: bytesOf(fixture('udp_dns_query')).subarray(0, 8), want: Ipv4Verdict.TRUNCATED },
    { name: 'header only', quote: bytesOf(fixture('udp_dns_query')).subarray(0, 20), want: Ipv4Verdict.OK },
    { name: 'IHL > total', quote: Buffer.from('4f00001400000000400100000102030405060708', 'hex'), want: Ipv4Verdict.BAD_IHL },
    { name: 'not IPv4', quote: Buffer.from('6000001400000000400100000102030405060708', 'hex'), want: Ipv4Verdict.BAD_VERSION },
    { name: 'total < 20', quote: Buffer.from('4500001000000000400100000102030405060708', 'hex'), want: Ipv4Verdict.BAD_TOTAL_LENGTH },
  ])('$name → $want', ({ quote, want }) => {
    expect(new Ipv4View().wrapQuoted(quote, 0, quote.length)).toBe(want);
  });
});

describe('fixtures', () => {
  it('header checksums agree with the independent reference', () => {
    for (const p of PACKETS) {
      const b = bytesOf(p);
      expect(fullChecksum(b, p.ip.headerLength), p.name).toBe(p.ip.headerChecksum);
    }
  });
});
