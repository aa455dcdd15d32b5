import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import type http from 'node:http';
import type { FlowRecord } from '../conntrack/listing.js';
import { findBinary } from '../host/commands.js';
import type { HostTotals } from '../metrics/registry.js';
import { USERSPACE_ONLY } from '../config/config.js';
import type { FlowEvent } from '../observe/events.js';
import { flowFilterFromQuery, flowMatches, type FlowFilter } from '../observe/filter.js';
import { OTHER_HOSTS } from '../observe/hosts.js';
import type { RouteHandler } from '../observe/http.js';
import { LIVE_FLOW_LIMIT, LiveFeed, type LiveSnapshot } from '../observe/live.js';
import { LIVE_PAGE } from '../observe/page.js';
import { SseStream } from '../observe/sse.js';
import type { Logger } from '../util/log.js';
import { inCidr, parseIpv4, type Cidr } from '../wire/addr.js';
import { flowsFromInternal, listKernelFlows, parseConntrackEvent, readConntrackMax, readConntrackStats } from './conntrack.js';

/**
 * What the kernel engine can show of its traffic, in the userspace engine's shapes: traffic per
 * inside host from conntrack's accounting (nf_conntrack_acct, switched on by the plan), flow events
 * from the kernel's own event stream (`conntrack -E`), the live page fed from both, and a plain
 * answer for what cannot exist here (the per-packet trace: the kernel never shows tunnat a packet).
 */

/** The answer of /trace: the same words `tunnat trace` prints. */
export const TRACE_UNAVAILABLE = `the per-packet trace ${USERSPACE_ONLY}`;

/** A flow the kernel source-NATed: its reply comes back to another address than the one that sent it. */
export function isTranslated(f: FlowRecord): boolean {
  return f.reply.dst !== f.original.src;
}

interface Seen {
  slot: number;
  packetsOut: number;
  packetsIn: number;
  bytesOut: number;
  bytesIn: number;
}

/** One look at the kernel's table: the --internal flows and the per-host totals up to now. */
export interface KernelLook {
  /** Flows from the --internal prefixes (translated or not). */
  flows: FlowRecord[];
  /** Translated traffic per inside host: ended flows as last seen, plus the live ones. */
  hosts: HostTotals[];
  /** The same summed: outbound = sent by inside hosts, inbound = received by them. */
  packets: { outbound: number; inbound: number };
  bytes: { outbound: number; inbound: number };
}

/**
 * Traffic per inside host from the kernel's per-flow counters. The kernel forgets a flow's counters
 * when the flow ends, so each look keeps the counters of the flows it saw, and a flow missing from
 * the next look is folded into its host's total with them: totals only grow, as Prometheus counters
 * must, and what a flow carried between the last look and its end is not counted. Looks asked for
 * at the same time (the metrics of one scrape) share one listing.
 */
export class KernelTable {
  private readonly index = new Map<string, number>();
  private readonly names: string[] = [];
  /** Per slot: packets out, packets in, bytes out, bytes in of ended flows; then flows ever seen. */
  private readonly folded: number[][] = [];
  private seen = new Map<number, Seen>();
  private pending: Promise<KernelLook> | null = null;

  constructor(
    private readonly internal: readonly Cidr[],
    private readonly listFlows: () => Promise<FlowRecord[]> = listKernelFlows,
    readonly maxHosts = 256,
  ) {}

  look(): Promise<KernelLook> {
    if (!this.pending) {
      this.pending = this.listFlows()
        .then((all) => this.account(flowsFromInternal(all, this.internal)))
        .finally(() => setImmediate(() => (this.pending = null)));
    }
    return this.pending;
  }

  private slotOf(host: string): number {
    let s = this.index.get(host);
    if (s !== undefined) return s;
    s = this.index.size < this.maxHosts ? this.index.size : this.maxHosts;
    if (s < this.maxHosts) this.index.set(host, s);
    this.names[s] = s < this.maxHosts ? host : OTHER_HOSTS;
    this.folded[s] ??= [0, 0, 0, 0, 0];
    return s;
  }

