/**
 * IP fragments (RFC 4787 REQ-14: a NAT MUST handle fragments, in order or out of order).
 *
 * tunnat does not reassemble. Only the first fragment carries the transport ports, so the first
 * fragment is translated like any packet and its decision — the new source and destination addresses,
 * or a drop — is remembered under (source, destination, protocol, identification). Later fragments get
 * the same address rewrite. Fragments that arrive before the first are copied aside until it comes.
 * The transport checksum lives in the first fragment and covers the whole datagram, so updating it
 * incrementally there stays correct however the payload is split.
 *
 * Memory is bounded (datagrams tracked, bytes held) and incomplete sets time out. Overlapping fragments
 * (the classic evasion trick) are dropped.
 */
export const FragDecision = { PENDING: 0, TRANSLATE: 1, LOCAL: 2, DROP: 3 } as const;

export interface FragEntry {
  /** The datagram's key (FragmentTracker.key), to delete the entry once its datagram is complete. */
  readonly key: string;
  decision: number;
  newSrc: number;
  newDst: number;
  /** The flow entry the first fragment used (its counters take the later fragments too), or -1. */
  entry: number;
  expires: number;
  /** Byte ranges [start, end) of the IP payload seen so far. */
  ranges: number[];
  /** Payload length of the whole datagram, known once the last fragment was seen; -1 before. */
  total: number;
  covered: number;
  /** Copies of fragments that came before the first one. */
  held: Buffer[];
  heldBytes: number;
}

export interface FragmentLimits {
  maxDatagrams: number;
  maxHeldBytes: number;
  timeoutMs: number;
  /** Fragments per datagram (a 64 KB datagram in 8-byte pieces would be 8192: nobody sends that). */
  maxFragments: number;
}

export const DEFAULT_FRAGMENT_LIMITS: FragmentLimits = {
  maxDatagrams: 1024,
  maxHeldBytes: 1 << 20,
  timeoutMs: 30_000, // Linux's ipfrag_time
  maxFragments: 64,
};

export class FragmentTracker {
  private readonly entries = new Map<string, FragEntry>();
  heldBytes = 0;
  /** Counters for metrics and tests. */
  readonly stats = { held: 0, released: 0, expired: 0, overlaps: 0, limitDrops: 0 };

  constructor(readonly limits: FragmentLimits = DEFAULT_FRAGMENT_LIMITS) {}

  get size(): number {
    return this.entries.size;
  }

  static key(src: number, dst: number, proto: number, id: number): string {
    return `${src}/${dst}/${proto}/${id}`;
  }

  get(key: string): FragEntry | undefined {
    return this.entries.get(key);
  }

  /** The entry for a datagram, created if there is room; null when the tracker is full. */
  open(key: string, now: number): FragEntry | null {
    let e = this.entries.get(key);
    if (e) return e;
    if (this.entries.size >= this.limits.maxDatagrams) {
      this.expire(now);
      if (this.entries.size >= this.limits.maxDatagrams) {
        this.stats.limitDrops++;
        return null;
      }
    }
    e = { key, decision: FragDecision.PENDING, newSrc: 0, newDst: 0, entry: -1, expires: now + this.limits.timeoutMs, ranges: [], total: -1, covered: 0, held: [], heldBytes: 0 };
    this.entries.set(key, e);
    return e;
  }

  /**
   * Record the payload range [start, end) of a fragment. Returns false (and records nothing) if it
   * overlaps a range already seen or the datagram has too many fragments.
   */
  addRange(e: FragEntry, start: number, end: number, last: boolean): boolean {
    const r = e.ranges;
    for (let i = 0; i < r.length; i += 2) {
      if (start < r[i + 1]! && r[i]! < end) {
        this.stats.overlaps++;
        return false;
      }
    }
    if (r.length / 2 >= this.limits.maxFragments) {
      this.stats.limitDrops++;
      return false;
    }
    r.push(start, end);
    e.covered += end - start;
    if (last) e.total = end;
    return true;
  }

  /** Whether every byte of the datagram has been seen (then the entry can go). */
  complete(e: FragEntry): boolean {
    return e.total >= 0 && e.covered === e.total;
  }

  /** Keep a copy of an early fragment; false when over the memory bound. */
  hold(e: FragEntry, pkt: Uint8Array): boolean {
    if (this.heldBytes + pkt.length > this.limits.maxHeldBytes) {
      this.stats.limitDrops++;
      return false;
    }
    e.held.push(Buffer.from(pkt));
    e.heldBytes += pkt.length;
    this.heldBytes += pkt.length;
    this.stats.held++;
    return true;
  }

  /** Take the held fragments out (to be released with the decision). */
  takeHeld(e: FragEntry): Buffer[] {
    const h = e.held;
    this.heldBytes -= e.heldBytes;
    this.stats.released += h.length;
    e.held = [];
    e.heldBytes = 0;
    return h;
  }

  delete(key: string): void {
    const e = this.entries.get(key);
    if (!e) return;
    this.heldBytes -= e.heldBytes;
    this.entries.delete(key);
  }

  /** Forget every datagram (the public address changed: remembered rewrites would use the old one). */
  clear(): void {
    this.entries.clear();
    this.heldBytes = 0;
  }

  /** What must hold of the tracker between packets; the list of what does not (empty when sound). */
  checkInvariants(): string[] {
    const v: string[] = [];
    const lim = this.limits;
    if (this.entries.size > lim.maxDatagrams) v.push(`${this.entries.size} datagrams tracked > ${lim.maxDatagrams}`);
    if (this.heldBytes < 0 || this.heldBytes > lim.maxHeldBytes) v.push(`heldBytes ${this.heldBytes} outside 0..${lim.maxHeldBytes}`);
    let held = 0;
    for (const [key, e] of this.entries) {
      if (e.key !== key) v.push(`entry under ${key} names itself ${e.key}`);
      let bytes = 0;
      for (const h of e.held) bytes += h.length;
      if (bytes !== e.heldBytes) v.push(`set ${key}: heldBytes ${e.heldBytes} but holds ${bytes}`);
      held += e.heldBytes;
      if (e.ranges.length / 2 > lim.maxFragments) v.push(`set ${key}: ${e.ranges.length / 2} pieces > ${lim.maxFragments}`);
    }
    if (held !== this.heldBytes) v.push(`heldBytes ${this.heldBytes} but entries hold ${held}`);
    return v;
  }

  /** Drop datagrams whose time is up (what was held is freed: an incomplete set is never sent on). */
  expire(now: number): number {
    let n = 0;
    for (const [k, e] of this.entries) {
      if (e.expires <= now) {
        this.stats.expired++;
        this.delete(k);
        n++;
      }
    }
    return n;
  }
}
