import { describe, expect, it } from 'vitest';
import {
  ICMP_ERROR_MAX_LENGTH,
  emitIpv4Header,
  emitIpv4IcmpEcho,
  emitIpv4IcmpError,
  emitIpv4Tcp,
  emitIpv4Udp,
  icmpEcho,
  icmpError,
  tcpPacket,
  udpPacket,
  type IcmpEchoEmitOptions,
  type IcmpErrorEmitOptions,
  type TcpEmitOptions,
  type UdpEmitOptions,
} from '../../src/wire/build.js';
import { IcmpVerdict, IcmpView } from '../../src/wire/icmp.js';
import { IPPROTO, Ipv4Verdict, Ipv4View } from '../../src/wire/ipv4.js';
import { TcpVerdict, TcpView } from '../../src/wire/tcp.js';
import { UdpVerdict, UdpView } from '../../src/wire/udp.js';
import { PACKETS, ip, prng, randomBytes, type EmitSpec, type PacketFixture } from '../fixtures/wire/fixtures.js';

type Emit =
  | { kind: 'udp'; opts: UdpEmitOptions }
  | { kind: 'tcp'; opts: TcpEmitOptions }
  | { kind: 'icmp_echo'; opts: IcmpEchoEmitOptions }
  | { kind: 'icmp_error'; opts: IcmpErrorEmitOptions };

/** Fixture emit specs store addresses as dotted quads and bytes as hex; turn them into options. */
function toOptions(spec: EmitSpec): Emit {
  const o: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(spec)) {
    if (k === 'kind') continue;
    if (k === 'src' || k === 'dst' || k === 'gateway') o[k] = ip(v as string);
    else if (k === 'payload' || k === 'quoted') o[k] = Buffer.from(v as string, 'hex');
    else o[k] = v;
  }
  // The option names in the JSON are the emitters' own (gen.py writes them that way).
  return { kind: spec.kind, opts: o } as unknown as Emit;
}

function emit(e: Emit, buf: Uint8Array, off: number): number {
  switch (e.kind) {
    case 'udp':
      return emitIpv4Udp(buf, off, e.opts);
    case 'tcp':
      return emitIpv4Tcp(buf, off, e.opts);
    case 'icmp_echo':
      return emitIpv4IcmpEcho(buf, off, e.opts);
    case 'icmp_error':
      return emitIpv4IcmpError(buf, off, e.opts);
  }
}

function allocate(e: Emit): Buffer {
  switch (e.kind) {
    case 'udp':
      return udpPacket(e.opts);
    case 'tcp':
      return tcpPacket(e.opts);
    case 'icmp_echo':
      return icmpEcho(e.opts);
    case 'icmp_error':
      return icmpError(e.opts);
  }
}

const emittable = PACKETS.filter((p): p is PacketFixture & { emit: EmitSpec } => p.emit !== undefined);

describe('emitters reproduce the scapy fixtures byte for byte', () => {
  it('covers every emitter', () => {
    expect(new Set(emittable.map((p) => p.emit.kind))).toEqual(new Set(['udp', 'tcp', 'icmp_echo', 'icmp_error']));
  });

  it.each(emittable.map((p) => [p.name, p] as const))('%s', (_n, p) => {
    const e = toOptions(p.emit);
    const want = Buffer.from(p.hex, 'hex');
    // 0xa5 everywhere shows any byte the emitter forgot to write; the odd offset and the
    // subarray's byteOffset show any absolute/relative index mix-up.
    const parent = Buffer.alloc(want.length + 64, 0xa5);
    const buf = parent.subarray(5);
    const n = emit(e, buf, 13);
    expect(n).toBe(want.length);
    expect(buf.subarray(13, 13 + n).toString('hex')).toBe(p.hex);
    expect(parent.subarray(0, 18).every((x) => x === 0xa5)).toBe(true);
    expect(parent.subarray(18 + n).every((x) => x === 0xa5)).toBe(true);
    expect(allocate(e).toString('hex')).toBe(p.hex);
  });
});

