import type http from 'node:http';
import type { Translator } from '../nat/translator.js';
import type { Dataplane } from '../dataplane/loop.js';
import type { Logger } from '../util/log.js';
import type { ObserveStats } from '../metrics/registry.js';
import type { RouteHandler } from './http.js';
import { LoopMetrics } from '../metrics/loop-metrics.js';
import { HostAccounting } from './hosts.js';
import { FlowEvents } from './events.js';
import { PacketTaps } from './taps.js';
import { Tracer, DEFAULT_TRACE_RATE, MAX_TRACE_RATE } from './trace.js';
import { PcapngWriter, SNAP_HEADERS, type PcapngOptions } from './pcapng.js';
import { LiveFeed, liveSnapshot } from './live.js';
import { SseStream } from './sse.js';
import { FilterError, flowFilterFromQuery, parsePacketFilter, packetFilterToString, type PacketFilter } from './filter.js';
import { LIVE_PAGE } from './page.js';
import { HealthWatch } from './health.js';

/**
 * Everything that lets people see into a running router, assembled in one object: traffic per LAN
 * host (always on: it costs the packet path nothing), loop histograms, and, only while someone is
 * attached, flow events, the packet trace, the pcap file and the live page. Its HTTP handlers are
 * served next to /metrics and /conntrack.
 */
export interface ObservatoryOptions {
  log: Logger;
  /** The loop's clock (ms). */
  clock: () => number;
  /** Inside hosts with their own metric label (default 256). */
  maxHosts?: number;
  tunName?: string;
}

export class Observatory implements ObserveStats {
  readonly hosts: HostAccounting;
  readonly loopMetrics = new LoopMetrics();
  readonly events: FlowEvents;
  readonly taps: PacketTaps;
  readonly tracer: Tracer;
  readonly live: LiveFeed;
  pcapWriter: PcapngWriter | null = null;
  private readonly health: HealthWatch;
  private readonly streams: ObserveStreams;

  constructor(
    nat: Translator,
    loop: Dataplane,
    private readonly opts: ObservatoryOptions,
  ) {
    this.hosts = new HostAccounting(nat.flows, opts.maxHosts ?? 256);
    nat.observers.push(this.hosts);
    this.loopMetrics.install(loop, opts.clock);
    this.events = new FlowEvents(nat, opts.clock);
    this.taps = new PacketTaps(loop, nat);
    this.tracer = new Tracer(this.taps);
    this.live = new LiveFeed(() => liveSnapshot(nat, this.hosts, opts.clock()));
    this.health = new HealthWatch(nat, opts.log);
    this.streams = new ObserveStreams(opts.log);
  }

  /**
   * Start writing `path`; on failure logs why and returns false (the router runs on without it).
   * Without limits, whole packets into one file (the router passes --pcap-snaplen/-size/-files).
   */
  startPcap(path: string, limits: Pick<PcapngOptions, 'snaplen' | 'maxFileBytes' | 'files'> = {}): boolean {
    try {
      const w = PcapngWriter.open(path, {
        ...limits,
        tunName: this.opts.tunName ?? 'tun',
        onError: (err) => {
          this.opts.log.error('writing the pcap file failed; capture stopped, routing goes on', { file: path, error: err.message });
          this.taps.remove(w);
        },
      });
      this.pcapWriter = w;
      this.taps.add(w);
      const snap = limits.snaplen ?? 0;
      this.opts.log.info('writing packets before and after translation', {
        pcap: path,
        snaplen: snap === SNAP_HEADERS ? 'headers' : snap === 0 ? 'whole packets' : snap,
        rotate: limits.maxFileBytes ? `at ${limits.maxFileBytes} bytes, keeping ${limits.files ?? 1} files` : 'never',
      });
      return true;
    } catch (err) {
      this.opts.log.error(`${(err as Error).message}; running without --pcap`, { pcap: path });
      return false;
    }
  }

  clients(): Record<string, number> {
    return this.streams.clients();
  }

  dropped(): Record<string, number> {
    return this.streams.dropped();
  }

