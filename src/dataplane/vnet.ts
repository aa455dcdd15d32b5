/**
 * The virtio-net header the TUN puts in front of every packet when opened with IFF_VNET_HDR
 * (struct virtio_net_hdr in linux/virtio_net.h; little-endian on the machines tunnat runs on). It is
 * how the kernel hands over a GSO superpacket (one big TCP or UDP packet standing for many wire
 * packets, cut up later by whoever sends it) and a packet whose transport checksum is still partial.
 *
 * The header comes from the kernel, but its lengths are checked against the packet anyway (as
 * wireguard-go's offload code does): a header that does not describe the packet in hand is dropped.
 */
export const VNET_HDR_LEN = 10;

export const VNET_F = {
  /** The transport checksum is partial: csum_start/csum_offset say where it is finished. */
  NEEDS_CSUM: 1,
  /** The checksum was already verified (receive side only). */
  DATA_VALID: 2,
} as const;

export const VNET_GSO = { NONE: 0, TCPV4: 1, UDP: 3, TCPV6: 4, UDP_L4: 5, ECN: 0x80 } as const;

const OFF = { FLAGS: 0, GSO_TYPE: 1, HDR_LEN: 2, GSO_SIZE: 4, CSUM_START: 6, CSUM_OFFSET: 8 } as const;

export class VnetHeader {
  flags = 0;
  /** GSO type without the ECN bit. */
  gsoType = 0;
  hdrLen = 0;
  gsoSize = 0;
  csumStart = 0;
  csumOffset = 0;

  get needsCsum(): boolean {
    return (this.flags & VNET_F.NEEDS_CSUM) !== 0;
  }

  /**
   * Read the header at `at`, for the IPv4 packet of `plen` bytes right after it. Returns false when the
   * header cannot be right for that packet: an unknown or non-IPv4 GSO type, a GSO packet without a
   * segment size or without a partial checksum, or a checksum position that is not the transport
   * header's checksum field.
   */
  read(buf: Uint8Array, at: number, plen: number): boolean {
    this.flags = buf[at + OFF.FLAGS]!;
    this.gsoType = buf[at + OFF.GSO_TYPE]! & ~VNET_GSO.ECN;
    this.hdrLen = buf[at + OFF.HDR_LEN]! | (buf[at + OFF.HDR_LEN + 1]! << 8);
    this.gsoSize = buf[at + OFF.GSO_SIZE]! | (buf[at + OFF.GSO_SIZE + 1]! << 8);
    this.csumStart = buf[at + OFF.CSUM_START]! | (buf[at + OFF.CSUM_START + 1]! << 8);
    this.csumOffset = buf[at + OFF.CSUM_OFFSET]! | (buf[at + OFF.CSUM_OFFSET + 1]! << 8);
    const ip = at + VNET_HDR_LEN;
    if (plen < 20) return this.gsoType === VNET_GSO.NONE && !this.needsCsum;
    const ihl = (buf[ip]! & 0x0f) * 4;
    const proto = buf[ip + 9]!;
    if (this.gsoType !== VNET_GSO.NONE) {
      const want = this.gsoType === VNET_GSO.TCPV4 ? 6 : this.gsoType === VNET_GSO.UDP_L4 ? 17 : -1;
      if (want !== proto || this.gsoSize === 0 || !this.needsCsum) return false;
    }
    if (this.needsCsum) {
      // Only TCP and UDP checksums are offloaded, and they sit right after the IP header.
      const field = proto === 6 ? 16 : proto === 17 ? 6 : -1;
      if (field < 0 || this.csumStart !== ihl || this.csumOffset !== field || ihl + field + 2 > plen) return false;
    }
    return true;
  }
}

/** How many wire packets a GSO superpacket of `plen` bytes stands for. */
export function vnetSegments(h: VnetHeader, plen: number): number {
  const head = Math.min(h.hdrLen, plen);
  return Math.max(1, Math.ceil((plen - head) / h.gsoSize));
}

/** Write a header (for tests and for packets tunnat builds itself). */
export function writeVnetHeader(
  buf: Uint8Array, at: number,
  h: { flags?: number; gsoType?: number; hdrLen?: number; gsoSize?: number; csumStart?: number; csumOffset?: number },
): void {
  const put16 = (o: number, v: number) => {
    buf[at + o] = v & 0xff;
    buf[at + o + 1] = (v >>> 8) & 0xff;
  };
  buf[at + OFF.FLAGS] = h.flags ?? 0;
  buf[at + OFF.GSO_TYPE] = h.gsoType ?? 0;
  put16(OFF.HDR_LEN, h.hdrLen ?? 0);
  put16(OFF.GSO_SIZE, h.gsoSize ?? 0);
  put16(OFF.CSUM_START, h.csumStart ?? 0);
  put16(OFF.CSUM_OFFSET, h.csumOffset ?? 0);
}
