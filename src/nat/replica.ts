import { IPPROTO } from '../wire/ipv4.js';
import { FLOW_IN_USE, FLOW_INBOUND, type RemoveReason } from '../conntrack/table.js';
import { tcpTimeout } from '../conntrack/tcp.js';
import type { FlowObserver } from './outcome.js';
import type { NatContext } from './context.js';
import { restoreFlow, setSavedState, type RestoredFlow, type SavedMapping } from './restore.js';

/**
 * A data plane's flows as a stream of records, for a standby gateway (`--ha-…`, docs/ha.md).
 *
 * On the active gateway, a `Replica` listens to the translator's flow observers (creation, a TCP state
 * change, a first reply, removal: never an ordinary packet) and keeps what changed: the slots of flows
 * created or changed, and the removals, encoded at once (the slot may be reused before the next drain).
 * `drain()`, called off the packet path every few milliseconds, turns that into records: the removals
 * first, then each changed flow as it is now. A flow alive at the drain was created after any removal of
 * its tuple in the same interval, so this order is always right, and a flow that changed ten times in
 * the interval is sent once.
 *
 * On the standby, `apply()` puts the records into its own translator: the same tuples, the same
 * mappings on the same public ports (restore.ts), TCP state and flags. A full resync is framed by BEGIN
 * and END records: flows that the resync did not name are removed at END (they ended on the active while
 * the standby was not hearing), and records that could not be applied during it (their public port still
 * held by such a stale flow) are tried again after that sweep.
 *
 * Record layout (network byte order):
 * - UPSERT (85 bytes): kind 1, protocol, flags u16, state u16, detail u16, ms left u32, original tuple
 *   (src u32, dst u32, sport u16, dport u16), reply tuple (same), packets u32 ×2, bytes f64 ×2, which
 *   mappings follow (bit 0: first, bit 1: second), two mappings (internal address u32, internal port u16,
 *   external address u32, external port u16; zero when absent).
 * - REMOVE (14 bytes): kind 2, protocol, original tuple.
 * - BEGIN and END of a full resync (5 bytes): kind 3 or 4, epoch u32.
 */
export const REC = { UPSERT: 1, REMOVE: 2, BEGIN: 3, END: 4 } as const;
export const UPSERT_BYTES = 85;
export const REMOVE_BYTES = 14;
export const MARK_BYTES = 5;

/** The bytes a record of this kind takes, or 0 for an unknown kind. */
export function recordBytes(kind: number): number {
  return kind === REC.UPSERT ? UPSERT_BYTES : kind === REC.REMOVE ? REMOVE_BYTES : kind === REC.BEGIN || kind === REC.END ? MARK_BYTES : 0;
}


/** Write flow `f` as an UPSERT at `off`; returns the offset after it. */
export function encodeUpsert(nat: NatContext, f: number, now: number, dv: DataView, off: number): number {
  const t = nat.flows;
  const o = f * 2;
  const r = o + 1;
  dv.setUint8(off, REC.UPSERT);
  dv.setUint8(off + 1, t.proto[f]!);
  dv.setUint16(off + 2, t.flags[f]! & ~FLOW_IN_USE);
  dv.setUint16(off + 4, t.state[f]!);
  dv.setUint16(off + 6, t.detail[f]!);
  dv.setUint32(off + 8, Math.max(0, Math.min(0xffffffff, Math.round(t.expires[f]! - now))));
  dv.setUint32(off + 12, t.tSrc[o]!);
  dv.setUint32(off + 16, t.tDst[o]!);
  dv.setUint16(off + 20, t.tSport[o]!);
  dv.setUint16(off + 22, t.tDport[o]!);
  dv.setUint32(off + 24, t.tSrc[r]!);
  dv.setUint32(off + 28, t.tDst[r]!);
  dv.setUint16(off + 32, t.tSport[r]!);
  dv.setUint16(off + 34, t.tDport[r]!);
  dv.setUint32(off + 36, Math.min(0xffffffff, t.packets[o]!));
  dv.setUint32(off + 40, Math.min(0xffffffff, t.packets[r]!));
  dv.setFloat64(off + 44, t.bytes[o]!);
  dv.setFloat64(off + 52, t.bytes[r]!);
  const m = t.mapping[f]!;
  const m2 = t.mapping2[f]!;
  dv.setUint8(off + 60, (m >= 0 ? 1 : 0) | (m2 >= 0 ? 2 : 0));
  putMapping(nat, m, dv, off + 61);
  putMapping(nat, m2, dv, off + 73);
  return off + UPSERT_BYTES;
}

