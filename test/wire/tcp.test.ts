import { describe, expect, it } from 'vitest';
import { emitIpv4Tcp } from '../../src/wire/build.js';
import { IPPROTO, Ipv4Verdict, Ipv4View } from '../../src/wire/ipv4.js';
import { TCP_FLAGS, TCP_OFF, TCP_VERDICT_NAMES, TcpVerdict, TcpView } from '../../src/wire/tcp.js';
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
  type TcpFields,
} from '../fixtures/wire/fixtures.js';

const tcpFixtures = PACKETS.filter((p) => p.l4?.kind === 'tcp');

describe('TcpView on scapy fixtures', () => {
  it.each(tcpFixtures.map((p) => [p.name, p] as const))('%s: every field, MSS, checksum', (_n, p) => {
    const want = p.l4 as TcpFields;
    for (const bytes of [bytesOf(p), atOddOffset(bytesOf(p))]) {
      const v = new Ipv4View();
      const t = new TcpView();
      expect(v.wrap(bytes, 0, bytes.length)).toBe(Ipv4Verdict.OK);
      expect(t.wrap(bytes, v.payloadOffset, v.payloadLength)).toBe(TcpVerdict.OK);
      expect(t.sourcePort).toBe(want.sourcePort);
      expect(t.destinationPort).toBe(want.destinationPort);
      expect(t.sequenceNumber).toBe(want.sequenceNumber);
      expect(t.acknowledgmentNumber).toBe(want.acknowledgmentNumber);
      expect(t.dataOffset).toBe(want.dataOffset);
      expect(t.headerLength).toBe(want.dataOffset * 4);
      expect(t.flags).toBe(want.flags);
      expect(t.window).toBe(want.window);
      expect(t.checksum).toBe(want.checksum);
      expect(t.urgentPointer).toBe(want.urgentPointer);
      expect(t.mssOption()).toBe(want.mss);
      expect(t.segmentLength).toBe(v.payloadLength);
      expect(t.payloadOffset).toBe(v.payloadOffset + want.dataOffset * 4);
      expect(t.payloadLength).toBe(v.payloadLength - want.dataOffset * 4);
      expect(t.verifyChecksum(v.sourceAddress, v.destinationAddress)).toBe(true);
      expect(t.computeChecksum(v.sourceAddress, v.destinationAddress)).toBe(want.checksum);
      t.checksum = 0;
      expect(t.verifyChecksum(v.sourceAddress, v.destinationAddress)).toBe(false);
      t.fillChecksum(v.sourceAddress, v.destinationAddress);
      expect(t.checksum).toBe(want.checksum);
    }
  });

  it('reads the flag byte with TCP_FLAGS', () => {
    const b = bytesOf(fixture('tcp_fin_ack_urg_odd'));
    const t = new TcpView();
    t.wrap(b, 20, b.length - 20);
    expect(t.flags).toBe(TCP_FLAGS.FIN | TCP_FLAGS.ACK | TCP_FLAGS.URG);
    t.flags = TCP_FLAGS.CWR | TCP_FLAGS.ECE | TCP_FLAGS.SYN;
    expect(b[20 + TCP_OFF.FLAGS]).toBe(0xc2);
  });

  it('plain setters round-trip, unsigned 32-bit numbers included', () => {
    const b = bytesOf(fixture('tcp_psh_ack_payload'));
    const t = new TcpView();
    t.wrap(b, 20, b.length - 20);
    expect(t.sequenceNumber).toBe(0xfffffff0);
    t.sequenceNumber = 0xffffffff;
    t.acknowledgmentNumber = 0x80000000;
    t.window = 0;
    t.urgentPointer = 0xffff;
    t.sourcePort = 1;
    t.destinationPort = 0xffff;
    expect([t.sequenceNumber, t.acknowledgmentNumber, t.window, t.urgentPointer, t.sourcePort, t.destinationPort]).toEqual([
      0xffffffff, 0x80000000, 0, 0xffff, 1, 0xffff,
    ]);
    expect(b.subarray(24, 32).toString('hex')).toBe('ffffffff80000000');
  });
});

