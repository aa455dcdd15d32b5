/**
 * Is memory bounded, or only not yet collected? The soak sees the router's heap grow between V8's lazy
 * collections; this runs the same composition as `tunnat run` (Translator, Dataplane, Observatory,
 * metrics registry, scraped regularly) in process on the fuzzer's traffic model, forces a full garbage
 * collection before each sample, and reports the heap that is actually live. A per-packet or per-flow
 * leak shows up as a slope; a bounded data plane gives a flat line once the table is full.
 */
import v8 from 'node:v8';
import vm from 'node:vm';
import { FakeTun } from '../../../src/tun/fake.js';
import { Dataplane } from '../../../src/dataplane/loop.js';
import { Observatory } from '../../../src/observe/observatory.js';
import { createRegistry } from '../../../src/metrics/registry.js';
import { createLogger } from '../../../src/util/log.js';
import { fuzzConfig, makeTranslator } from './rig.js';
import { TrafficModel, type World } from './traffic.js';
import { Rng } from './rng.js';
import { addr } from './packets.js';

export interface HeapSample {
  packets: number;
  flows: number;
  flowsCreated: number;
  /** V8 heap in use right after a forced full collection. */
  heapLiveMiB: number;
  rssMiB: number;
}

/** A function that runs a full collection (exposed at run time: no --expose-gc flag needed). */
function fullGc(): () => void {
  v8.setFlagsFromString('--expose-gc');
  return vm.runInNewContext('gc') as () => void;
}

export async function heapRun(packets: number, samples: number, seed = 5, onSample?: (s: HeapSample) => void): Promise<HeapSample[]> {
  const gc = fullGc();
  const cfg = { ...fuzzConfig('small-address'), maxFlows: 4096, ports: [1024, 65535] as [number, number], excludedPorts: [[20000, 29999]] as [number, number][] };
  const nat = makeTranslator(cfg, seed);
  const tun = new FakeTun();
  let now = 1_000_000;
  const loop = new Dataplane(tun, nat, { batch: 64, slotSize: 2048, clock: () => now });
  const observe = new Observatory(nat, loop, { log: createLogger('error', () => {}), clock: () => now });
  const registry = createRegistry(nat, loop, { hosts: observe.hosts, loopMetrics: observe.loopMetrics, observe });
  const rng = new Rng(seed);
  const world: World = {
    lan: Array.from({ length: 8 }, (_, i) => addr(`192.168.1.${10 + i}`)),
    remotes: ['198.51.100.1', '198.51.100.2', '203.0.113.2'].map(addr),
    publicIp: addr('203.0.113.1'),
    odd: [addr('10.0.0.1')],
    ports: [0, 53, 80, 443],
    lanRouters: [addr('192.168.1.1')],
    wanRouters: [addr('198.51.100.254')],
    isInternal: (a) => a >>> 8 === addr('192.168.1.0') >>> 8,
  };
  const model = new TrafficModel(rng, world, []);
  const every = Math.max(1, Math.floor(packets / samples));
  const out: HeapSample[] = [];
  let sent = 0;
  let nextSample = 0;
  while (sent < packets) {
    for (const p of model.next()) {
      tun.inject(p);
      sent++;
    }
    while (tun.pending > 0) loop.runBatch();
    for (const w of tun.takeWritten()) model.observe(w);
    now += rng.int(50);
    if (sent % 64 === 0) nat.sweep(now, 1024);
    if (sent >= nextSample) {
      nextSample += every;
      await registry.metrics(); // what a Prometheus scrape allocates and keeps
      gc();
      gc();
      const m = process.memoryUsage();
      const s = { packets: sent, flows: nat.flows.size, flowsCreated: nat.stats.flowsCreated, heapLiveMiB: +(m.heapUsed / 1048576).toFixed(2), rssMiB: +(m.rss / 1048576).toFixed(1) };
      out.push(s);
      onSample?.(s);
    }
  }
  return out;
}