function putMapping(nat: NatContext, m: number, dv: DataView, off: number): void {
  const maps = nat.mappings;
  dv.setUint32(off, m >= 0 ? maps.intAddr[m]! : 0);
  dv.setUint16(off + 4, m >= 0 ? maps.intPort[m]! : 0);
  dv.setUint32(off + 6, m >= 0 ? maps.extAddr[m]! : 0);
  dv.setUint16(off + 10, m >= 0 ? maps.extPort[m]! : 0);
}

function getMapping(dv: DataView, off: number): SavedMapping {
  return { internalAddress: dv.getUint32(off), internalPort: dv.getUint16(off + 4), externalAddress: dv.getUint32(off + 6), externalPort: dv.getUint16(off + 10) };
}

/** Read the UPSERT at `off` (the caller checked its kind and length). */
export function decodeUpsert(dv: DataView, off: number): RestoredFlow {
  const which = dv.getUint8(off + 60);
  return {
    protocol: dv.getUint8(off + 1),
    flags: dv.getUint16(off + 2),
    state: dv.getUint16(off + 4),
    detail: dv.getUint16(off + 6),
    msLeft: dv.getUint32(off + 8),
    original: [dv.getUint32(off + 12), dv.getUint32(off + 16), dv.getUint16(off + 20), dv.getUint16(off + 22)],
    reply: [dv.getUint32(off + 24), dv.getUint32(off + 28), dv.getUint16(off + 32), dv.getUint16(off + 34)],
    packets: [dv.getUint32(off + 36), dv.getUint32(off + 40)],
    bytes: [dv.getFloat64(off + 44), dv.getFloat64(off + 52)],
    mapping: which & 1 ? getMapping(dv, off + 61) : null,
    mapping2: which & 2 ? getMapping(dv, off + 73) : null,
  };
}

/** A record's protocol and original tuple (UPSERT or REMOVE): what names the flow on both gateways. */
export function recordKey(dv: DataView, off: number): [number, number, number, number, number] {
  const at = off + (dv.getUint8(off) === REC.UPSERT ? 12 : 2);
  return [dv.getUint8(off + 1), dv.getUint32(at), dv.getUint32(at + 4), dv.getUint16(at + 8), dv.getUint16(at + 10)];
}

export function encodeMark(kind: typeof REC.BEGIN | typeof REC.END, epoch: number): Uint8Array {
  const b = new Uint8Array(MARK_BYTES);
  b[0] = kind;
  new DataView(b.buffer).setUint32(1, epoch >>> 0);
  return b;
}

/**
 * Walk the records in `buf`, calling `each(kind, offset)` for every whole one; returns false (having
 * visited the good ones before it) when the buffer holds an unknown kind or a cut record.
 */
export function forEachRecord(buf: Uint8Array, each: (kind: number, off: number) => void): boolean {
  let off = 0;
  while (off < buf.length) {
    const n = recordBytes(buf[off]!);
    if (n === 0 || off + n > buf.length) return false;
    each(buf[off]!, off);
    off += n;
  }
  return true;
}

/** What a standby did with a batch of records. */
export interface ApplyCounts {
  upserts: number;
  removes: number;
  /** Records that could not be applied (no room, a port held by another flow, an address not ours). */
  failed: number;
  /** Records that were not records at all (the batch stopped there). */
  malformed: number;
  /** Flows a resync's END removed (the resync did not name them). */
  swept: number;
  /** The epoch of the last END applied in this batch, or -1. */
  ended: number;
}

