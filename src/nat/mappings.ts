import { PortPool, type Rng } from './ports.js';
import { tupleHash } from '../conntrack/table.js';

/**
 * NAT mappings (RFC 4787 §4.1): internal endpoint (protocol, address, port) ↔ external endpoint
 * (public address, port). Mappings are endpoint-independent: every flow from one internal endpoint
 * shares one mapping, whatever the destination (REQ-1), and a mapping lives while any of its flows
 * lives, so outbound traffic on any flow refreshes it (REQ-6).
 *
 * For ICMP queries the "port" is the echo identifier.
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
  private readonly next: Int32Array;
  private readonly heads: Int32Array;
  private readonly mask: number;
  private readonly free: Int32Array;
  private freeTop: number;
  size = 0;

  /** Port pools by protocol number, for the current public address. */
  private readonly pools = new Map<number, PortPool>();

  constructor(
    readonly capacity: number,
    private readonly seed: number,
    poolFor: (protocol: number) => PortPool,
    protocols: readonly number[],
  ) {
    this.proto = new Uint8Array(capacity);
    this.intAddr = new Uint32Array(capacity);
    this.intPort = new Uint16Array(capacity);
    this.extAddr = new Uint32Array(capacity);
    this.extPort = new Uint16Array(capacity);
    this.refs = new Int32Array(capacity);
    this.next = new Int32Array(capacity).fill(NONE);
    let buckets = 1;
    while (buckets < capacity) buckets <<= 1;
    this.heads = new Int32Array(buckets).fill(NONE);
    this.mask = buckets - 1;
    this.free = new Int32Array(capacity);
    for (let i = 0; i < capacity; i++) this.free[i] = capacity - 1 - i;
    this.freeTop = capacity;
    for (const p of protocols) this.pools.set(p, poolFor(p));
  }

  pool(protocol: number): PortPool | undefined {
    return this.pools.get(protocol);
  }

  private bucket(proto: number, addr: number, port: number): number {
    return tupleHash(this.seed, proto, addr, 0, port, 0) & this.mask;
  }

  /** The mapping of an internal endpoint, or -1. */
  lookupInternal(proto: number, addr: number, port: number): number {
    let m = this.heads[this.bucket(proto, addr, port)]!;
    while (m !== NONE) {
      if (this.intAddr[m] === addr && this.intPort[m] === port && this.proto[m] === proto) return m;
      m = this.next[m]!;
    }
    return NONE;
  }

  /** The mapping that owns a public port, or -1. */
  lookupExternal(proto: number, port: number): number {
    const pool = this.pools.get(proto);
    return pool ? pool.owner[port]! : NONE;
  }

  /**
   * Create a mapping for an internal endpoint on `extAddr`, choosing its public port.
   * Returns the mapping id, -1 if the pool has no free port, -2 if the mapping table is full.
   */
  create(proto: number, addr: number, port: number, extAddr: number, rng: Rng, exactExternal = -1): number {
    const pool = this.pools.get(proto);
    if (!pool) return NONE;
    if (this.freeTop === 0) return -2;
    const m = this.free[this.freeTop - 1]!;
    // exactExternal: restoring a saved mapping, which must keep its public port or lose its flows.
    const ext = exactExternal >= 0 ? pool.take(exactExternal, m) : pool.allocate(port, m, rng);
    if (ext < 0) return NONE;
    this.freeTop--;
    this.proto[m] = proto;
    this.intAddr[m] = addr >>> 0;
    this.intPort[m] = port;
    this.extAddr[m] = extAddr >>> 0;
    this.extPort[m] = ext;
    this.refs[m] = 0;
    const b = this.bucket(proto, addr, port);
    this.next[m] = this.heads[b]!;
    this.heads[b] = m;
    this.size++;
    return m;
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
    const b = this.bucket(proto, this.intAddr[m]!, this.intPort[m]!);
    let cur = this.heads[b]!;
    if (cur === m) this.heads[b] = this.next[m]!;
    else {
      while (cur !== NONE) {
        const nx = this.next[cur]!;
        if (nx === m) {
          this.next[cur] = this.next[m]!;
          break;
        }
        cur = nx;
      }
    }
    this.next[m] = NONE;
    this.pools.get(proto)?.release(this.extPort[m]!, m);
    this.free[this.freeTop++] = m;
    this.size--;
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
