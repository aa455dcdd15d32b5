import type { MessagePort } from 'node:worker_threads';
import type { RouterConfig } from '../config/config.js';
import type { Translator } from '../nat/translator.js';
import type { Dataplane, LoopStats } from '../dataplane/loop.js';
import type { NatStats } from '../nat/outcome.js';
import { IPPROTO, protoName } from '../wire/ipv4.js';
import type { RestoredFlow } from '../nat/restore.js';
import { emitIpv4IcmpEcho, emitIpv4Udp } from '../wire/build.js';
import { HERE, type Steering } from '../dataplane/steering.js';
import type { FlowCensus, HostTotals } from '../metrics/registry.js';
import type { FixedHistogram } from '../metrics/histogram.js';
import type { LoopMetrics } from '../metrics/loop-metrics.js';
import { OTHER_HOSTS } from '../observe/hosts.js';
import { LIVE_FLOW_LIMIT, type LiveSnapshot } from '../observe/live.js';
import type { FlowRecord } from '../conntrack/listing.js';

/** What a worker learns once the TUN is open. */
export interface WorkerBase {
  slotSize: number;
  /** rings[i][j]: packets from worker i to worker j (null on the diagonal). */
  rings: (SharedArrayBuffer | null)[][];
  vnetHdr: boolean;
  publicIp: number;
  owned: boolean;
  dynamicPool?: boolean;
  publicPool?: number[];
  /**
   * queueFds[i]: worker i's queue, opened by the main thread (which keeps it open, so that the queue and
   * its number outlive a worker that dies); the worker reads and writes a copy of it.
   */
  queueFds: number[];
  /** Flows per LAN host, counted by all the workers (host-counts.ts). */
  hostCounts: SharedArrayBuffer;
  /** FTP data endpoints published by the worker that holds them (alg-redirect.ts). */
  algRedirects: SharedArrayBuffer;
}

/** What the main thread tells a data-plane worker when it starts it (worker-thread.ts). */
export interface WorkerInit {
  cfg: RouterConfig;
  index: number;
  count: number;
  /** peers[j]: the port that wakes worker j (null for this worker itself). */
  peers: (MessagePort | null)[];
}

export type ToWorker =
  | { t: 'init'; base: WorkerBase; restore: RestoredFlow[] }
  | { t: 'stats'; id: number }
  | { t: 'flows'; id: number }
  | { t: 'count'; id: number }
  | { t: 'peer'; peer: number; port: MessagePort }
  | { t: 'addresses'; primary: number; all: number[] }
  | { t: 'reload'; cfg: RouterConfig }
  | { t: 'stop'; id: number }
  | { t: 'save'; id: number }
  | { t: 'live'; id: number }
  /** Start a flow-event or trace stream (`query`: the client's URL query); items come back as `items`. */
  | { t: 'sub'; sub: number; kind: 'events' | 'trace'; query: string }
  | { t: 'unsub'; sub: number }
  /** A gateway of a pair: forward nothing (standby), or translate (active). */
  | { t: 'ha-standby'; on: boolean }
  /** Records from the active for this worker's flows (replica.ts), in order. */
  | { t: 'ha-apply'; buf: Uint8Array }
  /** Every flow as records (a full resync); and what applying records came to. */
  | { t: 'ha-dump'; id: number }
  | { t: 'ha-applied'; id: number }
  | { t: 'crash' };

export type FromWorker =
  | { t: 'loaded' }
  | { t: 'ready'; restored: number }
  | { t: 'reply'; id: number; data: unknown }
  /** Stream messages for subscription `sub`, in order: [SSE event name, data]. */
  | { t: 'items'; sub: number; items: [string, unknown][] }
  /** Packets for the --pcap file (pcap-relay.ts). */
  | { t: 'pcap'; chunk: Uint8Array }
  /** A gateway of a pair, active: what changed in this worker's flows, as records (replica.ts). */
  | { t: 'ha-changes'; buf: Uint8Array }
  /** Its change log overflowed: the standby needs a full resync. */
  | { t: 'ha-lost' };

/** One worker's counters and table sizes, as it sends them to the main thread. */
export interface WorkerSnapshot {
  stats: NatStats;
  loop: Omit<LoopStats, 'batchSizes'> & { batchSizes: number[] };
  flows: number;
  capacity: number;
  flowsByProto: Record<string, number>;
  mappings: number;
  /** Per (protocol, public address): ports in use and ports this worker may map. */
  pools: { proto: number; addr: number; used: number; size: number }[];
  fragments: { stats: Record<string, number>; size: number; heldBytes: number };
  publicAddresses: number[];
  /** The FTP ALG's counters and waiting expectations, when it is on. */
  alg?: { stats: Record<string, number>; pending: number; redirects: number };
  /** Fragments met at this worker before their owner was known (fragment-steer.ts). */
  fragmentSteering?: { held: number; released: number; heldDropped: number };
  /** Per-host traffic and flows by state (observe/hosts.ts). */
  census?: FlowCensus;
  /** Its loop's histograms (metrics/loop-metrics.ts). */
  loopMetrics?: { packetsRead: number; batchSize: HistogramData; loopSeconds: HistogramData };
}

