import { FlowTable, FLOW_INBOUND, DIR_ORIGINAL, DIR_REPLY, type RemoveReason } from '../conntrack/table.js';
import type { FlowObserver } from '../nat/translator.js';
import { ipToString } from '../wire/addr.js';
import type { FlowCensus, HostCensus, HostTotals } from '../metrics/registry.js';
import { flowStateName } from '../conntrack/listing.js';
import { protoName } from '../wire/ipv4.js';

/**
 * Traffic per inside (LAN) host, what a cloud NAT gateway's console shows per instance.
 *
 * The packet path already counts packets and bytes per flow and direction in the flow table; this
 * adds nothing to it. When a flow is removed its counters are folded into its host's totals (the
 * observer runs while the flow is still readable), so a host's total at any moment is
 * folded + the live flows' counters, summed when someone asks (a scrape, the live page).
 *
 * Label cardinality is bounded: the first `maxHosts` inside addresses seen get their own entry for
 * the life of the process, everything after that is summed under `other`. Entries are never
 * reassigned, so every host's counters only grow, as Prometheus counters must.
 */
export const OTHER_HOSTS = 'other';

export class HostAccounting implements FlowObserver, HostCensus {
  private readonly index = new Map<number, number>();
  private readonly addrs: Uint32Array;
  /** Per slot: [packets out, packets in, bytes out, bytes in] of removed flows. */
  private readonly folded: Float64Array;
  private readonly created_: Float64Array;
  /** The slot of the "other" bucket. */
  private readonly other: number;

  constructor(
    private readonly flows: FlowTable,
    readonly maxHosts = 256,
  ) {
    if (!Number.isInteger(maxHosts) || maxHosts < 1) throw new RangeError('maxHosts must be a positive integer');
    this.addrs = new Uint32Array(maxHosts + 1);
    this.folded = new Float64Array((maxHosts + 1) * 4);
    this.created_ = new Float64Array(maxHosts + 1);
    this.other = maxHosts;
  }

  /** The inside address of a flow: the originator, unless the flow was opened from outside. */
  insideAddress(flow: number): number {
    const t = this.flows;
    return t.flags[flow]! & FLOW_INBOUND ? t.tSrc[flow * 2 + DIR_REPLY]! : t.tSrc[flow * 2 + DIR_ORIGINAL]!;
  }

  private slotOf(addr: number): number {
    const s = this.index.get(addr);
    if (s !== undefined) return s;
    if (this.index.size >= this.maxHosts) return this.other;
    const n = this.index.size;
    this.index.set(addr, n);
    this.addrs[n] = addr;
    return n;
  }

  created(flow: number): void {
    this.created_[this.slotOf(this.insideAddress(flow))]!++;
  }

  removed(flow: number, _reason: RemoveReason): void {
    const t = this.flows;
    const s = this.slotOf(this.insideAddress(flow)) * 4;
    // For a flow opened from outside the original direction is the one toward the host.
    const outDir = t.flags[flow]! & FLOW_INBOUND ? DIR_REPLY : DIR_ORIGINAL;
    const eo = flow * 2 + outDir;
    const ei = flow * 2 + (outDir ^ 1);
    this.folded[s]! += t.packets[eo]!;
    this.folded[s + 1]! += t.packets[ei]!;
    this.folded[s + 2]! += t.bytes[eo]!;
    this.folded[s + 3]! += t.bytes[ei]!;
  }

  /** Hosts with a slot so far (not counting "other"). */
  get hostCount(): number {
    return this.index.size;
  }

  /** One pass over the table: per-host totals (folded + live) and flows by protocol and state. */
  census(): FlowCensus {
    const t = this.flows;
    const n = this.maxHosts + 1;
    const acc = Float64Array.from(this.folded);
    const live = new Float64Array(n);
    const byState = new Map<string, number>();
    let total = 0;
    for (const flow of t.flows()) {
      total++;
      const key = `${protoName(t.proto[flow]!)}/${flowStateName(t, flow)}`;
      byState.set(key, (byState.get(key) ?? 0) + 1);
      const slot = this.slotOf(this.insideAddress(flow));
      live[slot]!++;
      const outDir = t.flags[flow]! & FLOW_INBOUND ? DIR_REPLY : DIR_ORIGINAL;
      const eo = flow * 2 + outDir;
      const ei = flow * 2 + (outDir ^ 1);
      const s = slot * 4;
      acc[s]! += t.packets[eo]!;
      acc[s + 1]! += t.packets[ei]!;
      acc[s + 2]! += t.bytes[eo]!;
      acc[s + 3]! += t.bytes[ei]!;
    }
    const hosts: HostTotals[] = [];
    const row = (slot: number, host: string): HostTotals => ({
      host,
      packets: { outbound: acc[slot * 4]!, inbound: acc[slot * 4 + 1]! },
      bytes: { outbound: acc[slot * 4 + 2]!, inbound: acc[slot * 4 + 3]! },
      flows: live[slot]!,
      flowsCreated: this.created_[slot]!,
    });
    for (let i = 0; i < this.index.size; i++) hosts.push(row(i, ipToString(this.addrs[i]!)));
    const o = this.other;
    if (this.created_[o]! > 0 || live[o]! > 0 || this.folded[o * 4]! + this.folded[o * 4 + 1]! > 0) hosts.push(row(o, OTHER_HOSTS));
    return { hosts, byState, total };
  }
}