describe('emit → parse round trip with random fields', () => {
  it('UDP', () => {
    const rng = prng(101);
    const v = new Ipv4View();
    const u = new UdpView();
    const buf = new Uint8Array(2000);
    for (let i = 0; i < 500; i++) {
      const o: UdpEmitOptions = {
        src: rng.u32(),
        dst: rng.u32(),
        srcPort: rng.u16(),
        dstPort: rng.u16(),
        ttl: rng.int(256),
        id: rng.u16(),
        dontFragment: rng.int(2) === 0,
        dscpEcn: rng.int(256),
        payload: randomBytes(rng, rng.int(1400)),
        checksum: rng.int(5) !== 0,
      };
      const off = rng.int(100);
      const n = emitIpv4Udp(buf, off, o);
      expect(v.wrap(buf, off, n)).toBe(Ipv4Verdict.OK);
      expect([v.sourceAddress, v.destinationAddress, v.ttl, v.identification, v.dontFragment, v.dscpEcn, v.protocol]).toEqual([
        o.src, o.dst, o.ttl, o.id, o.dontFragment, o.dscpEcn, IPPROTO.UDP,
      ]);
      expect(v.isFragment).toBe(false);
      expect(v.verifyChecksum()).toBe(true);
      expect(u.wrap(buf, v.payloadOffset, v.payloadLength)).toBe(UdpVerdict.OK);
      expect([u.sourcePort, u.destinationPort, u.length]).toEqual([o.srcPort, o.dstPort, 8 + o.payload.length]);
      expect(u.checksum === 0).toBe(o.checksum === false);
      expect(u.verifyChecksum(o.src, o.dst)).toBe(true);
      expect(Buffer.from(buf.subarray(u.dataOffset, u.dataOffset + u.dataLength)).equals(Buffer.from(o.payload))).toBe(true);
    }
  });

  it('TCP', () => {
    const rng = prng(102);
    const v = new Ipv4View();
    const t = new TcpView();
    const buf = new Uint8Array(2000);
    for (let i = 0; i < 500; i++) {
      const o: TcpEmitOptions = {
        src: rng.u32(),
        dst: rng.u32(),
        srcPort: rng.u16(),
        dstPort: rng.u16(),
        seq: rng.u32(),
        ack: rng.u32(),
        flags: rng.int(256),
        window: rng.u16(),
        urgentPointer: rng.u16(),
        payload: randomBytes(rng, rng.int(1400)),
        ...(rng.int(2) === 0 ? { mss: 1 + rng.int(0xffff) } : {}),
      };
      const off = rng.int(100);
      const n = emitIpv4Tcp(buf, off, o);
      expect(v.wrap(buf, off, n)).toBe(Ipv4Verdict.OK);
      expect(v.protocol).toBe(IPPROTO.TCP);
      expect(v.ttl).toBe(64); // default
      expect(v.verifyChecksum()).toBe(true);
      expect(t.wrap(buf, v.payloadOffset, v.payloadLength)).toBe(TcpVerdict.OK);
      expect([t.sourcePort, t.destinationPort, t.sequenceNumber, t.acknowledgmentNumber, t.flags, t.window, t.urgentPointer]).toEqual([
        o.srcPort, o.dstPort, o.seq, o.ack, o.flags, o.window, o.urgentPointer,
      ]);
      expect(t.mssOption()).toBe(o.mss ?? 0);
      expect(t.headerLength).toBe(o.mss === undefined ? 20 : 24);
      expect(t.payloadLength).toBe(o.payload!.length);
      expect(t.verifyChecksum(o.src, o.dst)).toBe(true);
    }
  });

  it('ICMP echo', () => {
    const rng = prng(103);
    const v = new Ipv4View();
    const m = new IcmpView();
    const buf = new Uint8Array(300);
    for (let i = 0; i < 500; i++) {
      const o: IcmpEchoEmitOptions = {
        src: rng.u32(),
        dst: rng.u32(),
        type: rng.int(2) === 0 ? 0 : 8,
        identifier: rng.u16(),
        sequence: rng.u16(),
        payload: randomBytes(rng, rng.int(200)),
      };
      const n = emitIpv4IcmpEcho(buf, 3, o);
      expect(v.wrap(buf, 3, n)).toBe(Ipv4Verdict.OK);
      expect(m.wrap(buf, v.payloadOffset, v.payloadLength)).toBe(IcmpVerdict.OK);
      expect([m.type, m.code, m.identifier, m.sequence, m.isQuery, m.isQueryRequest]).toEqual([
        o.type, 0, o.identifier, o.sequence, true, o.type === 8,
      ]);
      expect(m.verifyChecksum()).toBe(true);
    }
  });

  it('an all-zero echo reply gets checksum 0xffff, which verifies', () => {
    const b = icmpEcho({ src: 1, dst: 2, type: 0, identifier: 0, sequence: 0 });
    const m = new IcmpView();
    m.wrap(b, 20, 8);
    expect(m.checksum).toBe(0xffff);
    expect(m.verifyChecksum()).toBe(true);
  });
});

