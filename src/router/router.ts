import { randomInt } from 'node:crypto';
import type { Server } from 'node:net';
import { networkInterfaces } from 'node:os';
import { writeFileSync, existsSync, rmSync } from 'node:fs';
import { enableFtpAlg } from '../nat/alg-ftp.js';
import { enableOffloads, GSO_SLOT_SIZE, SLOT_SIZE, tunMtuFor } from './tun-setup.js';
import { tuneJit } from '../util/jit.js';
import { takeSnapshot, writeSnapshot, restoreSnapshot } from '../nat/snapshot.js';
import type { RouterConfig } from '../config/config.js';
import type { Logger } from '../util/log.js';
import type { TunDevice } from '../tun/device.js';
import { NativeTun } from '../tun/native.js';
import { Translator } from '../nat/translator.js';
import { EgressPolicy } from '../nat/policy.js';
import { readLocalPorts, type LocalPorts } from '../nat/local-ports.js';
import { BLOCK } from '../nat/ports.js';
import type { HostCounts } from '../nat/host-counts.js';
import { Dataplane } from '../dataplane/loop.js';
import {
  applyRouting, removeRouting, removeRoutingSync, followAddresses, detectLeftovers, cleanLeftovers,
  adoptRouting, canAdoptRouting, keepForRestart, setProxyArp, type RoutingConfig,
  gatewayOwnsAddress, type AppliedRouting,
} from '../dataplane/routing.js';
import { interfaceIpv4s } from '../host/ip-json.js';
import { MAX_POOL } from '../nat/mappings.js';
import { createRegistry } from '../metrics/registry.js';
import { bindHttpListeners, closeListeners, startHttp } from '../observe/http.js';
import { preflight } from '../host/preflight.js';
import { Observatory } from '../observe/observatory.js';
import { SNAP_HEADERS } from '../observe/pcapng.js';
import { listFlows } from '../conntrack/listing.js';
import { ipToString, cidrToString } from '../wire/addr.js';
import { IPPROTO } from '../wire/ipv4.js';
import { newApplyCounts, Replica } from '../nat/replica.js';
import { HaController, type HaPlane } from '../ha/controller.js';
import type { Registry } from 'prom-client';
import type { RouteHandler } from '../observe/http.js';
import type { LiveFeed } from '../observe/live.js';

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
  /** Apply a re-read configuration (SIGHUP); returns the settings that need a restart to change. */
  reload(next: RouterConfig): string[];
  /** Stop; with keepForRestart (and --state), save the flows and leave the gateway failed closed. */
  stop(reason?: string, opts?: { keepForRestart?: boolean }): Promise<void>;
  /** Resolves when the router has stopped. */
  readonly done: Promise<void>;
}

const SWEEP_INTERVAL_MS = 100;
const ADDRESS_POLL_MS = 2000;
/** The exact check (`ip -j addr`) runs when the quick one sees a change, and at least this often. */
const ADDRESS_FULL_CHECK_MS = 30_000;
const LOCAL_PORTS_POLL_MS = 5000;

/**
 * The privileged half: everything that changes the system. Resolve the public address, take over or
 * clean up an earlier run's set-up, open the TUN (with offloads), apply the routing. Undone by
 * teardown(), or left failed closed for a restart by keepForRestart().
 */
export interface SystemSetup {
  readonly tun: TunDevice;
  readonly vnetHdr: boolean;
  readonly tunMtu: number;
  readonly publicIp: number;
  readonly owned: boolean;
  readonly masquerade: boolean;
  /** Masquerade over every WAN address: the pool (publicIp first) follows the interface. */
  readonly dynamicPool: boolean;
  /** The dynamic pool's addresses at start, publicIp first (empty otherwise). */
  readonly publicPool: number[];
  /**
   * Poll the WAN addresses (masquerade); on a change, route the new addresses first, then tell
   * `onChange` (which flushes the flows of addresses that went), then stop routing the old ones.
   */
  followAddress(onChange: (primary: number, all: number[]) => void): () => void;
  /** Make the TUN outlive this process and leave the rules for the next run (false if impossible). */
  keepForRestart(): boolean;
  /** A gateway of a pair gained or lost the public address: answer ARP for it on the WAN, or stop. */
  setProxyArp(on: boolean): Promise<void>;
  /** Remove the routing (unless kept) and close the TUN. */
  teardown(): Promise<void>;
}