/** Builds a TCP header with the given option bytes (padded with END to a multiple of 4). */
function segmentWithOptions(options: readonly number[], dataOffsetOverride?: number): Buffer {
  const optLen = (options.length + 3) & ~3;
  const b = Buffer.alloc(20 + optLen + 4, 0);
  b[TCP_OFF.DATA_OFFSET] = (dataOffsetOverride ?? (20 + optLen) / 4) << 4;
  Buffer.from(options).copy(b, 20);
  b.fill(0x02, 20 + optLen); // payload bytes that look like an MSS option if misread
  return b;
}

describe('TcpView.mssOption: option parsing never reads past the header', () => {
  it.each([
    { name: 'no options', opts: [], mss: 0 },
    { name: 'MSS alone', opts: [2, 4, 0x05, 0xb4], mss: 1460 },
    { name: 'NOP then MSS (odd alignment)', opts: [1, 2, 4, 0x05, 0x64], mss: 1380 },
    { name: 'after SACK-permitted and window scale', opts: [4, 2, 3, 3, 7, 2, 4, 0x02, 0x18], mss: 536 },
    { name: 'after a timestamp', opts: [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 2, 4, 0x23, 0x28], mss: 9000 },
    { name: 'END before MSS', opts: [0, 2, 4, 0x05, 0xb4], mss: 0 },
    { name: 'option length 0 (would loop forever)', opts: [3, 0, 2, 4, 0x05, 0xb4], mss: 0 },
    { name: 'option length 1', opts: [3, 1, 2, 4, 0x05, 0xb4], mss: 0 },
    { name: 'option running past the header', opts: [3, 9, 2, 4], mss: 0 },
    { name: 'MSS with wrong length 3', opts: [2, 3, 0x05, 0xb4], mss: 0 },
    { name: 'MSS with wrong length 6 is skipped, a later MSS is found', opts: [2, 6, 0, 0, 0, 0, 2, 4, 0x01, 0x00], mss: 256 },
    { name: 'MSS kind as the last header byte', opts: [1, 1, 1, 2], mss: 0 },
    { name: 'MSS cut by the header end', opts: [1, 1, 2, 4], mss: 0 },
    { name: 'MSS value 0', opts: [2, 4, 0, 0], mss: 0 },
    { name: 'first of two MSS options wins', opts: [2, 4, 0x05, 0xb4, 2, 4, 0x02, 0x18], mss: 1460 },
  ])('$name → $mss', ({ opts, mss }) => {
    const seg = segmentWithOptions(opts);
    const t = new TcpView();
    expect(t.wrap(seg, 0, seg.length)).toBe(TcpVerdict.OK);
    expect(t.mssOption()).toBe(mss);
    // Same answer with the header ending exactly at the end of the buffer.
    const tight = atOddOffset(seg.subarray(0, t.headerLength), 3, 0);
    expect(t.wrap(tight, 0, tight.length)).toBe(TcpVerdict.OK);
    expect(t.mssOption()).toBe(mss);
  });

  it('does not look at payload bytes past a short data offset', () => {
    // Options announced as absent (data offset 5) even though MSS bytes follow.
    const seg = segmentWithOptions([2, 4, 0x05, 0xb4], 5);
    const t = new TcpView();
    expect(t.wrap(seg, 0, seg.length)).toBe(TcpVerdict.OK);
    expect(t.mssOption()).toBe(0);
  });
});

interface Case {
  pkt: Uint8Array;
  ip: Ipv4View;
  tcp: TcpView;
}

function randomCase(rng: Rng, opts: { mss?: number } = {}): Case {
  const payload = randomBytes(rng, rng.int(60));
  const buf = new Uint8Array(20 + 24 + payload.length + 11).fill(0xa5);
  const off = rng.int(10);
  const n = emitIpv4Tcp(buf, off, {
    src: rng.u32(),
    dst: rng.u32(),
    srcPort: rng.u16(),
    dstPort: rng.u16(),
    seq: rng.u32(),
    ack: rng.u32(),
    flags: rng.int(256),
    window: rng.u16(),
    urgentPointer: rng.int(4) === 0 ? rng.u16() : 0,
    payload,
    ...opts,
  });
  const pkt = buf.subarray(off, off + n);
  const ip = new Ipv4View();
  const tcp = new TcpView();
  expect(ip.wrap(pkt, 0, n)).toBe(Ipv4Verdict.OK);
  expect(tcp.wrap(pkt, ip.payloadOffset, ip.payloadLength)).toBe(TcpVerdict.OK);
  return { pkt, ip, tcp };
}

