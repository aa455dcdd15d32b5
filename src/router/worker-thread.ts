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
import { buildTranslator, localPortsFollower } from './router.js';
import { workerSnapshot, type WorkerInit, type WorkerBase, type ToWorker } from './workers-proto.js';

/**
 * One data-plane worker (--workers N): its own queue of the multi-queue TUN, its own translator over its
 * slice of the port space, its own loop. Packets of flows another worker owns go to that worker's ring;
 * the main thread asks for counters and flow lists by message and never touches the packet path.
 */
const init = workerData as WorkerInit;
const port = parentPort!;
tuneJit();

const { cfg, index, count } = init;

/** Open this worker's queue and start its loop: called once the main thread has opened the TUN. */
function start(base: WorkerBase, saved: RestoredFlow[]) {
  const nat = buildTranslator(cfg, base, { index, count });
  // Flows saved by the last run (--state) go back before the queue opens and the first packet comes.
  const now = performance.now();
  restored = 0;
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

  const loop = new Dataplane(tun, nat, { batch: cfg.batch, slotSize: base.slotSize, vnetHdr: base.vnetHdr, busyPollUs: cfg.busyPoll });
  loop.handoff = handoff;
  const onKick = () => loop.drainHandoffs();
  for (const p of kick) p?.on('message', onKick);

  const refreshLocalPorts = localPortsFollower(nat);
  const clock = () => performance.now();
  const sweepBudget = Math.max(1024, Math.ceil(nat.flows.capacity / 50));
  const timers = [
    setInterval(() => nat.sweep(clock(), sweepBudget), 100),
    setInterval(refreshLocalPorts, 5000),
    // A safety net for the one race a ring's wake-up can lose (the peer saw one packet waiting just as this
    // worker took the last): whatever waits is taken within 20 ms.
    setInterval(() => {
      frags.expireHeld();
      for (const r of fromPeer) if (r !== null && !r.empty) return void loop.drainHandoffs();
    }, 20),
  ];
  loop.start();
  return { nat, loop, tun, steering, kick, timers, clock, onKick, frags };
}

let dp: ReturnType<typeof start> | null = null;
let restored = 0;

port.on('message', (m: ToWorker) => {
  if (m.t === 'init') {
    dp = start(m.base, m.restore);
    port.postMessage({ t: 'ready', restored });
    return;
  }
  if (dp === null) {
    if (m.t === 'stop') {
      port.postMessage({ t: 'reply', id: m.id, data: null });
      port.close();
    }
    return;
  }
  const { nat, loop, tun, steering, kick, timers, clock, onKick } = dp;
  switch (m.t) {
    case 'stats':
      port.postMessage({ t: 'reply', id: m.id, data: { ...workerSnapshot(nat, loop), fragmentSteering: { ...dp.frags.stats } } });
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
        maxFlowsPerHost: next.maxFlowsPerHost > 0 ? Math.ceil(next.maxFlowsPerHost / count) : 0,
        icmpOnExhaustion: next.icmpErrors,
        forwards: next.forwards,
      });
      steering.setForwards(next.forwards);
      break;
    }
    case 'stop':
      timers.forEach((t) => clearInterval(t));
      loop.stop();
      tun.close();
      for (const p of kick) p?.close();
      port.postMessage({ t: 'reply', id: m.id, data: null });
      port.close();
      break;
    case 'crash':
      // For the restart test only (the main thread sends it when TUNNAT_TEST_HOOKS is set).
      throw new Error(`worker ${index} crashed on request`);
  }
});

// Loaded: the main thread sends `init` once the TUN exists (router.ts, afterTunOpen).
port.postMessage({ t: 'loaded' });
