import { rd32, wr32 } from '../wire/bytes.js';

/**
 * TCP sequence-number adjustment for a connection whose payload an ALG made longer or shorter (Linux's
 * nf_conntrack_seqadj, in our own words).
 *
 * When the ALG turns "PORT 192,168,1,10,..." into "PORT 203,0,113,1,..." the receiver sees a stream a
 * few bytes shorter (or longer) than the one the sender wrote. Every later sequence number of that
 * sender must move by the difference, and every acknowledgement coming back must move the other way,
 * or both ends see bytes that were never sent or lose bytes that were. One correction point per
 * direction is kept: segments that start after it move by `after`, those at or before it (a
 * retransmission of the rewritten segment, or older data) by `before`. A new rewrite in the same
 * direction moves the point forward and makes the old `after` the new `before`, as Linux does; two
 * rewrites whose segments are both still unacknowledged cannot be told apart, which is the same
 * limit the kernel accepts (FTP sends one command per round trip).
 *
 * State is per flow and only for flows an ALG watches: a Map keyed by flow, never touched by other flows.
 */

/** Words per flow: per direction (0, 1) the correction position, the offset before it, the offset after it. */
const WORDS = 6;

/** a after b in sequence space (RFC 1982 comparison). */
export function seqAfter(a: number, b: number): boolean {
  return ((a - b) | 0) > 0;
}

export class SeqAdjust {
  private readonly state = new Map<number, Int32Array>();

  /** Whether a flow has an adjustment at all (its segments need looking at). */
  has(flow: number): boolean {
    return this.state.has(flow);
  }

  /** Forget a flow (it was removed). */
  forget(flow: number): void {
    this.state.delete(flow);
  }

  get size(): number {
    return this.state.size;
  }

  /** Offsets of one direction: [position, before, after], or null when nothing was rewritten that way. */
  offsets(flow: number, dir: number): [number, number, number] | null {
    const s = this.state.get(flow);
    if (!s) return null;
    const i = dir * 3;
    return [s[i]! >>> 0, s[i + 1]!, s[i + 2]!];
  }

  /**
   * A segment of direction `dir` starting at sequence number `seq` (in the sender's own numbering) had its
   * payload changed by `delta` bytes. A retransmission of a segment already corrected (at or before the
   * correction point) changes nothing: it got the same rewrite and takes the same offset.
   */
  record(flow: number, dir: number, seq: number, delta: number): void {
    if (delta === 0) return;
    let s = this.state.get(flow);
    if (!s) this.state.set(flow, (s = new Int32Array(WORDS)));
    const i = dir * 3;
    // Nothing pending (offsets equal) or a segment beyond the last correction: a new correction point.
    if (s[i + 1] === s[i + 2] || seqAfter(seq, s[i]!)) {
      s[i] = seq | 0;
      s[i + 1] = s[i + 2]!;
      s[i + 2] = s[i + 2]! + delta;
    }
  }

  /** The offset a segment of direction `dir` starting at `seq` moves by. */
  seqOffset(flow: number, dir: number, seq: number): number {
    const s = this.state.get(flow);
    if (!s) return 0;
    const i = dir * 3;
    return seqAfter(seq, s[i]!) ? s[i + 2]! : s[i + 1]!;
  }

  /**
   * Rewrite the sequence number, acknowledgement number and SACK blocks of a TCP segment of direction
   * `dir` at `l4` (header of `hlen` bytes). `seq` is the segment's own sequence number before any change.
   * Returns whether anything changed (the caller recomputes the checksum).
   */
  adjust(flow: number, dir: number, buf: Uint8Array, l4: number, hlen: number): boolean {
    const s = this.state.get(flow);
    if (!s) return false;
    const i = dir * 3;
    const o = (1 - dir) * 3;
    let changed = false;
    const seq = rd32(buf, l4 + 4);
    const seqOff = seqAfter(seq, s[i]!) ? s[i + 2]! : s[i + 1]!;
    if (seqOff !== 0) {
      wr32(buf, l4 + 4, (seq + seqOff) >>> 0);
      changed = true;
    }
    // The acknowledgement speaks of the other direction's bytes as its receiver saw them (shifted): shift back.
    if (buf[l4 + 13]! & 0x10) {
      const ack = rd32(buf, l4 + 8);
      const ackOff = this.backOffset(s, o, ack);
      if (ackOff !== 0) {
        wr32(buf, l4 + 8, (ack - ackOff) >>> 0);
        changed = true;
      }
    }
    if (hlen > 20 && (s[o + 1] !== 0 || s[o + 2] !== 0)) changed = this.adjustSack(s, o, buf, l4, hlen) || changed;
    return changed;
  }

  /** The offset to take off a number the receiver of direction `o` sent back about that direction's bytes. */
  private backOffset(s: Int32Array, o: number, n: number): number {
    return seqAfter((n - s[o + 1]!) | 0, s[o]!) ? s[o + 2]! : s[o + 1]!;
  }

  /** SACK blocks (option 5) are acknowledgements too: each edge moves back like the ack does. */
  private adjustSack(s: Int32Array, o: number, buf: Uint8Array, l4: number, hlen: number): boolean {
    let changed = false;
    let p = l4 + 20;
    const end = l4 + hlen;
    while (p < end) {
      const kind = buf[p]!;
      if (kind === 0) break;
      if (kind === 1) {
        p++;
        continue;
      }
      if (p + 1 >= end) break;
      const len = buf[p + 1]!;
      if (len < 2 || p + len > end) break; // a bad option list: leave the rest alone
      if (kind === 5 && len >= 10) {
        for (let b = p + 2; b + 8 <= p + len; b += 8) {
          for (let edge = b; edge < b + 8; edge += 4) {
            const v = rd32(buf, edge);
            const off = this.backOffset(s, o, v);
            if (off !== 0) {
              wr32(buf, edge, (v - off) >>> 0);
              changed = true;
            }
          }
        }
      }
      p += len;
    }
    return changed;
  }
}
