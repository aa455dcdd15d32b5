import { randomInt } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import type { RouterConfig } from '../cli/config.js';
import type { Logger } from '../util/log.js';
import type { TunDevice } from '../tun/device.js';
import { NativeTun } from '../tun/native.js';
import { Translator } from '../nat/translator.js';
import { EgressPolicy } from '../nat/policy.js';
import { readLocalPorts } from '../nat/local-ports.js';
import { Dataplane } from './loop.js';
import {
  applyRouting, removeRouting, removeRoutingSync, updatePublicIp, detectLeftovers, cleanLeftovers,
  interfacePrimaryIpv4, gatewayOwnsAddress, type AppliedRouting,
} from './routing.js';
import { createRegistry } from '../metrics/registry.js';
import { startHttp } from '../metrics/http.js';
import { Observatory } from '../observe/observatory.js';
import { listFlows } from '../conntrack/listing.js';
import { ipToString, cidrToString } from '../wire/addr.js';
import { IPPROTO } from '../wire/ipv4.js';

/**
 * The running userspace router: TUN + routing + translator + loop + HTTP, started in that order and
 * stopped in reverse. Everything it changes on the system it records (routing.ts) and removes on stop,
 * on SIGINT/SIGTERM, and, synchronously, on process exit.
 */
export class StartupError extends Error {
  constructor(readonly code: string, message: string) {
    super(message);
    this.name = 'StartupError';
  }
}

export interface RunningRouter {
  readonly nat: Translator;
  readonly loop: Dataplane;
  readonly publicIp: () => number;
  stop(reason?: string): Promise<void>;
  /** Resolves when the router has stopped. */
  readonly done: Promise<void>;
}

const TUN_MTU = 1500;
const SLOT_SIZE = 2048;
const SWEEP_INTERVAL_MS = 100;
const ADDRESS_POLL_MS = 2000;
const LOCAL_PORTS_POLL_MS = 5000;