  private account(flows: FlowRecord[]): KernelLook {
    const now = new Map<number, Seen>();
    const live = new Map<number, number[]>();
    for (const f of flows) {
      if (!isTranslated(f)) continue;
      const slot = this.slotOf(f.original.src);
      if (!this.seen.has(f.id)) this.folded[slot]![4]!++;
      const s: Seen = { slot, packetsOut: f.packets.original, packetsIn: f.packets.reply, bytesOut: f.bytes.original, bytesIn: f.bytes.reply };
      now.set(f.id, s);
      const l = live.get(slot) ?? [0, 0, 0, 0, 0];
      l[0]! += s.packetsOut;
      l[1]! += s.packetsIn;
      l[2]! += s.bytesOut;
      l[3]! += s.bytesIn;
      l[4]!++;
      live.set(slot, l);
    }
    for (const [id, s] of this.seen) {
      if (now.has(id)) continue;
      const t = this.folded[s.slot]!;
      t[0]! += s.packetsOut;
      t[1]! += s.packetsIn;
      t[2]! += s.bytesOut;
      t[3]! += s.bytesIn;
    }
    this.seen = now;
    const hosts: HostTotals[] = [];
    const sum = { packets: { outbound: 0, inbound: 0 }, bytes: { outbound: 0, inbound: 0 } };
    this.names.forEach((host, slot) => {
      const t = this.folded[slot]!;
      const l = live.get(slot) ?? [0, 0, 0, 0, 0];
      const h: HostTotals = {
        host,
        packets: { outbound: t[0]! + l[0]!, inbound: t[1]! + l[1]! },
        bytes: { outbound: t[2]! + l[2]!, inbound: t[3]! + l[3]! },
        flows: l[4]!,
        flowsCreated: t[4]!,
      };
      hosts.push(h);
      sum.packets.outbound += h.packets.outbound;
      sum.packets.inbound += h.packets.inbound;
      sum.bytes.outbound += h.bytes.outbound;
      sum.bytes.inbound += h.bytes.inbound;
    });
    return { flows, hosts, ...sum };
  }
}

// ---------------------------------------------------------------------------------------------
// Events

export const EVENTS_ARGV = ['conntrack', '-E', '-o', 'timestamp,extended,id'] as const;

interface Subscription {
  filter: FlowFilter;
  fn: (ev: FlowEvent) => void;
}

/**
 * The kernel's flow events, for the flows of --internal. One `conntrack -E` reads them from
 * ctnetlink while at least one client listens (and none runs otherwise: a load test of the kernel
 * engine pays nothing for it); each line becomes the record the userspace engine sends.
 */
export class KernelFlowEvents {
  private subs: Subscription[] = [];
  private child: ChildProcess | null = null;

  constructor(
    private readonly internal: readonly Cidr[],
    private readonly log: Logger,
    private readonly argv: readonly string[] = EVENTS_ARGV,
  ) {}

  /** Why events cannot be had here, or null when they can. */
  unavailable(): string | null {
    return findBinary(this.argv[0]!) ? null : `flow events from the kernel engine need the \`${this.argv[0]}\` tool (Debian/Ubuntu: apt install conntrack; RHEL: dnf install conntrack-tools)`;
  }

  get subscribers(): number {
    return this.subs.length;
  }

  /** Whether the reader process is running. */
  get running(): boolean {
    return this.child !== null;
  }

  subscribe(filter: FlowFilter, fn: (ev: FlowEvent) => void): () => void {
    const sub: Subscription = { filter, fn };
    this.subs = [...this.subs, sub];
    if (!this.child) this.start();
    return () => {
      this.subs = this.subs.filter((s) => s !== sub);
      if (this.subs.length === 0) this.stop();
    };
  }

  private start(): void {
    const child = spawn(this.argv[0]!, this.argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    let stderr = '';
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (c: string) => (stderr = (stderr + c).slice(-2000)));
    createInterface({ input: child.stdout! }).on('line', (line) => this.onLine(line));
    child.on('error', (err) => {
      // Could not start (or signal) it: forget it, so the next subscriber tries again.
      if (this.child === child) this.child = null;
      this.log.error('cannot read the kernel\'s flow events', { error: err.message });
    });
    child.on('exit', (code, signal) => {
      if (this.child !== child) return;
      this.child = null;
      // Killed by stop() is the normal end; anything else (a netlink error, ENOBUFS) is worth a line.
      if (signal === null) this.log.warn('the kernel\'s flow event stream ended', { code, stderr: stderr.trim() });
    });
  }

  private stop(): void {
    const c = this.child;
    this.child = null;
    c?.kill('SIGTERM');
  }

  private onLine(line: string): void {
    const ev = parseConntrackEvent(line);
    if (!ev) return;
    const a = parseIpv4(ev.flow.original.src);
    if (a === null || !this.internal.some((c) => inCidr(a, c))) return;
    for (const s of this.subs) {
      if (!flowMatches(s.filter, ev.flow)) continue;
      try {
        s.fn(ev);
      } catch {
        // One client's closed socket must not keep the others from their events.
      }
    }
  }

