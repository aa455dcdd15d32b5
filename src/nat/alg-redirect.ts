import { IPPROTO } from '../wire/ipv4.js';
import type { MappingTable } from './mappings.js';

/**
 * FTP data endpoints that live on another worker (--workers N with --alg ftp).
 *
 * The worker that owns an FTP control connection sees the PORT command (or a LAN server's PASV reply)
 * and makes the data endpoint's mapping itself, in its own slice of the port space, so the data
 * connection coming in from outside is steered to it by its public port. The data connection's LAN side,
 * though, is steered by the inside endpoint's port, which may be another worker's. That worker has no flow
 * for it and would set up a mapping of its own: the remote would see another public port and reset.
 *
 * So the control connection's owner publishes the endpoint here, in shared memory, before the rewritten
 * command leaves; a worker that misses its flow table on a LAN-side TCP packet looks here (only then,
 * and only while some entry is live) and hands the packet to the owner, which holds the flow. The same
 * endpoint's later connections (rare: it is a listening data port) follow it there too, so they keep
 * the one mapping.
 *
 * Each worker writes only its own region, so there is no lock: an entry is published by storing its
 * port last. An entry lives as long as its mapping (an expectation or a data flow holds it): the
 * owner's sweep clears the rest.
 *
 * Layout (Int32Array over a SharedArrayBuffer): `workers` live counts, then per worker SLOTS pairs of
 * (inside address, inside port + 1; 0 when the slot is free).
 */
export const REDIRECT_SLOTS = 512;

export class AlgRedirects {
  private readonly words: Int32Array;
  /** This worker's entries: the mapping each one follows (not shared). */
  private readonly mapping: Int32Array;
  private mine = 0;

  static create(workers: number, slots = REDIRECT_SLOTS): SharedArrayBuffer {
    return new SharedArrayBuffer(4 * (workers + workers * slots * 2));
  }

  constructor(
    sab: SharedArrayBuffer,
    readonly workers: number,
    readonly self: number,
    readonly slots = REDIRECT_SLOTS,
  ) {
    if (sab.byteLength !== 4 * (workers + workers * slots * 2)) throw new RangeError('redirect table has the wrong size');
    this.words = new Int32Array(sab);
    this.mapping = new Int32Array(slots).fill(-1);
  }

  private base(w: number): number {
    return this.workers + w * this.slots * 2;
  }

  /** A restarted worker's mappings are gone: so are its entries. */
  clearOwn(): void {
    const b = this.base(this.self);
    for (let s = 0; s < this.slots; s++) Atomics.store(this.words, b + s * 2 + 1, 0);
    Atomics.store(this.words, this.self, 0);
    this.mapping.fill(-1);
    this.mine = 0;
  }

  /** Entries this worker has published. */
  get size(): number {
    return this.mine;
  }

  /** Room for one more entry (or `addr:port` is here already)? */
  hasRoom(addr: number, port: number): boolean {
    return this.mine < this.slots || this.find(this.self, addr >>> 0, port) >= 0;
  }

  /** Publish `addr:port` as this worker's, following mapping `m`. False when the region is full. */
  add(addr: number, port: number, m: number): boolean {
    const b = this.base(this.self);
    const a = addr | 0;
    const have = this.find(this.self, addr >>> 0, port);
    if (have >= 0) {
      this.mapping[have] = m;
      return true;
    }
    for (let s = 0; s < this.slots; s++) {
      if (Atomics.load(this.words, b + s * 2 + 1) !== 0) continue;
      this.mapping[s] = m;
      Atomics.store(this.words, b + s * 2, a);
      Atomics.store(this.words, b + s * 2 + 1, port + 1);
      this.mine++;
      Atomics.store(this.words, this.self, this.mine);
      return true;
    }
    return false;
  }

  /** The worker that published `addr:port`, or -1. */
  ownerOf(addr: number, port: number): number {
    const words = this.words;
    const a = addr | 0;
    for (let w = 0; w < this.workers; w++) {
      if (Atomics.load(words, w) === 0) continue;
      if (this.find(w, a >>> 0, port) >= 0) return w;
    }
    return -1;
  }

  /** Clear the entries whose mapping is gone (from the owner's sweep). Returns how many went. */
  prune(maps: MappingTable): number {
    if (this.mine === 0) return 0;
    const b = this.base(this.self);
    let gone = 0;
    for (let s = 0; s < this.slots; s++) {
      const port = Atomics.load(this.words, b + s * 2 + 1);
      if (port === 0) continue;
      const m = this.mapping[s]!;
      const addr = Atomics.load(this.words, b + s * 2) >>> 0;
      const alive = m >= 0 && maps.refs[m]! > 0 && maps.proto[m] === IPPROTO.TCP && maps.intAddr[m] === addr && maps.intPort[m] === port - 1;
      if (alive) continue;
      Atomics.store(this.words, b + s * 2 + 1, 0);
      this.mapping[s] = -1;
      this.mine--;
      gone++;
    }
    Atomics.store(this.words, this.self, this.mine);
    return gone;
  }

  private find(w: number, addr: number, port: number): number {
    const words = this.words;
    const b = this.base(w);
    const p = port + 1;
    const a = addr | 0;
    for (let s = 0; s < this.slots; s++) {
      if (Atomics.load(words, b + s * 2 + 1) === p && Atomics.load(words, b + s * 2) === a) return s;
    }
    return -1;
  }
}
