/**
 * CRC32c (Castagnoli, polynomial 0x1EDC6F41, reflected 0x82F63B78): SCTP's checksum (RFC 9260 §6.8 and
 * appendix A), also iSCSI's (RFC 3720 §12.1, whose appendix B.4 has the test vectors the tests use).
 * Unlike the Internet checksum it cannot be patched for a changed field by adding a difference, so a
 * NAT that rewrites SCTP ports computes it again over the whole SCTP packet.
 *
 * Table-driven, one byte per step: a 1 KiB table built once at load.
 */
const TABLE = new Uint32Array(256);
for (let n = 0; n < 256; n++) {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
  TABLE[n] = c >>> 0;
}

/** CRC32c of `len` bytes at `off` (initial value all ones, final value complemented), unsigned. */
export function crc32c(buf: Uint8Array, off: number, len: number): number {
  let c = 0xffffffff;
  const end = off + len;
  for (let i = off; i < end; i++) c = TABLE[(c ^ buf[i]!) & 0xff]! ^ (c >>> 8);
  return (~c) >>> 0;
}

/** SCTP's common header: the checksum field's offset, and the header's length (RFC 9260 §3.1). */
export const SCTP_CHECKSUM_OFFSET = 8;
export const SCTP_HEADER_LENGTH = 12;

/**
 * The CRC32c of the SCTP packet at `off` (`len` bytes, the whole packet) as it would be with its checksum
 * field zero, which is how the sender computed it. The field itself is left as it was.
 */
export function sctpChecksum(buf: Uint8Array, off: number, len: number): number {
  const at = off + SCTP_CHECKSUM_OFFSET;
  const b0 = buf[at]!, b1 = buf[at + 1]!, b2 = buf[at + 2]!, b3 = buf[at + 3]!;
  buf[at] = 0; buf[at + 1] = 0; buf[at + 2] = 0; buf[at + 3] = 0;
  const c = crc32c(buf, off, len);
  buf[at] = b0; buf[at + 1] = b1; buf[at + 2] = b2; buf[at + 3] = b3;
  return c;
}

/**
 * The checksum as the packet carries it: the CRC's bytes least significant first (RFC 9260 appendix A
 * transmits the reflected CRC that way; Linux stores cpu_to_le32 of it).
 */
export function readSctpChecksum(buf: Uint8Array, off: number): number {
  const at = off + SCTP_CHECKSUM_OFFSET;
  return (buf[at]! | (buf[at + 1]! << 8) | (buf[at + 2]! << 16) | (buf[at + 3]! << 24)) >>> 0;
}

export function writeSctpChecksum(buf: Uint8Array, off: number, crc: number): void {
  const at = off + SCTP_CHECKSUM_OFFSET;
  buf[at] = crc & 0xff;
  buf[at + 1] = (crc >>> 8) & 0xff;
  buf[at + 2] = (crc >>> 16) & 0xff;
  buf[at + 3] = crc >>> 24;
}

/** SCTP chunk types (RFC 9260 §3.2) the tracker looks at. */
export const SCTP_CHUNK = {
  DATA: 0,
  INIT: 1,
  INIT_ACK: 2,
  SACK: 3,
  HEARTBEAT: 4,
  HEARTBEAT_ACK: 5,
  ABORT: 6,
  SHUTDOWN: 7,
  SHUTDOWN_ACK: 8,
  ERROR: 9,
  COOKIE_ECHO: 10,
  COOKIE_ACK: 11,
  SHUTDOWN_COMPLETE: 14,
} as const;

/**
 * The chunk types of an SCTP packet as a bit mask (bit t for type t < 32; later types, all extensions,
 * are not tracked), or -1 when a chunk length runs past the packet or is shorter than a chunk header.
 */
export function sctpChunkMask(buf: Uint8Array, off: number, len: number): number {
  let mask = 0;
  let i = off + SCTP_HEADER_LENGTH;
  const end = off + len;
  if (i >= end) return -1; // a packet without a chunk is not SCTP (RFC 9260 §3)
  while (i + 4 <= end) {
    const type = buf[i]!;
    const clen = (buf[i + 2]! << 8) | buf[i + 3]!;
    if (clen < 4 || i + clen > end) return -1;
    if (type < 32) mask |= 1 << type;
    i += (clen + 3) & ~3; // chunks are padded to 4 bytes
  }
  return mask;
}
