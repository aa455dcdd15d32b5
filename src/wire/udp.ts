/**
 * Zero-copy view over a UDP header (RFC 768). Reused across packets like Ipv4View.
 *
 * UDP's checksum rule: a stored 0 means the sender computed none (allowed over IPv4), so every
 * update leaves 0 alone; a computed 0 is stored as 0xffff, the other representation of zero, so
 * it is not mistaken for "none".
 */
import { csumUpdate16, csumUpdate32, fold16, pseudoHeaderSum, sum16 } from './checksum.js';
import { rd16 } from './bytes.js';
import { IPPROTO } from './ipv4.js';
import { HeaderView } from './view.js';

/** Field offsets relative to the start of the UDP header. */
export const enum UDP_OFF {
  SOURCE_PORT = 0,
  DESTINATION_PORT = 2,
  LENGTH = 4,
  CHECKSUM = 6,
  /** First data byte. */
  DATA = 8,
}

export const UDP_HEADER_LENGTH = 8;

export const UdpVerdict = {
  OK: 0,
  /** Fewer than 8 bytes, or (off, len) does not lie inside the buffer. */
  TRUNCATED: 1,
  /** Length field < 8 or more than the bytes available. */
  BAD_LENGTH: 2,
} as const;
export type UdpVerdict = (typeof UdpVerdict)[keyof typeof UdpVerdict];

export const UDP_VERDICT_NAMES: readonly string[] = ['ok', 'truncated', 'bad_length'];

export class UdpView extends HeaderView {
  private ulen = 0;

  /**
   * Points the view at a UDP datagram; `len` is the bytes available (the IP payload length).
   * The datagram is the length field's worth of bytes; anything after it inside `len` is ignored.
   * On a non-OK verdict the view keeps its previous datagram.
   */
  wrap(buf: Uint8Array, off: number, len: number): UdpVerdict {
    if (off >>> 0 !== off || len >>> 0 !== len || off + len > buf.length || len < UDP_HEADER_LENGTH) {
      return UdpVerdict.TRUNCATED;
    }
    const ulen = rd16(buf, off + UDP_OFF.LENGTH);
    if (ulen < UDP_HEADER_LENGTH || ulen > len) return UdpVerdict.BAD_LENGTH;
    this.buf = buf;
    this.off = off;
    this.ulen = ulen;
    return UdpVerdict.OK;
  }

  get sourcePort(): number {
    return this.u16(UDP_OFF.SOURCE_PORT);
  }
  set sourcePort(v: number) {
    this.setU16(UDP_OFF.SOURCE_PORT, v);
  }

  get destinationPort(): number {
    return this.u16(UDP_OFF.DESTINATION_PORT);
  }
  set destinationPort(v: number) {
    this.setU16(UDP_OFF.DESTINATION_PORT, v);
  }

  /** Header + data in bytes, as validated by wrap(); read-only. */
  get length(): number {
    return this.ulen;
  }

  /** Absolute index of the first data byte. */
  get dataOffset(): number {
    return this.off + UDP_HEADER_LENGTH;
  }

  get dataLength(): number {
    return this.ulen - UDP_HEADER_LENGTH;
  }

  /** Stored checksum; 0 means "none" (RFC 768). */
  get checksum(): number {
    return this.u16(UDP_OFF.CHECKSUM);
  }
  set checksum(v: number) {
    this.setU16(UDP_OFF.CHECKSUM, v);
  }

  private patch16(oldWord: number, newWord: number): void {
    const c = this.u16(UDP_OFF.CHECKSUM);
    if (c === 0) return;
    this.setU16(UDP_OFF.CHECKSUM, csumUpdate16(c, oldWord, newWord) || 0xffff);
  }

  setSourcePortWithChecksum(p: number): void {
    const old = this.u16(UDP_OFF.SOURCE_PORT);
    this.setU16(UDP_OFF.SOURCE_PORT, p);
    this.patch16(old, p & 0xffff);
  }

  setDestinationPortWithChecksum(p: number): void {
    const old = this.u16(UDP_OFF.DESTINATION_PORT);
    this.setU16(UDP_OFF.DESTINATION_PORT, p);
    this.patch16(old, p & 0xffff);
  }

  /**
   * Patches the checksum for an IP address rewritten in the pseudo-header (source or destination:
   * the sum does not care which). Call it alongside Ipv4View.set*AddressWithChecksum.
   */
  updateChecksumForAddressChange(oldAddr: number, newAddr: number): void {
    const c = this.u16(UDP_OFF.CHECKSUM);
    if (c === 0) return;
    this.setU16(UDP_OFF.CHECKSUM, csumUpdate32(c, oldAddr >>> 0, newAddr >>> 0) || 0xffff);
  }

  /** The checksum a sender would store for this datagram between `src` and `dst` (never 0). */
  computeChecksum(src: number, dst: number): number {
    let sum = pseudoHeaderSum(src >>> 0, dst >>> 0, IPPROTO.UDP, this.ulen);
    sum = sum16(this.buf, this.off, UDP_OFF.CHECKSUM, sum);
    sum = sum16(this.buf, this.off + UDP_HEADER_LENGTH, this.ulen - UDP_HEADER_LENGTH, sum);
    return ~fold16(sum) & 0xffff || 0xffff;
  }

  /** True if the stored checksum is right, or is 0 ("none"). */
  verifyChecksum(src: number, dst: number): boolean {
    if (this.u16(UDP_OFF.CHECKSUM) === 0) return true;
    const sum = sum16(this.buf, this.off, this.ulen, pseudoHeaderSum(src >>> 0, dst >>> 0, IPPROTO.UDP, this.ulen));
    return fold16(sum) === 0xffff;
  }

  fillChecksum(src: number, dst: number): void {
    this.setU16(UDP_OFF.CHECKSUM, this.computeChecksum(src, dst));
  }
}