export function newApplyCounts(): ApplyCounts {
  return { upserts: 0, removes: 0, failed: 0, malformed: 0, swept: 0, ended: -1 };
}

/** Bytes of removals kept between two drains before the log gives up and asks for a full resync. */
const REMOVES_LIMIT = 1 << 20;

export class Replica implements FlowObserver {
  /** Record changes (the active gateway); a standby applies instead and records nothing. */
  logging = false;
  /** The removals' bytes overflowed REMOVES_LIMIT since the last drain: the peer needs a full resync. */
  lost = false;
  private readonly dirty: Int32Array;
  private readonly marked: Uint8Array;
  private dirtyCount = 0;
  private removes = new Uint8Array(4096);
  private removesDv = new DataView(this.removes.buffer);
  private removesLen = 0;
  /**
   * Resync bookkeeping on the standby: the generation each flow was last named in (0: never). The
   * generation is this side's own count of resyncs begun, not the sender's epoch: a sender that restarts
   * counts from 1 again, and a flow named by its old resync must not pass for one named by the new.
   */
  private readonly named: Uint32Array;
  private generation = 0;
  /** The sender's epoch of the resync under way (0: none), matched against its END. */
  private resyncEpoch = 0;
  private retry: RestoredFlow[] = [];

  constructor(private readonly nat: NatContext) {
    const cap = nat.flows.capacity;
    this.dirty = new Int32Array(cap);
    this.marked = new Uint8Array(cap);
    this.named = new Uint32Array(cap);
    nat.observers.push(this);
  }

  created(flow: number): void {
    if (this.logging) this.mark(flow);
  }

  updated(flow: number): void {
    if (this.logging) this.mark(flow);
  }

  removed(flow: number, _reason: RemoveReason): void {
    this.named[flow] = 0;
    if (!this.logging) return;
    if (this.removesLen + REMOVE_BYTES > this.removes.length) {
      if (this.removes.length >= REMOVES_LIMIT) {
        this.lost = true;
        return;
      }
      const bigger = new Uint8Array(this.removes.length * 2);
      bigger.set(this.removes.subarray(0, this.removesLen));
      this.removes = bigger;
      this.removesDv = new DataView(bigger.buffer);
    }
    const t = this.nat.flows;
    const o = flow * 2;
    const dv = this.removesDv;
    const off = this.removesLen;
    dv.setUint8(off, REC.REMOVE);
    dv.setUint8(off + 1, t.proto[flow]!);
    dv.setUint32(off + 2, t.tSrc[o]!);
    dv.setUint32(off + 6, t.tDst[o]!);
    dv.setUint16(off + 10, t.tSport[o]!);
    dv.setUint16(off + 12, t.tDport[o]!);
    this.removesLen = off + REMOVE_BYTES;
  }

  private mark(flow: number): void {
    if (this.marked[flow] === 1) return;
    this.marked[flow] = 1;
    this.dirty[this.dirtyCount++] = flow;
  }

  /** Whether anything waits for drain(). */
  get pending(): boolean {
    return this.dirtyCount > 0 || this.removesLen > 0;
  }

  /** What changed since the last drain, as records (removals first), or null if nothing did. */
  drain(now: number): Uint8Array | null {
    if (!this.pending) return null;
    const t = this.nat.flows;
    const out = new Uint8Array(this.removesLen + this.dirtyCount * UPSERT_BYTES);
    out.set(this.removes.subarray(0, this.removesLen));
    const dv = new DataView(out.buffer);
    let off = this.removesLen;
    for (let i = 0; i < this.dirtyCount; i++) {
      const f = this.dirty[i]!;
      this.marked[f] = 0;
      // Removed since, and its slot not reused: its REMOVE is in the records already.
      if (t.flags[f]! & FLOW_IN_USE) off = encodeUpsert(this.nat, f, now, dv, off);
    }
    this.dirtyCount = 0;
    this.removesLen = 0;
    if (this.removes.length > 4096) {
      this.removes = new Uint8Array(4096);
      this.removesDv = new DataView(this.removes.buffer);
    }
    return off === out.length ? out : out.slice(0, off);
  }

