/**
 * Zero-copy view over a TCP header (RFC 9293). Reused across packets like Ipv4View.
 * TCP has no length field: the segment is all `len` bytes given to wrap() (the IP payload),
 * and that is the length the pseudo-header carries.
 */
import { csumUpdate16, csumUpdate32, fold16, pseudoHeaderSum, sum16 } from './checksum.js';
import { rd16, wr16 } from './bytes.js';
import { IPPROTO } from './ipv4.js';
import { HeaderView } from './view.js';

/** Field offsets relative to the start of the TCP header. */
export const enum TCP_OFF {
  SOURCE_PORT = 0,
  DESTINATION_PORT = 2,
  SEQUENCE = 4,
  ACKNOWLEDGMENT = 8,
  /** High nibble: data offset in 32-bit words; low nibble: reserved (and the old NS bit). */
  DATA_OFFSET = 12,
  FLAGS = 13,
  WINDOW = 14,
  CHECKSUM = 16,
  URGENT_POINTER = 18,
  OPTIONS = 20,
}

export const TCP_MIN_HEADER_LENGTH = 20;
export const TCP_MAX_HEADER_LENGTH = 60;

export const enum TCP_FLAGS { FIN = 1, SYN = 2, RST = 4, PSH = 8, ACK = 16, URG = 32, ECE = 64, CWR = 128 }

/** Option kinds tunnat reads (RFC 9293 3.2). */
export const TCP_OPTION = { END: 0, NOP: 1, MSS: 2 } as const;
const MSS_OPTION_LENGTH = 4;

export const TcpVerdict = {
  OK: 0,
  /** Fewer than 20 bytes, or (off, len) does not lie inside the buffer. */
  TRUNCATED: 1,
  /** Data offset < 5, or the header it announces is longer than the segment. */
  BAD_DATA_OFFSET: 2,
} as const;
export type TcpVerdict = (typeof TcpVerdict)[keyof typeof TcpVerdict];

export const TCP_VERDICT_NAMES: readonly string[] = ['ok', 'truncated', 'bad_data_offset'];

export class TcpView extends HeaderView {
  private hlen = 0;
  private slen = 0;

  /**
   * Points the view at a TCP segment of exactly `len` bytes (the IP payload length).
   * On a non-OK verdict the view keeps its previous segment.
   */
  wrap(buf: Uint8Array, off: number, len: number): TcpVerdict {
    if (off >>> 0 !== off || len >>> 0 !== len || off + len > buf.length || len < TCP_MIN_HEADER_LENGTH) {
      return TcpVerdict.TRUNCATED;
    }
    const hlen = (buf[off + TCP_OFF.DATA_OFFSET]! >>> 4) << 2;
    if (hlen < TCP_MIN_HEADER_LENGTH || hlen > len) return TcpVerdict.BAD_DATA_OFFSET;
    this.buf = buf;
    this.off = off;
    this.hlen = hlen;
    this.slen = len;
    return TcpVerdict.OK;
  }

  get sourcePort(): number {
    return this.u16(TCP_OFF.SOURCE_PORT);
  }
  set sourcePort(v: number) {
    this.setU16(TCP_OFF.SOURCE_PORT, v);
  }

  get destinationPort(): number {
    return this.u16(TCP_OFF.DESTINATION_PORT);
  }
  set destinationPort(v: number) {
    this.setU16(TCP_OFF.DESTINATION_PORT, v);
  }

  /** Unsigned 32-bit. */
  get sequenceNumber(): number {
    return this.u32(TCP_OFF.SEQUENCE);
  }
  set sequenceNumber(v: number) {
    this.setU32(TCP_OFF.SEQUENCE, v);
  }

  /** Unsigned 32-bit; meaningful only with ACK set. */
  get acknowledgmentNumber(): number {
    return this.u32(TCP_OFF.ACKNOWLEDGMENT);
  }
  set acknowledgmentNumber(v: number) {
    this.setU32(TCP_OFF.ACKNOWLEDGMENT, v);
  }

  /** In 32-bit words (5..15), as validated by wrap(); read-only. */
  get dataOffset(): number {
    return this.hlen >>> 2;
  }

  /** Header length in bytes, options included. */
  get headerLength(): number {
    return this.hlen;
  }

  /** The whole segment (header + data) in bytes: the pseudo-header's length. */
  get segmentLength(): number {
    return this.slen;
  }

  /** Absolute index of the first data byte. */
  get payloadOffset(): number {
    return this.off + this.hlen;
  }

  get payloadLength(): number {
    return this.slen - this.hlen;
  }

  /** The eight flag bits as one byte; test with TCP_FLAGS. */
  get flags(): number {
    return this.buf[this.off + TCP_OFF.FLAGS]!;
  }
  set flags(v: number) {
    this.buf[this.off + TCP_OFF.FLAGS] = v;
  }

  /** Unscaled: the scale factor lives in the SYN's window-scale option. */
  get window(): number {
    return this.u16(TCP_OFF.WINDOW);
  }
  set window(v: number) {
    this.setU16(TCP_OFF.WINDOW, v);
  }

