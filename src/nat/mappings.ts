import { PortPool, type Rng } from './ports.js';
import { FreeList } from '../conntrack/free-list.js';
import { HashIndex, auditIndexedRows } from '../conntrack/hash-index.js';

/**
 * NAT mappings (RFC 4787 §4.1): internal endpoint (protocol, address, port) ↔ external endpoint
 * (public address, port). Mappings are endpoint-independent: every flow from one internal endpoint
 * shares one mapping, whatever the destination (REQ-1), and a mapping lives while any of its flows
 * lives, so outbound traffic on any flow refreshes it (REQ-6).
 *
 * For ICMP queries the "port" is the echo identifier.
 *
 * Internal endpoints are found through the index the flow table uses (conntrack/hash-index.ts), keyed
 * (internal address, 0, internal port) with the protocol in the tag; external endpoints through the port
 * pool's owner array.
 */
const NONE = -1;

export interface MappingInfo {
  protocol: number;
  internalAddress: number;
  internalPort: number;
  externalAddress: number;
  externalPort: number;
  flows: number;
}

export class MappingTable {
  readonly proto: Uint8Array;
  readonly intAddr: Uint32Array;
  readonly intPort: Uint16Array;
  readonly extAddr: Uint32Array;
  readonly extPort: Uint16Array;
  /** Flows using the mapping; it is released when this drops to 0. */
  readonly refs: Int32Array;
  private readonly index: HashIndex;
  private readonly free: FreeList;
  size = 0;

  /** Port pools by protocol number, for the current public address. */
  private readonly pools = new Map<number, PortPool>();

  constructor(
    readonly capacity: number,
    seed: number,
    poolFor: (protocol: number) => PortPool,
    protocols: readonly number[],
  ) {
    this.proto = new Uint8Array(capacity);
    this.intAddr = new Uint32Array(capacity);
    this.intPort = new Uint16Array(capacity);
    this.extAddr = new Uint32Array(capacity);
    this.extPort = new Uint16Array(capacity);
    this.refs = new Int32Array(capacity);
    let ports = 0;
    for (const p of protocols) {
      const pool = poolFor(p);
      this.pools.set(p, pool);
      ports += pool.hi - pool.lo + 1;
    }
    // Every mapping in use owns a port of one of these pools, so there are never more of them than ports:
    // at a million flows that bound keeps the index to a quarter or less of what the capacity would ask.
    this.index = new HashIndex(Math.max(1, Math.min(capacity, ports)), seed, this.proto, 0);
    this.free = new FreeList(capacity);
  }

  pool(protocol: number): PortPool | undefined {
    return this.pools.get(protocol);
  }

  /** The mapping of an internal endpoint, or -1. */
  lookupInternal(proto: number, addr: number, port: number): number {
    const index = this.index;
    const a = addr | 0;
    return index.find(index.home(proto, a, 0, port), proto, a, 0, port);
  }

  /** The mapping that owns a public port, or -1. */
  lookupExternal(proto: number, port: number): number {
    const pool = this.pools.get(proto);
    return pool ? pool.owner[port]! : NONE;
  }

  /**
   * Create a mapping for an internal endpoint on `extAddr`, choosing its public port. Returns the mapping
   * id, or -1 when none can be made: the table is full (`isFull` tells), or the pool has no free port.
   */
  create(proto: number, addr: number, port: number, extAddr: number, rng: Rng, exactExternal = -1): number {
    const pool = this.pools.get(proto);
    if (!pool) return NONE;
    const m = this.free.peek();
    if (m < 0) return NONE;
    // exactExternal: restoring a saved mapping, which must keep its public port or lose its flows.
    const ext = exactExternal >= 0 ? pool.take(exactExternal, m) : pool.allocate(port, m, rng);
    if (ext < 0) return NONE;
    this.free.take();
    this.proto[m] = proto;
    this.intAddr[m] = addr >>> 0;
    this.intPort[m] = port;
    this.extAddr[m] = extAddr >>> 0;
    this.extPort[m] = ext;
    this.refs[m] = 0;
    // Keyed by what the arrays hold, so that unref finds the same key; an endpoint mapped twice (which the
    // translator never asks for) shadows the older mapping, as pushing at the head of a chain did.
    this.index.insert(proto, addr | 0, 0, this.intPort[m]!, m);
    this.size++;
    return m;
  }

  /** No row left for another mapping. */
  get isFull(): boolean {
    return this.free.available === 0;
  }

  ref(m: number): void {
    this.refs[m]!++;
  }

  /** Drop a temporary hold without freeing the mapping, even at 0 (the caller is about to reference it). */
  unrefKeep(m: number): void {
    this.refs[m]!--;
  }

  /** Free a mapping no flow references (after unrefKeep when the flow could not be made after all). */
  releaseIfUnused(m: number): void {
    if (this.refs[m] === 0) {
      this.refs[m] = 1;
      this.unref(m);
    }
  }

  /** Drop one flow's reference; the last one frees the public port. */
  unref(m: number): void {
    if (--this.refs[m]! > 0) return;
    const proto = this.proto[m]!;
    this.index.delete(proto, this.intAddr[m]! | 0, 0, this.intPort[m]!, m);
    this.pools.get(proto)?.release(this.extPort[m]!, m);
    this.free.give(m);
    this.size--;
  }

  /** 1 for every mapping in use, 0 for every free one (allocates; for checks and diagnostics). */
  liveRows(): Uint8Array {
    const live = this.free.marks([], 'mapping');
    for (let m = 0; m < live.length; m++) live[m] = live[m]! ^ 1;
    return live;
  }

  /**
   * Everything wrong with the table, as sentences (empty when it is sound): every mapping in use is
   * indexed once under its internal endpoint and nothing else is; the free list and the mappings in use
   * are disjoint and together all of them; size counts the mappings in use; each one's public port is
   * owned by it in its protocol's pool; no reference count is negative. Walks everything: for tests and
   * fuzzers.
   */
  checkInvariants(): string[] {
    const index = this.index;
    const { problems: out, free } = auditIndexedRows(index, this.free, 'mapping', (m, j) =>
      index.holds(j, this.proto[m]!, this.intAddr[m]! | 0, 0, this.intPort[m]!) ? null : `the key is not mapping ${m}'s internal endpoint`);
    let live = 0;
    for (let m = 0; m < this.capacity; m++) {
      if (free[m]) continue;
      live++;
      const where = `mapping ${m} (protocol ${this.proto[m]}, port ${this.intPort[m]} → ${this.extPort[m]})`;
      if (this.refs[m]! < 0) out.push(`${where} has ${this.refs[m]} references`);
      const pool = this.pools.get(this.proto[m]!);
      if (!pool) out.push(`${where} has no port pool`);
      else if (pool.owner[this.extPort[m]!] !== m) out.push(`${where}: its public port is owned by ${pool.owner[this.extPort[m]!]}`);
    }
    if (live !== this.size) out.push(`size ${this.size} but ${live} mappings in use`);
    return out;
  }

  info(m: number): MappingInfo {
    return {
      protocol: this.proto[m]!,
      internalAddress: this.intAddr[m]!,
      internalPort: this.intPort[m]!,
      externalAddress: this.extAddr[m]!,
      externalPort: this.extPort[m]!,
      flows: this.refs[m]!,
    };
  }
}
