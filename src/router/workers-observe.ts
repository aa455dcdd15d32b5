import type { ObserveStats } from '../metrics/registry.js';
import type { RouteHandler } from '../observe/http.js';
import type { Logger } from '../util/log.js';
import type { SseStream } from '../observe/sse.js';
import { ObserveStreams, pageHandlers, traceQuery } from '../observe/observatory.js';
import { flowFilterFromQuery, packetFilterToString } from '../observe/filter.js';
import { LiveFeed, type LiveSnapshot } from '../observe/live.js';
import { mergeLive, type ToWorker } from './workers-proto.js';
import type { PcapngWriter } from '../observe/pcapng.js';

/**
 * The live page, flow events and packet trace of a router with several workers (--workers N). Each worker
 * keeps its own observatory over its own flows (worker-thread.ts); this side serves the HTTP streams:
 *
 *   /events, /trace  a client's query is checked here, then every worker subscribes with it and posts what
 *                    matches in batches (every 20 ms); the stream interleaves the workers' messages. The
 *                    trace's rate is the client's for the whole router: each worker gets its share.
 *   /live            once a second, every worker's snapshot merged into one (counters summed, hosts merged,
 *                    the busiest flows of all).
 *
 * A worker that restarts is subscribed again to the streams that are open.
 */
export interface WorkerLink {
  broadcast(m: ToWorker): void;
  /** Every worker's live snapshot (those that answer). */
  liveSnapshots(): Promise<LiveSnapshot[]>;
}

export class WorkerObservatory implements ObserveStats {
  private readonly streams: ObserveStreams;
  /** The live page's feed (a pair's controller decorates its snapshots). */
  readonly live: LiveFeed;
  private nextSub = 0;
  private readonly subs = new Map<number, { stream: SseStream; kind: 'events' | 'trace'; query: string }>();

  constructor(
    private readonly link: WorkerLink,
    log: Logger,
    maxHosts: number,
  ) {
    this.streams = new ObserveStreams(log);
    this.live = new LiveFeed(async () => mergeLive(await link.liveSnapshots(), maxHosts), undefined, (err) =>
      log.warn('live page snapshot failed', { error: err.message }),
    );
  }

  /** Messages a worker posted for subscription `sub`. */
  deliver(sub: number, items: readonly [string, unknown][]): void {
    const s = this.subs.get(sub);
    if (!s) return;
    for (const [event, data] of items) s.stream.send(event, data);
  }

  /** What a restarted worker must be told to rejoin the open streams. */
  subscriptions(): ToWorker[] {
    return [...this.subs].map(([sub, s]) => ({ t: 'sub', sub, kind: s.kind, query: s.query }));
  }

  private subscribe(kind: 'events' | 'trace', stream: SseStream, query: string): void {
    const sub = ++this.nextSub;
    this.subs.set(sub, { stream, kind, query });
    this.link.broadcast({ t: 'sub', sub, kind, query });
    stream.onClose(() => {
      this.subs.delete(sub);
      this.link.broadcast({ t: 'unsub', sub });
    });
  }

  handlers(): Record<string, RouteHandler> {
    return {
      ...pageHandlers(this.live, this.streams),
      '/events': (_req, res, url) => {
        flowFilterFromQuery(url.searchParams); // a bad filter is the client's 400, before any stream opens
        const stream = this.streams.open('events', res, { filter: url.searchParams.toString() || 'all' });
        this.subscribe('events', stream, url.searchParams.toString());
      },
      '/trace': (_req, res, url) => {
        const { filter, rate } = traceQuery(url);
        const stream = this.streams.open('trace', res, { filter: packetFilterToString(filter) || 'all', rate });
        this.subscribe('trace', stream, url.searchParams.toString());
      },
    };
  }

  clients(): Record<string, number> {
    return this.streams.clients();
  }

  dropped(): Record<string, number> {
    return this.streams.dropped();
  }

  /** The --pcap file the workers' packets are written to (pcap-relay.ts), if any. */
  pcapWriter: PcapngWriter | null = null;

  pcap(): ReturnType<ObserveStats['pcap']> {
    const w = this.pcapWriter;
    return w ? { packets: { ...w.packets }, dropped: w.dropped, bytes: w.bytes } : null;
  }

  close(): void {
    this.streams.closeAll();
    this.live.close();
  }
}
