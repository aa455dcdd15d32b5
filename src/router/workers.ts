import { Worker, MessageChannel, type MessagePort } from 'node:worker_threads';
import { Counter, Gauge, type Registry } from 'prom-client';
import type { RouterConfig } from '../config/config.js';
import type { Logger } from '../util/log.js';
import { NativeTun } from '../tun/native.js';
import { PacketRing } from '../dataplane/ring.js';
import { createRegistry } from '../metrics/registry.js';
import { bindHttpListeners, closeListeners, startHttp } from '../observe/http.js';
import { preflight } from '../host/preflight.js';
import { GSO_SLOT_SIZE, SLOT_SIZE } from './tun-setup.js';
import { leaveSystem, logRunning, RESTART_FIELDS, setupSystem, type OpenedTun, type RunningRouter, type SystemSetup } from './router.js';
import type { Server } from 'node:net';
import { existsSync, rmSync } from 'node:fs';
import { readSnapshot, writeSnapshot, type Snapshot } from '../nat/snapshot.js';
import type { RestoredFlow } from '../nat/restore.js';
import { Steering } from '../dataplane/steering.js';
import { steeringProgram } from '../dataplane/steer-bpf.js';
import { cidrToString, ipToString } from '../wire/addr.js';
import { WorkerObservatory } from './workers-observe.js';
import { AlgRedirects } from '../nat/alg-redirect.js';
import { SharedHostCounts } from '../nat/host-counts.js';
import { PcapngWriter, SNAP_HEADERS } from '../observe/pcapng.js';
import { replayPcap } from '../observe/pcap-relay.js';
import { LoopMetrics } from '../metrics/loop-metrics.js';
import type { FlowCensus } from '../metrics/registry.js';
import type { LiveSnapshot } from '../observe/live.js';
import { HaController, type HaPlane } from '../ha/controller.js';
import { forEachRecord, newApplyCounts, REC, recordBytes, recordKey, type ApplyCounts } from '../nat/replica.js';
import type { RouteHandler } from '../observe/http.js';
import { attachHa } from './router.js';
import { aggregate, mergeCensus, mergeLoopMetrics, restoredOwner, tupleOwner, type FromWorker, type ToWorker, type WorkerBase, type WorkerInit, type WorkerSnapshot } from './workers-proto.js';

/**
 * The multi-core data plane (--workers N, N > 1). The main thread sets the system up as for one loop (the
 * routing, a multi-queue TUN), then starts N workers (worker-thread.ts); each opens its own queue and
 * translates the flows it owns (steering.ts), handing other workers' packets to them through shared-memory
 * rings. The main thread keeps the control plane: HTTP, metrics and the flow listing (gathered from every
 * worker on each request), SIGHUP, the WAN address, and restarting a worker that dies.
 */
/** Each ring (one per ordered pair of workers): thousands of small packets, or dozens of superpackets. */
const RING_BYTES = 4 << 20;
const READY_TIMEOUT_MS = 10_000;
const ASK_TIMEOUT_MS = 2_000;
/** Inside hosts with their own metric label, as with one loop (observe/observatory.ts). */
const MAX_HOST_LABELS = 256;

interface Slot {
  worker: Worker;
  ready: boolean;
  /** The last snapshot it answered with. */
  last: WorkerSnapshot | null;
  /** Its flow count, asked every second (kept when it dies, to say what was lost). */
  flows: number;
  restarts: number;
  onReady: ((restored: number) => void) | null;
  onFail?: ((err: Error) => void) | null;
}

export interface WorkerRouter extends Omit<RunningRouter, 'nat' | 'loop'> {
  /** Every worker's snapshot (for tests and `stats`). */
  snapshots(): Promise<WorkerSnapshot[]>;
}

/** What the side that set the host up hands the workers (the TUN, its queues, the public addresses). */
export interface PlaneBase {
  vnetHdr: boolean;
  tunMtu: number;
  publicIp: number;
  owned: boolean;
  dynamicPool: boolean;
  publicPool: number[];
  /** queueFds[i]: worker i's queue (see WorkerBase.queueFds). */
  queueFds: number[];
}

/**
 * The workers and everything that needs no privilege: rings, hand-offs, --state, --pcap, HTTP, metrics and
 * observation. Loaded before the host is touched (the workers' code is ready, nothing is opened), then
 * `init` with the queues once the TUN exists. Run by startWorkerRouter, or by the unprivileged child of
 * `--user` (privsep-child.ts), which gets the queues from its root parent.
 */
