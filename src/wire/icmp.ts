/**
 * Zero-copy view over an ICMPv4 message (RFC 792). Reused across packets like Ipv4View.
 *
 * The checksum covers the whole message and, unlike TCP/UDP, has no pseudo-header, so rewriting
 * the outer IP addresses never touches it, while rewriting bytes of the packet quoted inside an
 * error does (updateChecksumFor16/32).
 */
import { csumUpdate16, csumUpdate32, fold16, internetChecksum, sum16 } from './checksum.js';
import { HeaderView } from './view.js';

/** Field offsets relative to the start of the ICMP header. */
export const enum ICMP_OFF {
  TYPE = 0,
  CODE = 1,
  CHECKSUM = 2,
  /** Query messages (echo, timestamp): identifier and sequence number. */
  IDENTIFIER = 4,
  SEQUENCE = 6,
  /** Parameter problem: pointer to the offending octet. */
  POINTER = 4,
  /** Destination unreachable, fragmentation needed: next-hop MTU (RFC 1191). */
  NEXT_HOP_MTU = 6,
  /** Errors: the quoted IP header of the offending packet. */
  QUOTED = 8,
}

export const ICMP_HEADER_LENGTH = 8;

export const ICMP_TYPE = {
  ECHO_REPLY: 0,
  DEST_UNREACH: 3,
  SOURCE_QUENCH: 4,
  REDIRECT: 5,
  ECHO_REQUEST: 8,
  TIME_EXCEEDED: 11,
  PARAM_PROBLEM: 12,
  TIMESTAMP: 13,
  TIMESTAMP_REPLY: 14,
} as const;

/** Codes of ICMP_TYPE.DEST_UNREACH (RFC 792, RFC 1122, RFC 1812). */
export const ICMP_UNREACH_CODE = {
  NET_UNREACH: 0,
  HOST_UNREACH: 1,
  PROTO_UNREACH: 2,
  PORT_UNREACH: 3,
  FRAG_NEEDED: 4,
  SOURCE_ROUTE_FAILED: 5,
  NET_PROHIBITED: 9,
  HOST_PROHIBITED: 10,
  ADMIN_PROHIBITED: 13,
} as const;

/** Codes of ICMP_TYPE.TIME_EXCEEDED. */
export const ICMP_TIME_EXCEEDED_CODE = { TTL_IN_TRANSIT: 0, FRAGMENT_REASSEMBLY: 1 } as const;

export const IcmpVerdict = {
  OK: 0,
  /** Fewer than 8 bytes, or (off, len) does not lie inside the buffer. */
  TRUNCATED: 1,
} as const;
export type IcmpVerdict = (typeof IcmpVerdict)[keyof typeof IcmpVerdict];

export const ICMP_VERDICT_NAMES: readonly string[] = ['ok', 'truncated'];

// Bit i set: type i is of that class. Types above 31 are in neither.
const QUERY_TYPES =
  (1 << ICMP_TYPE.ECHO_REPLY) | (1 << ICMP_TYPE.ECHO_REQUEST) | (1 << ICMP_TYPE.TIMESTAMP) | (1 << ICMP_TYPE.TIMESTAMP_REPLY);
const QUERY_REQUEST_TYPES = (1 << ICMP_TYPE.ECHO_REQUEST) | (1 << ICMP_TYPE.TIMESTAMP);
const ERROR_TYPES =
  (1 << ICMP_TYPE.DEST_UNREACH) |
  (1 << ICMP_TYPE.SOURCE_QUENCH) |
  (1 << ICMP_TYPE.REDIRECT) |
  (1 << ICMP_TYPE.TIME_EXCEEDED) |
  (1 << ICMP_TYPE.PARAM_PROBLEM);

/** Echo or timestamp, request or reply: messages with an identifier a NAT maps. */
export function isQueryType(type: number): boolean {
  return type < 32 && ((QUERY_TYPES >>> type) & 1) === 1;
}

/** Echo or timestamp request: the only ICMP that may open a NAT mapping. */
export function isQueryRequestType(type: number): boolean {
  return type < 32 && ((QUERY_REQUEST_TYPES >>> type) & 1) === 1;
}

/** Error messages that quote the offending packet (3, 4, 5, 11, 12). */
export function isErrorType(type: number): boolean {
  return type < 32 && ((ERROR_TYPES >>> type) & 1) === 1;
}

export class IcmpView extends HeaderView {
  private mlen = 0;

  /**
   * Points the view at an ICMP message of exactly `len` bytes (the IP payload length).
   * Only the 8-byte header is required; what an error quotes is validated by wrapping another
   * Ipv4View at innerOffset. On a non-OK verdict the view keeps its previous message.
   */
  wrap(buf: Uint8Array, off: number, len: number): IcmpVerdict {
    if (off >>> 0 !== off || len >>> 0 !== len || off + len > buf.length || len < ICMP_HEADER_LENGTH) {
      return IcmpVerdict.TRUNCATED;
    }
    this.buf = buf;
    this.off = off;
    this.mlen = len;
    return IcmpVerdict.OK;
  }