/**
 * The WAN addresses `--masquerade all` pairs hosts with: the interface's, primary first, without any
 * inside --internal (REQ-7: they cannot be told from a LAN host) and at most MAX_POOL of them.
 */
function wanPool(addrs: readonly number[], inside: (a: number) => boolean, log: Logger | null): number[] {
  const usable = addrs.filter((a) => !inside(a));
  if (log && usable.length < addrs.length) log.warn('WAN addresses inside --internal are not used', { skipped: addrs.filter(inside).map(ipToString).join(',') });
  if (log && usable.length > MAX_POOL) log.warn(`the WAN has more than ${MAX_POOL} addresses; the first ${MAX_POOL} are used`, { addresses: usable.length });
  return usable.slice(0, MAX_POOL);
}

/** The interface's IPv4 addresses as getifaddrs lists them (no flags, hence only a hint of change). */
function quickAddresses(iface: string): string {
  try {
    return (networkInterfaces()[iface] ?? []).filter((a) => a.family === 'IPv4').map((a) => a.address).join(',');
  } catch {
    return '';
  }
}

/** What is known once the TUN is open, before any routing sends it traffic (for SetupOptions.afterTunOpen). */
export interface OpenedTun {
  tun: TunDevice;
  vnetHdr: boolean;
  tunMtu: number;
  publicIp: number;
  owned: boolean;
  dynamicPool: boolean;
  publicPool: number[];
}

export interface SetupOptions {
  tun?: TunDevice;
  /**
   * Called with the open TUN before the routing is applied or adopted (--workers: the workers attach their
   * queues here, so that traffic routed into the TUN finds its readers). A throw undoes the start.
   */
  afterTunOpen?: (t: OpenedTun) => Promise<void>;
}

