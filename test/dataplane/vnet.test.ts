import { describe, it, expect } from 'vitest';
import { FakeTun } from '../../src/tun/fake.js';
import { Dataplane } from '../../src/dataplane/loop.js';
import { VnetHeader, VNET_HDR_LEN, VNET_F, VNET_GSO, writeVnetHeader, vnetSegments } from '../../src/dataplane/vnet.js';
import { tcpPacket, udpPacket } from '../../src/wire/build.js';
import { TCP_FLAGS } from '../../src/wire/tcp.js';
import { sum16, fold16, pseudoHeaderSum, internetChecksum } from '../../src/wire/checksum.js';
import { Path } from '../../src/nat/translator.js';
import { makeNat, parse, checkAllChecksums, PUB, REMOTE, HOST_A } from '../nat/helpers.js';

/**
 * Turn a packet with a complete checksum into what the kernel hands over with NEEDS_CSUM: the transport
 * checksum field holds the folded pseudo-header sum, not complemented.
 */
function makePartial(pkt: Buffer): Buffer {
  const ihl = (pkt[0]! & 0x0f) * 4;
  const proto = pkt[9]!;
  const l4len = pkt.length - ihl;
  const at = ihl + (proto === 6 ? 16 : 6);
  const pseudo = fold16(pseudoHeaderSum(pkt.readUInt32BE(12), pkt.readUInt32BE(16), proto, l4len));
  pkt.writeUInt16BE(pseudo, at);
  return pkt;
}

/** What the sender of a NEEDS_CSUM packet does: checksum from csum_start, the field included, complemented. */
function complete(pkt: Buffer): Buffer {
  const ihl = (pkt[0]! & 0x0f) * 4;
  const at = ihl + (pkt[9] === 6 ? 16 : 6);
  pkt.writeUInt16BE(internetChecksum(pkt, ihl, pkt.length - ihl), at);
  return pkt;
}

function withVnet(pkt: Buffer, h: Parameters<typeof writeVnetHeader>[2]): Buffer {
  const out = Buffer.alloc(VNET_HDR_LEN + pkt.length);
  writeVnetHeader(out, 0, h);
  pkt.copy(out, VNET_HDR_LEN);
  return out;
}

const bigPayload = Buffer.alloc(20000, 0x5a);

describe('virtio-net header', () => {
  it('accepts headers that describe the packet and refuses ones that do not', () => {
    const tcp = tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 1, dstPort: 2, seq: 0, ack: 0, flags: TCP_FLAGS.ACK, payload: bigPayload });
    const h = new VnetHeader();
    const good = withVnet(tcp, { flags: VNET_F.NEEDS_CSUM, gsoType: VNET_GSO.TCPV4, gsoSize: 1448, hdrLen: 40, csumStart: 20, csumOffset: 16 });
    expect(h.read(good, 0, tcp.length)).toBe(true);
    expect(vnetSegments(h, tcp.length)).toBe(Math.ceil(20000 / 1448));
    const cases = [
      { flags: VNET_F.NEEDS_CSUM, gsoType: VNET_GSO.UDP_L4, gsoSize: 1448, csumStart: 20, csumOffset: 16 }, // UDP GSO on a TCP packet
      { flags: VNET_F.NEEDS_CSUM, gsoType: VNET_GSO.TCPV4, gsoSize: 0, csumStart: 20, csumOffset: 16 }, // no segment size
      { flags: 0, gsoType: VNET_GSO.TCPV4, gsoSize: 1448 }, // GSO without a partial checksum
      { flags: VNET_F.NEEDS_CSUM, csumStart: 20, csumOffset: 6 }, // checksum position of UDP
      { flags: VNET_F.NEEDS_CSUM, csumStart: 24, csumOffset: 16 }, // not where the TCP header starts
      { flags: VNET_F.NEEDS_CSUM, gsoType: VNET_GSO.TCPV6, gsoSize: 1448, csumStart: 20, csumOffset: 16 },
    ];
    for (const c of cases) expect(h.read(withVnet(tcp, c), 0, tcp.length), JSON.stringify(c)).toBe(false);
  });
});