  /**
   * The drain timer's work (one loop's, or a worker's): what changed goes to `send`, and an overflowed log
   * to `lost` (the peer then needs a full resync). Nothing while this gateway is a standby.
   */
  flush(now: number, send: (records: Uint8Array) => void, lost: () => void): void {
    if (!this.logging) return;
    const recs = this.drain(now);
    if (recs) send(recs);
    if (this.lost) {
      this.lost = false;
      lost();
    }
  }

  /** Every flow, as UPSERT records (a full resync); what was pending is dropped, since the dump supersedes it. */
  dump(now: number): Uint8Array {
    const t = this.nat.flows;
    for (let i = 0; i < this.dirtyCount; i++) this.marked[this.dirty[i]!] = 0;
    this.dirtyCount = 0;
    this.removesLen = 0;
    this.lost = false;
    const out = new Uint8Array(t.size * UPSERT_BYTES);
    const dv = new DataView(out.buffer);
    let off = 0;
    // Not the flows that have expired and wait for the sweep: the standby would drop them on arrival.
    for (const f of t.flows()) if (t.expires[f]! > now) off = encodeUpsert(this.nat, f, now, dv, off);
    return off === out.length ? out : out.slice(0, off);
  }

  /** Apply records from the active gateway (the standby's side); counts go into `c`. */
  apply(buf: Uint8Array, now: number, c: ApplyCounts = newApplyCounts()): ApplyCounts {
    const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    const whole = forEachRecord(buf, (kind, off) => {
      if (kind === REC.UPSERT) {
        const r = decodeUpsert(dv, off);
        const f = this.upsert(r, now);
        if (f === INVALID) {
          c.malformed++;
        } else if (f >= 0) {
          c.upserts++;
          if (this.resyncEpoch !== 0) this.named[f] = this.generation;
        } else if (this.resyncEpoch !== 0) {
          this.retry.push(r);
        } else {
          c.failed++;
        }
      } else if (kind === REC.REMOVE) {
        const [proto, src, dst, sport, dport] = recordKey(dv, off);
        const e = this.nat.flows.lookup(proto, src, dst, sport, dport, now);
        if (e >= 0 && (e & 1) === 0) {
          this.nat.flows.remove(e >> 1, 'closed');
          c.removes++;
        }
      } else if (kind === REC.BEGIN) {
        // The epoch only names this resync: 0 would mean "none", so it is kept away from 0.
        this.resyncEpoch = dv.getUint32(off + 1) || 1;
        this.generation++;
        this.retry = [];
      } else {
        c.swept += this.endResync(dv.getUint32(off + 1) || 1, now, c);
        c.ended = dv.getUint32(off + 1);
      }
    });
    if (!whole) c.malformed++;
    return c;
  }

  /** END of a resync: remove what it did not name, then apply what had to wait for that. */
  private endResync(epoch: number, now: number, c: ApplyCounts): number {
    if (epoch !== this.resyncEpoch) return 0;
    const t = this.nat.flows;
    const named = this.named;
    const gen = this.generation;
    const swept = t.flush((f) => named[f] !== gen);
    this.resyncEpoch = 0;
    const retry = this.retry;
    this.retry = [];
    for (const r of retry) {
      const f = this.upsert(r, now);
      if (f >= 0) {
        c.upserts++;
        named[f] = gen;
      } else {
        c.failed++;
      }
    }
    return swept;
  }

