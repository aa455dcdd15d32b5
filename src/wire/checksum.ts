/**
 * The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
 *
 * A checksum is the one's complement of the one's-complement sum of the covered 16-bit words.
 * Sums here are carried "unfolded": plain non-negative integers whose carries out of bit 15 have
 * not been added back yet. Unfolded sums can be added together freely (a JS number holds exact
 * integers up to 2^53, far beyond any packet) and are folded once at the end.
 *
 * One's complement has two zeros, 0x0000 (+0) and 0xffff (-0). Folding a sum of words that are
 * not all zero never yields +0, so a full computation over data that is not entirely zero gives
 * the checksum ~0xffff = 0x0000, never 0xffff. Every header tunnat checksums (IPv4, and TCP/UDP
 * through the pseudo-header's protocol number) contains a non-zero word, so for them 0xffff never
 * comes out of a full computation; ICMP can, for an all-zero message.
 */

/**
 * One's-complement accumulation of `buf[off .. off+len)` as big-endian 16-bit words, added to
 * `initial`. An odd trailing byte is the high byte of a word whose low byte is zero (RFC 1071 4.1).
 * The result is unfolded but reduced below 2^32 (for any `initial` < 2^48), so it can be passed as
 * `initial` again or added to other sums; finish with fold16 or internetChecksum.
 * The caller guarantees the range lies inside buf; this is the hot path and does not check.
 */
export function sum16(buf: Uint8Array, off: number, len: number, initial = 0): number {
  let sum = initial;
  const end = off + len;
  const evenEnd = end - (len & 1);
  let i = off;
  // Four words per round: fewer loop tests, and the sum of 4 words cannot overflow the double's
  // exact range no matter how long the packet.
  const fastEnd = evenEnd - 6;
  for (; i < fastEnd; i += 8) {
    sum +=
      ((buf[i]! << 8) | buf[i + 1]!) +
      ((buf[i + 2]! << 8) | buf[i + 3]!) +
      ((buf[i + 4]! << 8) | buf[i + 5]!) +
      ((buf[i + 6]! << 8) | buf[i + 7]!);
  }
  for (; i < evenEnd; i += 2) sum += (buf[i]! << 8) | buf[i + 1]!;
  if (len & 1) sum += buf[end - 1]! << 8;
  // One fold step without 32-bit operators (sum may exceed 2^32 when initial was large).
  return (sum % 0x10000) + Math.floor(sum / 0x10000);
}

/** Folds an unfolded sum (any non-negative integer below 2^53) to 16 bits with end-around carry. */
export function fold16(sum: number): number {
  // Bitwise operators work on 32 bits; bring larger sums down arithmetically first.
  while (sum > 0xffffffff) sum = (sum % 0x10000) + Math.floor(sum / 0x10000);
  sum = (sum & 0xffff) + (sum >>> 16);
  sum = (sum & 0xffff) + (sum >>> 16);
  return sum;
}

/** The checksum to store for `buf[off .. off+len)` plus `initial` (e.g. a pseudo-header sum). */
export function internetChecksum(buf: Uint8Array, off: number, len: number, initial = 0): number {
  return ~fold16(sum16(buf, off, len, initial)) & 0xffff;
}

/**
 * Unfolded sum of the TCP/UDP pseudo-header (RFC 768, RFC 9293 3.1): source, destination, zero,
 * protocol, and the L4 length (header + data).
 */
export function pseudoHeaderSum(src: number, dst: number, protocol: number, l4Length: number): number {
  return (src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff) + protocol + l4Length;
}

/**
 * RFC 1624 eqn. 3: the new checksum after one covered 16-bit word changes from `oldWord` to
 * `newWord`, HC' = ~(~HC + ~m + m').
 *
 * Eqn. 3 rather than RFC 1141's HC' = HC + m - m' (eqn. 2): eqn. 2 produces 0xffff (-0) where a
 * full recomputation produces 0x0000, which receivers that compare the stored value against a
 * recomputation reject. Eqn. 3 gives exactly what a full computation gives whenever the covered
 * data, after the change, is not entirely zero (always true for IPv4/TCP/UDP, see the module
 * comment): it returns 0x0000 where the sum is -0 and never returns 0xffff unless the stored
 * checksum was already the non-canonical 0xffff and the word went from 0xffff to 0x0000.
 * The one case it cannot see is an ICMP message that becomes entirely zero, where a full
 * computation gives 0xffff and eqn. 3 gives 0x0000; NAT never rewrites a message into that.
 *
 * UDP's "0 means no checksum" rule is the caller's business (see UdpView), not this function's.
 * The word must be 16-bit aligned relative to the start of the checksummed data.
 */
export function csumUpdate16(csum: number, oldWord: number, newWord: number): number {
  const sum = (~csum & 0xffff) + (~oldWord & 0xffff) + (newWord & 0xffff);
  return ~fold16(sum) & 0xffff;
}

/**
 * RFC 1624 eqn. 3 for a 32-bit value (an IPv4 address: two aligned covered words). Same
 * 0x0000/0xffff behaviour as csumUpdate16.
 */
export function csumUpdate32(csum: number, oldValue: number, newValue: number): number {
  const sum =
    (~csum & 0xffff) +
    (~(oldValue >>> 16) & 0xffff) +
    (~oldValue & 0xffff) +
    (newValue >>> 16) +
    (newValue & 0xffff);
  return ~fold16(sum) & 0xffff;
}

/**
 * RFC 1624 with several words changed at once: each change contributes ~m + m' to one running sum,
 * and csumApply folds that sum into the checksum once (eqn. 3 over all of them). The terms are plain
 * integers, so a rewrite of addresses, ports and TTL pays one fold instead of one per word.
 * Both words are 16-bit values (the new one is added as it is).
 */
export function csumDiff16(oldWord: number, newWord: number): number {
  return (~oldWord & 0xffff) + newWord;
}

/** csumDiff16 for a 32-bit value (an address: two covered words). */
export function csumDiff32(oldValue: number, newValue: number): number {
  return (~oldValue >>> 16 & 0xffff) + (~oldValue & 0xffff) + (newValue >>> 16) + (newValue & 0xffff);
}

/** HC' = ~(~HC + Σ(~m + m')), for a sum of csumDiff16/csumDiff32 terms below 2^31. */
export function csumApply(csum: number, diffs: number): number {
  let s = (~csum & 0xffff) + diffs;
  s = (s & 0xffff) + (s >>> 16);
  s = (s & 0xffff) + (s >>> 16);
  return ~s & 0xffff;
}