  get checksum(): number {
    return this.u16(TCP_OFF.CHECKSUM);
  }
  set checksum(v: number) {
    this.setU16(TCP_OFF.CHECKSUM, v);
  }

  get urgentPointer(): number {
    return this.u16(TCP_OFF.URGENT_POINTER);
  }
  set urgentPointer(v: number) {
    this.setU16(TCP_OFF.URGENT_POINTER, v);
  }

  setSourcePortWithChecksum(p: number): void {
    const old = this.u16(TCP_OFF.SOURCE_PORT);
    this.setU16(TCP_OFF.SOURCE_PORT, p);
    this.setU16(TCP_OFF.CHECKSUM, csumUpdate16(this.u16(TCP_OFF.CHECKSUM), old, p & 0xffff));
  }

  setDestinationPortWithChecksum(p: number): void {
    const old = this.u16(TCP_OFF.DESTINATION_PORT);
    this.setU16(TCP_OFF.DESTINATION_PORT, p);
    this.setU16(TCP_OFF.CHECKSUM, csumUpdate16(this.u16(TCP_OFF.CHECKSUM), old, p & 0xffff));
  }

  /** Patches the checksum for an address rewritten in the pseudo-header (either address). */
  updateChecksumForAddressChange(oldAddr: number, newAddr: number): void {
    this.setU16(TCP_OFF.CHECKSUM, csumUpdate32(this.u16(TCP_OFF.CHECKSUM), oldAddr >>> 0, newAddr >>> 0));
  }

  /** The checksum a sender would store for this segment between `src` and `dst`. */
  computeChecksum(src: number, dst: number): number {
    let sum = pseudoHeaderSum(src >>> 0, dst >>> 0, IPPROTO.TCP, this.slen);
    sum = sum16(this.buf, this.off, TCP_OFF.CHECKSUM, sum);
    sum = sum16(this.buf, this.off + TCP_OFF.URGENT_POINTER, this.slen - TCP_OFF.URGENT_POINTER, sum);
    return ~fold16(sum) & 0xffff;
  }

  verifyChecksum(src: number, dst: number): boolean {
    const sum = sum16(this.buf, this.off, this.slen, pseudoHeaderSum(src >>> 0, dst >>> 0, IPPROTO.TCP, this.slen));
    return fold16(sum) === 0xffff;
  }

  fillChecksum(src: number, dst: number): void {
    this.setU16(TCP_OFF.CHECKSUM, this.computeChecksum(src, dst));
  }

  /**
   * Absolute index of the MSS option's 16-bit value, or -1 if there is none. Walks the options
   * without ever reading past headerLength: a malformed option list (length < 2 or running over
   * the end) ends the walk as "absent", as Linux's tcp_parse_options does.
   */
  mssOptionOffset(): number {
    const b = this.buf;
    const end = this.off + this.hlen;
    let i = this.off + TCP_OFF.OPTIONS;
    while (i < end) {
      const kind = b[i]!;
      if (kind === TCP_OPTION.END) return -1;
      if (kind === TCP_OPTION.NOP) {
        i++;
        continue;
      }
      if (i + 1 >= end) return -1;
      const olen = b[i + 1]!;
      if (olen < 2 || i + olen > end) return -1;
      if (kind === TCP_OPTION.MSS && olen === MSS_OPTION_LENGTH) return i + 2;
      i += olen;
    }
    return -1;
  }

  /** The MSS option's value, or 0 if absent (0 is not a usable MSS, so it cannot be confused). */
  mssOption(): number {
    const at = this.mssOptionOffset();
    return at < 0 ? 0 : rd16(this.buf, at);
  }

  /**
   * Rewrites the MSS option (MSS clamping) and patches the checksum; returns false if there is
   * no MSS option. Options are not word-aligned (one NOP before MSS is legal), so when the value
   * sits at an odd position the change is applied to the two aligned words it straddles.
   */
  setMssOptionWithChecksum(mss: number): boolean {
    const at = this.mssOptionOffset();
    if (at < 0) return false;
    const b = this.buf;
    let c = this.u16(TCP_OFF.CHECKSUM);
    if (((at - this.off) & 1) === 0) {
      const old = rd16(b, at);
      wr16(b, at, mss);
      c = csumUpdate16(c, old, mss & 0xffff);
    } else {
      // Aligned words (at-1, at) and (at+1, at+2); both lie inside the header because the
      // option's kind byte is at at-2 and its value ends at at+1 < end, and the header length
      // is a multiple of 4.
      const old1 = rd16(b, at - 1);
      const old2 = rd16(b, at + 1);
      wr16(b, at, mss);
      c = csumUpdate16(c, old1, rd16(b, at - 1));
      c = csumUpdate16(c, old2, rd16(b, at + 1));
    }
    this.setU16(TCP_OFF.CHECKSUM, c);
    return true;
  }
}
