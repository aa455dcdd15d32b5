/**
 * Checksums: the full RFC 1071 sum over a full-size (1500-byte) packet, and the RFC 1624 incremental
 * updates the NAT uses instead of it. Every incremental result is compared with a full recomputation
 * (by the independent reference code) of the packet as it would be after the rewrite.
 */
import { csumUpdate16, csumUpdate32, internetChecksum } from '../../src/wire/checksum.js';
import { TCP_FLAGS } from '../../src/wire/tcp.js';
import type { BenchCase } from './harness.js';
import { cyclicCase } from './cyclic.js';
import { ephemeralPort, lanAddress, PacketSet, remoteAddress, servicePort } from './packets.js';
import { PROTO_TCP, rd16, refChecksum, refL4Checksum, Rng32, wr16 } from './reference.js';

export interface ChecksumOptions {
  /** Distinct 1500-byte buffers the full-checksum loop cycles through. */
  fullBuffers: number;
  /** Distinct packets (rewrites) the incremental loops cycle through. */
  packets: number;
}

const MTU = 1500;
const TCP_CSUM = 16;

export function* checksumCases(opts: ChecksumOptions): Generator<BenchCase> {
  const rng = new Rng32(0xc5c5);

  {
    const k = opts.fullBuffers;
    const buf = Buffer.from(rng.bytes(k * MTU));
    const expected = new Int32Array(k);
    for (let j = 0; j < k; j++) expected[j] = refChecksum(buf, j * MTU, MTU);
    yield cyclicCase({
      group: 'checksum',
      name: 'internetChecksum (full)',
      size: MTU,
      sizeLabel: `${MTU} B`,
      expected,
      loop(start, n) {
        let acc = 0;
        let j = start;
        for (let i = 0; i < n; i++) {
          acc = (acc + internetChecksum(buf, j * MTU, MTU)) | 0;
          if (++j === k) j = 0;
        }
        return acc;
      },
      describe: (j) => `buffer ${j}`,
      notes: (ns) => `${(MTU / ns).toFixed(2)} GB/s`,
    });
  }

  // NAT rewrites of TCP segments: source address → a public address, source port → another port.
  const k = opts.packets;
  const set = new PacketSet(k, 128);
  const csum = new Uint16Array(k);
  const oldAddr = new Uint32Array(k);
  const newAddr = new Uint32Array(k);
  const oldPort = new Uint16Array(k);
  const newPort = new Uint16Array(k);
  const wantAddr = new Int32Array(k);
  const wantPort = new Int32Array(k);
  const wantBoth = new Int32Array(k);
  const scratch = Buffer.alloc(set.stride);
  for (let j = 0; j < k; j++) {
    const s = {
      proto: PROTO_TCP, src: lanAddress(rng), dst: remoteAddress(rng), sport: ephemeralPort(rng), dport: servicePort(rng),
      ttl: 64, payloadLength: 1 + rng.below(64), flags: TCP_FLAGS.ACK | TCP_FLAGS.PSH, seq: rng.u32(), ack: rng.u32(),
    } as const;
    set.put(j, s, rng);
    const off = set.offset(j);
    const l4 = off + 20;
    const l4len = set.lens[j]! - 20;
    csum[j] = rd16(set.buf, l4 + TCP_CSUM);
    oldAddr[j] = s.src;
    newAddr[j] = rng.u32();
    oldPort[j] = s.sport;
    newPort[j] = 1024 + rng.below(64512);
    // Full recomputations of the rewritten segment: address via the pseudo-header, port in the bytes.
    wantAddr[j] = refL4Checksum(newAddr[j]!, s.dst, PROTO_TCP, set.buf, l4, l4len, TCP_CSUM);
    set.buf.copy(scratch, 0, l4, l4 + l4len);
    wr16(scratch, 0, newPort[j]!);
    wantPort[j] = refL4Checksum(s.src, s.dst, PROTO_TCP, scratch, 0, l4len, TCP_CSUM);
    wantBoth[j] = refL4Checksum(newAddr[j]!, s.dst, PROTO_TCP, scratch, 0, l4len, TCP_CSUM);
  }
  const describe = (j: number): string =>
    `segment ${j}: checksum ${csum[j]}, address ${oldAddr[j]} → ${newAddr[j]}, port ${oldPort[j]} → ${newPort[j]}`;

  yield cyclicCase({
    group: 'checksum',
    name: 'csumUpdate32 (address)',
    size: 4,
    sizeLabel: '32 bit',
    expected: wantAddr,
    loop(start, n) {
      let acc = 0;
      let j = start;
      for (let i = 0; i < n; i++) {
        acc = (acc + csumUpdate32(csum[j]!, oldAddr[j]!, newAddr[j]!)) | 0;
        if (++j === k) j = 0;
      }
      return acc;
    },
    describe,
  });

  yield cyclicCase({
    group: 'checksum',
    name: 'csumUpdate16 (port)',
    size: 2,
    sizeLabel: '16 bit',
    expected: wantPort,
    loop(start, n) {
      let acc = 0;
      let j = start;
      for (let i = 0; i < n; i++) {
        acc = (acc + csumUpdate16(csum[j]!, oldPort[j]!, newPort[j]!)) | 0;
        if (++j === k) j = 0;
      }
      return acc;
    },
    describe,
  });

  yield cyclicCase({
    group: 'checksum',
    name: 'csumUpdate32+16 (SNAT rewrite)',
    size: 6,
    sizeLabel: '32+16 bit',
    expected: wantBoth,
    loop(start, n) {
      let acc = 0;
      let j = start;
      for (let i = 0; i < n; i++) {
        acc = (acc + csumUpdate16(csumUpdate32(csum[j]!, oldAddr[j]!, newAddr[j]!), oldPort[j]!, newPort[j]!)) | 0;
        if (++j === k) j = 0;
      }
      return acc;
    },
    describe,
  });
}