export async function setupSystem(cfg: RouterConfig, log: Logger, opts: SetupOptions = {}): Promise<SystemSetup> {
  const masquerade = cfg.publicIp === null;
  const dynamicPool = masquerade && cfg.masquerade === 'all';
  const inside = (a: number) => cfg.internal.some((c) => ((a & c.mask) >>> 0) === c.network);
  let publicIp: number;
  let publicPool: number[] = [];
  if (cfg.publicIp !== null) {
    publicIp = cfg.publicIp;
  } else {
    const addrs = await interfaceIpv4s(cfg.external, dynamicPool).catch((err: Error) => {
      throw new StartupError('NO_EXTERNAL', `cannot read the address of --external ${cfg.external}: ${err.message}`);
    });
    if (addrs.length === 0) {
      throw new StartupError('NO_EXTERNAL', `--external ${cfg.external} has no IPv4 address to masquerade behind (give one, or use --public-ip)`);
    }
    if (dynamicPool) publicPool = wanPool(addrs, inside, log);
    publicIp = publicPool[0] ?? addrs[0]!;
  }
  if (cfg.publicPool.some(inside) || inside(publicIp)) {
    // RFC 4787 REQ-7: an external address inside the internal network cannot be told apart from a LAN host.
    throw new StartupError('ADDRESS_CONFLICT', `the public address ${ipToString(publicIp)} lies inside --internal; choose prefixes that do not overlap the WAN`);
  }
  const owned = masquerade || (await gatewayOwnsAddress(publicIp));

  const tunMtu = await tunMtuFor(cfg.external, cfg.internal);
  const routingCfg: RoutingConfig = {
    tun: cfg.tun,
    internal: cfg.internal,
    externalIface: cfg.external,
    publicIp,
    ...(cfg.publicPool.length > 1 ? { extraPublicIps: cfg.publicPool.slice(1) } : {}),
    ...(dynamicPool ? { extraPublicIps: publicPool.slice(1), dynamicPool: true } : {}),
    publicIpOwned: owned,
    table: cfg.table,
    gatewayPorts: cfg.gatewayPorts,
    tunMtu,
    ...(cfg.haNode !== null ? { proxyArpByRole: true } : {}),
    ...(cfg.haSync && cfg.haPeer ? { syncPath: { local: cfg.haSync.address, peer: cfg.haPeer.address } } : {}),
  };
  const leftover = await detectLeftovers(cfg.tun, cfg.table);
  // A set-up left for a restart (or by a killed run) with the same LAN, WAN, TUN and tables is taken over
  // as it is: removing it first would open a moment in which LAN traffic meets no tunnat rule at all.
  // Not for a gateway of a pair: a killed active's set-up answers ARP for the public address, which this
  // run (a standby until it holds the address) must not do even for a moment once its TUN is up; it starts
  // clean instead (the removal turns forwarding off first, and its LAN hosts use the other gateway).
  const adoptable = leftover !== null && !leftover.foreign && cfg.haNode === null && canAdoptRouting(routingCfg, leftover);
  if (leftover && !adoptable) {
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
  let vnetHdr = false;
  try {
    if (opts.tun) tun = opts.tun;
    else {
      const native = NativeTun.open(cfg.tun, { vnetHdr: cfg.offload, multiQueue: cfg.workers > 1 });
      if (cfg.offload) vnetHdr = enableOffloads(native, log);
      tun = native;
    }
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

  if (opts.afterTunOpen) {
    try {
      await opts.afterTunOpen({ tun, vnetHdr, tunMtu, publicIp, owned, dynamicPool, publicPool });
    } catch (err) {
      tun.close();
      throw err;
    }
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
    if (adoptable) {
      applied = await adoptRouting(routingCfg, leftover!, (m: string) => log.info(m));
      // The device may be persistent from the restart; from now on it goes when this run ends normally.
      if (tun instanceof NativeTun) tun.setPersist(false);
    }
    if (!applied) applied = await applyRouting(routingCfg, (m: string) => log.debug(m));
  } catch (err) {
    tun.close();
    process.off('exit', onExit);
    throw err;
  }

  let current = dynamicPool ? publicPool : [publicIp];
  return {
    tun,
    vnetHdr,
    tunMtu,
    publicIp,
    owned,
    masquerade,
    dynamicPool,
    publicPool,
    followAddress(onChange) {
      let checking = false;
      // The quick look (getifaddrs, in process) costs no fork: spawning `ip` every 2 s write-protects every
      // page of the process for copy-on-write, and the data plane then takes a page fault for each page it
      // writes next. `ip -j` runs only when the quick look sees the addresses change, and every 30 s.
      let lastSeen = '';
      let lastFull = performance.now();
      const timer = setInterval(() => {
        if (checking) return;
        const seen = quickAddresses(cfg.external);
        if (seen === lastSeen && performance.now() - lastFull < ADDRESS_FULL_CHECK_MS) return;
        checking = true;
        void (async () => {
          try {
            // No address at all (a PPP link reconnecting): keep the last ones until the link is back.
            const found = await interfaceIpv4s(cfg.external, dynamicPool);
            lastSeen = seen;
            lastFull = performance.now();
            const next = dynamicPool ? wanPool(found, inside, null) : found.slice(0, 1);
            const same = next.length === current.length && next.every((a, i) => a === current[i]);
            if (next.length > 0 && !same && applied) {
              // New addresses are routed before the data plane uses them; the old ones stay routed until
              // the data plane has dropped their flows, then go.
              applied = await followAddresses(applied, next[0]!, [...new Set([...next.slice(1), ...current])].filter((a) => a !== next[0]));
              current = next;
              onChange(next[0]!, next);
              applied = await followAddresses(applied, next[0]!, next.slice(1));
            }
          } catch (err) {
            log.warn('could not read the external address', { error: (err as Error).message });
          } finally {
            checking = false;
          }
        })();
      }, ADDRESS_POLL_MS);
      timer.unref();
      return () => clearInterval(timer);
    },
    async setProxyArp(on: boolean) {
      if (applied) applied = await setProxyArp(applied, on, (m: string) => log.debug(m));
    },
    keepForRestart() {
      if (!applied || !(tun instanceof NativeTun)) return false;
      try {
        // Restart without loss: the TUN outlives this process (its routes stay, and what is routed into it
        // while nobody reads is dropped), and the rules stay for the next run to adopt.
        tun.setPersist(true);
        keepForRestart(applied);
        applied = null;
        return true;
      } catch (err) {
        log.error('could not keep the set-up for a restart; removing it instead', { error: (err as Error).message });
        try {
          tun.setPersist(false);
        } catch {
          // The device goes with the process anyway.
        }
        return false;
      }
    },
    async teardown() {
      // The device first: from then on its routes are gone (or, kept for a restart, ignored for want of a
      // carrier), so LAN traffic meets the fail-closed route and the gateway's own traffic the local and
      // main tables, instead of a TUN that nobody reads any more while the rules are removed.
      tun.close();
      if (applied) {
        try {
          await removeRouting(applied, (m: string) => log.debug(m));
        } catch (err) {
          log.error('removing the routing set-up failed; the next start will clean it', { error: (err as Error).message });
        }
        applied = null;
      }
      process.off('exit', onExit);
    },
  };
}

/** What the data plane needs from the system half (also what a privilege-separated child is told). */
export interface DataplaneBase {
  tun: TunDevice;
  vnetHdr: boolean;
  tunMtu: number;
  publicIp: number;
  owned: boolean;
  /** Masquerade over every WAN address: the pool at start (publicIp first), which then follows the WAN. */
  dynamicPool?: boolean;
  publicPool?: number[];
  clock?: () => number;
  /** The listeners of cfg.http/httpSocket, bound before the host was changed (see bindHttpListeners). */
  httpHandles: Server[];
}

export interface RunningDataplane {
  readonly nat: Translator;
  readonly loop: Dataplane;
  /** Masquerade: the WAN's addresses changed (`all` is the pool, or [primary] without one). */
  setPublicAddresses(primary: number, all: readonly number[]): void;
  reload(next: RouterConfig): string[];
  /** Stop the loop; with `saveTo`, write the flow table there first. Closes HTTP and taps, not the TUN. */
  close(saveTo: string | null): Promise<void>;
  /** A gateway of a pair (--ha-node): its controller, started once the routing is in place (startHa). */
  ha: HaController | null;
  /** `opts.key`: the pair's key, when this process may not read --ha-key itself (--user). */
  startHa(setProxyArp: (on: boolean) => Promise<void>, opts?: { key?: Uint8Array }): Promise<void>;
}

/** Every few ms, off the packet path, what changed in the flows goes to the standby (replica.ts). */
export const HA_DRAIN_MS = 10;

/**
 * The data plane of one loop as a gateway of a pair sees it (HaPlane): the translator's standby switch, its
 * change log drained every HA_DRAIN_MS, records applied straight into its tables.
 */
export function singlePlane(nat: Translator, replica: Replica | null, clock: () => number): HaPlane & { stop(): void } {
  const counts = newApplyCounts();
  const plane: HaPlane & { stop(): void } = {
    onChanges: null,
    onLost: null,
    setStandby(standby: boolean) {
      if (!standby && nat.standby) replica?.promote(clock());
      nat.standby = standby;
      if (replica) replica.logging = !standby;
    },
    apply(records: Uint8Array) {
      replica?.apply(records, clock(), counts);
    },
    dump: async (each) => {
      if (replica) each(replica.dump(clock()));
      return true;
    },
    flowCount: () => nat.flows.size,
    applied: () => ({ ...counts }),
    healthy: async () => true,
    stop: () => clearInterval(timer),
  };
  const timer = setInterval(() => replica?.flush(clock(), (recs) => plane.onChanges?.(recs), () => plane.onLost?.()), HA_DRAIN_MS);
  return plane;
}

/** The unprivileged half: translator, loop, taps, HTTP. Touches nothing outside the process but its TUN fd. */
export async function startDataplane(cfg: RouterConfig, log: Logger, base: DataplaneBase): Promise<RunningDataplane> {
  tuneJit();
  const clock = base.clock ?? (() => performance.now());
  const { tun, vnetHdr, tunMtu } = base;
  const nat = buildTranslator(cfg, base);
  if (cfg.algFtp.length > 0) enableFtpAlg(nat, cfg.algFtp);
  const loop = new Dataplane(tun, nat, {
    batch: cfg.batch,
    slotSize: vnetHdr ? GSO_SLOT_SIZE : Math.max(SLOT_SIZE, tunMtu),
    clock,
    vnetHdr,
    busyPollUs: cfg.busyPoll,
  });
  // Per-host accounting and loop histograms from the first packet; pcap before the loop starts.
  const observe = new Observatory(nat, loop, { log, clock, tunName: cfg.tun });
  if (cfg.pcap) {
    observe.startPcap(cfg.pcap, {
      snaplen: cfg.pcapSnaplen === 'headers' ? SNAP_HEADERS : cfg.pcapSnaplen,
      maxFileBytes: cfg.pcapSize * 1_000_000,
      files: cfg.pcapFiles,
    });
  }

  if (cfg.stateFile && existsSync(cfg.stateFile)) {
    try {
      const r = restoreSnapshot(nat, cfg.stateFile, cfg.internal.map(cidrToString), clock());
      if (r.reason) log.warn('saved flows not restored', { file: cfg.stateFile, reason: r.reason, flows: r.skipped });
      else log.info('flows restored from the state file', { file: cfg.stateFile, restored: r.restored, skipped: r.skipped });
    } catch (err) {
      log.warn('state file ignored', { file: cfg.stateFile, error: (err as Error).message });
    }
    // A snapshot is used once: after a later crash it would describe flows long gone.
    rmSync(cfg.stateFile, { force: true });
  }

  const refreshLocalPorts = localPortsFollower(nat);
  // A gateway of a pair: the change log (with a peer to send it to) and the plane its controller drives.
  const replica = cfg.haNode !== null && cfg.haPeer !== null ? new Replica(nat) : null;
  const plane = cfg.haNode !== null ? singlePlane(nat, replica, clock) : null;

  loop.start();
  const sweepBudget = Math.max(1024, Math.ceil(cfg.maxFlows / 50));
  const timers: NodeJS.Timeout[] = [];
  // A standby's flows are the active's: they end when the active says so, not by this gateway's timers.
  timers.push(setInterval(() => nat.standby || nat.sweep(clock(), sweepBudget), SWEEP_INTERVAL_MS));
  timers.push(setInterval(refreshLocalPorts, LOCAL_PORTS_POLL_MS));
  timers.forEach((t) => t.unref());

  const registry = createRegistry(nat, loop, { hosts: observe.hosts, loopMetrics: observe.loopMetrics, observe, tunName: cfg.tun });
  const handlers: Record<string, RouteHandler> = { ...observe.handlers() };
  // Serving sockets that already listen cannot fail, so a running data plane always has its endpoint.
  const closeHttp = await startHttp(
    { registry, conntrack: () => listFlows(nat.flows, clock()), handlers },
    { tcp: null, unixPath: null, handles: base.httpHandles },
  );

  let ha: HaController | null = null;
  return {
    get ha() {
      return ha;
    },
    async startHa(setArp: (on: boolean) => Promise<void>, opts: { key?: Uint8Array } = {}) {
      if (plane === null) return;
      ha = await HaController.start(cfg, log, plane, setArp, opts);
      attachHa(ha, registry, handlers, observe.live);
    },
    nat,
    loop,
    setPublicAddresses(primary: number, all: readonly number[]) {
      const old = nat.publicAddresses;
      const flushed = nat.dynamicPool ? nat.setPublicAddresses(primary, all) : nat.setPublicAddress(primary);
      log.info('external address changed; new flows use the new address', { from: old.map(ipToString).join(','), to: nat.publicAddresses.map(ipToString).join(','), flushed });
    },
    reload(next: RouterConfig): string[] {
      const restartNeeded = RESTART_FIELDS.filter((k) => JSON.stringify(next[k]) !== JSON.stringify(cfg[k]));
      nat.reconfigure({
        timeouts: next.timeouts,
        egress: next.allowEgress ? new EgressPolicy(next.allowEgress) : null,
        egressReject: next.egressReject,
        maxFlowsPerHost: next.maxFlowsPerHost,
        icmpOnExhaustion: next.icmpErrors,
        forwards: next.forwards,
      });
      log.level = next.logLevel;
      for (const k of LIVE_FIELDS) (cfg as unknown as Record<string, unknown>)[k] = next[k];
      log.info('configuration reloaded; flows kept', {
        flows: nat.flows.size,
        ...(restartNeeded.length > 0 ? { needsRestart: restartNeeded.join(',') } : {}),
      });
      return restartNeeded;
    },
    async close(saveTo: string | null) {
      await ha?.close();
      plane?.stop();
      timers.forEach((t) => clearInterval(t));
      loop.stop();
      if (saveTo) {
        writeSnapshot(saveTo, takeSnapshot(nat, cfg.internal.map(cidrToString), clock()));
        log.info('flows saved', { file: saveTo, flows: nat.flows.size });
      }
      await observe.close().catch(() => {});
      await closeHttp().catch(() => {});
    },
  };
}

/** A pair's controller on a data plane's endpoint: the tunnat_ha_* metrics and GET /ha. */
export function attachHa(ha: HaController, registry: Registry, handlers: Record<string, RouteHandler>, live: LiveFeed): void {
  ha.register(registry);
  handlers['/ha'] = ha.handler;
  live.decorate = (snap) => {
    snap.ha = ha.liveSummary();
  };
}

/** The translator a data plane runs: the whole port space, or one worker's slice of it (--workers). */
export function buildTranslator(
  cfg: RouterConfig,
  base: Pick<DataplaneBase, 'publicIp' | 'owned' | 'dynamicPool' | 'publicPool'>,
  worker: { index: number; count: number } | null = null,
  hostCounts?: HostCounts,
): Translator {
  const nat = new Translator({
    internal: cfg.internal,
    publicIp: base.publicIp,
    // A static pool (its first address is base.publicIp); masquerade has the one address it follows,
    // or with --masquerade all every address of the WAN.
    ...(cfg.publicPool.length > 1 ? { publicPool: cfg.publicPool, snat: cfg.snat } : {}),
    ...(base.dynamicPool ? { publicPool: base.publicPool ?? [base.publicIp], dynamicPool: true } : {}),
    publicIpOwned: base.owned,
    ports: cfg.ports,
    excludedPorts: [cfg.gatewayPorts],
    // Workers share the table limit: each holds its part of it, so together they never exceed it.
    maxFlows: worker ? Math.ceil(cfg.maxFlows / worker.count) : cfg.maxFlows,
    timeouts: cfg.timeouts,
    seed: randomInt(0, 0x7fffffff),
    rng: Math.random,
    filtering: cfg.filtering,
    forwards: cfg.forwards,
    egress: cfg.allowEgress ? new EgressPolicy(cfg.allowEgress) : null,
    egressReject: cfg.egressReject,
    // Workers count a host's flows in shared memory (host-counts.ts): the limit is the host's, across them.
    maxFlowsPerHost: cfg.maxFlowsPerHost,
    ...(hostCounts ? { hostCounts } : {}),
    icmpOnExhaustion: cfg.icmpErrors,
    ...(worker ? { slice: worker } : {}),
    // A gateway of a pair: new ports in its half; TCP picked up from the LAN side after a failover; and a
    // standby until its controller finds the public address on the WAN.
    ...(cfg.haNode !== null ? { haNode: cfg.haNode, tcpLoose: true } : {}),
  });
  nat.standby = cfg.haNode !== null;
  return nat;
}

/**
 * The gateway's own listening sockets are never handed out as mappings, on any public address: returns
 * the refresh to call now and then (it reads /proc once for every public address).
 */
export function localPortsFollower(nat: Translator): () => void {
  let localBlocked = new Map<number, LocalPorts>();
  const refresh = () => {
    const next = readLocalPorts(nat.publicAddresses);
    for (const [addr, now] of next) {
      const before = localBlocked.get(addr);
      for (const [proto, name] of [[IPPROTO.TCP, 'tcp'], [IPPROTO.UDP, 'udp']] as const) {
        const pool = nat.mappings.poolAt(proto, addr)!;
        if (before) for (const p of before[name]) if (!now[name].has(p)) pool.setBlocked(p, BLOCK.LOCAL, false);
        for (const p of now[name]) pool.setBlocked(p, BLOCK.LOCAL, true);
      }
    }
    localBlocked = next;
  };
  refresh();
  return refresh;
}

/** Both halves in one process: the usual `tunnat run`. */
export async function startRouter(cfg: RouterConfig, log: Logger, opts: { tun?: TunDevice; clock?: () => number } = {}): Promise<RunningRouter> {
  // Everything that can refuse this start does so before the host is touched: nothing to undo.
  await preflight(cfg);
  const httpHandles = await bindHttpListeners({ tcp: cfg.http, unixPath: cfg.httpSocket });
  let sys: SystemSetup;
  try {
    sys = await setupSystem(cfg, log, opts);
  } catch (err) {
    await closeListeners(httpHandles);
    throw err;
  }
  let dp: RunningDataplane;
  try {
    dp = await startDataplane(cfg, log, { ...sys, tun: sys.tun, httpHandles, ...(opts.clock ? { clock: opts.clock } : {}) });
  } catch (err) {
    await closeListeners(httpHandles);
    await sys.teardown();
    throw err;
  }
  const stopFollowing = sys.masquerade ? sys.followAddress((primary, all) => dp.setPublicAddresses(primary, all)) : () => {};
  try {
    await dp.startHa((on) => sys.setProxyArp(on));
  } catch (err) {
    await dp.close(null);
    await closeListeners(httpHandles);
    await sys.teardown();
    throw err;
  }
  logRunning(cfg, log, sys);

  let resolveDone!: () => void;
  const done = new Promise<void>((r) => (resolveDone = r));
  let stopping: Promise<void> | null = null;
  const stop = (reason = 'stop', o: { keepForRestart?: boolean } = {}) => {
    if (stopping) return stopping;
    stopping = (async () => {
      log.info('tunnat stopping', { reason, flows: dp.nat.flows.size });
      stopFollowing();
      const keep = o.keepForRestart === true && cfg.stateFile !== null;
      let saved = false;
      try {
        await dp.close(keep ? cfg.stateFile : null);
        saved = keep;
      } catch (err) {
        log.error('could not save the flows', { error: (err as Error).message });
      }
      await leaveSystem(sys, saved, log);
      resolveDone();
    })();
    return stopping;
  };

  return { nat: dp.nat, loop: dp.loop, publicIp: () => dp.nat.publicAddress, stop, done, reload: (n) => dp.reload(n) };
}

/** The last step of a stop: leave the set-up failed closed for a restart (when the flows were saved), or remove it. */
export async function leaveSystem(sys: SystemSetup, saved: boolean, log: Logger): Promise<void> {
  if (saved && sys.keepForRestart()) {
    log.info('the gateway stays failed closed until the next `tunnat run --state` (or `tunnat down`)');
  }
  await sys.teardown();
  log.info('tunnat stopped');
}

export function logRunning(cfg: RouterConfig, log: Logger, sys: SystemSetup, extra: Record<string, unknown> = {}): void {
  log.info('tunnat running', {
    tun: cfg.tun,
    internal: cfg.internal.map(cidrToString).join(','),
    external: cfg.external,
    publicIp: ipToString(sys.publicIp),
    mode: sys.masquerade ? 'masquerade' : 'snat',
    tunMtu: sys.tunMtu,
    ports: cfg.ports.join('-'),
    http: cfg.http ? `${cfg.http.host}:${cfg.http.port}` : 'off',
    ...extra,
  });
}

/** Settings SIGHUP applies to the running router. */
const LIVE_FIELDS = ['timeouts', 'allowEgress', 'egressReject', 'maxFlowsPerHost', 'icmpErrors', 'forwards', 'logLevel'] as const;
/** Settings that only a restart can change (the routing, the TUN, the table sizes, the listeners). */
export const RESTART_FIELDS = [
  'internal', 'external', 'publicIp', 'masquerade', 'tun', 'ports', 'gatewayPorts', 'http', 'httpSocket', 'maxFlows', 'table', 'batch', 'busyPoll', 'workers',
  'engine', 'backend', 'filtering', 'offload', 'pcap', 'pcapSnaplen', 'pcapSize', 'pcapFiles', 'stateFile',
  'haNode', 'haSync', 'haPeer', 'haKey',
] as const satisfies readonly (keyof RouterConfig)[];
