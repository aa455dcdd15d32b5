/**
 * IPv4 addresses as unsigned 32-bit numbers (host order, always `>>> 0`), the form the views
 * return. Parsing is strict: configuration mistakes should fail loudly, not silently mean
 * something else (e.g. "010.0.0.1" is octal to inet_aton, so it is rejected here).
 */

export interface Cidr {
  /** The network address: the parsed address with host bits cleared. */
  readonly network: number;
  readonly prefixLength: number;
  readonly mask: number;
  /** The text had host bits set (e.g. "192.168.1.7/24"); they were cleared in `network`. */
  readonly hostBitsSet: boolean;
}

export function ipToString(n: number): string {
  return `${n >>> 24}.${(n >>> 16) & 0xff}.${(n >>> 8) & 0xff}.${n & 0xff}`;
}

// 0-255 in decimal without leading zeros.
const OCTET = '(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])';
const DOTTED_QUAD = new RegExp(`^${OCTET}\\.${OCTET}\\.${OCTET}\\.${OCTET}$`);
const PREFIX = /^(3[0-2]|[12][0-9]|[0-9])$/;

/** Strict dotted quad ("192.168.1.1"): four decimal octets, no leading zeros, no spaces. */
export function parseIpv4(s: string): number | null {
  const m = DOTTED_QUAD.exec(s);
  if (m === null) return null;
  return ((Number(m[1]) << 24) | (Number(m[2]) << 16) | (Number(m[3]) << 8) | Number(m[4])) >>> 0;
}

/** Mask for a prefix length 0..32 (shifting a 32-bit value by 32 is a no-op in JS, hence the 0 case). */
export function prefixMask(prefixLength: number): number {
  return prefixLength === 0 ? 0 : (0xffffffff << (32 - prefixLength)) >>> 0;
}

/**
 * "a.b.c.d/n" with n in 0..32. Host bits are accepted and cleared, and reported through
 * `hostBitsSet` so a caller can warn or refuse.
 */
export function parseCidr(s: string): Cidr | null {
  const slash = s.indexOf('/');
  if (slash < 0) return null;
  const addr = parseIpv4(s.slice(0, slash));
  const plen = s.slice(slash + 1);
  if (addr === null || !PREFIX.test(plen)) return null;
  const prefixLength = Number(plen);
  const mask = prefixMask(prefixLength);
  const network = (addr & mask) >>> 0;
  return { network, prefixLength, mask, hostBitsSet: network !== addr };
}

export function cidrToString(c: Pick<Cidr, 'network' | 'prefixLength'>): string {
  return `${ipToString(c.network)}/${c.prefixLength}`;
}

export function inCidr(addr: number, cidr: Pick<Cidr, 'network' | 'mask'>): boolean {
  return ((addr & cidr.mask) >>> 0) === cidr.network;
}

/** RFC 1918: 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16. */
export function isPrivateIpv4(addr: number): boolean {
  const a = addr >>> 0;
  return a >>> 24 === 10 || (a & 0xfff00000) >>> 0 === 0xac100000 || a >>> 16 === 0xc0a8;
}
