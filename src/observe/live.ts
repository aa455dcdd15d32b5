import type { Translator } from '../nat/translator.js';
import { DROP_REASON_NAMES, PATH_NAMES } from '../nat/translator.js';
import { flowRecord, type FlowRecord } from '../conntrack/listing.js';
import { ipToString } from '../wire/addr.js';
import { PROTO_NAMES } from '../wire/ipv4.js';
import type { HostAccounting } from './hosts.js';
import type { HostTotals } from '../metrics/registry.js';
import type { SseStream } from './sse.js';

/**
 * The live page's data: once a second, while at least one page is open, one snapshot of the counters,
 * traffic per inside host and the busiest flows, sent to every open page over server-sent events.
 * One snapshot serves all pages; a page that is not reading is skipped (its stream counts the drop).
 */
export interface LiveSnapshot {
  time: string;
  publicAddress: string;
  counters: {
    packets: Record<string, number>;
    bytes: Record<string, number>;
    drops: Record<string, number>;
    flows: number;
    flowsMax: number;
    flowsCreated: number;
    flowsRemoved: Record<string, number>;
    /** One per protocol and public address (the live page names the address only for a pool). */
    portPools: { protocol: string; address: string; used: number; size: number }[];
  };
  hosts: HostTotals[];
  /** The busiest flows (by bytes), at most `flowLimit`. */
  flows: FlowRecord[];
  flowsTotal: number;
  /** Which engine made the snapshot (the page says so when it is not the userspace one). */
  engine?: 'userspace' | 'kernel';
  /** What this engine cannot show, one line each; the page lists them instead of leaving blanks. */
  unavailable?: string[];
  /** A gateway of a pair (--ha-node): its role now, and how its peer is heard. */
  ha?: { role: string; node: number; peer: string };
}

export const LIVE_INTERVAL_MS = 1000;
export const LIVE_FLOW_LIMIT = 200;

export function liveSnapshot(nat: Translator, hosts: HostAccounting, now: number, flowLimit = LIVE_FLOW_LIMIT): LiveSnapshot {
  const s = nat.stats;
  const t = nat.flows;
  const byPath = (a: Float64Array) => Object.fromEntries(PATH_NAMES.map((p, i) => [p, a[i] ?? 0]));
  const census = hosts.census();
  const live: number[] = [];
  for (const f of t.flows()) if (t.expires[f]! > now) live.push(f);
  const weight = (f: number) => t.bytes[f * 2]! + t.bytes[f * 2 + 1]!;
  if (live.length > flowLimit) live.sort((a, b) => weight(b) - weight(a));
  const flows = live.slice(0, flowLimit).map((f) => flowRecord(t, f, now));
  const portPools: LiveSnapshot['counters']['portPools'] = [];
  for (const addr of nat.publicAddresses) {
    for (const [p, name] of Object.entries(PROTO_NAMES)) {
      const pool = nat.mappings.poolAt(Number(p), addr);
      if (pool) portPools.push({ protocol: name, address: ipToString(addr), used: pool.used, size: pool.size });
    }
  }
  return {
    time: new Date().toISOString(),
    publicAddress: ipToString(nat.publicAddress),
    counters: {
      packets: byPath(s.packets),
      bytes: byPath(s.bytes),
      drops: Object.fromEntries(DROP_REASON_NAMES.map((r, i) => [r, s.drops[i] ?? 0])),
      flows: t.size,
      flowsMax: t.capacity,
      flowsCreated: s.flowsCreated,
      flowsRemoved: { ...s.flowsRemoved },
      portPools,
    },
    hosts: census.hosts,
    flows,
    flowsTotal: live.length,
  };
}

/**
 * Sends snapshots to the open pages. The snapshot comes from whichever engine serves the page: the
 * userspace one builds it from its own table at once, the kernel one has to ask the kernel (a
 * promise); a tick that is still waiting for its snapshot makes the next tick skip rather than pile up.
 */
export class LiveFeed {
  private streams: SseStream[] = [];
  private timer: NodeJS.Timeout | null = null;
  private pending = false;
  /** Adds to every snapshot what the data plane does not know (a pair's role: ha/controller.ts). */
  decorate: ((snap: LiveSnapshot) => void) | null = null;

  constructor(
    private readonly snapshot: () => LiveSnapshot | Promise<LiveSnapshot>,
    private readonly intervalMs = LIVE_INTERVAL_MS,
    private readonly onError: (err: Error) => void = () => {},
  ) {}

  get clients(): number {
    return this.streams.length;
  }

  add(stream: SseStream): void {
    this.streams = [...this.streams, stream];
    stream.onClose(() => this.remove(stream));
    // The first picture at once, not after a second of blank page.
    this.tick([stream]);
    if (!this.timer) {
      this.timer = setInterval(() => this.tick(this.streams), this.intervalMs);
      this.timer.unref();
    }
  }

  private remove(stream: SseStream): void {
    this.streams = this.streams.filter((s) => s !== stream);
    if (this.streams.length === 0 && this.timer) {
      clearInterval(this.timer);
      this.timer = null;
    }
  }

  private tick(streams: readonly SseStream[]): void {
    const ready = streams.filter((s) => s.ready);
    // Streams that are behind are skipped; send() counts the skip for them.
    for (const s of streams) if (!s.ready) s.send('snapshot', null);
    if (ready.length === 0 || this.pending) return;
    this.pending = true;
    void (async () => {
      try {
        const snap = await this.snapshot();
        this.decorate?.(snap);
        for (const s of ready) s.send('snapshot', snap);
      } catch (err) {
        this.onError(err as Error);
      } finally {
        this.pending = false;
      }
    })();
  }

  close(): void {
    for (const s of this.streams) s.close();
    this.streams = [];
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }
}
