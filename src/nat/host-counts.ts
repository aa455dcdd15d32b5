/**
 * Flows each LAN host opened, for --max-flows-per-host. One loop keeps them in a Map. With several
 * workers (--workers N) a host's flows sit on several workers, so the counts live in shared memory and
 * every worker sees the host's total: the limit holds for the host across the router, not per worker.
 *
 * The shared table: open addressing over `slots` host keys (the address + 1, so 0 means free; a key once
 * placed stays), and one count per (slot, worker). A worker only writes its own column, so a worker that
 * dies and is restarted clears its column and the flows it lost stop counting. A host's count is the sum
 * of its row. Checking and counting are two steps, so workers opening flows for the same host at the
 * same instant can pass the limit by at most N - 1 flows; the Map of one loop is exact.
 */
export interface HostCounts {
  get(host: number): number;
  add(host: number, delta: number): void;
  /** Hosts with flows counted (a walk of the table when shared: for tests and checks, not the packet path). */
  readonly size: number;
}

export class LocalHostCounts implements HostCounts {
  private readonly m = new Map<number, number>();

  get(host: number): number {
    return this.m.get(host) ?? 0;
  }

  get size(): number {
    return this.m.size;
  }

  add(host: number, delta: number): void {
    const n = (this.m.get(host) ?? 0) + delta;
    if (n <= 0) this.m.delete(host);
    else this.m.set(host, n);
  }
}

export const HOST_SLOTS = 1 << 16;

export class SharedHostCounts implements HostCounts {
  private readonly keys: Uint32Array;
  private readonly counts: Int32Array;
  /** Hosts past the table's capacity: counted by this worker alone. */
  private readonly overflow = new LocalHostCounts();

  /** The memory for `workers` workers: shared by all of them. */
  static create(workers: number, slots = HOST_SLOTS): SharedArrayBuffer {
    return new SharedArrayBuffer(slots * 4 + slots * workers * 4);
  }

  constructor(
    sab: SharedArrayBuffer,
    private readonly workers: number,
    private readonly worker: number,
    private readonly slots = HOST_SLOTS,
  ) {
    if ((slots & (slots - 1)) !== 0) throw new RangeError('slots must be a power of two');
    if (sab.byteLength !== slots * 4 * (1 + workers)) throw new RangeError('shared host counts: wrong size');
    this.keys = new Uint32Array(sab, 0, slots);
    this.counts = new Int32Array(sab, slots * 4, slots * workers);
  }

  /** A restarted worker's flows are gone: so are its counts. */
  clearOwn(): void {
    for (let s = 0; s < this.slots; s++) Atomics.store(this.counts, s * this.workers + this.worker, 0);
  }

  /** The host's slot, placing it when `place`; -1 when absent (or the table is full). */
  private slotOf(host: number, place: boolean): number {
    const key = (host >>> 0) + 1 === 0x100000000 ? 0xffffffff : (host >>> 0) + 1;
    let h = Math.imul(key ^ (key >>> 16), 0x45d9f3b);
    h = (h ^ (h >>> 16)) & (this.slots - 1);
    for (let i = 0; i < this.slots; i++) {
      const s = (h + i) & (this.slots - 1);
      const k = Atomics.load(this.keys, s);
      if (k === key) return s;
      if (k === 0) {
        if (!place) return -1;
        const was = Atomics.compareExchange(this.keys, s, 0, key);
        if (was === 0 || was === key) return s;
      }
    }
    return -1;
  }

  get size(): number {
    let n = this.overflow.size;
    for (let s = 0; s < this.slots; s++) {
      let c = 0;
      for (let w = 0; w < this.workers; w++) c += Atomics.load(this.counts, s * this.workers + w);
      if (c > 0) n++;
    }
    return n;
  }

  get(host: number): number {
    const s = this.slotOf(host, false);
    if (s < 0) return this.overflow.get(host);
    let n = 0;
    const row = s * this.workers;
    for (let w = 0; w < this.workers; w++) n += Atomics.load(this.counts, row + w);
    return n;
  }

  add(host: number, delta: number): void {
    const s = this.slotOf(host, delta > 0);
    if (s < 0) {
      this.overflow.add(host, delta);
      return;
    }
    const at = s * this.workers + this.worker;
    if (Atomics.add(this.counts, at, delta) + delta < 0) Atomics.store(this.counts, at, 0);
  }
}
