/**
 * Zero-copy view over an IPv4 header (RFC 791).
 *
 * An Ipv4View is made once by its user and re-pointed at every packet with wrap(); wrap() validates
 * once and returns a verdict instead of throwing, and after an OK verdict the accessors read and
 * write the bytes directly without further checks. Offsets are absolute indices into the
 * Uint8Array passed to wrap(), so a Buffer slice or subarray with a non-zero byteOffset is honoured.
 *
 * Plain setters write one field and nothing else; the *WithChecksum setters also patch the
 * checksum (RFC 1624), which is what NAT uses. Fields that wrap() validated (version, IHL, total
 * length) have no setters, so an OK view cannot be talked out of its own bounds.
 * The same conventions hold for UdpView, TcpView and IcmpView.
 */
import { csumUpdate16, csumUpdate32, internetChecksum, fold16, sum16 } from './checksum.js';
import { HeaderView } from './view.js';
import { rd16 } from './bytes.js';

/** Field offsets relative to the start of the IPv4 header. */
export const enum IPV4_OFF {
  VERSION_IHL = 0,
  DSCP_ECN = 1,
  TOTAL_LENGTH = 2,
  IDENTIFICATION = 4,
  FLAGS_FRAGMENT = 6,
  TTL = 8,
  PROTOCOL = 9,
  CHECKSUM = 10,
  SOURCE = 12,
  DESTINATION = 16,
  /** First byte after the fixed header: options, if IHL > 5. */
  OPTIONS = 20,
}

/** Smallest (option-less) and largest (IHL 15) header, in bytes. */
export const IPV4_MIN_HEADER_LENGTH = 20;
export const IPV4_MAX_HEADER_LENGTH = 60;

/** Bits of the 16-bit flags/fragment-offset word. */
export const enum IPV4_FRAG {
  /** Reserved "evil" bit (RFC 3514); must be zero, left as found. */
  RESERVED = 0x8000,
  DONT_FRAGMENT = 0x4000,
  MORE_FRAGMENTS = 0x2000,
  /** Fragment offset, in 8-byte units. */
  OFFSET_MASK = 0x1fff,
}

export const enum IPPROTO { ICMP = 1, TCP = 6, UDP = 17, SCTP = 132, UDPLITE = 136 }

/** The protocols tunnat translates, by the names /conntrack, the metrics and the trace print. */
export const PROTO_NAMES: Readonly<Record<number, 'tcp' | 'udp' | 'icmp'>> = {
  [IPPROTO.TCP]: 'tcp',
  [IPPROTO.UDP]: 'udp',
  [IPPROTO.ICMP]: 'icmp',
};

/** Names of the other protocols tunnat translates (as /etc/protocols spells them). */
const OTHER_PROTO_NAMES: Readonly<Record<number, string>> = { 4: 'ipip', 47: 'gre', 50: 'esp', 51: 'ah', 132: 'sctp', 136: 'udplite' };

/** A protocol's name, or its number as text for a protocol without a well-known name. */
export function protoName(proto: number): string {
  return PROTO_NAMES[proto] ?? OTHER_PROTO_NAMES[proto] ?? String(proto);
}

export const Ipv4Verdict = {
  OK: 0,
  /** Fewer than 20 bytes, or (off, len) does not lie inside the buffer. */
  TRUNCATED: 1,
  BAD_VERSION: 2,
  /** IHL < 5, or IHL*4 > total length. */
  BAD_IHL: 3,
  /** Total length < 20, or more than the bytes available. */
  BAD_TOTAL_LENGTH: 4,
} as const;
export type Ipv4Verdict = (typeof Ipv4Verdict)[keyof typeof Ipv4Verdict];

/** Verdict names indexed by verdict, for drop counters and logs. */
export const IPV4_VERDICT_NAMES: readonly string[] = ['ok', 'truncated', 'bad_version', 'bad_ihl', 'bad_total_length'];

export class Ipv4View extends HeaderView {
  private hlen = 0;
  private tlen = 0;
  /** Bytes of the packet present in buf: tlen, or fewer for a truncated quote. */
  private plen = 0;

  /**
   * Points the view at `buf[off .. off+len)`. `len` is what the source claims is there (e.g. the
   * length the TUN read returned); it is checked against the buffer, never trusted.
   * Bytes after the total length (link padding) are allowed and ignored.
   * On a non-OK verdict the view keeps its previous packet and no byte is touched.
   */
  wrap(buf: Uint8Array, off: number, len: number): Ipv4Verdict {
    return this.point(buf, off, len, false);
  }

