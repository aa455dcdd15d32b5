import { FakeTun } from '../../src/tun/fake.js';
import { Dataplane } from '../../src/dataplane/loop.js';
import { Observatory } from '../../src/observe/observatory.js';
import { createLogger, type Logger } from '../../src/util/log.js';
import { makeNat } from '../nat/helpers.js';

export { PUB, REMOTE, HOST_A, HOST_B, ip, parse, checkAllChecksums } from '../nat/helpers.js';

/** The whole data plane on an in-memory TUN, with a manual clock and a logger that keeps its lines. */
export function pipeline(opts: { batch?: number; maxFlows?: number } = {}) {
  const tun = new FakeTun();
  const nat = makeNat(opts.maxFlows !== undefined ? { maxFlows: opts.maxFlows } : {});
  let now = 1000;
  const clock = () => now;
  const loop = new Dataplane(tun, nat, { batch: opts.batch ?? 16, slotSize: 2048, clock });
  const lines: string[] = [];
  const log: Logger = createLogger('debug', (l) => lines.push(l));
  return {
    tun,
    nat,
    loop,
    clock,
    log,
    lines,
    setNow: (t: number) => (now = t),
    advance: (ms: number) => (now += ms),
    /** Inject the packets and run batches until the TUN is empty; returns what was written back. */
    run(...pkts: Buffer[]): Buffer[] {
      for (const p of pkts) tun.inject(p);
      while (loop.runBatch() > 0) {
        // keep reading
      }
      return tun.takeWritten();
    },
  };
}

export function observed(opts: { batch?: number; maxFlows?: number; maxHosts?: number } = {}) {
  const p = pipeline(opts);
  const obs = new Observatory(p.nat, p.loop, {
    log: p.log,
    clock: p.clock,
    tunName: 'faketun0',
    ...(opts.maxHosts !== undefined ? { maxHosts: opts.maxHosts } : {}),
  });
  return { ...p, obs };
}
