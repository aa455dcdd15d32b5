import { DIR_ORIGINAL, DIR_REPLY, FLOW_ALG, FLOW_INBOUND } from '../conntrack/table.js';
import { NONE, type NatContext } from './context.js';
import { commitFlow } from './flow-setup.js';

/** Flow detail bits the translator sets when it has a direction's next sequence number (translator.ts). */
export const TCP_SEQ_SEEN = 0x30;

/**
 * Putting back the flows a previous run saved (`--state`; the file format is snapshot.ts), each with its
 * mappings on the same public ports, so that connections through the gateway survive a restart.
 */

/** A mapping as saved: internal endpoint and its public endpoint. */
export interface SavedMapping {
  internalAddress: number;
  internalPort: number;
  externalAddress: number;
  externalPort: number;
}

/** A flow as saved across a restart. Tuples are [src, dst, srcPort, dstPort]. */
export interface RestoredFlow {
  protocol: number;
  flags: number;
  state: number;
  detail: number;
  msLeft: number;
  original: [number, number, number, number];
  reply: [number, number, number, number];
  packets: [number, number];
  bytes: [number, number];
  mapping: SavedMapping | null;
  mapping2: SavedMapping | null;
}

/**
 * Restore one flow exactly, or not at all: false (and nothing changed) when the table is full, a public
 * port is taken, either tuple is already a flow, or the flow no longer belongs to this configuration.
 */
export function restoreFlow(nat: NatContext, r: RestoredFlow, now: number): boolean {
  const maps = nat.mappings;
  const t = nat.flows;
  if (t.lookup(r.protocol, r.original[0], r.original[1], r.original[2], r.original[3], now) >= 0) return false;
  if (t.lookup(r.protocol, r.reply[0], r.reply[1], r.reply[2], r.reply[3], now) >= 0) return false;
  const made: number[] = [];
  let m = NONE;
  let m2 = NONE;
  let fine = true;
  if (r.mapping) fine = (m = savedMapping(nat, r.protocol, r.mapping, made)) >= 0;
  if (fine && r.mapping2) fine = (m2 = savedMapping(nat, r.protocol, r.mapping2, made)) >= 0;
  const flow = fine ? t.allocate() : NONE;
  if (flow < 0) {
    // A mapping made here has no flow yet: free it again.
    for (const n of made) maps.releaseIfUnused(n);
    return false;
  }
  t.setTuple(flow, DIR_ORIGINAL, r.original[0], r.original[1], r.original[2], r.original[3]);
  t.setTuple(flow, DIR_REPLY, r.reply[0], r.reply[1], r.reply[2], r.reply[3]);
  const inbound = (r.flags & FLOW_INBOUND) !== 0;
  const host = inbound ? r.reply[0] : r.original[0];
  const peer = inbound ? r.original[0] : r.original[1];
  // An FTP control connection stays one only if this run has the ALG on (its expectations and sequence
  // adjustment were not saved: see docs/operations.md); the flag means nothing to a run without it.
  const flags = nat.alg !== null ? r.flags : r.flags & ~FLOW_ALG;
  commitFlow(nat, flow, r.protocol, m, m2, flags, host, peer, now);
  setSavedState(nat, flow, r, now);
  return true;
}

/** A saved flow's state, timer and counters into `flow` (a restored one, or one a standby updates in place). */
export function setSavedState(nat: NatContext, flow: number, r: RestoredFlow, now: number): void {
  const t = nat.flows;
  t.state[flow] = r.state;
  // Not the bits that say a sequence number was seen: the sequence numbers themselves were not saved, and
  // an RST would be judged against zero. They are learnt again from the next segment each way.
  t.detail[flow] = r.detail & ~TCP_SEQ_SEEN;
  t.expires[flow] = now + r.msLeft;
  t.packets[flow * 2] = r.packets[0];
  t.packets[flow * 2 + 1] = r.packets[1];
  t.bytes[flow * 2] = r.bytes[0];
  t.bytes[flow * 2 + 1] = r.bytes[1];
}

/** The saved mapping, found or made again on the same public port (noted in `made`), or NONE if it cannot be. */
function savedMapping(nat: NatContext, proto: number, saved: SavedMapping, made: number[]): number {
  const maps = nat.mappings;
  // A mapping keeps its public address: one no longer in the pool cannot come back.
  if (!nat.isPublic(saved.externalAddress)) return NONE;
  const m = maps.lookupInternal(proto, saved.internalAddress, saved.internalPort);
  if (m >= 0) return maps.extPort[m] === saved.externalPort ? m : NONE;
  const n = maps.create(proto, saved.internalAddress, saved.internalPort, saved.externalAddress, nat.rng, saved.externalPort);
  if (n >= 0) made.push(n);
  return n < 0 ? NONE : n;
}