export interface WorkerPlane {
  readonly count: number;
  init(base: PlaneBase): Promise<void>;
  /** Whether the kernel's steering program is on (the privileged side attaches it). */
  setSteered(on: boolean): void;
  setPublicAddresses(primary: number, all: readonly number[]): void;
  reload(next: RouterConfig): string[];
  snapshots(): Promise<WorkerSnapshot[]>;
  /** Stop the workers, HTTP and --pcap; with `save`, write --state first. Resolves to whether it saved. */
  stop(save: boolean): Promise<boolean>;
  /** Undo a start that failed: end the workers, close --pcap. */
  abort(): Promise<void>;
  /** For the restart test (TUNNAT_TEST_HOOKS=1): make worker 0 throw. */
  crashWorker0(): void;
  /** A gateway of a pair (--ha-node): start its controller, once the routing is in place (`opts.key`: see RunningDataplane). */
  startHa(setProxyArp: (on: boolean) => Promise<void>, opts?: { key?: Uint8Array }): Promise<void>;
}

export async function loadWorkerPlane(cfg: RouterConfig, log: Logger, httpHandles: Server[]): Promise<WorkerPlane> {
  const count = cfg.workers;
  const slots: Slot[] = [];
  let current = cfg;
  let stopping = false;
  let askId = 0;
  const pending = new Map<number, (data: unknown) => void>();
  let lostFlows = 0;
  let base: WorkerBase | null = null;
  let observe: WorkerObservatory | null = null;
  let pcapWriter: PcapngWriter | null = null;
  let steered = false;
  let closeHttp: () => Promise<void> = async () => {};
  let counting: NodeJS.Timeout | null = null;
  // A gateway of a pair: the workers' standby switch, the plane its controller drives, what it serves.
  let haStandby = true;
  let haPlane: HaPlane | null = null;
  let ha: HaController | null = null;
  let served: { registry: Registry; handlers: Record<string, RouteHandler> } | null = null;
  let refreshApplied: NodeJS.Timeout | null = null;

  /** Start worker `index` and wait until its code is loaded (it opens nothing before `init`). */
  const spawn = (index: number, peers: (MessagePort | null)[]): Promise<void> => {
    const init: WorkerInit = { cfg: current, index, count, peers };
    const worker = new Worker(new URL('./worker-thread.js', import.meta.url), {
      workerData: init,
      transferList: peers.filter((p): p is MessagePort => p !== null),
    });
    const slot: Slot = slots[index] ?? { worker, ready: false, last: null, flows: 0, restarts: 0, onReady: null };
    slot.worker = worker;
    slot.ready = false;
    slots[index] = slot;
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`worker ${index} did not load within ${READY_TIMEOUT_MS} ms`)), READY_TIMEOUT_MS);
      worker.on('message', (m: FromWorker) => {
        if (m.t === 'loaded') {
          clearTimeout(timer);
          resolve();
        } else if (m.t === 'ready') {
          slot.ready = true;
          // A worker starts as a standby of a pair; tell it the role now (it may have changed since init).
          if (cfg.haNode !== null && !haStandby) worker.postMessage({ t: 'ha-standby', on: false } satisfies ToWorker);
          slot.onReady?.(m.restored);
        } else if (m.t === 'reply') {
          pending.get(m.id)?.(m.data);
          pending.delete(m.id);
        } else if (m.t === 'items') {
          observe?.deliver(m.sub, m.items);
        } else if (m.t === 'pcap') {
          if (pcapWriter) replayPcap(pcapWriter, m.chunk);
        } else if (m.t === 'ha-changes') {
          haPlane?.onChanges?.(m.buf);
        } else if (m.t === 'ha-lost') {
          haPlane?.onLost?.();
        }
      });
      worker.on('error', (err) => {
        clearTimeout(timer);
        log.error('data-plane worker died', { worker: index, error: err.message });
        if (!slot.ready) {
          reject(err);
          slot.onFail?.(err);
        }
      });
      worker.on('exit', () => {
        if (!slot.ready || stopping) return;
        slot.ready = false;
        void restart(index);
      });
    });
  };

  /** Give a loaded worker the TUN's particulars: it opens its queue and starts its loop. */
  const initWorker = (index: number, restore: RestoredFlow[] = []): Promise<number> => {
    const slot = slots[index]!;
    return new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`worker ${index} did not open its queue within ${READY_TIMEOUT_MS} ms`)), READY_TIMEOUT_MS);
      slot.onReady = (restored) => {
        clearTimeout(timer);
        slot.onReady = slot.onFail = null;
        resolve(restored);
      };
      slot.onFail = (err) => {
        clearTimeout(timer);
        slot.onReady = slot.onFail = null;
        reject(new Error(`worker ${index} could not start: ${err.message}`));
      };
      slot.worker.postMessage({ t: 'init', base: base!, restore } satisfies ToWorker);
    });
  };

  /**
   * The flows the last run saved (--state), dealt to the workers that own them now (restoredOwner), or
   * null. The file is used once: after a later crash it would describe flows long gone.
   */
  function savedFlows(publicIp: number, addresses: number[]): RestoredFlow[][] | null {
    const file = cfg.stateFile;
    if (!file || !existsSync(file)) return null;
    try {
      const snap = readSnapshot(file);
      const internal = cfg.internal.map(cidrToString);
      let reason: string | null = null;
      if (JSON.stringify([...snap.internal].sort()) !== JSON.stringify([...internal].sort())) reason = `it was saved for --internal ${snap.internal.join(',')}`;
      else if (snap.publicIp !== publicIp) reason = `it was saved for public address ${ipToString(snap.publicIp)}`;
      if (reason) {
        log.warn('saved flows not restored', { file, reason, flows: snap.flows.length });
        return null;
      }
      const steering = new Steering(count);
      steering.setPublicAddresses(addresses);
      steering.setForwards(cfg.forwards);
      const shares: RestoredFlow[][] = Array.from({ length: count }, () => []);
      for (const f of snap.flows) shares[restoredOwner(steering, f)]!.push(f);
      return shares;
    } catch (err) {
      log.warn('state file ignored', { file, error: (err as Error).message });
      return null;
    } finally {
      rmSync(file, { force: true });
    }
  }

  // Channels between every pair of workers, so each can wake the other.
  const peers: (MessagePort | null)[][] = Array.from({ length: count }, () => new Array<MessagePort | null>(count).fill(null));
  for (let i = 0; i < count; i++) {
    for (let j = i + 1; j < count; j++) {
      const ch = new MessageChannel();
      peers[i]![j] = ch.port1;
      peers[j]![i] = ch.port2;
    }
  }
  // The workers load their code before the host is touched; they open nothing until `init`.
  try {
    await Promise.all(peers.map((p, i) => spawn(i, p)));
  } catch (err) {
    stopping = true;
    await Promise.all(slots.map((s) => s.worker.terminate()));
    throw err;
  }
  // --pcap: the workers relay their packets here from their first one, into this one file.
  if (cfg.pcap) {
    try {
      const path = cfg.pcap;
      const w = PcapngWriter.open(path, {
        tunName: cfg.tun,
        snaplen: cfg.pcapSnaplen === 'headers' ? SNAP_HEADERS : cfg.pcapSnaplen,
        maxFileBytes: cfg.pcapSize * 1_000_000,
        files: cfg.pcapFiles,
        onError: (err) => {
          log.error('writing the pcap file failed; capture stopped, routing goes on', { file: path, error: err.message });
          pcapWriter = null;
        },
      });
      pcapWriter = w;
      log.info('writing packets before and after translation', { pcap: path, workers: count });
    } catch (err) {
      log.error(`${(err as Error).message}; running without --pcap`, { pcap: cfg.pcap });
    }
  }

  /** The queues are open: each worker restores its share of --state, then starts reading its queue. */
  const init = async (t: PlaneBase): Promise<void> => {
    const slotSize = t.vnetHdr ? GSO_SLOT_SIZE : Math.max(SLOT_SIZE, t.tunMtu);
    const rings: (SharedArrayBuffer | null)[][] = [];
    for (let i = 0; i < count; i++) {
      rings.push([]);
      for (let j = 0; j < count; j++) rings[i]!.push(PacketRing.create(i === j ? RING_BYTES / 16 : RING_BYTES).sab);
    }
    base = {
      slotSize, rings, vnetHdr: t.vnetHdr, publicIp: t.publicIp, owned: t.owned, dynamicPool: t.dynamicPool, publicPool: t.publicPool, queueFds: t.queueFds,
      hostCounts: SharedHostCounts.create(count),
      algRedirects: AlgRedirects.create(count),
    };
    if (cfg.haNode !== null) haPlane = workersPlane(t.publicIp);
    const shares = savedFlows(t.publicIp, publicAddressesOf(cfg, t));
    const restored = await Promise.all(slots.map((_, i) => initWorker(i, shares?.[i] ?? [])));
    if (shares) log.info('flows restored from the state file', { file: cfg.stateFile, restored: restored.reduce((a, b) => a + b, 0), saved: shares.reduce((n, l) => n + l.length, 0), workers: count });
    await serve();
  };

  /**
   * A worker died: its queue stays open (the opener holds it), so what the kernel steers to it waits
   * there, and what other workers hand to it waits in its ring. A new worker takes its index, its slice
   * of the ports, its rings and its queue; the flows it held are gone and counted (its last report says
   * how many).
   */
  const restart = async (index: number): Promise<void> => {
    const slot = slots[index]!;
    const lost = slot.flows;
    slot.flows = 0;
    lostFlows += lost;
    slot.restarts++;
    log.error('restarting data-plane worker; the flows it held are lost', { worker: index, flows: lost, restarts: slot.restarts });
    // A pair: the standby holds flows this worker no longer has (active), or this worker's share of the
    // replicated flows is gone (standby). Either way only a full resync makes the two agree again.
    haPlane?.onLost?.();
    const peers: (MessagePort | null)[] = [];
    for (let j = 0; j < count; j++) {
      if (j === index) {
        peers.push(null);
        continue;
      }
      const ch = new MessageChannel();
      peers.push(ch.port1);
      const other = slots[j];
      if (other?.ready) other.worker.postMessage({ t: 'peer', peer: index, port: ch.port2 } satisfies ToWorker, [ch.port2]);
    }
    try {
      await spawn(index, peers);
      await initWorker(index);
      for (const m of observe?.subscriptions() ?? []) slot.worker.postMessage(m);
      log.info('data-plane worker restarted', { worker: index });
    } catch (err) {
      log.error('could not restart a data-plane worker', { worker: index, error: (err as Error).message });
    }
  };

  const ask = <T>(slot: Slot, t: 'stats' | 'flows' | 'count' | 'stop' | 'save' | 'live' | 'ha-dump' | 'ha-applied', extra: Record<string, unknown> = {}): Promise<T | null> => {
    if (!slot.ready) return Promise.resolve(null);
    const id = ++askId;
    return new Promise<T | null>((resolve) => {
      const timer = setTimeout(() => {
        pending.delete(id);
        resolve(null);
      }, ASK_TIMEOUT_MS);
      pending.set(id, (data) => {
        clearTimeout(timer);
        resolve(data as T);
      });
      slot.worker.postMessage({ t, id, ...extra });
    });
  };

  const snapshots = async (): Promise<WorkerSnapshot[]> => {
    const got = await Promise.all(slots.map((s) => ask<WorkerSnapshot>(s, 'stats')));
    return got.map((g, i) => {
      if (g) {
        slots[i]!.last = g;
        slots[i]!.flows = g.flows;
      }
      return g ?? slots[i]!.last;
    }).filter((s): s is WorkerSnapshot => s !== null);
  };

  const broadcast = (m: ToWorker) => slots.forEach((s) => s.ready && s.worker.postMessage(m));

  /**
   * The workers as a gateway of a pair sees them (HaPlane): records from the active go to the worker that
   * owns each flow (the owner of its original tuple's first packet, as for --state), a resync's BEGIN and
   * END to every worker, in the order they came.
   */
  function workersPlane(publicIp: number): HaPlane {
    const steering = new Steering(count);
    steering.setPublicAddresses([publicIp]);
    steering.setForwards(cfg.forwards);
    let applied: ApplyCounts = newApplyCounts();
    refreshApplied = setInterval(() => {
      void Promise.all(slots.map((s) => ask<ApplyCounts>(s, 'ha-applied'))).then((parts) => {
        const sum = newApplyCounts();
        for (const p of parts) {
          if (!p) continue;
          for (const k of ['upserts', 'removes', 'failed', 'malformed', 'swept'] as const) sum[k] += p[k];
        }
        applied = sum;
      });
    }, 1000);
    refreshApplied.unref();
    return {
      onChanges: null,
      onLost: null,
      setStandby(standby: boolean) {
        haStandby = standby;
        broadcast({ t: 'ha-standby', on: standby });
      },
      apply(records: Uint8Array) {
        const shares: Uint8Array[][] = Array.from({ length: count }, () => []);
        const dv = new DataView(records.buffer, records.byteOffset, records.byteLength);
        forEachRecord(records, (kind, off) => {
          const rec = records.subarray(off, off + recordBytes(kind));
          if (kind === REC.BEGIN || kind === REC.END) {
            for (const sh of shares) sh.push(rec);
            return;
          }
          const [proto, src, dst, sport, dport] = recordKey(dv, off);
          shares[tupleOwner(steering, proto, src, dst, sport, dport)]!.push(rec);
        });
        shares.forEach((parts, i) => {
          if (parts.length === 0 || !slots[i]?.ready) return;
          const buf = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
          let o = 0;
          for (const p of parts) {
            buf.set(p, o);
            o += p.length;
          }
          slots[i]!.worker.postMessage({ t: 'ha-apply', buf } satisfies ToWorker, [buf.buffer]);
        });
      },
      dump: async (each) =>
        (
          await Promise.all(
            slots.map(async (s) => {
              const part = await ask<Uint8Array>(s, 'ha-dump');
              // Each worker's dump goes out as it comes: its later changes, posted after it, follow it.
              if (part !== null) each(part);
              return part !== null;
            }),
          )
        ).every(Boolean),
      flowCount: () => slots.reduce((n, s) => n + s.flows, 0),
      applied: () => ({ ...applied }),
      // Every worker answers a message, so none is stuck in its loop.
      healthy: async () => (await Promise.all(slots.map((s) => ask<number>(s, 'count')))).every((n) => n !== null),
    };
  }
  observe = new WorkerObservatory(
    {
      broadcast,
      liveSnapshots: async () => (await Promise.all(slots.map((s) => ask<LiveSnapshot>(s, 'live')))).filter((l): l is LiveSnapshot => l !== null),
    },
    log,
    MAX_HOST_LABELS,
  );
  observe.pcapWriter = pcapWriter;

  /** HTTP: metrics summed over the workers (refreshed before each scrape), the flow listing, observation. */
  const serve = async () => {
    let summary = aggregate([]);
    const natView = summary.nat as unknown as Record<string, unknown>;
    const loopView = summary.loop as unknown as Record<string, unknown>;
    let flowsByProto: Record<string, number> = {};
    let perWorker: WorkerSnapshot[] = [];
    let census: FlowCensus = { hosts: [], byState: new Map(), total: 0 };
    const loopMetrics = new LoopMetrics();
    const refresh = async () => {
      perWorker = await snapshots();
      summary = aggregate(perWorker);
      Object.assign(natView, summary.nat);
      Object.assign(loopView, summary.loop);
      flowsByProto = summary.flowsByProto;
      census = mergeCensus(perWorker.flatMap((w) => (w.census ? [w.census] : [])), MAX_HOST_LABELS);
      mergeLoopMetrics(loopMetrics, perWorker.flatMap((w) => (w.loopMetrics ? [w.loopMetrics] : [])));
    };
    const registry = createRegistry(natView as never, loopView as never, {
      tunName: cfg.tun,
      flowsByProto: () => flowsByProto,
      hosts: { maxHosts: MAX_HOST_LABELS, census: () => census },
      loopMetrics,
      observe: observe!,
    });
    workerMetrics(registry, () => perWorker, () => slots.map((s) => s.restarts), () => lostFlows);
    new Gauge({
      name: 'tunnat_queue_steering',
      help: "1 when the kernel puts each packet on its owning worker's queue (the steering program), 0 when it hashes flows onto queues and workers hand packets on",
      registers: [registry],
      collect() {
        this.set(steered ? 1 : 0);
      },
    });
    const scraped = {
      contentType: registry.contentType,
      metrics: async () => {
        await refresh();
        return registry.metrics();
      },
    } as unknown as Registry;
    const handlers: Record<string, RouteHandler> = { ...observe!.handlers() };
    served = { registry, handlers };
    closeHttp = await startHttp(
      {
        registry: scraped,
        conntrack: async () => (await Promise.all(slots.map((s) => ask<unknown[]>(s, 'flows')))).flatMap((l) => l ?? []),
        handlers,
      },
      { tcp: null, unixPath: null, handles: httpHandles },
    );
    // Each worker's flow count, so that a worker that dies is known to have taken that many with it.
    counting = setInterval(() => {
      for (const s of slots) {
        void ask<number>(s, 'count').then((n) => {
          if (n !== null && s.ready) s.flows = n;
        });
      }
    }, 1000);
    counting.unref();
  };

  return {
    count,
    init,
    setSteered(on: boolean) {
      steered = on;
    },
    setPublicAddresses(primary: number, all: readonly number[]) {
      broadcast({ t: 'addresses', primary, all: [...all] });
    },
    snapshots,
    reload(next: RouterConfig): string[] {
      const restartNeeded = RESTART_FIELDS.filter((k) => JSON.stringify(next[k]) !== JSON.stringify(current[k]));
      current = { ...current, timeouts: next.timeouts, allowEgress: next.allowEgress, egressReject: next.egressReject, maxFlowsPerHost: next.maxFlowsPerHost, icmpErrors: next.icmpErrors, forwards: next.forwards, logLevel: next.logLevel };
      broadcast({ t: 'reload', cfg: current });
      log.level = next.logLevel;
      log.info('configuration reloaded; flows kept', restartNeeded.length > 0 ? { needsRestart: restartNeeded.join(',') } : {});
      return restartNeeded;
    },
    async startHa(setProxyArp: (on: boolean) => Promise<void>, opts: { key?: Uint8Array } = {}) {
      if (haPlane === null || served === null) return;
      ha = await HaController.start(cfg, log, haPlane, setProxyArp, opts);
      attachHa(ha, served.registry, served.handlers, observe!.live);
    },
    async stop(save: boolean): Promise<boolean> {
      await ha?.close();
      if (refreshApplied) clearInterval(refreshApplied);
      if (counting) clearInterval(counting);
      stopping = true;
      let saved = false;
      if (save && cfg.stateFile !== null) {
        // Every worker's table, in one file: the next start deals the flows out again by owner.
        const parts = await Promise.all(slots.map((s) => ask<Snapshot>(s, 'save')));
        if (parts.every((p) => p !== null)) {
          const merged: Snapshot = { ...parts[0]!, flows: parts.flatMap((p) => p!.flows) };
          try {
            writeSnapshot(cfg.stateFile, merged);
            saved = true;
            log.info('flows saved', { file: cfg.stateFile, flows: merged.flows.length });
          } catch (err) {
            log.error('could not save the flows', { error: (err as Error).message });
          }
        } else log.error('could not save the flows: a worker did not answer');
      }
      // Each worker closes its copy of its queue; the queues themselves are the opener's to close.
      await Promise.all(slots.map(async (s) => {
        if ((await ask(s, 'stop')) === null) await s.worker.terminate();
      }));
      observe?.close();
      if (pcapWriter) {
        const w = pcapWriter;
        pcapWriter = null;
        await w.close();
        log.info('pcap file closed', { pcap: w.path, packets: w.packets.before + w.packets.after, dropped: w.dropped });
      }
      await closeHttp().catch(() => {});
      return saved;
    },
    async abort() {
      stopping = true;
      if (counting) clearInterval(counting);
      await Promise.all(slots.map((s) => s.worker.terminate()));
      await pcapWriter?.close();
      await closeHttp().catch(() => {});
    },
    crashWorker0() {
      slots[0]?.worker.postMessage({ t: 'crash' } satisfies ToWorker);
    },
  };
}