describe('partial checksums (NEEDS_CSUM)', () => {
  for (const proto of ['tcp', 'udp'] as const) {
    it(`translates a ${proto} packet whose checksum the sender completes later`, () => {
      const nat = makeNat();
      // Port 20500 is in the gateway's own range, so the mapping must change the port as well.
      const mk = () =>
        proto === 'tcp'
          ? tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 20500, dstPort: 80, seq: 7, ack: 0, flags: TCP_FLAGS.SYN, payload: bigPayload })
          : udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 20500, dstPort: 53, payload: bigPayload });
      const p = makePartial(mk());
      expect(nat.process(p, 0, p.length, 0, true)).toBe(0);
      const out = parse(p);
      expect(out.src).toBe(PUB);
      expect(out.sport).not.toBe(20500);
      // The field still holds a (new) pseudo-header sum; completing it gives a valid checksum.
      checkAllChecksums(complete(p));
      expect(nat.stats.packets[Path.OUTBOUND]).toBe(1); // a superpacket counts once, as the kernel counts it
    });
  }

  it('runs GSO superpackets through the data plane and writes them back with their header', () => {
    const tun = new FakeTun({ vnetHdr: true });
    const nat = makeNat();
    const loop = new Dataplane(tun, nat, { batch: 4, slotSize: 65536 + 16, vnetHdr: true, clock: () => 0 });
    const tcp = makePartial(tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40000, dstPort: 80, seq: 7, ack: 0, flags: TCP_FLAGS.SYN, payload: bigPayload }));
    const hdr = { flags: VNET_F.NEEDS_CSUM, gsoType: VNET_GSO.TCPV4, gsoSize: 1448, hdrLen: 40, csumStart: 20, csumOffset: 16 };
    tun.inject(withVnet(tcp, hdr));
    tun.inject(withVnet(tcp, { ...hdr, csumOffset: 6 })); // a lying header: dropped, never sent
    loop.runBatch();
    const out = tun.takeWritten();
    expect(out).toHaveLength(1);
    const h = new VnetHeader();
    expect(h.read(out[0]!, 0, out[0]!.length - VNET_HDR_LEN)).toBe(true);
    expect([h.gsoType, h.gsoSize]).toEqual([VNET_GSO.TCPV4, 1448]);
    const pkt = Buffer.from(out[0]!.subarray(VNET_HDR_LEN));
    expect(parse(pkt).src).toBe(PUB);
    checkAllChecksums(complete(pkt));
    expect(loop.stats.superpackets).toBe(1);
    expect(loop.stats.badVnet).toBe(1);
  });

  it('puts a zeroed header in front of packets it generates', () => {
    const tun = new FakeTun({ vnetHdr: true });
    const nat = makeNat({ ports: [30000, 30000], excludedPorts: [] });
    const loop = new Dataplane(tun, nat, { batch: 4, slotSize: 4096, vnetHdr: true, clock: () => 0 });
    const plain = { flags: 0 };
    // The one port is held by a mapping two flows share (two servers), which no new flow may reclaim.
    tun.inject(withVnet(udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 1, dstPort: 53, payload: Buffer.from('a') }), plain));
    tun.inject(withVnet(udpPacket({ src: HOST_A, dst: REMOTE + 1, srcPort: 1, dstPort: 53, payload: Buffer.from('a') }), plain));
    tun.inject(withVnet(udpPacket({ src: ip2(), dst: REMOTE, srcPort: 2, dstPort: 53, payload: Buffer.from('b') }), plain));
    loop.runBatch();
    const out = tun.takeWritten();
    expect(out).toHaveLength(3); // the two translated ones, and ICMP 3/13 for the one that found no port
    const icmp = out.find((b) => b[VNET_HDR_LEN + 9] === 1)!;
    expect(icmp.subarray(0, VNET_HDR_LEN).every((b) => b === 0)).toBe(true);
    checkAllChecksums(Buffer.from(icmp.subarray(VNET_HDR_LEN)));
    expect(fold16(sum16(icmp, VNET_HDR_LEN, 20))).toBe(0xffff);
  });
});

function ip2(): number {
  return (HOST_A + 1) >>> 0;
}
