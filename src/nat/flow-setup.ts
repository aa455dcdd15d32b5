import { DIR_ORIGINAL, FLOW_INBOUND } from '../conntrack/table.js';
import { NONE, type NatContext } from './context.js';
import { DropReason, PortChoice, Setup } from './outcome.js';

/**
 * The steps every new flow takes, whichever way it came (outbound.ts, inbound.ts, hairpin.ts): a slot in
 * the flow table, the LAN endpoint's mapping, and the commit that indexes the flow and takes its
 * references. The inverse, when a flow goes, is NatContext.flowRemoved.
 */

/** How many slots one early-drop attempt looks at before giving up. */
const EARLY_DROP_BUDGET = 128;

/** Record a created flow's entry; the answer of every successful set-up. */
export function created(nat: NatContext, entry: number): Setup {
  nat.setupEntry = entry;
  return Setup.CREATED;
}

/** Record why no flow could be made; the packet is dropped with that reason. */
export function refused(nat: NatContext, reason: number): Setup {
  nat.setupReason = reason;
  return Setup.REFUSED;
}

/**
 * A free flow slot, evicting an unassured flow if the table is full (netfilter's early drop), or NONE when
 * the table stays full (the reason is then DropReason.TABLE_FULL).
 */
export function allocateFlow(nat: NatContext, now: number): number {
  const flows = nat.flows;
  let flow = flows.allocate();
  if (flow < 0) {
    flows.earlyDrop(now, EARLY_DROP_BUDGET);
    flow = flows.allocate();
  }
  return flow;
}

/**
 * The LAN endpoint's mapping, created if needed: endpoint-independent (RFC 4787 REQ-1), so every flow of
 * one endpoint leaves from one public port whatever its destination. NONE on failure, with the reason in
 * setupReason. `existing` is the endpoint's mapping if the caller has looked it up already.
 */
export function mappingFor(
  nat: NatContext, proto: number, addr: number, port: number, existing = nat.mappings.lookupInternal(proto, addr, port),
): number {
  const maps = nat.mappings;
  if (existing >= 0) {
    nat.lastPortChoice = PortChoice.EXISTING;
    return existing;
  }
  if (maps.isFull) {
    nat.setupReason = DropReason.TABLE_FULL;
    return NONE;
  }
  const m = maps.create(proto, addr, port, nat.addressFor(addr), nat.rng);
  if (m < 0) {
    nat.setupReason = DropReason.PORTS_EXHAUSTED;
    return NONE;
  }
  nat.lastPortChoice = maps.extPort[m] === port ? PortChoice.PRESERVED : PortChoice.REMAPPED;
  return m;
}

export function hostLimitReached(nat: NatContext, host: number): boolean {
  return nat.maxPerHost > 0 && nat.hostFlows.get(host) >= nat.maxPerHost;
}

/**
 * Finish a new flow whose tuples are set: index it, take its mapping references (m: the LAN side's own
 * mapping; m2: the mapping or forward target it reached, for inbound and hairpin flows) and the
 * permissions they give `peer`, count it for its LAN host, and tell the observers. Returns the entry of
 * its original direction.
 */
export function commitFlow(
  nat: NatContext, flow: number, proto: number, m: number, m2: number, flags: number, host: number, peer: number, now: number,
): number {
  const t = nat.flows;
  t.mapping[flow] = m;
  t.mapping2[flow] = m2;
  if (m >= 0) nat.mappings.ref(m);
  if (m2 >= 0) nat.mappings.ref(m2);
  t.insert(flow, proto, now, now);
  t.flags[flow] = t.flags[flow]! | flags;
  const perm = nat.permissions;
  if (perm) {
    if (m >= 0) perm.add(m, peer);
    if (m2 >= 0) perm.add(m2, peer);
  }
  // Only flows a host opened count towards its limit (see NatContext.flowRemoved).
  if (!(flags & FLOW_INBOUND)) nat.hostFlows.add(host, 1);
  nat.stats.flowsCreated++;
  nat.lastCreated = true;
  for (const o of nat.observers) o.created?.(flow, now);
  return flow * 2 + DIR_ORIGINAL;
}
