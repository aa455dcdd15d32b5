import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import type { RouterConfig } from '../config/config.js';
import { NativeTun } from '../tun/native.js';
import { Dataplane, type Handoff } from '../dataplane/loop.js';
import { PacketRing } from '../dataplane/ring.js';
import { HERE, Steering } from '../dataplane/steering.js';
import { FragmentSteering, isFragment } from '../dataplane/fragment-steer.js';
import { EgressPolicy } from '../nat/policy.js';
import { listFlows } from '../conntrack/listing.js';
import { tuneJit } from '../util/jit.js';
import { takeSnapshot } from '../nat/snapshot.js';
import { cidrToString } from '../wire/addr.js';
import type { RestoredFlow } from '../nat/restore.js';
import { buildTranslator, HA_DRAIN_MS, localPortsFollower } from './router.js';
import { histogramData, workerSnapshot, type FromWorker, type WorkerInit, type WorkerBase, type ToWorker } from './workers-proto.js';
import { Observatory, traceQuery } from '../observe/observatory.js';
import { liveSnapshot } from '../observe/live.js';
import { flowFilterFromQuery } from '../observe/filter.js';
import { createLogger } from '../util/log.js';
import { SharedHostCounts } from '../nat/host-counts.js';
import { AlgRedirects } from '../nat/alg-redirect.js';
import { enableFtpAlg } from '../nat/alg-ftp.js';
import { PcapRelay } from '../observe/pcap-relay.js';
import { SNAP_HEADERS } from '../observe/pcapng.js';
import { newApplyCounts, Replica } from '../nat/replica.js';

/**
 * One data-plane worker (--workers N): its own queue of the multi-queue TUN, its own translator over its
 * slice of the port space, its own loop. Packets of flows another worker owns go to that worker's ring;
 * the main thread asks for counters and flow lists by message and never touches the packet path.
 */
const init = workerData as WorkerInit;
const port = parentPort!;
tuneJit();

const { cfg, index, count } = init;
const log = createLogger(cfg.logLevel);