function referenceTcp(c: Case): number {
  const seg = Uint8Array.from(c.pkt.subarray(c.tcp.off, c.tcp.off + c.tcp.segmentLength));
  seg[16] = 0;
  seg[17] = 0;
  return referenceChecksum(seg, pseudoWords(c.ip.sourceAddress, c.ip.destinationAddress, IPPROTO.TCP, seg.length));
}

/** A port that makes the new checksum 0x0000 (segment sum -0). */
function portForZeroChecksum(c: Case, portOffset: number): number {
  const seg = Uint8Array.from(c.pkt.subarray(c.tcp.off, c.tcp.off + c.tcp.segmentLength));
  seg[portOffset] = 0;
  seg[portOffset + 1] = 0;
  seg[16] = 0;
  seg[17] = 0;
  return referenceChecksum(seg, pseudoWords(c.ip.sourceAddress, c.ip.destinationAddress, IPPROTO.TCP, seg.length));
}

describe('TcpView incremental setters against a full recompute', () => {
  const ops = [
    {
      name: 'setSourcePortWithChecksum',
      aimedAtZero: true,
      apply: (c: Case, rng: Rng, edge: boolean) =>
        c.tcp.setSourcePortWithChecksum(edge ? portForZeroChecksum(c, TCP_OFF.SOURCE_PORT) : rng.u16()),
    },
    {
      name: 'setDestinationPortWithChecksum',
      aimedAtZero: true,
      apply: (c: Case, rng: Rng, edge: boolean) =>
        c.tcp.setDestinationPortWithChecksum(edge ? portForZeroChecksum(c, TCP_OFF.DESTINATION_PORT) : rng.u16()),
    },
    {
      name: 'SNAT: source address + source port',
      aimedAtZero: false,
      apply: (c: Case, rng: Rng) => {
        const old = c.ip.sourceAddress;
        const neu = rng.u32();
        c.ip.setSourceAddressWithChecksum(neu);
        c.tcp.updateChecksumForAddressChange(old, neu);
        c.tcp.setSourcePortWithChecksum(rng.u16());
      },
    },
    {
      name: 'un-DNAT: destination address + destination port',
      aimedAtZero: false,
      apply: (c: Case, rng: Rng) => {
        const old = c.ip.destinationAddress;
        const neu = rng.u32();
        c.ip.setDestinationAddressWithChecksum(neu);
        c.tcp.updateChecksumForAddressChange(old, neu);
        c.tcp.setDestinationPortWithChecksum(rng.u16());
      },
    },
  ] as const;

  it.each(ops)('$name over 3000 random segments', ({ apply, aimedAtZero }) => {
    const rng = prng(0x7c9);
    for (let i = 0; i < 3000; i++) {
      const c = randomCase(rng, rng.int(2) === 0 ? { mss: rng.u16() } : {});
      apply(c, rng, i % 4 === 0);
      expect(c.tcp.checksum, `segment ${i}`).toBe(referenceTcp(c));
      expect(c.tcp.verifyChecksum(c.ip.sourceAddress, c.ip.destinationAddress)).toBe(true);
      expect(c.ip.verifyChecksum()).toBe(true);
      // Aimed at a -0 sum: eqn. 3 must give 0x0000, as the recompute does, never 0xffff.
      if (aimedAtZero && i % 4 === 0) expect(c.tcp.checksum).toBe(0);
    }
  });

  it('a non-canonical stored 0xffff still verifies after updates', () => {
    // Some stacks store -0 as 0xffff; RFC 1624 eqn. 3 keeps such a checksum valid.
    const rng = prng(31);
    for (let i = 0; i < 500; i++) {
      const c = randomCase(rng);
      c.tcp.setSourcePortWithChecksum(portForZeroChecksum(c, TCP_OFF.SOURCE_PORT));
      expect(c.tcp.checksum).toBe(0);
      c.tcp.checksum = 0xffff;
      expect(c.tcp.verifyChecksum(c.ip.sourceAddress, c.ip.destinationAddress)).toBe(true);
      c.tcp.setDestinationPortWithChecksum(rng.u16());
      c.tcp.updateChecksumForAddressChange(c.ip.sourceAddress, 0);
      c.ip.sourceAddress = 0;
      expect(c.tcp.verifyChecksum(0, c.ip.destinationAddress)).toBe(true);
      expect(c.tcp.checksum).toBe(referenceTcp(c));
    }
  });

  it('setMssOptionWithChecksum (MSS clamping) is exact at even and odd option alignment', () => {
    const rng = prng(1460);
    for (const name of ['tcp_syn_mss', 'tcp_syn_mss_odd_offset', 'tcp_syn_linux_options']) {
      for (let i = 0; i < 300; i++) {
        const pkt = atOddOffset(bytesOf(fixture(name)));
        const ip = new Ipv4View();
        const tcp = new TcpView();
        ip.wrap(pkt, 0, pkt.length);
        tcp.wrap(pkt, ip.payloadOffset, ip.payloadLength);
        const mss = i === 0 ? 0xffff : rng.u16();
        expect(tcp.setMssOptionWithChecksum(mss)).toBe(true);
        expect(tcp.mssOption()).toBe(mss);
        expect(tcp.checksum, `${name} mss ${mss}`).toBe(referenceTcp({ pkt, ip, tcp }));
      }
    }
  });

  it('setMssOptionWithChecksum leaves a segment without MSS untouched', () => {
    const b = bytesOf(fixture('tcp_syn_no_mss'));
    const before = Buffer.from(b);
    const t = new TcpView();
    t.wrap(b, 20, b.length - 20);
    expect(t.setMssOptionWithChecksum(1200)).toBe(false);
    expect(b.equals(before)).toBe(true);
  });
});

