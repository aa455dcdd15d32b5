import { describe, expect, it } from 'vitest';
import { emitIpv4Udp } from '../../src/wire/build.js';
import { IPPROTO, Ipv4Verdict, Ipv4View } from '../../src/wire/ipv4.js';
import { UDP_OFF, UDP_VERDICT_NAMES, UdpVerdict, UdpView } from '../../src/wire/udp.js';
import {
  PACKETS,
  atOddOffset,
  bytesOf,
  fixture,
  prng,
  pseudoWords,
  randomBytes,
  referenceChecksum,
  type Rng,
  type UdpFields,
} from '../fixtures/wire/fixtures.js';

const udpFixtures = PACKETS.filter((p) => p.l4?.kind === 'udp' && !p.ip.moreFragments);

describe('UdpView on scapy fixtures', () => {
  it.each(udpFixtures.map((p) => [p.name, p] as const))('%s: every field, checksum verified and recomputed', (_n, p) => {
    const want = p.l4 as UdpFields;
    for (const bytes of [bytesOf(p), atOddOffset(bytesOf(p))]) {
      const v = new Ipv4View();
      const u = new UdpView();
      expect(v.wrap(bytes, 0, bytes.length)).toBe(Ipv4Verdict.OK);
      expect(u.wrap(bytes, v.payloadOffset, v.payloadLength)).toBe(UdpVerdict.OK);
      expect(u.sourcePort).toBe(want.sourcePort);
      expect(u.destinationPort).toBe(want.destinationPort);
      expect(u.length).toBe(want.length);
      expect(u.checksum).toBe(want.checksum);
      expect(u.dataOffset).toBe(v.payloadOffset + 8);
      expect(u.dataLength).toBe(want.length - 8);
      const src = v.sourceAddress;
      const dst = v.destinationAddress;
      expect(u.verifyChecksum(src, dst)).toBe(true);
      if (want.checksum !== 0) {
        expect(u.computeChecksum(src, dst)).toBe(want.checksum);
        u.checksum = 0x1357;
        expect(u.verifyChecksum(src, dst)).toBe(false);
        u.fillChecksum(src, dst);
        expect(u.checksum).toBe(want.checksum);
      }
    }
  });

  it('a computed checksum of 0 is stored as 0xffff and verifies', () => {
    const b = bytesOf(fixture('udp_checksum_ffff'));
    const v = new Ipv4View();
    const u = new UdpView();
    v.wrap(b, 0, b.length);
    u.wrap(b, v.payloadOffset, v.payloadLength);
    expect(u.checksum).toBe(0xffff);
    expect(u.computeChecksum(v.sourceAddress, v.destinationAddress)).toBe(0xffff);
    expect(u.verifyChecksum(v.sourceAddress, v.destinationAddress)).toBe(true);
  });

  it('checksum 0 means none: verifies whatever the bytes, and fillChecksum computes one', () => {
    const b = bytesOf(fixture('udp_no_checksum'));
    const v = new Ipv4View();
    const u = new UdpView();
    v.wrap(b, 0, b.length);
    u.wrap(b, v.payloadOffset, v.payloadLength);
    expect(u.verifyChecksum(1, 2)).toBe(true);
    u.fillChecksum(v.sourceAddress, v.destinationAddress);
    expect(u.checksum).not.toBe(0);
    expect(u.verifyChecksum(v.sourceAddress, v.destinationAddress)).toBe(true);
    expect(u.verifyChecksum(v.sourceAddress + 1, v.destinationAddress)).toBe(false);
  });
});

/** Full recompute by the independent reference, with UDP's 0 → 0xffff rule. */
function referenceUdp(b: Uint8Array, off: number, src: number, dst: number): number {
  const ulen = (b[off + 4]! << 8) | b[off + 5]!;
  const seg = Uint8Array.from(b.subarray(off, off + ulen));
  seg[6] = 0;
  seg[7] = 0;
  return referenceChecksum(seg, pseudoWords(src, dst, IPPROTO.UDP, ulen)) || 0xffff;
}

interface Case {
  pkt: Uint8Array;
  ip: Ipv4View;
  udp: UdpView;
}