/** The public addresses the workers translate to, as the translator holds them (buildTranslator). */
function publicAddressesOf(cfg: RouterConfig, t: Pick<PlaneBase, 'publicIp' | 'dynamicPool' | 'publicPool'>): number[] {
  return t.dynamicPool ? t.publicPool : [t.publicIp, ...cfg.publicPool.slice(1)];
}

/**
 * The workers' queues, opened by the side that holds the device (and the privilege to steer it). The
 * device's own queue detaches at once (it keeps the device, and reads nothing); then the workers' queues
 * open in worker order, so that queue i is worker i's, as the steering program assumes (a TUN numbers
 * its queues in the order they attach). Between the two, what is routed into the TUN is dropped, as
 * while no tunnat ran; afterwards packets wait in their queue until its worker reads.
 */
export class WorkerQueues {
  readonly queues: NativeTun[] = [];
  private device: NativeTun | null = null;
  private dynamicPool = false;
  private addresses: number[] = [];
  private forwards: RouterConfig['forwards'];
  steered = false;

  constructor(
    private readonly cfg: RouterConfig,
    private readonly log: Logger,
    private readonly onSteered: (on: boolean) => void = () => {},
  ) {
    this.forwards = cfg.forwards;
  }

  open(t: OpenedTun): PlaneBase {
    if (!(t.tun instanceof NativeTun)) throw new Error('--workers needs the native TUN');
    this.device = t.tun;
    t.tun.setQueue(false);
    try {
      for (let i = 0; i < this.cfg.workers; i++) this.queues.push(NativeTun.open(this.cfg.tun, { vnetHdr: t.vnetHdr, multiQueue: true }));
    } catch (err) {
      this.close();
      throw err;
    }
    this.dynamicPool = t.dynamicPool;
    this.addresses = publicAddressesOf(this.cfg, t);
    this.steer();
    return { vnetHdr: t.vnetHdr, tunMtu: t.tunMtu, publicIp: t.publicIp, owned: t.owned, dynamicPool: t.dynamicPool, publicPool: t.publicPool, queueFds: this.queues.map((q) => q.fd) };
  }