  /**
   * Make the table hold this flow as the active has it: update it in place when it is there with the same
   * reply tuple and mappings, else replace whatever holds either tuple. Returns the flow, or -1.
   */
  private upsert(r: RestoredFlow, now: number): number {
    const nat = this.nat;
    if (!translates(nat, r)) return INVALID;
    const t = nat.flows;
    const [os, od, osp, odp] = r.original;
    const e = t.lookup(r.protocol, os, od, osp, odp, now);
    if (e >= 0) {
      const f = e >> 1;
      if ((e & 1) === 0 && sameFlow(nat, f, r)) {
        t.flags[f] = (t.flags[f]! & FLOW_IN_USE) | (r.flags & ~FLOW_IN_USE);
        setSavedState(nat, f, r, now);
        return f;
      }
      t.remove(f, 'flush');
    }
    const e2 = t.lookup(r.protocol, r.reply[0], r.reply[1], r.reply[2], r.reply[3], now);
    if (e2 >= 0) t.remove(e2 >> 1, 'flush');
    if (!restoreFlow(nat, r, now)) return -1;
    return t.lookup(r.protocol, os, od, osp, odp, now) >> 1;
  }

  /**
   * The standby becomes the active gateway: every flow gets its state's whole timeout from now. The
   * standby never heard the packets that kept a flow alive on the active (replication is by change, not
   * by packet), so its own timers say nothing; a flow that had in fact ended waits out one timeout.
   */
  promote(now: number): void {
    const t = this.nat.flows;
    const to = this.nat.timeouts;
    for (const f of t.flows()) {
      const p = t.proto[f]!;
      const s =
        p === IPPROTO.TCP ? tcpTimeout(t.state[f]!, to)
        : p === IPPROTO.UDP || p === IPPROTO.UDPLITE ? to.udp
        : p === IPPROTO.ICMP ? to.icmp
        : p === IPPROTO.SCTP ? to.sctpEstablished
        : to.generic;
      t.expires[f] = Math.max(t.expires[f]!, now + s * 1000);
    }
    this.resyncEpoch = 0;
    this.retry = [];
  }
}

/** upsert(): the record does not describe a translation this gateway could make. */
const INVALID = -2;

/**
 * Whether a replicated flow translates between the LAN and the public address, as every flow the active
 * makes does: its outside side on a public address (the reply's destination for a flow a LAN host opened,
 * the original destination for one that came in), its LAN side inside, its mappings on public addresses.
 * A record that fails this (a peer with another configuration, or a bug) is refused: written into the
 * table it could rewrite a LAN packet to its own private source and send it out.
 */
function translates(nat: NatContext, r: RestoredFlow): boolean {
  const inbound = (r.flags & FLOW_INBOUND) !== 0;
  const lanSide = inbound ? r.reply[0] : r.original[0];
  const publicSide = inbound ? r.original[1] : r.reply[1];
  if (!nat.isInternal(lanSide) || !nat.isPublic(publicSide)) return false;
  for (const m of [r.mapping, r.mapping2]) if (m !== null && (!nat.isPublic(m.externalAddress) || !nat.isInternal(m.internalAddress))) return false;
  return true;
}

/** Whether flow `f` already is the flow of record `r` (same reply tuple, same public ports). */
function sameFlow(nat: NatContext, f: number, r: RestoredFlow): boolean {
  const t = nat.flows;
  const rr = f * 2 + 1;
  if (t.tSrc[rr] !== r.reply[0] || t.tDst[rr] !== r.reply[1] || t.tSport[rr] !== r.reply[2] || t.tDport[rr] !== r.reply[3]) return false;
  return sameMapping(nat, t.mapping[f]!, r.mapping) && sameMapping(nat, t.mapping2[f]!, r.mapping2);
}

function sameMapping(nat: NatContext, m: number, s: SavedMapping | null): boolean {
  if (s === null) return m < 0;
  const maps = nat.mappings;
  return m >= 0 && maps.intAddr[m] === s.internalAddress && maps.intPort[m] === s.internalPort && maps.extAddr[m] === s.externalAddress && maps.extPort[m] === s.externalPort;
}