  close(): void {
    this.subs = [];
    this.stop();
  }
}

// ---------------------------------------------------------------------------------------------
// The live page and the routes

export interface KernelObserveSource {
  table: KernelTable;
  /** What the page shows as the public address. */
  publicAddress: string;
  ruleCounters: () => Promise<{ natPackets: number; invalidDrops: number }>;
  stats?: () => Promise<Record<string, number>>;
  /** The event reader's command (default EVENTS_ARGV; tests replay a recording). */
  eventsArgv?: readonly string[];
}

/** What the page lists under "not available" for this engine. */
export const KERNEL_UNAVAILABLE: readonly string[] = [
  TRACE_UNAVAILABLE,
  `the pcap of the translation (--pcap) ${USERSPACE_ONLY}`,
  'packets to the gateway itself: the kernel delivers them without a NAT rule, so tunnat does not count them',
  'port pools: the kernel picks a public port per flow and keeps no pool to count',
  'traffic of a flow after the last look before it ended (the kernel forgets a flow\'s counters when it ends)',
];

export async function kernelLiveSnapshot(src: KernelObserveSource, flowLimit = LIVE_FLOW_LIMIT): Promise<LiveSnapshot> {
  const [look, rules, stats] = await Promise.all([src.table.look(), src.ruleCounters(), (src.stats ?? readConntrackStats)()]);
  const weight = (f: FlowRecord) => f.bytes.original + f.bytes.reply;
  const flows = [...look.flows].sort((a, b) => weight(b) - weight(a)).slice(0, flowLimit);
  return {
    time: new Date().toISOString(),
    publicAddress: src.publicAddress,
    counters: {
      packets: look.packets,
      bytes: look.bytes,
      drops: { 'table-full': stats['drop'] ?? 0, 'conntrack-invalid': rules.invalidDrops },
      flows: look.flows.length,
      flowsMax: readConntrackMax() ?? 0,
      flowsCreated: rules.natPackets,
      flowsRemoved: { 'early-drop': stats['early_drop'] ?? 0 },
      portPools: [],
    },
    hosts: look.hosts,
    flows,
    flowsTotal: look.flows.length,
    engine: 'kernel',
    unavailable: [...KERNEL_UNAVAILABLE],
  };
}

/**
 * The kernel engine's routes next to /metrics and /conntrack: the same paths the userspace engine
 * serves, so the page and `tunnat conntrack --events` work unchanged; /trace answers 501 with why.
 */
export class KernelObserver {
  readonly events: KernelFlowEvents;
  readonly live: LiveFeed;
  private readonly streams = new Set<SseStream>();

  constructor(
    private readonly src: KernelObserveSource & { internal: readonly Cidr[] },
    private readonly log: Logger,
  ) {
    this.events = new KernelFlowEvents(src.internal, log, src.eventsArgv);
    this.live = new LiveFeed(
      () => kernelLiveSnapshot(src),
      undefined,
      (err) => log.warn('could not read the kernel\'s table for the live page', { error: err.message }),
    );
  }

  private open(res: http.ServerResponse): SseStream {
    const stream = new SseStream(res);
    this.streams.add(stream);
    stream.onClose(() => this.streams.delete(stream));
    return stream;
  }

  handlers(): Record<string, RouteHandler> {
    const plain = (res: http.ServerResponse, status: number, text: string): void => {
      res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8' }).end(`${text}\n`);
    };
    return {
      '/': (_req, res) => {
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-cache' }).end(LIVE_PAGE);
      },
      '/live': (_req, res) => {
        this.live.add(this.open(res));
      },
      '/events': (_req, res, url) => {
        const filter = flowFilterFromQuery(url.searchParams);
        const why = this.events.unavailable();
        if (why) return plain(res, 503, why);
        const stream = this.open(res);
        const detail = { filter: url.searchParams.toString() || 'all' };
        this.log.info('events client attached', detail);
        stream.onClose(this.events.subscribe(filter, (ev) => stream.send('flow', ev)));
        stream.onClose(() => this.log.info('events client detached', { ...detail, dropped: stream.dropped }));
      },
      '/trace': (_req, res) => plain(res, 501, TRACE_UNAVAILABLE),
    };
  }

  close(): void {
    this.events.close();
    this.live.close();
    for (const s of [...this.streams]) s.close();
  }
}