/** Open this worker's queue and start its loop: called once the main thread has opened the TUN. */
function start(base: WorkerBase, saved: RestoredFlow[]) {
  // A restarted worker's flows are gone: so are the per-host counts it kept.
  const hostCounts = new SharedHostCounts(base.hostCounts, count, index);
  hostCounts.clearOwn();
  const nat = buildTranslator(cfg, base, { index, count }, hostCounts);
  if (cfg.algFtp.length > 0) {
    enableFtpAlg(nat, cfg.algFtp);
    // A restarted worker's mappings are gone: so are the FTP data endpoints it published.
    nat.algRedirects = new AlgRedirects(base.algRedirects, count, index);
    nat.algRedirects.clearOwn();
  }
  // Flows saved by the last run (--state) go back before the queue opens and the first packet comes.
  const now = performance.now();
  let restored = 0;
  for (const f of saved) if (nat.restoreFlow(f, now)) restored++;
  // The queue is attached already (the main thread opened it): what arrived meanwhile waits in it.
  const tun = NativeTun.fromFd(base.queueFds[index]!, { vnetHdr: base.vnetHdr, multiQueue: true, dup: true });
  const steering = new Steering(count);
  steering.setPublicAddresses(nat.publicAddresses);
  steering.setForwards(cfg.forwards);

  // rings[i][j] carries packets from worker i to worker j.
  // rings[i][i] is a worker's own: fragments it held, passed on to itself after their first.
  const toPeer: (PacketRing | null)[] = base.rings[index]!.map((sab) => (sab ? PacketRing.over(sab) : null));
  const fromPeer: (PacketRing | null)[] = base.rings.map((row) => (row[index] ? PacketRing.over(row[index]!) : null));
  const kick: (MessagePort | null)[] = init.peers;

  let next = 0;
  const frags = new FragmentSteering(index, steering, (owner, pkt) => {
    if (toPeer[owner]!.push(pkt, 0, pkt.length) < 0) frags.stats.heldDropped++;
    else if (owner !== index) kick[owner]?.postMessage(0);
  });
  const handoff: Handoff = {
    self: index,
    steer(buf, slot, off, len, slotLen, fromRing) {
      if (isFragment(buf, off, len)) return frags.route(buf, slot, off, len, slotLen, fromRing);
      return fromRing ? HERE : steering.ownerOf(buf, off, len);
    },
    send(owner, buf, off, len) {
      const r = toPeer[owner]!.push(buf, off, len);
      if (r < 0) return false;
      if (r === 1) kick[owner]?.postMessage(0);
      return true;
    },
    receive(buf, at) {
      // Round robin over the peers, so one busy peer cannot starve another.
      for (let k = 0; k < count; k++) {
        const j = (next + k) % count;
        const r = fromPeer[j];
        if (r === null || r === undefined) continue;
        const len = r.pop(buf, at);
        if (len >= 0) {
          next = (j + 1) % count;
          return len;
        }
      }
      return -1;
    },
  };

  const clock = () => performance.now();
  const loop = new Dataplane(tun, nat, { batch: cfg.batch, slotSize: base.slotSize, vnetHdr: base.vnetHdr, busyPollUs: cfg.busyPoll, clock });
  loop.handoff = handoff;
  // Per-host accounting, loop histograms, and (while someone listens) events and trace, for this worker's
  // flows; the main thread merges them (workers-observe.ts).
  const observe = new Observatory(nat, loop, { log, clock, tunName: cfg.tun });
  // --pcap: this worker's packets go to the main thread, which writes the one file.
  const relay = cfg.pcap
    ? new PcapRelay(cfg.pcapSnaplen === 'headers' ? SNAP_HEADERS : cfg.pcapSnaplen, (chunk) =>
        port.postMessage({ t: 'pcap', chunk } satisfies FromWorker, [chunk.buffer as ArrayBuffer]),
      )
    : null;
  if (relay) observe.taps.add(relay);
  const onKick = () => loop.drainHandoffs();
  for (const p of kick) p?.on('message', onKick);

  const refreshLocalPorts = localPortsFollower(nat);
  const sweepBudget = Math.max(1024, Math.ceil(nat.flows.capacity / 50));
  // A gateway of a pair with a peer: this worker's change log, drained off the packet path (replica.ts).
  const replica = cfg.haNode !== null && cfg.haPeer !== null ? new Replica(nat) : null;
  const applied = newApplyCounts();
  const timers = [
    // A standby's flows are the active's: they end when the active says so, not by this gateway's timers.
    setInterval(() => nat.standby || nat.sweep(clock(), sweepBudget), 100),
    setInterval(refreshLocalPorts, 5000),
    // A safety net for the one race a ring's wake-up can lose (the peer saw one packet waiting just as this
    // worker took the last): whatever waits is taken within 20 ms.
    setInterval(() => {
      frags.expireHeld();
      for (const r of fromPeer) if (r !== null && !r.empty) return void loop.drainHandoffs();
    }, 20),
  ];
  if (replica) {
    timers.push(
      setInterval(
        () =>
          replica.flush(
            clock(),
            (buf) => port.postMessage({ t: 'ha-changes', buf } satisfies FromWorker, [buf.buffer as ArrayBuffer]),
            () => port.postMessage({ t: 'ha-lost' } satisfies FromWorker),
          ),
        HA_DRAIN_MS,
      ),
    );
  }
  loop.start();
  return { nat, loop, tun, steering, kick, timers, clock, onKick, frags, observe, relay, restored, replica, applied };
}

let dp: ReturnType<typeof start> | null = null;

/**
 * Event and trace streams the main thread asked for: what they produce is batched and posted every 20 ms
 * (or at 256 messages), so a busy stream costs one message per batch, not one per packet.
 */
const subs = new Map<number, { unsubscribe: () => void; items: [string, unknown][] }>();
let flushTimer: NodeJS.Timeout | null = null;
const BATCH_ITEMS = 256;
function flushSubs() {
  flushTimer = null;
  for (const [sub, s] of subs) {
    if (s.items.length === 0) continue;
    port.postMessage({ t: 'items', sub, items: s.items } satisfies FromWorker);
    s.items = [];
  }
}
function pushItem(sub: number, event: string, data: unknown) {
  const s = subs.get(sub);
  if (!s) return;
  s.items.push([event, data]);
  if (s.items.length >= BATCH_ITEMS) flushSubs();
  else if (flushTimer === null) flushTimer = setTimeout(flushSubs, 20);
}