  pcap(): ReturnType<ObserveStats['pcap']> {
    const w = this.pcapWriter;
    return w ? { packets: { ...w.packets }, dropped: w.dropped, bytes: w.bytes } : null;
  }

  /** Routes for startHttp: the page, its data stream, flow events and the trace. */
  handlers(): Record<string, RouteHandler> {
    return {
      ...pageHandlers(this.live, this.streams),
      '/events': (_req, res, url) => {
        const filter = flowFilterFromQuery(url.searchParams);
        const stream = this.streams.open('events', res, { filter: url.searchParams.toString() || 'all' });
        const unsubscribe = this.events.subscribe(filter, (ev) => stream.send('flow', ev));
        stream.onClose(unsubscribe);
      },
      '/trace': (_req, res, url) => {
        const { filter, rate } = traceQuery(url);
        const stream = this.streams.open('trace', res, { filter: packetFilterToString(filter) || 'all', rate });
        const unsubscribe = this.tracer.subscribe(filter, rate, (m) =>
          m.type === 'packet' ? stream.send('packet', m.record) : stream.send('suppressed', { count: m.count }),
        );
        stream.onClose(unsubscribe);
      },
    };
  }

  /** Close the streams and the pcap file (flushing it). */
  async close(): Promise<void> {
    this.health.stop();
    this.streams.closeAll();
    this.live.close();
    const w = this.pcapWriter;
    if (w) {
      this.taps.remove(w);
      await w.close();
      this.opts.log.info('pcap file closed', { pcap: w.path, packets: w.packets.before + w.packets.after, dropped: w.dropped });
    }
  }
}

/** The live page and its once-a-second data stream. */
export function pageHandlers(live: LiveFeed, streams: ObserveStreams): Record<string, RouteHandler> {
  return {
    '/': (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-cache' }).end(LIVE_PAGE);
    },
    '/live': (_req, res) => {
      live.add(streams.open('live', res, {}));
    },
  };
}

/** The parameters of /trace: `filter` (packet filter text) and `rate` (records per second). */
export function traceQuery(url: URL): { filter: PacketFilter; rate: number } {
  for (const k of url.searchParams.keys()) {
    if (k !== 'filter' && k !== 'rate') throw new FilterError(`unknown parameter ${JSON.stringify(k)} (known: filter, rate)`);
  }
  const filter = parsePacketFilter([url.searchParams.get('filter') ?? '']);
  const rateText = url.searchParams.get('rate');
  const rate = rateText === null ? DEFAULT_TRACE_RATE : Number(rateText);
  if (!Number.isInteger(rate) || rate < 1 || rate > MAX_TRACE_RATE) {
    throw new FilterError(`rate: expected packets per second, an integer in 1..${MAX_TRACE_RATE}, got ${JSON.stringify(rateText)}`);
  }
  return { filter, rate };
}

/** The open event, trace and live streams: counted per kind, with what each dropped, logged as they come and go. */
export class ObserveStreams {
  private readonly streams = new Set<{ kind: string; stream: SseStream }>();
  private readonly droppedByKind: Record<string, number> = { events: 0, trace: 0, live: 0 };

  constructor(private readonly log: Logger) {}

  open(kind: string, res: http.ServerResponse, detail: Record<string, unknown>): SseStream {
    const stream = new SseStream(res);
    const entry = { kind, stream };
    this.streams.add(entry);
    this.log.info(`${kind} client attached`, detail);
    stream.onClose(() => {
      this.streams.delete(entry);
      this.droppedByKind[kind] = (this.droppedByKind[kind] ?? 0) + stream.dropped;
      this.log.info(`${kind} client detached`, { ...detail, dropped: stream.dropped });
    });
    return stream;
  }

  clients(): Record<string, number> {
    const out: Record<string, number> = { events: 0, trace: 0, live: 0 };
    for (const s of this.streams) out[s.kind] = (out[s.kind] ?? 0) + 1;
    return out;
  }

  dropped(): Record<string, number> {
    const out = { ...this.droppedByKind };
    for (const s of this.streams) out[s.kind] = (out[s.kind] ?? 0) + s.stream.dropped;
    return out;
  }

  closeAll(): void {
    for (const s of [...this.streams]) s.stream.close();
  }
}