function randomCase(rng: Rng, checksum: boolean): Case {
  const payload = randomBytes(rng, rng.int(70)); // odd and even lengths, including 0
  const buf = new Uint8Array(20 + 8 + payload.length + 9).fill(0xa5);
  const off = 1 + rng.int(8);
  const n = emitIpv4Udp(buf, off, {
    src: rng.u32(),
    dst: rng.u32(),
    srcPort: rng.u16(),
    dstPort: rng.u16(),
    payload,
    checksum,
  });
  const pkt = buf.subarray(off, off + n);
  const ip = new Ipv4View();
  const udp = new UdpView();
  expect(ip.wrap(pkt, 0, n)).toBe(Ipv4Verdict.OK);
  expect(udp.wrap(pkt, ip.payloadOffset, ip.payloadLength)).toBe(UdpVerdict.OK);
  return { pkt, ip, udp };
}

/** A port value that makes the datagram's sum -0, i.e. a computed checksum of 0 (stored 0xffff). */
function portForZeroSum(c: Case, portOffset: number): number {
  const seg = Uint8Array.from(c.pkt.subarray(c.udp.off, c.udp.off + c.udp.length));
  seg[portOffset] = 0;
  seg[portOffset + 1] = 0;
  seg[6] = 0;
  seg[7] = 0;
  return referenceChecksum(seg, pseudoWords(c.ip.sourceAddress, c.ip.destinationAddress, IPPROTO.UDP, c.udp.length));
}

describe('UdpView incremental setters against a full recompute', () => {
  const ops = [
    {
      name: 'setSourcePortWithChecksum',
      aimedAtZero: true,
      apply: (c: Case, rng: Rng, edge: boolean) =>
        c.udp.setSourcePortWithChecksum(edge ? portForZeroSum(c, UDP_OFF.SOURCE_PORT) : rng.u16()),
    },
    {
      name: 'setDestinationPortWithChecksum',
      aimedAtZero: true,
      apply: (c: Case, rng: Rng, edge: boolean) =>
        c.udp.setDestinationPortWithChecksum(edge ? portForZeroSum(c, UDP_OFF.DESTINATION_PORT) : rng.u16()),
    },
    {
      name: 'SNAT: source address (IP + pseudo-header)',
      aimedAtZero: false,
      apply: (c: Case, rng: Rng) => {
        const old = c.ip.sourceAddress;
        const neu = rng.u32();
        c.ip.setSourceAddressWithChecksum(neu);
        c.udp.updateChecksumForAddressChange(old, neu);
      },
    },
    {
      name: 'DNAT: destination address (IP + pseudo-header)',
      aimedAtZero: false,
      apply: (c: Case, rng: Rng) => {
        const old = c.ip.destinationAddress;
        const neu = rng.u32();
        c.ip.setDestinationAddressWithChecksum(neu);
        c.udp.updateChecksumForAddressChange(old, neu);
      },
    },
  ] as const;

  it.each(ops)('$name over 3000 random datagrams', ({ apply, aimedAtZero }) => {
    const rng = prng(0x0d9);
    let ffff = 0;
    for (let i = 0; i < 3000; i++) {
      const c = randomCase(rng, true);
      apply(c, rng, i % 4 === 0);
      const want = referenceUdp(c.pkt, c.udp.off, c.ip.sourceAddress, c.ip.destinationAddress);
      expect(c.udp.checksum, `datagram ${i}`).toBe(want);
      expect(c.udp.checksum).not.toBe(0);
      expect(c.udp.verifyChecksum(c.ip.sourceAddress, c.ip.destinationAddress)).toBe(true);
      expect(c.ip.verifyChecksum()).toBe(true);
      if (c.udp.checksum === 0xffff) ffff++;
    }
    // One datagram in four was aimed at the zero sum, which must come out as 0xffff.
    if (aimedAtZero) expect(ffff).toBeGreaterThanOrEqual(750);
  });

  it('starting from a stored 0xffff (computed zero), updates stay exact', () => {
    const rng = prng(0xffff);
    for (let i = 0; i < 1000; i++) {
      const c = randomCase(rng, true);
      c.udp.setSourcePortWithChecksum(portForZeroSum(c, UDP_OFF.SOURCE_PORT));
      expect(c.udp.checksum).toBe(0xffff);
      const p = rng.int(3) === 0 ? 0xffff : rng.u16();
      c.udp.setDestinationPortWithChecksum(p);
      expect(c.udp.checksum).toBe(referenceUdp(c.pkt, c.udp.off, c.ip.sourceAddress, c.ip.destinationAddress));
      const old = c.ip.sourceAddress;
      c.ip.setSourceAddressWithChecksum(0);
      c.udp.updateChecksumForAddressChange(old, 0);
      expect(c.udp.checksum).toBe(referenceUdp(c.pkt, c.udp.off, 0, c.ip.destinationAddress));
    }
  });

  it('a stored 0 ("no checksum") stays 0 under every update', () => {
    const rng = prng(0);
    for (let i = 0; i < 500; i++) {
      const c = randomCase(rng, false);
      expect(c.udp.checksum).toBe(0);
      c.udp.setSourcePortWithChecksum(rng.u16());
      c.udp.setDestinationPortWithChecksum(rng.u16());
      c.udp.updateChecksumForAddressChange(rng.u32(), rng.u32());
      expect(c.udp.checksum).toBe(0);
      expect(c.udp.verifyChecksum(c.ip.sourceAddress, c.ip.destinationAddress)).toBe(true);
    }
  });
});