  /** The WAN's addresses changed (masquerade): the program tells inbound packets by them. */
  setPublicAddresses(primary: number, all: readonly number[]): void {
    this.addresses = publicAddressesOf(this.cfg, { publicIp: primary, dynamicPool: this.dynamicPool, publicPool: [...all] });
    this.steer();
  }

  /**
   * Let the kernel put each packet on its owner's queue (steer-bpf.ts), so that hand-offs are the exception.
   * Without it (a kernel that refuses the program) the kernel hashes flows onto queues and the workers hand
   * about (N-1)/N of the packets to their owners: correct, only slower. `forwards`: new ones (SIGHUP).
   */
  steer(forwards: RouterConfig['forwards'] = this.forwards): void {
    this.forwards = forwards;
    if (!this.device) return;
    try {
      this.device.setSteering(steeringProgram({ count: this.cfg.workers, publicAddrs: this.addresses, forwards }));
      if (!this.steered) this.log.debug('queue steering program attached', { workers: this.cfg.workers });
      this.steered = true;
    } catch (err) {
      const e = err as Error & { cause?: { verifierLog?: string } };
      this.log.warn('the kernel refused the queue-steering program; workers hand packets to their owners instead', { error: e.message, verifier: e.cause?.verifierLog?.slice(-400) });
      this.steered = false;
    }
    this.onSteered(this.steered);
  }