export async function startRouter(cfg: RouterConfig, log: Logger, opts: { tun?: TunDevice; clock?: () => number } = {}): Promise<RunningRouter> {
  const clock = opts.clock ?? (() => performance.now());
  const masquerade = cfg.publicIp === null;
  let publicIp: number;
  if (cfg.publicIp !== null) {
    publicIp = cfg.publicIp;
  } else {
    const addr = await interfacePrimaryIpv4(cfg.external).catch((err: Error) => {
      throw new StartupError('NO_EXTERNAL', `cannot read the address of --external ${cfg.external}: ${err.message}`);
    });
    if (addr === null) {
      throw new StartupError('NO_EXTERNAL', `--external ${cfg.external} has no IPv4 address to masquerade behind (give one, or use --public-ip)`);
    }
    publicIp = addr;
  }
  if (cfg.internal.some((c) => ((publicIp & c.mask) >>> 0) === c.network)) {
    // RFC 4787 REQ-7: an external address inside the internal network cannot be told apart from a LAN host.
    throw new StartupError('ADDRESS_CONFLICT', `the public address ${ipToString(publicIp)} lies inside --internal; choose prefixes that do not overlap the WAN`);
  }
  const owned = masquerade || (await gatewayOwnsAddress(publicIp));

  const leftover = await detectLeftovers(cfg.tun, cfg.table);
  if (leftover) {
    if (leftover.foreign) {
      // Rules in our tables that no tunnat state file explains: someone else's, never ours to delete.
      throw new StartupError(
        'ROUTING_CONFLICT',
        `routing tables ${cfg.table}/${cfg.table + 1} or tunnat's rule priorities are in use by something else; ` +
          `choose another --table, or remove them (\`tunnat down --tun ${cfg.tun} --table ${cfg.table}\` if they are tunnat's)`,
      );
    }
    log.warn('found the set-up of an earlier tunnat that did not exit cleanly; removing it', { tun: cfg.tun });
    await cleanLeftovers(leftover, (m: string) => log.info(m));
  }

  let tun: TunDevice;
  try {
    tun = opts.tun ?? NativeTun.open(cfg.tun);
  } catch (err) {
    const e = err as Error & { code?: string };
    throw new StartupError(e.code ?? 'TUN_UNAVAILABLE', `cannot open TUN ${cfg.tun}: ${e.message}`);
  }

  // The TUN carries IPv4 only; without this the kernel sends it IPv6 neighbour discovery to drop.
  try {
    writeFileSync(`/proc/sys/net/ipv6/conf/${cfg.tun}/disable_ipv6`, '1');
  } catch {
    // No IPv6 in this kernel: nothing to silence.
  }

  let applied: AppliedRouting | null = null;
  const onExit = () => {
    if (applied) {
      try {
        removeRoutingSync(applied);
      } catch {
        // Nothing more can be done while exiting; the next start cleans leftovers.
      }
      applied = null;
    }
  };
  process.on('exit', onExit);
  try {
    applied = await applyRouting(
      {
        tun: cfg.tun,
        internal: cfg.internal,
        externalIface: cfg.external,
        publicIp,
        publicIpOwned: owned,
        table: cfg.table,
        gatewayPorts: cfg.gatewayPorts,
        tunMtu: TUN_MTU,
      },
      (m: string) => log.debug(m),
    );
  } catch (err) {
    tun.close();
    process.off('exit', onExit);
    throw err;
  }

  const nat = new Translator({
    internal: cfg.internal,
    publicIp,
    publicIpOwned: owned,
    ports: cfg.ports,
    excludedPorts: [cfg.gatewayPorts],
    maxFlows: cfg.maxFlows,
    timeouts: cfg.timeouts,
    seed: randomInt(0, 0x7fffffff),
    rng: Math.random,
    filtering: cfg.filtering,
    forwards: cfg.forwards,
    egress: cfg.allowEgress ? new EgressPolicy(cfg.allowEgress) : null,
    egressReject: cfg.egressReject,
    maxFlowsPerHost: cfg.maxFlowsPerHost,
    icmpOnExhaustion: cfg.icmpErrors,
  });
  const loop = new Dataplane(tun, nat, { batch: cfg.batch, slotSize: SLOT_SIZE, clock });
  // Per-host accounting and loop histograms from the first packet; pcap before the loop starts.
  const observe = new Observatory(nat, loop, { log, clock, tunName: cfg.tun });
  if (cfg.pcap) observe.startPcap(cfg.pcap);

  // The gateway's own listening sockets are never handed out as mappings.
  let localBlocked: { tcp: Set<number>; udp: Set<number> } = { tcp: new Set(), udp: new Set() };
  const refreshLocalPorts = () => {
    const now = readLocalPorts(nat.publicAddress);
    for (const [proto, name] of [[IPPROTO.TCP, 'tcp'], [IPPROTO.UDP, 'udp']] as const) {
      const pool = nat.mappings.pool(proto)!;
      for (const p of localBlocked[name]) if (!now[name].has(p)) pool.setAllowed(p, true);
      for (const p of now[name]) pool.setAllowed(p, false);
    }
    localBlocked = now;
  };
  refreshLocalPorts();

  loop.start();
  const sweepBudget = Math.max(1024, Math.ceil(cfg.maxFlows / 50));
  const timers: NodeJS.Timeout[] = [];
  timers.push(setInterval(() => nat.sweep(clock(), sweepBudget), SWEEP_INTERVAL_MS));
  timers.push(setInterval(refreshLocalPorts, LOCAL_PORTS_POLL_MS));
  if (masquerade) {
    let checking = false;
    timers.push(
      setInterval(() => {
        if (checking) return;
        checking = true;
        void (async () => {
          try {
            const addr = await interfacePrimaryIpv4(cfg.external);
            if (addr !== null && addr !== nat.publicAddress && applied) {
              const old = nat.publicAddress;
              applied = await updatePublicIp(applied, addr);
              const flushed = nat.setPublicAddress(addr);
              log.info('external address changed; new flows use the new address', {
                from: ipToString(old), to: ipToString(addr), flushed,
              });
            }
          } catch (err) {
            log.warn('could not read the external address', { error: (err as Error).message });
          } finally {
            checking = false;
          }
        })();
      }, ADDRESS_POLL_MS),
    );
  }
  timers.forEach((t) => t.unref());

  const registry = createRegistry(nat, loop, { hosts: observe.hosts, loopMetrics: observe.loopMetrics, observe });
  let closeHttp: (() => Promise<void>) | null = null;
  try {
    closeHttp = await startHttp(
      { registry, conntrack: () => listFlows(nat.flows, clock()), handlers: observe.handlers() },
      { tcp: cfg.http, unixPath: cfg.httpSocket },
    );
  } catch (err) {
    log.error('cannot start the HTTP endpoint', { error: (err as Error).message });
  }

  log.info('tunnat running', {
    tun: cfg.tun,
    internal: cfg.internal.map(cidrToString).join(','),
    external: cfg.external,
    publicIp: ipToString(publicIp),
    mode: masquerade ? 'masquerade' : 'snat',
    ports: cfg.ports.join('-'),
    http: cfg.http ? `${cfg.http.host}:${cfg.http.port}` : 'off',
  });

  let resolveDone!: () => void;
  const done = new Promise<void>((r) => (resolveDone = r));
  let stopping: Promise<void> | null = null;
  const stop = (reason = 'stop') => {
    if (stopping) return stopping;
    stopping = (async () => {
      log.info('tunnat stopping', { reason, flows: nat.flows.size });
      timers.forEach((t) => clearInterval(t));
      loop.stop();
      if (applied) {
        try {
          await removeRouting(applied, (m: string) => log.debug(m));
        } catch (err) {
          log.error('removing the routing set-up failed; the next start will clean it', { error: (err as Error).message });
        }
        applied = null;
      }
      tun.close();
      await observe.close().catch(() => {});
      if (closeHttp) await closeHttp().catch(() => {});
      process.off('exit', onExit);
      log.info('tunnat stopped');
      resolveDone();
    })();
    return stopping;
  };

  return { nat, loop, publicIp: () => nat.publicAddress, stop, done };
}
