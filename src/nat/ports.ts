/**
 * The ports (or ICMP query identifiers) of one public address for one protocol: who owns each one,
 * and which may be handed out at all. `owner[port]` doubles as the external lookup of a mapping
 * (public port → mapping), so an inbound packet finds its mapping with one array read.
 *
 * Allocation follows RFC 4787: keep the client's port when it is free (REQ-3, "port preservation"),
 * otherwise keep its parity (REQ-4), otherwise anything free. Attempts are bounded: a handful of random
 * probes, then one pass over the range, so a nearly full pool costs at most one scan of 64 K bytes.
 */
export type Rng = () => number;

const NO_OWNER = -1;

/** Why a port in the range may not be mapped: a port is mappable only while no reason holds. */
export const BLOCK = {
  /** The gateway's own ephemeral range (--gateway-ports): fixed at construction. */
  EXCLUDED: 1,
  /** A socket of the gateway's own listens on it. */
  LOCAL: 2,
  /** A port forward owns it. */
  FORWARD: 4,
  /** Another data-plane worker's slice of the port space (--workers): fixed at construction. */
  SLICE: 8,
  /**
   * The other gateway's half of the range (a pair, `--ha-node`): fixed at construction. New mappings never
   * take it, so two gateways that are both active at once (split brain) cannot give one public port to two
   * inside endpoints; a mapping replicated from the peer may (take()).
   */
  NODE: 16,
} as const;

/**
 * The half of `lo..hi` that gateway `node` (0 or 1) of a pair maps new ports in: node 0 the lower part,
 * node 1 the upper, each with as many mappable ports (those not `excluded`, the gateway's own range) as
 * the other. Contiguous halves rather than interleaved ports, so that the workers' slices (pairs of ports
 * dealt round robin) stay whole inside each half. Both gateways compute the same split from the same
 * settings. The split point is even, so a port pair (2k, 2k+1) is never cut.
 */
export function nodeHalf(lo: number, hi: number, node: number, excluded: readonly (readonly [number, number])[] = []): [number, number] {
  const out = (p: number) => excluded.some(([a, b]) => p >= a && p <= b);
  let total = 0;
  for (let p = lo; p <= hi; p++) if (!out(p)) total++;
  let mid = lo;
  for (let seen = 0; mid <= hi && seen < Math.ceil(total / 2); mid++) if (!out(mid)) seen++;
  if (mid & 1 && mid <= hi) mid++;
  return node === 0 ? [lo, mid - 1] : [mid, hi];
}

/**
 * The worker that owns a port (or ICMP identifier) when `count` workers share the port space. Ports go
 * in pairs (2k, 2k+1), so port parity can be kept inside one worker's slice, and the pairs are dealt out
 * round robin, so every slice spans the whole range. One worker owns every port.
 */
export function sliceOwner(port: number, count: number): number {
  return count <= 1 ? 0 : (port >>> 1) % count;
}
const RANDOM_PROBES = 32;

export class PortPool {
  /** Mapping id that owns each port, or -1. */
  readonly owner = new Int32Array(65536).fill(NO_OWNER);
  /** 1 where the port may be mapped: inside the configured range, not the gateway's own. */
  readonly allowed = new Uint8Array(65536);
  /** The BLOCK reasons that hold for each port; `allowed` is 1 exactly where none does (within lo..hi). */
  private readonly blocked = new Uint8Array(65536);
  private allowedCount = 0;
  used = 0;
  /** Ports of the other gateway's half held by mappings replicated from it (not counted in `used`). */
  peerHeld = 0;