export interface HistogramData {
  counts: number[];
  sum: number;
  count: number;
}

export function histogramData(h: FixedHistogram): HistogramData {
  return { counts: [...h.counts], sum: h.sum, count: h.count };
}

/** Sum the workers' histograms into `into` (same bounds everywhere: the buckets are constants). */
export function mergeLoopMetrics(into: LoopMetrics, parts: readonly NonNullable<WorkerSnapshot['loopMetrics']>[]): void {
  into.packetsRead = 0;
  for (const h of [into.batchSize, into.loopSeconds]) {
    h.counts.fill(0);
    h.sum = 0;
    h.count = 0;
  }
  for (const p of parts) {
    into.packetsRead += p.packetsRead;
    for (const [h, d] of [[into.batchSize, p.batchSize], [into.loopSeconds, p.loopSeconds]] as const) {
      d.counts.forEach((c, i) => (h.counts[i]! += c));
      h.sum += d.sum;
      h.count += d.count;
    }
  }
}

function addHost(into: Map<string, HostTotals>, h: HostTotals): void {
  const a = into.get(h.host);
  if (!a) {
    into.set(h.host, { host: h.host, packets: { ...h.packets }, bytes: { ...h.bytes }, flows: h.flows, flowsCreated: h.flowsCreated });
    return;
  }
  a.packets.outbound += h.packets.outbound;
  a.packets.inbound += h.packets.inbound;
  a.bytes.outbound += h.bytes.outbound;
  a.bytes.inbound += h.bytes.inbound;
  a.flows += h.flows;
  a.flowsCreated += h.flowsCreated;
}

/**
 * One host list from the workers' (a host's flows sit on several workers). Each worker names its first
 * `maxHosts` hosts; together they may name more, and those past the limit join "other" here.
 */
export function mergeHosts(lists: readonly HostTotals[][], maxHosts: number): HostTotals[] {
  const named = new Map<string, HostTotals>();
  const other = new Map<string, HostTotals>();
  for (const list of lists) {
    for (const h of list) {
      if (h.host === OTHER_HOSTS || (!named.has(h.host) && named.size >= maxHosts)) addHost(other, { ...h, host: OTHER_HOSTS });
      else addHost(named, h);
    }
  }
  return [...named.values(), ...other.values()];
}

export function mergeCensus(parts: readonly FlowCensus[], maxHosts: number): FlowCensus {
  const byState = new Map<string, number>();
  let total = 0;
  for (const c of parts) {
    total += c.total;
    for (const [k, v] of c.byState) byState.set(k, (byState.get(k) ?? 0) + v);
  }
  return { hosts: mergeHosts(parts.map((c) => c.hosts), maxHosts), byState, total };
}

/** The live page's snapshot of the whole router, from every worker's. */
export function mergeLive(parts: readonly LiveSnapshot[], maxHosts: number, flowLimit = LIVE_FLOW_LIMIT): LiveSnapshot {
  const sumBy = (pick: (p: LiveSnapshot) => Record<string, number>) => {
    const acc: Record<string, number> = {};
    for (const p of parts) for (const [k, v] of Object.entries(pick(p))) acc[k] = (acc[k] ?? 0) + v;
    return acc;
  };
  const pools = new Map<string, LiveSnapshot['counters']['portPools'][number]>();
  for (const p of parts) {
    for (const pool of p.counters.portPools) {
      const key = `${pool.protocol} ${pool.address}`;
      const a = pools.get(key);
      if (a) {
        a.used += pool.used;
        a.size += pool.size;
      } else pools.set(key, { ...pool });
    }
  }
  const weight = (f: FlowRecord) => f.bytes.original + f.bytes.reply;
  const flows = parts.flatMap((p) => p.flows).sort((a, b) => weight(b) - weight(a)).slice(0, flowLimit);
  const total = (pick: (c: LiveSnapshot['counters']) => number) => parts.reduce((n, p) => n + pick(p.counters), 0);
  return {
    time: new Date().toISOString(),
    publicAddress: parts[0]?.publicAddress ?? '',
    counters: {
      packets: sumBy((p) => p.counters.packets),
      bytes: sumBy((p) => p.counters.bytes),
      drops: sumBy((p) => p.counters.drops),
      flows: total((c) => c.flows),
      flowsMax: total((c) => c.flowsMax),
      flowsCreated: total((c) => c.flowsCreated),
      flowsRemoved: sumBy((p) => p.counters.flowsRemoved),
      portPools: [...pools.values()],
    },
    hosts: mergeHosts(parts.map((p) => p.hosts), maxHosts),
    flows,
    flowsTotal: parts.reduce((n, p) => n + p.flowsTotal, 0),
  };
}

const POOL_PROTOS = [IPPROTO.TCP, IPPROTO.UDP, IPPROTO.ICMP, IPPROTO.SCTP, IPPROTO.UDPLITE];