port.on('message', (m: ToWorker) => {
  if (m.t === 'init') {
    dp = start(m.base, m.restore);
    port.postMessage({ t: 'ready', restored: dp.restored });
    return;
  }
  if (dp === null) {
    if (m.t === 'stop') {
      port.postMessage({ t: 'reply', id: m.id, data: null });
      port.close();
    }
    return;
  }
  const { nat, loop, tun, steering, kick, timers, clock, onKick, observe, relay } = dp;
  switch (m.t) {
    case 'stats': {
      const lm = observe.loopMetrics;
      port.postMessage({
        t: 'reply',
        id: m.id,
        data: {
          ...workerSnapshot(nat, loop),
          fragmentSteering: { ...dp.frags.stats },
          census: observe.hosts.census(),
          loopMetrics: { packetsRead: lm.packetsRead, batchSize: histogramData(lm.batchSize), loopSeconds: histogramData(lm.loopSeconds) },
        },
      });
      break;
    }
    case 'live':
      port.postMessage({ t: 'reply', id: m.id, data: liveSnapshot(nat, observe.hosts, clock()) });
      break;
    case 'sub': {
      // The main thread checked the query already; a worker that still cannot parse it stays silent.
      const url = new URL(`http://tunnat/?${m.query}`);
      let unsubscribe: () => void;
      try {
        if (m.kind === 'events') {
          unsubscribe = observe.events.subscribe(flowFilterFromQuery(url.searchParams), (ev) => pushItem(m.sub, 'flow', ev));
        } else {
          const { filter, rate } = traceQuery(url);
          // The rate is the client's for the whole router: each worker lets through its share of it.
          unsubscribe = observe.tracer.subscribe(filter, Math.max(1, Math.ceil(rate / count)), (t) =>
            t.type === 'packet' ? pushItem(m.sub, 'packet', t.record) : pushItem(m.sub, 'suppressed', { count: t.count }),
          );
        }
      } catch (err) {
        log.warn('stream not started in a worker', { worker: index, error: (err as Error).message });
        break;
      }
      subs.set(m.sub, { unsubscribe, items: [] });
      break;
    }
    case 'unsub':
      subs.get(m.sub)?.unsubscribe();
      subs.delete(m.sub);
      break;
    case 'count':
      port.postMessage({ t: 'reply', id: m.id, data: nat.flows.size });
      break;
    case 'flows':
      port.postMessage({ t: 'reply', id: m.id, data: listFlows(nat.flows, clock()).map((f) => ({ ...f, worker: index })) });
      break;
    case 'save':
      port.postMessage({ t: 'reply', id: m.id, data: takeSnapshot(nat, cfg.internal.map(cidrToString), clock()) });
      break;
    case 'peer':
      kick[m.peer]?.off('message', onKick);
      kick[m.peer] = m.port;
      m.port.on('message', onKick);
      break;
    case 'addresses':
      if (nat.dynamicPool) nat.setPublicAddresses(m.primary, m.all);
      else nat.setPublicAddress(m.primary);
      steering.setPublicAddresses(nat.publicAddresses);
      break;
    case 'reload': {
      const next: RouterConfig = m.cfg;
      nat.reconfigure({
        timeouts: next.timeouts,
        egress: next.allowEgress ? new EgressPolicy(next.allowEgress) : null,
        egressReject: next.egressReject,
        maxFlowsPerHost: next.maxFlowsPerHost,
        icmpOnExhaustion: next.icmpErrors,
        forwards: next.forwards,
      });
      steering.setForwards(next.forwards);
      log.level = next.logLevel;
      break;
    }
    case 'stop':
      for (const sub of subs.values()) sub.unsubscribe();
      subs.clear();
      void observe.close();
      timers.forEach((t) => clearInterval(t));
      loop.stop();
      // The last packets for the pcap file go before the reply, so the main thread has them when it closes it.
      relay?.close();
      tun.close();
      for (const p of kick) p?.close();
      port.postMessage({ t: 'reply', id: m.id, data: null });
      port.close();
      break;
    case 'ha-standby':
      if (!m.on && nat.standby) dp.replica?.promote(clock());
      nat.standby = m.on;
      if (dp.replica) dp.replica.logging = !m.on;
      break;
    case 'ha-apply':
      dp.replica?.apply(m.buf, clock(), dp.applied);
      break;
    case 'ha-dump': {
      const buf = dp.replica ? dp.replica.dump(clock()) : new Uint8Array(0);
      port.postMessage({ t: 'reply', id: m.id, data: buf } satisfies FromWorker, [buf.buffer as ArrayBuffer]);
      break;
    }
    case 'ha-applied':
      port.postMessage({ t: 'reply', id: m.id, data: { ...dp.applied } } satisfies FromWorker);
      break;
    case 'crash':
      // For the restart test only (the main thread sends it when TUNNAT_TEST_HOOKS is set).
      throw new Error(`worker ${index} crashed on request`);
  }
});

// Loaded: the main thread sends `init` once the TUN exists (router.ts, afterTunOpen).
port.postMessage({ t: 'loaded' });