describe('ICMP errors quote per RFC 1812 4.3.2.3', () => {
  it.each([
    { name: 'the RFC 792 minimum', quoted: 28, total: 56 },
    { name: 'a small packet whole', quoted: 100, total: 128 },
    { name: 'exactly the limit', quoted: 548, total: 576 },
    { name: 'one over the limit', quoted: 549, total: 576 },
    { name: 'a full-size packet', quoted: 1500, total: 576 },
  ])('$name: $quoted quoted bytes → $total', ({ quoted, total }) => {
    const q = udpPacket({ src: ip('192.168.1.10'), dst: ip('198.51.100.53'), srcPort: 1, dstPort: 2, payload: new Uint8Array(quoted - 28).fill(7) });
    const b = icmpError({ src: ip('203.0.113.1'), dst: ip('192.168.1.10'), type: 3, code: 3, quoted: q });
    expect(b.length).toBe(total);
    expect(total).toBeLessThanOrEqual(ICMP_ERROR_MAX_LENGTH);
    expect(b.subarray(28).equals(q.subarray(0, total - 28))).toBe(true);
    const v = new Ipv4View();
    const m = new IcmpView();
    expect(v.wrap(b, 0, b.length)).toBe(Ipv4Verdict.OK);
    expect(m.wrap(b, 20, v.payloadLength)).toBe(IcmpVerdict.OK);
    expect(m.verifyChecksum()).toBe(true);
  });

  it('writes the per-type second word (MTU, pointer, gateway) and zeroes it otherwise', () => {
    const q = new Uint8Array(28).fill(0x11);
    const word = (o: Omit<IcmpErrorEmitOptions, 'src' | 'dst' | 'quoted'>): string => {
      const buf = Buffer.alloc(100, 0xa5);
      emitIpv4IcmpError(buf, 0, { src: 1, dst: 2, quoted: q, ...o });
      return buf.subarray(24, 28).toString('hex');
    };
    expect(word({ type: 3, code: 4, mtu: 1280 })).toBe('00000500');
    expect(word({ type: 3, code: 3, mtu: 1280 })).toBe('00000000');
    expect(word({ type: 12, code: 0, pointer: 9 })).toBe('09000000');
    expect(word({ type: 5, code: 1, gateway: ip('192.168.1.254') })).toBe('c0a801fe');
    expect(word({ type: 11, code: 0 })).toBe('00000000');
  });
});

describe('emitter misuse is a bug and throws before writing', () => {
  const opts: UdpEmitOptions = { src: 1, dst: 2, srcPort: 3, dstPort: 4, payload: new Uint8Array(10) };
  it.each([
    { name: 'buffer one byte short', size: 37, off: 0 },
    { name: 'offset pushes past the end', size: 100, off: 63 },
    { name: 'negative offset', size: 100, off: -1 },
  ])('$name', ({ size, off }) => {
    const buf = new Uint8Array(size).fill(0xa5);
    expect(() => emitIpv4Udp(buf, off, opts)).toThrow(RangeError);
    expect(buf.every((x) => x === 0xa5)).toBe(true);
  });

  it('a packet over 65535 bytes', () => {
    const buf = new Uint8Array(70000);
    expect(() => emitIpv4Udp(buf, 0, { ...opts, payload: new Uint8Array(65508) })).toThrow(RangeError);
    expect(emitIpv4Udp(buf, 0, { ...opts, payload: new Uint8Array(65507) })).toBe(65535);
  });

  it('emitIpv4Header writes a bare header the caller completes', () => {
    const buf = Buffer.alloc(40, 0xa5);
    expect(emitIpv4Header(buf, 0, { src: 1, dst: 2, protocol: 253, totalLength: 40, dontFragment: true })).toBe(20);
    const v = new Ipv4View();
    expect(v.wrap(buf, 0, 40)).toBe(Ipv4Verdict.OK);
    expect([v.protocol, v.totalLength, v.dontFragment, v.verifyChecksum()]).toEqual([253, 40, true, true]);
    expect(buf.subarray(20).every((x) => x === 0xa5)).toBe(true);
  });
});