  constructor(
    readonly lo: number,
    readonly hi: number,
    excluded: readonly (readonly [number, number])[] = [],
    slice: { index: number; count: number } | null = null,
    node: number | null = null,
  ) {
    if (!(Number.isInteger(lo) && Number.isInteger(hi) && lo >= 0 && hi <= 65535 && lo <= hi)) {
      throw new RangeError(`port range ${lo}-${hi} is not within 0-65535`);
    }
    this.allowed.fill(1, lo, hi + 1);
    for (const [a, b] of excluded) {
      this.allowed.fill(0, Math.max(a, lo), Math.min(b, hi) + 1);
      this.blocked.fill(BLOCK.EXCLUDED, Math.max(a, lo), Math.min(b, hi) + 1);
    }
    if (slice && slice.count > 1) {
      for (let p = lo; p <= hi; p++) {
        if (sliceOwner(p, slice.count) === slice.index) continue;
        this.allowed[p] = 0;
        this.blocked[p]! |= BLOCK.SLICE;
      }
    }
    if (node !== null) {
      const [a, b] = nodeHalf(lo, hi, node, excluded);
      for (let p = lo; p <= hi; p++) {
        if (p >= a && p <= b) continue;
        this.allowed[p] = 0;
        this.blocked[p]! |= BLOCK.NODE;
      }
    }
    for (let p = lo; p <= hi; p++) this.allowedCount += this.allowed[p]!;
  }

  /** Ports that could be mapped at all. */
  get size(): number {
    return this.allowedCount;
  }

  get available(): number {
    return this.allowedCount - this.used;
  }

  isFree(port: number): boolean {
    return this.allowed[port] === 1 && this.owner[port] === NO_OWNER;
  }

  /**
   * Take a port for `mapping`, preferring `preferred`. Returns the port, or -1 when none is free.
   * `outcome` (optional) learns how the port was chosen, for the trace and the tests.
   */
  allocate(preferred: number, mapping: number, rng: Rng): number {
    let port = -1;
    if (this.isFree(preferred)) port = preferred;
    else if (this.used < this.allowedCount) port = this.search(preferred & 1, rng);
    if (port < 0) return -1;
    this.owner[port] = mapping;
    this.used++;
    return port;
  }

  private search(parity: number, rng: Rng): number {
    const lo = this.lo;
    const span = this.hi - lo + 1;
    for (let i = 0; i < RANDOM_PROBES; i++) {
      let p = lo + Math.floor(rng() * span);
      if ((p & 1) !== parity) p = p + 1 <= this.hi ? p + 1 : p - 1;
      if (p >= lo && this.isFree(p)) return p;
    }
    // One pass from a random start, same parity first, then any port at all.
    const start = Math.floor(rng() * span);
    let fallback = -1;
    for (let i = 0; i < span; i++) {
      const p = lo + ((start + i) % span);
      if (this.isFree(p)) {
        if ((p & 1) === parity) return p;
        if (fallback < 0) fallback = p;
      }
    }
    return fallback;
  }

  /**
   * Take exactly `port` for `mapping` (a mapping restored or replicated, which must keep its port) if it is
   * free and mappable, or free and kept only for the other gateway of a pair (the peer made it); -1 otherwise.
   */
  take(port: number, mapping: number): number {
    if (this.owner[port] !== NO_OWNER || port < this.lo || port > this.hi) return -1;
    const b = this.blocked[port]!;
    if (b === BLOCK.NODE) {
      this.owner[port] = mapping;
      this.peerHeld++;
      return port;
    }
    if (!this.isFree(port)) return -1;
    this.owner[port] = mapping;
    this.used++;
    return port;
  }

  release(port: number, mapping: number): void {
    if (this.owner[port] === mapping) {
      this.owner[port] = NO_OWNER;
      // The NODE reason is fixed at construction: whatever else changed, it says how take() counted it.
      if (this.blocked[port]! & BLOCK.NODE) this.peerHeld--;
      else this.used--;
    }
  }

  /**
   * Set or clear one reason to keep a port from new mappings (existing owners keep it). The port is
   * mappable again only when no reason is left: a forward removed on a port the gateway also listens on
   * stays blocked, and so does one in the excluded range.
   */
  setBlocked(port: number, reason: number, on: boolean): void {
    if (port < this.lo || port > this.hi) return;
    const b = on ? this.blocked[port]! | reason : this.blocked[port]! & ~reason;
    this.blocked[port] = b;
    const v = b === 0 ? 1 : 0;
    if (this.allowed[port] === v) return;
    this.allowed[port] = v;
    this.allowedCount += v === 1 ? 1 : -1;
  }
}

/** A small seeded PRNG (mulberry32) so tests get the same port choices every run. */
export function seededRng(seed: number): Rng {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