describe('TcpView impossible lengths', () => {
  const good = bytesOf(fixture('tcp_syn_mss')).subarray(20); // 24-byte header, no payload
  const seg = (f?: (b: Buffer) => void): Buffer => {
    const b = Buffer.from(good);
    f?.(b);
    return b;
  };
  it.each([
    { name: 'empty', bytes: Buffer.alloc(0), len: 0, want: TcpVerdict.TRUNCATED },
    { name: '19 bytes', bytes: seg().subarray(0, 19), len: 19, want: TcpVerdict.TRUNCATED },
    { name: 'len beyond the buffer', bytes: seg(), len: 25, want: TcpVerdict.TRUNCATED },
    { name: 'data offset 0', bytes: seg((b) => (b[12] = 0x00)), len: 24, want: TcpVerdict.BAD_DATA_OFFSET },
    { name: 'data offset 4', bytes: seg((b) => (b[12] = 0x40)), len: 24, want: TcpVerdict.BAD_DATA_OFFSET },
    { name: 'data offset 7 (28) > 24 available', bytes: seg((b) => (b[12] = 0x70)), len: 24, want: TcpVerdict.BAD_DATA_OFFSET },
    { name: 'data offset 15 (60) > 24 available', bytes: seg((b) => (b[12] = 0xf0)), len: 24, want: TcpVerdict.BAD_DATA_OFFSET },
    { name: 'data offset 6 but only 20 bytes', bytes: seg().subarray(0, 20), len: 20, want: TcpVerdict.BAD_DATA_OFFSET },
    { name: 'data offset 5 with options as payload', bytes: seg((b) => (b[12] = 0x50)), len: 24, want: TcpVerdict.OK },
    { name: 'reserved bits set are ignored', bytes: seg((b) => (b[12] = 0x6f)), len: 24, want: TcpVerdict.OK },
  ])('$name → $want', ({ bytes, len, want }) => {
    const t = new TcpView();
    expect(TCP_VERDICT_NAMES[t.wrap(bytes, 0, len)]).toBe(TCP_VERDICT_NAMES[want]);
    if (len <= bytes.length) expect(t.wrap(atOddOffset(bytes), 0, len)).toBe(want);
  });

  it('a failed wrap keeps the previous segment', () => {
    const t = new TcpView();
    const a = seg();
    t.wrap(a, 0, 24);
    expect(t.wrap(seg((b) => (b[12] = 0x30)), 0, 24)).toBe(TcpVerdict.BAD_DATA_OFFSET);
    expect(t.buf).toBe(a);
    expect(t.headerLength).toBe(24);
    expect(t.mssOption()).toBe(1460);
  });
});