export function workerSnapshot(nat: Translator, loop: Dataplane): WorkerSnapshot {
  const flowsByProto: Record<string, number> = {};
  const t = nat.flows;
  for (const f of t.flows()) {
    const p = t.proto[f]!;
    const name = protoName(p);
    flowsByProto[name] = (flowsByProto[name] ?? 0) + 1;
  }
  const pools: WorkerSnapshot['pools'] = [];
  for (const addr of nat.publicAddresses) {
    for (const proto of POOL_PROTOS) {
      const pool = nat.mappings.poolAt(proto, addr);
      if (pool) pools.push({ proto, addr, used: pool.used, size: pool.size });
    }
  }
  return {
    stats: nat.stats,
    loop: { ...loop.stats, batchSizes: [...loop.stats.batchSizes] },
    flows: t.size,
    capacity: t.capacity,
    flowsByProto,
    mappings: nat.mappings.size,
    pools,
    fragments: { stats: { ...nat.fragments.stats }, size: nat.fragments.size, heldBytes: nat.fragments.heldBytes },
    publicAddresses: nat.publicAddresses,
    ...(nat.alg ? { alg: { stats: { ...nat.alg.stats }, pending: nat.alg.pending, redirects: nat.algRedirects?.size ?? 0 } } : {}),
  };
}

/** Add b into a, field by field (numbers, arrays of numbers, objects of those). */
function addInto(a: Record<string, unknown>, b: Record<string, unknown>): void {
  for (const [k, v] of Object.entries(b)) {
    const cur = a[k];
    if (typeof v === 'number') a[k] = (typeof cur === 'number' ? cur : 0) + v;
    else if (ArrayBuffer.isView(v) || Array.isArray(v)) {
      const src = v as ArrayLike<number>;
      const dst = (Array.isArray(cur) ? cur : new Array<number>(src.length).fill(0)) as number[];
      for (let i = 0; i < src.length; i++) dst[i] = (dst[i] ?? 0) + src[i]!;
      a[k] = dst;
    } else if (v && typeof v === 'object') {
      const sub = (cur && typeof cur === 'object' ? cur : {}) as Record<string, unknown>;
      addInto(sub, v as Record<string, unknown>);
      a[k] = sub;
    }
  }
}

/**
 * The whole router seen through its workers' snapshots, shaped like the translator and loop the metrics
 * registry reads (the sums of every worker's counters, tables and port pools).
 */
export function aggregate(snaps: readonly WorkerSnapshot[]): { nat: Translator; loop: Dataplane; flowsByProto: Record<string, number> } {
  const sum = (pick: (s: WorkerSnapshot) => object) => {
    const acc: Record<string, unknown> = {};
    for (const s of snaps) addInto(acc, pick(s) as Record<string, unknown>);
    return acc;
  };
  const pools = new Map<string, { used: number; size: number }>();
  for (const s of snaps) {
    for (const p of s.pools) {
      const key = `${p.proto}/${p.addr}`;
      const cur = pools.get(key) ?? { used: 0, size: 0 };
      cur.used += p.used;
      cur.size += p.size;
      pools.set(key, cur);
    }
  }
  const nat = {
    stats: sum((s) => s.stats),
    flows: { size: snaps.reduce((n, s) => n + s.flows, 0), capacity: snaps.reduce((n, s) => n + s.capacity, 0) },
    mappings: { size: snaps.reduce((n, s) => n + s.mappings, 0), poolAt: (proto: number, addr: number) => pools.get(`${proto}/${addr}`) ?? null },
    fragments: sum((s) => s.fragments),
    alg: snaps.some((s) => s.alg) ? { stats: sum((s) => s.alg?.stats ?? {}), pending: snaps.reduce((n, s) => n + (s.alg?.pending ?? 0), 0) } : null,
    publicAddresses: snaps[0]?.publicAddresses ?? [],
  };
  const loop = { stats: sum((s) => s.loop) };
  return { nat: nat as unknown as Translator, loop: loop as unknown as Dataplane, flowsByProto: sum((s) => s.flowsByProto) as Record<string, number> };
}

/** One packet's room, reused for every saved flow (a restore may deal out a million). */
const scratch = Buffer.alloc(64);

/**
 * The worker a saved flow goes back to: the one its first packet would be steered to now (the original
 * direction, rebuilt as a packet). A flow restored elsewhere could not take its public port, which is in
 * its owner's slice; it would be skipped and counted, never half restored.
 */
export function restoredOwner(steering: Steering, f: RestoredFlow): number {
  const [src, dst, sport, dport] = f.original;
  return tupleOwner(steering, f.protocol, src, dst, sport, dport);
}

/** The worker that owns the flow whose original tuple this is: the owner of its first packet. */
export function tupleOwner(steering: Steering, protocol: number, src: number, dst: number, sport: number, dport: number): number {
  const buf = scratch;
  let len: number;
  if (protocol === IPPROTO.ICMP) {
    len = emitIpv4IcmpEcho(buf, 0, { src, dst, type: 8, identifier: sport, sequence: 0 });
  } else {
    len = emitIpv4Udp(buf, 0, { src, dst, srcPort: sport, dstPort: dport, payload: new Uint8Array(0) });
    buf[9] = protocol; // only the protocol and the ports are read
  }
  const o = steering.ownerOf(buf, 0, len);
  return o === HERE ? 0 : o;
}