describe('UdpView impossible lengths', () => {
  const good = bytesOf(fixture('udp_odd_payload')); // UDP at 20, length 13
  const udp = (f?: (b: Buffer) => void): Buffer => {
    const b = Buffer.from(good.subarray(20));
    f?.(b);
    return b;
  };
  it.each([
    { name: 'empty', bytes: Buffer.alloc(0), len: 0, want: UdpVerdict.TRUNCATED },
    { name: '7 bytes', bytes: udp().subarray(0, 7), len: 7, want: UdpVerdict.TRUNCATED },
    { name: 'len beyond the buffer', bytes: udp(), len: 14, want: UdpVerdict.TRUNCATED },
    { name: 'length field 0', bytes: udp((b) => b.writeUInt16BE(0, 4)), len: 13, want: UdpVerdict.BAD_LENGTH },
    { name: 'length field 7', bytes: udp((b) => b.writeUInt16BE(7, 4)), len: 13, want: UdpVerdict.BAD_LENGTH },
    { name: 'length field 14 > available 13', bytes: udp((b) => b.writeUInt16BE(14, 4)), len: 13, want: UdpVerdict.BAD_LENGTH },
    { name: 'length field 65535', bytes: udp((b) => b.writeUInt16BE(0xffff, 4)), len: 13, want: UdpVerdict.BAD_LENGTH },
    { name: 'header only, length 8', bytes: udp((b) => b.writeUInt16BE(8, 4)), len: 13, want: UdpVerdict.OK },
    { name: 'length shorter than available (IP padding)', bytes: udp((b) => b.writeUInt16BE(10, 4)), len: 13, want: UdpVerdict.OK },
    { name: 'exact', bytes: udp(), len: 13, want: UdpVerdict.OK },
  ])('$name → $want', ({ bytes, len, want }) => {
    const u = new UdpView();
    expect(UDP_VERDICT_NAMES[u.wrap(bytes, 0, len)]).toBe(UDP_VERDICT_NAMES[want]);
    if (len <= bytes.length) expect(u.wrap(atOddOffset(bytes), 0, len)).toBe(want);
  });

  it('the first fragment of a larger datagram reports BAD_LENGTH (its length covers later fragments)', () => {
    const b = bytesOf(fixture('ip_fragment_first'));
    const v = new Ipv4View();
    v.wrap(b, 0, b.length);
    expect(v.isFragment).toBe(true);
    expect(new UdpView().wrap(b, v.payloadOffset, v.payloadLength)).toBe(UdpVerdict.BAD_LENGTH);
  });

  it('a failed wrap keeps the previous datagram', () => {
    const u = new UdpView();
    const a = udp();
    u.wrap(a, 0, 13);
    expect(u.wrap(udp((b) => b.writeUInt16BE(3, 4)), 0, 13)).toBe(UdpVerdict.BAD_LENGTH);
    expect(u.buf).toBe(a);
    expect(u.length).toBe(13);
    expect(u.sourcePort).toBe(40000);
  });

  it('only the length-field bytes are checksummed, not trailing IP padding', () => {
    const b = Buffer.concat([good, Buffer.from([0xde, 0xad, 0xbe])]);
    b.writeUInt16BE(good.length + 3, 2);
    const v = new Ipv4View();
    expect(v.wrap(b, 0, b.length)).toBe(Ipv4Verdict.OK);
    const u = new UdpView();
    expect(u.wrap(b, v.payloadOffset, v.payloadLength)).toBe(UdpVerdict.OK);
    expect(u.length).toBe(13);
    expect(u.verifyChecksum(v.sourceAddress, v.destinationAddress)).toBe(true);
  });
});
