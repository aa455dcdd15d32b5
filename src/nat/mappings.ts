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

/** Each pool address costs a port pool per protocol (about 1 MB): the most a pool may hold. */
export const MAX_POOL = 64;

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

  /** Port pools by protocol number: one per slot of `addresses`. */
  private readonly pools = new Map<number, PortPool[]>();
  /**
   * The public addresses (the pool), one per slot; a mapping's port lives in the pool of its slot. Only
   * the first `slots` are in use, and of those only the live ones: a slot whose address went (masquerade
   * over every WAN address) keeps its pools, empty, for the next address that comes.
   */
  readonly addresses: Uint32Array;
  private readonly live: Uint8Array;
  slots: number;
  /**
   * Paired pooling (RFC 4787 REQ-2): the public address each inside host holds while it has any mapping,
   * and how many mappings it has. Touched only when a mapping is made or freed.
   */
  private readonly hostAddr = new Map<number, number>();
  private readonly hostMappings = new Map<number, number>();
  private readonly poolFor: (protocol: number) => PortPool;

  constructor(
    readonly capacity: number,
    seed: number,
    poolFor: (protocol: number) => PortPool,
    protocols: readonly number[],
    addresses: readonly number[] = [0],
    /** Slots the pool may grow to (addAddress); the static pool's own size by default. */
    maxSlots = 0,
  ) {
    const initial = addresses.length > 0 ? addresses : [0];
    this.slots = initial.length;
    this.addresses = new Uint32Array(Math.max(maxSlots, this.slots));
    this.addresses.set(initial.map((a) => a >>> 0));
    this.live = new Uint8Array(this.addresses.length).fill(1, 0, this.slots);
    this.poolFor = poolFor;
    this.proto = new Uint8Array(capacity);
    this.intAddr = new Uint32Array(capacity);
    this.intPort = new Uint16Array(capacity);
    this.extAddr = new Uint32Array(capacity);
    this.extPort = new Uint16Array(capacity);
    this.refs = new Int32Array(capacity);
    let ports = 0;
    for (const p of protocols) {
      const list: PortPool[] = [];
      for (let i = 0; i < this.slots; i++) {
        const pool = poolFor(p);
        list.push(pool);
        ports += (pool.hi - pool.lo + 1) * (this.addresses.length / this.slots);
      }
      this.pools.set(p, list);
    }
    // Every mapping in use owns a port of one of these pools (or of the slots the pool may grow to), so
    // there are never more of them than ports: at a million flows that bound keeps the index to a quarter
    // or less of what the capacity would ask.
    this.index = new HashIndex(Math.max(1, Math.min(capacity, ports)), seed, this.proto, 0);
    this.free = new FreeList(capacity);
  }

  /** The port pool of a protocol on the `i`-th public address (the first by default). */
  pool(protocol: number, i = 0): PortPool | undefined {
    return this.pools.get(protocol)?.[i];
  }

  /** Where `addr` stands in the pool of public addresses, or -1. */
  addressIndex(addr: number): number {
    const a = this.addresses;
    const n = this.slots;
    addr >>>= 0;
    for (let i = 0; i < n; i++) if (a[i] === addr && this.live[i] === 1) return i;
    return NONE;
  }

  /** The live public addresses, in slot order. */
  liveAddresses(): number[] {
    const out: number[] = [];
    for (let i = 0; i < this.slots; i++) if (this.live[i] === 1) out.push(this.addresses[i]!);
    return out;
  }

  /**
   * A new public address joins the pool (masquerade over every WAN address): it takes a slot whose
   * address went, or a new one, with fresh port pools. Returns the slot, or -1 when every slot is taken.
   */
  addAddress(addr: number): number {
    addr >>>= 0;
    const have = this.addressIndex(addr);
    if (have >= 0) return have;
    let i = 0;
    while (i < this.slots && this.live[i] === 1) i++;
    if (i === this.slots && this.slots === this.addresses.length) return NONE;
    // Fresh pools, also for a slot taken over: the ports blocked for the old address were its own.
    for (const [p, list] of this.pools) list[i] = this.poolFor(p);
    if (i === this.slots) this.slots++;
    this.addresses[i] = addr;
    this.live[i] = 1;
    return i;
  }

  /**
   * A public address leaves the pool. Its mappings must be gone already (the caller flushed their flows):
   * returns false, changing nothing, while any of its ports is still in use.
   */
  removeAddress(addr: number): boolean {
    const i = this.addressIndex(addr);
    if (i < 0) return true;
    for (const list of this.pools.values()) if (list[i]!.used > 0) return false;
    this.live[i] = 0;
    this.addresses[i] = 0;
    return true;
  }

  /** The port pool of a protocol on public address `addr` (undefined if it is not one of the pool). */
  poolAt(protocol: number, addr: number): PortPool | undefined {
    const i = this.addressIndex(addr);
    return i < 0 ? undefined : this.pools.get(protocol)?.[i];
  }

  /** Masquerade: the `i`-th public address changed (its flows and mappings are flushed by the caller). */
  setAddress(i: number, addr: number): void {
    this.addresses[i] = addr >>> 0;
  }

  /** The public address an inside host holds (paired pooling), or -1 while it has no mapping. */
  pairedAddress(host: number): number {
    return this.hostAddr.get(host >>> 0) ?? NONE;
  }

  /** The mapping of an internal endpoint, or -1. */
  lookupInternal(proto: number, addr: number, port: number): number {
    const index = this.index;
    const a = addr | 0;
    return index.find(index.home(proto, a, 0, port), proto, a, 0, port);
  }

  /** The mapping that owns a public port on public address `addr`, or -1. */
  lookupExternal(proto: number, addr: number, port: number): number {
    const pool = this.poolAt(proto, addr);
    return pool ? pool.owner[port]! : NONE;
  }

  /**
   * Create a mapping for an internal endpoint on `extAddr`, choosing its public port. Returns the mapping
   * id, or -1 when none can be made: the table is full (`isFull` tells), or the pool has no free port.
   */
  create(proto: number, addr: number, port: number, extAddr: number, rng: Rng, exactExternal = -1): number {
    const pool = this.poolAt(proto, extAddr);
    if (!pool) return NONE;
    // Paired: a host that holds an address gets every further mapping on that one, never on another.
    const paired = this.pairedAddress(addr);
    if (paired !== NONE && paired !== extAddr >>> 0) return NONE;
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
    const host = addr >>> 0;
    this.hostAddr.set(host, extAddr >>> 0);
    this.hostMappings.set(host, (this.hostMappings.get(host) ?? 0) + 1);
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
    this.poolAt(proto, this.extAddr[m]!)?.release(this.extPort[m]!, m);
    this.free.give(m);
    this.size--;
    const host = this.intAddr[m]!;
    const left = (this.hostMappings.get(host) ?? 1) - 1;
    if (left > 0) this.hostMappings.set(host, left);
    else {
      this.hostMappings.delete(host);
      this.hostAddr.delete(host);
    }
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
      const pool = this.poolAt(this.proto[m]!, this.extAddr[m]!);
      if (!pool) out.push(`${where} has no port pool`);
      else if (this.hostAddr.get(this.intAddr[m]!) !== this.extAddr[m]) out.push(`${where} is not on its host's paired address`);
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