  close(): void {
    this.queues.splice(0).forEach((q) => q.close());
  }
}

export async function startWorkerRouter(cfg: RouterConfig, log: Logger): Promise<WorkerRouter> {
  await preflight(cfg);
  const httpHandles = await bindHttpListeners({ tcp: cfg.http, unixPath: cfg.httpSocket });
  let plane: WorkerPlane;
  try {
    plane = await loadWorkerPlane(cfg, log, httpHandles);
  } catch (err) {
    await closeListeners(httpHandles);
    throw err;
  }
  const queues = new WorkerQueues(cfg, log, (on) => plane.setSteered(on));
  let sys: SystemSetup;
  try {
    // The workers attach their queues before the routing sends traffic.
    sys = await setupSystem(cfg, log, { afterTunOpen: async (t) => plane.init(queues.open(t)) });
  } catch (err) {
    await plane.abort();
    queues.close();
    await closeListeners(httpHandles);
    throw err;
  }
  let addresses = sys.dynamicPool ? sys.publicPool : [sys.publicIp];
  const stopFollowing = sys.masquerade
    ? sys.followAddress((primary, all) => {
        const next = sys.dynamicPool ? [...all] : [primary];
        log.info('external address changed; new flows use the new address', { from: addresses.map(ipToString).join(','), to: next.map(ipToString).join(',') });
        addresses = next;
        plane.setPublicAddresses(primary, all);
        queues.setPublicAddresses(primary, all);
      })
    : () => {};
  try {
    await plane.startHa((on) => sys.setProxyArp(on));
  } catch (err) {
    stopFollowing();
    await plane.stop(false);
    queues.close();
    await leaveSystem(sys, false, log);
    throw err;
  }
  if (process.env.TUNNAT_TEST_HOOKS === '1') {
    // The restart test kills worker 0 from outside: SIGUSR2 makes it throw.
    process.on('SIGUSR2', () => plane.crashWorker0());
  }
  logRunning(cfg, log, sys, { workers: plane.count });

  let resolveDone!: () => void;
  const done = new Promise<void>((r) => (resolveDone = r));
  let stopped: Promise<void> | null = null;
  const stop = (reason = 'stop', o: { keepForRestart?: boolean } = {}) => {
    if (stopped) return stopped;
    stopped = (async () => {
      const snaps = await plane.snapshots().catch(() => []);
      log.info('tunnat stopping', { reason, flows: snaps.reduce((n, s) => n + s.flows, 0) });
      stopFollowing();
      const saved = await plane.stop(o.keepForRestart === true);
      // The device goes when teardown closes the last fd (the main thread's own).
      queues.close();
      await leaveSystem(sys, saved, log);
      resolveDone();
    })();
    return stopped;
  };

  return {
    publicIp: () => sys.publicIp,
    stop,
    done,
    snapshots: () => plane.snapshots(),
    reload(next: RouterConfig): string[] {
      const restartNeeded = plane.reload(next);
      queues.steer(next.forwards);
      return restartNeeded;
    },
  };
}