  /**
   * Points the view at the IP header quoted inside an ICMP error (RFC 792, RFC 1812 4.3.2.3):
   * the header must be whole, but the packet may be cut short, so a total length beyond `len`
   * is accepted and payloadLength counts only the bytes present (check `truncated`). A quote
   * guarantees 8 bytes of L4 header at most, which covers the UDP header and the TCP ports and
   * sequence number; read further L4 fields only if payloadLength says they are there.
   */
  wrapQuoted(buf: Uint8Array, off: number, len: number): Ipv4Verdict {
    return this.point(buf, off, len, true);
  }

  /** The checks of wrap and wrapQuoted; they differ only in whether the whole packet must be there. */
  private point(buf: Uint8Array, off: number, len: number, quoted: boolean): Ipv4Verdict {
    // `>>> 0 !== x` rejects negatives, fractions and NaN in one test.
    if (off >>> 0 !== off || len >>> 0 !== len || off + len > buf.length || len < IPV4_MIN_HEADER_LENGTH) {
      return Ipv4Verdict.TRUNCATED;
    }
    const vihl = buf[off]!;
    if (vihl >>> 4 !== 4) return Ipv4Verdict.BAD_VERSION;
    const hlen = (vihl & 0x0f) << 2;
    const tlen = rd16(buf, off + IPV4_OFF.TOTAL_LENGTH);
    if (hlen < IPV4_MIN_HEADER_LENGTH) return Ipv4Verdict.BAD_IHL;
    if (tlen < IPV4_MIN_HEADER_LENGTH) return Ipv4Verdict.BAD_TOTAL_LENGTH;
    if (hlen > tlen) return Ipv4Verdict.BAD_IHL;
    if (quoted ? hlen > len : tlen > len) return quoted ? Ipv4Verdict.TRUNCATED : Ipv4Verdict.BAD_TOTAL_LENGTH;
    this.buf = buf;
    this.off = off;
    this.hlen = hlen;
    this.tlen = tlen;
    this.plen = tlen < len ? tlen : len;
    return Ipv4Verdict.OK;
  }

  /** Only after wrapQuoted: fewer bytes are present than the total length says. */
  get truncated(): boolean {
    return this.plen < this.tlen;
  }

  /** Always 4 after an OK wrap. */
  get version(): number {
    return this.buf[this.off]! >>> 4;
  }

  /** IHL in bytes (20..60). Read-only: changing it would invalidate what wrap() checked. */
  get headerLength(): number {
    return this.hlen;
  }

  /** DSCP (6 bits) and ECN (2 bits) as one byte; not covered by any L4 checksum. */
  get dscpEcn(): number {
    return this.buf[this.off + IPV4_OFF.DSCP_ECN]!;
  }
  set dscpEcn(v: number) {
    this.buf[this.off + IPV4_OFF.DSCP_ECN] = v;
  }

  /** Header + payload in bytes, as validated by wrap(). Read-only for the same reason as headerLength. */
  get totalLength(): number {
    return this.tlen;
  }

  get identification(): number {
    return this.u16(IPV4_OFF.IDENTIFICATION);
  }
  set identification(v: number) {
    this.setU16(IPV4_OFF.IDENTIFICATION, v);
  }

  get dontFragment(): boolean {
    return (this.u16(IPV4_OFF.FLAGS_FRAGMENT) & IPV4_FRAG.DONT_FRAGMENT) !== 0;
  }
  set dontFragment(v: boolean) {
    const w = this.u16(IPV4_OFF.FLAGS_FRAGMENT);
    this.setU16(IPV4_OFF.FLAGS_FRAGMENT, v ? w | IPV4_FRAG.DONT_FRAGMENT : w & ~IPV4_FRAG.DONT_FRAGMENT);
  }

  get moreFragments(): boolean {
    return (this.u16(IPV4_OFF.FLAGS_FRAGMENT) & IPV4_FRAG.MORE_FRAGMENTS) !== 0;
  }
  set moreFragments(v: boolean) {
    const w = this.u16(IPV4_OFF.FLAGS_FRAGMENT);
    this.setU16(IPV4_OFF.FLAGS_FRAGMENT, v ? w | IPV4_FRAG.MORE_FRAGMENTS : w & ~IPV4_FRAG.MORE_FRAGMENTS);
  }