  /** The whole message in bytes, as wrapped. */
  get length(): number {
    return this.mlen;
  }

  get type(): number {
    return this.buf[this.off + ICMP_OFF.TYPE]!;
  }
  set type(v: number) {
    this.buf[this.off + ICMP_OFF.TYPE] = v;
  }

  get code(): number {
    return this.buf[this.off + ICMP_OFF.CODE]!;
  }
  set code(v: number) {
    this.buf[this.off + ICMP_OFF.CODE] = v;
  }

  get checksum(): number {
    return this.u16(ICMP_OFF.CHECKSUM);
  }
  set checksum(v: number) {
    this.setU16(ICMP_OFF.CHECKSUM, v);
  }

  /** Query identifier: the "port" a NAT translates for echo and timestamp (RFC 5508 3.1). */
  get identifier(): number {
    return this.u16(ICMP_OFF.IDENTIFIER);
  }
  set identifier(v: number) {
    this.setU16(ICMP_OFF.IDENTIFIER, v);
  }

  get sequence(): number {
    return this.u16(ICMP_OFF.SEQUENCE);
  }
  set sequence(v: number) {
    this.setU16(ICMP_OFF.SEQUENCE, v);
  }

  /** Echo or timestamp, request or reply: messages with an identifier a NAT maps. */
  get isQuery(): boolean {
    return isQueryType(this.buf[this.off + ICMP_OFF.TYPE]!);
  }

  /** Echo or timestamp request: the only ICMP that may open a NAT mapping. */
  get isQueryRequest(): boolean {
    return isQueryRequestType(this.buf[this.off + ICMP_OFF.TYPE]!);
  }

  /** Error messages that quote the offending packet (3, 4, 5, 11, 12). */
  get isError(): boolean {
    return isErrorType(this.buf[this.off + ICMP_OFF.TYPE]!);
  }

  /** Next-hop MTU of a "fragmentation needed" error (RFC 1191); 0 otherwise or if the sender predates RFC 1191. */
  get nextHopMtu(): number {
    if (this.buf[this.off]! !== ICMP_TYPE.DEST_UNREACH || this.buf[this.off + 1]! !== ICMP_UNREACH_CODE.FRAG_NEEDED) return 0;
    return this.u16(ICMP_OFF.NEXT_HOP_MTU);
  }

  /** Absolute index of the quoted IP header of an error message; wrap an Ipv4View there. */
  get innerOffset(): number {
    return this.off + ICMP_OFF.QUOTED;
  }

  /** Bytes from innerOffset to the end of the message. */
  get innerLength(): number {
    return this.mlen - ICMP_OFF.QUOTED;
  }

  /** Rewrites the query identifier and patches the checksum (RFC 1624). */
  setIdentifierWithChecksum(id: number): void {
    const old = this.u16(ICMP_OFF.IDENTIFIER);
    this.setU16(ICMP_OFF.IDENTIFIER, id);
    this.setU16(ICMP_OFF.CHECKSUM, csumUpdate16(this.u16(ICMP_OFF.CHECKSUM), old, id & 0xffff));
  }

  /**
   * Patches the checksum after the caller rewrote a 16-bit word anywhere in the message, e.g. a
   * port, or the header checksum, of the quoted packet. The word must sit at an even distance
   * from the ICMP header, which holds for every field of a quoted IP/TCP/UDP header (they start
   * at offset 8 and IP header lengths are multiples of 4).
   */
  updateChecksumFor16(oldWord: number, newWord: number): void {
    this.setU16(ICMP_OFF.CHECKSUM, csumUpdate16(this.u16(ICMP_OFF.CHECKSUM), oldWord & 0xffff, newWord & 0xffff));
  }

  /** As updateChecksumFor16, for a 32-bit value (a quoted address). */
  updateChecksumFor32(oldValue: number, newValue: number): void {
    this.setU16(ICMP_OFF.CHECKSUM, csumUpdate32(this.u16(ICMP_OFF.CHECKSUM), oldValue >>> 0, newValue >>> 0));
  }

  /** Checks the checksum over the whole message as wrapped. */
  verifyChecksum(): boolean {
    return fold16(sum16(this.buf, this.off, this.mlen)) === 0xffff;
  }

  fillChecksum(): void {
    this.setU16(ICMP_OFF.CHECKSUM, 0);
    this.setU16(ICMP_OFF.CHECKSUM, internetChecksum(this.buf, this.off, this.mlen));
  }
}