/** Per-worker packets, hand-offs and restarts: how evenly the load spreads, and what crossing costs. */
function workerMetrics(registry: Registry, snaps: () => WorkerSnapshot[], restarts: () => number[], lost: () => number): void {
  new Counter({
    name: 'tunnat_worker_packets_total',
    help: 'Packets each data-plane worker translated or passed (after hand-offs: counted where they were handled)',
    labelNames: ['worker'],
    registers: [registry],
    collect() {
      this.reset();
      snaps().forEach((s, i) => this.inc({ worker: String(i) }, [...s.stats.packets].reduce((a, b) => a + b, 0)));
    },
  });
  new Counter({
    name: 'tunnat_worker_handoffs_total',
    help: "Packets a worker read from its queue for a flow another worker owns (direction out) and packets it took from other workers' rings (in)",
    labelNames: ['worker', 'direction'],
    registers: [registry],
    collect() {
      this.reset();
      snaps().forEach((s, i) => {
        this.inc({ worker: String(i), direction: 'out' }, s.loop.handoffsOut);
        this.inc({ worker: String(i), direction: 'in' }, s.loop.handoffsIn);
      });
    },
  });
  new Counter({
    name: 'tunnat_worker_handoff_drops_total',
    help: "Packets dropped because the owning worker's ring was full",
    labelNames: ['worker'],
    registers: [registry],
    collect() {
      this.reset();
      snaps().forEach((s, i) => this.inc({ worker: String(i) }, s.loop.handoffDrops));
    },
  });
  new Counter({
    name: 'tunnat_worker_fragments_total',
    help: 'Fragments that reached their meeting worker before the first fragment of their datagram: held, then passed to the owner (released) or dropped (their first never came within 2 s, or a ring was full)',
    labelNames: ['event'],
    registers: [registry],
    collect() {
      this.reset();
      const sum = (k: 'held' | 'released' | 'heldDropped') => snaps().reduce((n, s) => n + (s.fragmentSteering?.[k] ?? 0), 0);
      this.inc({ event: 'held' }, sum('held'));
      this.inc({ event: 'released' }, sum('released'));
      this.inc({ event: 'dropped' }, sum('heldDropped'));
    },
  });
  new Gauge({
    name: 'tunnat_worker_flows',
    help: 'Flows each data-plane worker holds',
    labelNames: ['worker'],
    registers: [registry],
    collect() {
      this.reset();
      snaps().forEach((s, i) => this.set({ worker: String(i) }, s.flows));
    },
  });
  new Counter({
    name: 'tunnat_worker_restarts_total',
    help: 'Times a data-plane worker died and was started again',
    labelNames: ['worker'],
    registers: [registry],
    collect() {
      this.reset();
      restarts().forEach((n, i) => this.inc({ worker: String(i) }, n));
    },
  });
  new Counter({
    name: 'tunnat_worker_flows_lost_total',
    help: 'Flows that died with a worker (its last report before it died)',
    registers: [registry],
    collect() {
      this.reset();
      this.inc(lost());
    },
  });
}