  /** In 8-byte units (RFC 791); multiply by 8 for the byte offset of this fragment's data. */
  get fragmentOffset(): number {
    return this.u16(IPV4_OFF.FLAGS_FRAGMENT) & IPV4_FRAG.OFFSET_MASK;
  }
  set fragmentOffset(v: number) {
    const w = this.u16(IPV4_OFF.FLAGS_FRAGMENT);
    this.setU16(IPV4_OFF.FLAGS_FRAGMENT, (w & ~IPV4_FRAG.OFFSET_MASK) | (v & IPV4_FRAG.OFFSET_MASK));
  }

  /**
   * Any fragment, first included. Only the first fragment (offset 0) carries the L4 header;
   * a NAT needs reassembly or fragment tracking to translate the others.
   */
  get isFragment(): boolean {
    return (this.u16(IPV4_OFF.FLAGS_FRAGMENT) & (IPV4_FRAG.MORE_FRAGMENTS | IPV4_FRAG.OFFSET_MASK)) !== 0;
  }

  get ttl(): number {
    return this.buf[this.off + IPV4_OFF.TTL]!;
  }
  set ttl(v: number) {
    this.buf[this.off + IPV4_OFF.TTL] = v;
  }

  get protocol(): number {
    return this.buf[this.off + IPV4_OFF.PROTOCOL]!;
  }
  set protocol(v: number) {
    this.buf[this.off + IPV4_OFF.PROTOCOL] = v;
  }

  get headerChecksum(): number {
    return this.u16(IPV4_OFF.CHECKSUM);
  }
  set headerChecksum(v: number) {
    this.setU16(IPV4_OFF.CHECKSUM, v);
  }

  /** Unsigned 32-bit, host order. The plain setter leaves every checksum alone. */
  get sourceAddress(): number {
    return this.u32(IPV4_OFF.SOURCE);
  }
  set sourceAddress(v: number) {
    this.setU32(IPV4_OFF.SOURCE, v);
  }

  get destinationAddress(): number {
    return this.u32(IPV4_OFF.DESTINATION);
  }
  set destinationAddress(v: number) {
    this.setU32(IPV4_OFF.DESTINATION, v);
  }

  /** Absolute index in buf of the L4 header (after any IP options). */
  get payloadOffset(): number {
    return this.off + this.hlen;
  }

  /**
   * Bytes of L4 header + data: from the total length, not from the buffer length (trailing
   * padding is not payload); after wrapQuoted, only the bytes present.
   */
  get payloadLength(): number {
    return this.plen - this.hlen;
  }

  /** True if the header (options included) sums to -0, i.e. the stored checksum is right. */
  verifyChecksum(): boolean {
    return fold16(sum16(this.buf, this.off, this.hlen)) === 0xffff;
  }

  /** Computes the header checksum from scratch and stores it (for packets tunnat builds). */
  fillChecksum(): void {
    this.setU16(IPV4_OFF.CHECKSUM, 0);
    this.setU16(IPV4_OFF.CHECKSUM, internetChecksum(this.buf, this.off, this.hlen));
  }

  /**
   * Rewrites the source address and patches the header checksum (RFC 1624). The L4 checksum also
   * covers the address through its pseudo-header; the caller updates it through the L4 view.
   */
  setSourceAddressWithChecksum(a: number): void {
    const old = this.u32(IPV4_OFF.SOURCE);
    this.setU32(IPV4_OFF.SOURCE, a);
    this.setU16(IPV4_OFF.CHECKSUM, csumUpdate32(this.u16(IPV4_OFF.CHECKSUM), old, a >>> 0));
  }

  /** As setSourceAddressWithChecksum, for the destination. */
  setDestinationAddressWithChecksum(a: number): void {
    const old = this.u32(IPV4_OFF.DESTINATION);
    this.setU32(IPV4_OFF.DESTINATION, a);
    this.setU16(IPV4_OFF.CHECKSUM, csumUpdate32(this.u16(IPV4_OFF.CHECKSUM), old, a >>> 0));
  }

  /** Sets the TTL and patches the checksum; TTL shares its 16-bit word with the protocol byte. */
  setTtlWithChecksum(t: number): void {
    const old = this.u16(IPV4_OFF.TTL);
    this.buf[this.off + IPV4_OFF.TTL] = t;
    this.setU16(IPV4_OFF.CHECKSUM, csumUpdate16(this.u16(IPV4_OFF.CHECKSUM), old, this.u16(IPV4_OFF.TTL)));
  }
}
