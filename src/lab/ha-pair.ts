import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { keepalivedConf, type KeepalivedOptions } from '../ha/keepalived.js';
import { conntrackdConf, haNotifyScript } from '../kernel/ha.js';
import { startConntrackd } from './kernel-ha.js';
import type { HaStatus } from '../ha/controller.js';
import { runSync } from '../util/exec.js';
import type { Cleanup } from './cleanup.js';
import type { HaLab } from './ha-topology.js';
import { startKeepalived, type KeepalivedHandle } from './keepalived.js';
import { spawnIn, type NsProcess } from './process.js';
import { defaultCliPath, repoRoot, socketPathFor, startRouter, unixGet, type RouterHandle } from './router.js';
import type { FailoverReport } from './failover-peer.js';

/**
 * tunnat as a gateway pair in the pair lab (ha-topology.ts): a tunnat on each gateway with --ha-node 0/1,
 * the flow-state sync over the sync link (or none), and keepalived moving the shared addresses with the
 * configuration `tunnat ha keepalived-conf` writes. Used by `tunnat lab --ha`, the e2e tests and
 * `npm run bench:failover`; also the traffic that runs through the pair while a gateway fails
 * (failover-peer.ts) and its report.
 */

export const PAIR_TUN = 'tnha0';
export const SYNC_PORT = 7400;
export const PEER_PORT = 7000;
/** Idle connections a failover round may keep open (the rounds' port ranges must not overlap). */
export const MAX_IDLE = 480;

export interface PairOptions {
  lab: HaLab;
  cleanup: Cleanup;
  /** Replicate flow state between the two (default true); false: roles only, as a comparison. */
  sync?: boolean;
  /** --workers for each tunnat (default: tunnat's own default). */
  workers?: number;
  /** More flags for each tunnat (e.g. `--user nobody`). */
  extraArgs?: readonly string[];
  cliPath?: string;
  log?: (line: string) => void;
}

export interface PairGateway {
  index: 0 | 1;
  name: 'a' | 'b';
  netns: string;
  socketPath: string;
  /** The running tunnat, or null after killRouter / stopRouter. */
  router: RouterHandle | null;
  keepalived: KeepalivedHandle;
  /** (Re)start tunnat here and wait until it answers. */
  startRouter(): Promise<void>;
  /** SIGKILL tunnat (the crash a pair must survive). */
  killRouter(): void;
  stopRouter(): Promise<void>;
  status(): Promise<HaStatus>;
}

export interface Pair {
  /** What translates: tunnat with its sync (or without), or the kernel with conntrackd (or without). */
  engine: 'userspace' | 'kernel';
  sync: boolean;
  /** tunnat on each gateway (the userspace engine only). */
  gateways: [PairGateway, PairGateway];
  /** Whether gateway `i` translates now: tunnat says it is active; the kernel's holds the public address. */
  isActive(i: 0 | 1): Promise<boolean>;
  /** Which gateway's tunnat says it is active (null: none, or both). */
  active(): Promise<0 | 1 | null>;
  /**
   * Wait until gateway `i` is active and its peer is a standby that has applied a full resync (more than
   * `applied` of them: a gateway back from a failure applies a new one).
   */
  waitSynced(i: 0 | 1, timeoutMs?: number, applied?: number): Promise<void>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** keepalived's configuration for gateway `index` of the lab's pair: A first (priority 150), both on VRRP id 51. */
function pairKeepalived(
  lab: HaLab, index: 0 | 1, engine: string, what: Pick<KeepalivedOptions, 'trackInterface' | 'checkScript' | 'notify'>,
): string {
  const g = lab.gateways[index];
  return keepalivedConf({
    name: `${engine}-${lab.id}-${g.name}`,
    lanIf: g.lanDev,
    wanIf: g.wanDev,
    lanVip: lab.lanVipCidr,
    wanVip: lab.wanVipCidr,
    vrid: 51,
    priority: index === 0 ? 150 : 100,
    ...what,
  });
}

export async function startPair(o: PairOptions): Promise<Pair> {
  const { lab, cleanup } = o;
  const log = o.log ?? (() => {});
  const cliPath = o.cliPath ?? defaultCliPath();
  const sync = o.sync ?? true;
  const dir = mkdtempSync(join(tmpdir(), 'tunnat-pair-'));
  cleanup.defer({ label: `remove ${dir}`, sync: () => rmSync(dir, { recursive: true, force: true }) });
  const keyFile = join(dir, 'ha.key');
  writeFileSync(keyFile, randomBytes(32).toString('base64') + '\n', { mode: 0o600 });

  const confs: string[] = [];
  const make = (index: 0 | 1): PairGateway => {
    const g = lab.gateways[index];
    const socketPath = socketPathFor(`${lab.id}-${g.name}`);
    // A killed tunnat leaves its routing; the next start removes it, and so does this, last.
    cleanup.defer({
      label: `tunnat down in ${g.netns}`,
      sync: () => void runSync([process.execPath, cliPath, 'down', '--tun', PAIR_TUN], { netns: g.netns, allowFail: true }),
    });
    const args = [
      '--public-ip', lab.wanVip, '--tun', PAIR_TUN, '--ha-node', String(index),
      ...(sync ? ['--ha-sync', `${g.syncAddress}:${SYNC_PORT}`, '--ha-peer', `${g.peerSyncAddress}:${SYNC_PORT}`, '--ha-key', keyFile] : []),
      ...(o.workers !== undefined ? ['--workers', String(o.workers)] : []),
      ...(o.extraArgs ?? []),
    ];
    confs[index] = pairKeepalived(lab, index, 'tunnat', {
      trackInterface: PAIR_TUN,
      checkScript: `${process.execPath} ${cliPath} ha check --http unix:${socketPath}`,
    });
    const gw: PairGateway = {
      index,
      name: g.name,
      netns: g.netns,
      socketPath,
      router: null,
      keepalived: null as unknown as KeepalivedHandle,
      async startRouter() {
        gw.router = await startRouter({
          engine: 'userspace',
          netns: g.netns,
          internal: lab.lanSubnet,
          external: g.wanDev,
          id: `${lab.id}-${g.name}`,
          socketPath,
          cleanup,
          extraArgs: args,
          cliPath,
          log,
        });
      },
      killRouter() {
        gw.router?.process?.signal('SIGKILL');
        gw.router = null;
      },
      async stopRouter() {
        await gw.router?.stop();
        gw.router = null;
      },
      async status() {
        const r = await unixGet(socketPath, '/ha', 2000);
        return JSON.parse(r.body) as HaStatus;
      },
    };
    return gw;
  };
  const gws: [PairGateway, PairGateway] = [make(0), make(1)];
  const startKa = (gw: PairGateway) => {
    gw.keepalived = startKeepalived({ netns: gw.netns, conf: confs[gw.index]!, label: `ka-${lab.id}-${gw.name}`, cleanup, log });
  };

  // A first: it holds the addresses before B starts, whatever the priorities say (no preemption).
  log('starting tunnat and keepalived on gateway A');
  await gws[0].startRouter();
  startKa(gws[0]);
  await gws[0].keepalived.waitForState('MASTER', 15_000);
  log('starting tunnat and keepalived on gateway B');
  await gws[1].startRouter();
  startKa(gws[1]);
  await gws[1].keepalived.waitForState('BACKUP', 15_000);

  const pair: Pair = {
    engine: 'userspace',
    sync,
    gateways: gws,
    isActive: async (i) => (await gws[i].status().catch(() => null))?.role === 'active',
    async active() {
      const roles = await Promise.all(gws.map((g) => (g.router ? g.status().then((s) => s.role).catch(() => null) : null)));
      const act = roles.map((r, i) => (r === 'active' ? i : -1)).filter((i) => i >= 0);
      return act.length === 1 ? (act[0] as 0 | 1) : null;
    },
    async waitSynced(i: 0 | 1, timeoutMs = 15_000, applied = 0) {
      const deadline = Date.now() + timeoutMs;
      let last = '';
      for (;;) {
        try {
          const [a, b] = [await gws[i].status(), await gws[1 - i]!.status()];
          last = `${gws[i].name}: ${a.role}; ${gws[1 - i]!.name}: ${b.role}, resyncs applied ${b.sync?.stats.resyncsApplied ?? '-'}, flows ${b.flows}/${a.flows}`;
          const synced = !sync || (b.sync !== null && b.sync.stats.resyncsApplied > applied && b.sync.resync.appliedEpoch > 0 && a.sync?.lag.unacked === 0 && a.sync.peer.alive);
          if (a.role === 'active' && b.role === 'standby' && synced) return;
        } catch (err) {
          last = (err as Error).message;
        }
        if (Date.now() > deadline) throw new Error(`the pair did not settle with ${gws[i].name} active and synced within ${timeoutMs} ms (${last})`);
        await sleep(100);
      }
    },
  };
  await pair.waitSynced(0);
  return pair;
}

/** The two ends of the failover traffic (failover-peer.ts). */
export interface FailoverTraffic {
  /** Sources the server saw, as ADDR:PORT, per protocol. */
  sources(): { udp: string[]; tcp: string[] };
  /** Outage of the UDP stream so far: the echo gaps over 100 ms, as the client prints them. */
  recovered(): number[];
  /** Stop the client: it checks every idle connection and reports. */
  finish(): Promise<FailoverReport>;
}

// The compiled script (the tests run this file from src/, where there is none).
const PEER_SCRIPT = join(repoRoot(), 'dist', 'src', 'lab', 'failover-peer.js');

export async function startTraffic(
  o: { lab: HaLab; cleanup: Cleanup; idle?: number; udpPort?: number; tcpBase?: number; serverPort?: number; log?: (l: string) => void },
): Promise<FailoverTraffic> {
  const { lab, cleanup } = o;
  const port = o.serverPort ?? PEER_PORT;
  const server: NsProcess = spawnIn(lab.inet.netns, [process.execPath, PEER_SCRIPT, 'server', String(port)], { label: 'failover server', cleanup });
  await server.waitForLine(/^listening/, 10_000);
  const host = lab.lanHosts[0]!;
  const client = spawnIn(
    host.netns,
    [process.execPath, PEER_SCRIPT, 'client', lab.inet.address, String(port), String(o.idle ?? 200), String(o.udpPort ?? 41000), String(o.tcpBase ?? 42000)],
    { label: 'failover client', cleanup },
  );
  await client.waitForLine(/^ready/, 30_000);
  const grep = (re: RegExp) => server.output().split('\n').flatMap((l) => (re.exec(l)?.[1] ? [re.exec(l)![1]!] : []));
  return {
    sources: () => ({ udp: grep(/^udp-source (\S+)/), tcp: grep(/^tcp-source (\S+)/) }),
    recovered: () => client.output().split('\n').flatMap((l) => (/^recovered (\d+)/.exec(l) ? [Number(/^recovered (\d+)/.exec(l)![1])] : [])),
    async finish() {
      client.signal('SIGUSR2');
      const line = await client.waitForLine(/^report /, 15_000);
      await client.exited;
      await server.stop();
      return JSON.parse(line.slice('report '.length)) as FailoverReport;
    },
  };
}

/** How the active gateway fails: its tunnat killed (SIGKILL), stopped (SIGTERM), or the whole gateway gone. */
export type FailureKind = 'kill' | 'stop' | 'gone';

export interface FailoverResult {
  kind: FailureKind;
  /** The gateway that failed, and the one active after. */
  from: 0 | 1;
  to: 0 | 1 | null;
  /** The longest silence of the UDP stream (a datagram every 10 ms, echoed): the outage as a host sees it. */
  outageMs: number;
  /** The longest silence of the TCP connection that sends a line every 50 ms. */
  tcpGapMs: number;
  /** Public endpoints the remote saw the UDP stream come from (one: the mapping lived through it). */
  udpSources: string[];
  report: FailoverReport;
  /** Every connection lived through it: the idle ones answer, the busy one lost nothing and saw no reset. */
  connectionsKept: boolean;
}

/**
 * One failover under traffic: the stream and the connections start (and are at least `settleMs` old when
 * it happens), the active gateway fails as `kind` says, the other takes over, the traffic is checked, and
 * the failed gateway comes back as the standby (its tunnat restarted, or its cables back) and is synced.
 */
export async function failoverOnce(
  pair: Pair,
  lab: HaLab,
  cleanup: Cleanup,
  kind: FailureKind,
  o: { idle?: number; round?: number; settleMs?: number; afterMs?: number; log?: (l: string) => void } = {},
): Promise<FailoverResult> {
  const from = await pair.active();
  if (from === null) throw new Error('no gateway of the pair is active');
  const round = o.round ?? 0;
  // Fresh ports each round, on both ends: the last round's connections may linger on the host (TIME_WAIT)
  // and, when a failover broke them, on the remote (which never heard of it).
  if ((o.idle ?? 200) > MAX_IDLE) throw new RangeError(`at most ${MAX_IDLE} idle connections (a round takes idle + 2 ports of its own 500)`);
  const traffic = await startTraffic({
    lab, cleanup, idle: o.idle ?? 200, udpPort: 41000 + (round % 50), tcpBase: 42000 + (round % 40) * 500, serverPort: PEER_PORT + 2 * (round % 200),
  });
  await sleep(o.settleMs ?? 1200);
  const failed = pair.gateways[from];
  if (kind !== 'gone' && pair.engine !== 'userspace') throw new Error(`${kind} is a failure of tunnat: the kernel engine has no process`);
  if (kind === 'kill') failed.killRouter();
  else if (kind === 'stop') await failed.stopRouter();
  else await lab.gatewayGone(from, true);
  const other = (1 - from) as 0 | 1;
  const deadline = Date.now() + 10_000;
  while (!(await pair.isActive(other))) {
    if (Date.now() > deadline) break;
    await sleep(20);
  }
  await sleep(o.afterMs ?? 1500);
  const report = await traffic.finish();
  const to = await pair.active();
  // Back as the standby, synced anew: a restarted tunnat from nothing, one whose cables are back by a new
  // full resync (it asked for one when it lost the active).
  const before = kind === 'gone' && pair.engine === 'userspace' ? ((await failed.status().catch(() => null))?.sync?.stats.resyncsApplied ?? 0) : 0;
  if (kind === 'gone') await lab.gatewayGone(from, false);
  else await failed.startRouter();
  if (to !== null) await pair.waitSynced(to, 30_000, before);
  const result: FailoverResult = {
    kind,
    from,
    to,
    outageMs: report.udp.maxGapMs,
    tcpGapMs: report.active.maxGapMs,
    udpSources: traffic.sources().udp,
    report,
    connectionsKept:
      report.idle.ok === report.idle.count && report.idle.errors.length === 0 && report.active.error === null &&
      report.active.outOfOrder === 0 && report.active.echoed === report.active.sent,
  };
  o.log?.(
    `${kind} ${lab.gateways[from].name}: outage ${result.outageMs} ms (TCP ${result.tcpGapMs} ms), ${report.idle.ok}/${report.idle.count} idle connections kept, ` +
      `busy one ${report.active.echoed}/${report.active.sent} lines${report.active.error ? `, error: ${report.active.error}` : ''}, UDP from ${result.udpSources.join(' ')}`,
  );
  return result;
}

/**
 * The kernel engine as a pair, for comparison on the same failures: on each gateway the kernel's SNAT to
 * the shared public address (`tunnat kernel apply --ha …`), conntrackd replicating the kernel's table
 * over the sync link (FTFW; `sync` false: none), and keepalived with the notify script that commits
 * conntrackd's cache into the kernel when the gateway becomes MASTER (src/kernel/ha.ts). Every file is
 * private to this lab.
 */
export async function startKernelPair(o: { lab: HaLab; cleanup: Cleanup; sync?: boolean; cliPath?: string; log?: (l: string) => void }): Promise<Pair> {
  const { lab, cleanup } = o;
  const log = o.log ?? (() => {});
  const cliPath = o.cliPath ?? defaultCliPath();
  const sync = o.sync ?? true;
  const kas: KeepalivedHandle[] = [];
  const start = async (index: 0 | 1): Promise<void> => {
    const g = lab.gateways[index];
    const dir = mkdtempSync(join(tmpdir(), `tunnat-kpair-${g.name}-`));
    cleanup.defer({ label: `remove ${dir}`, sync: () => rmSync(dir, { recursive: true, force: true }) });
    // The kernel's NAT, SNAT to the shared address; --ha leaves the address to keepalived.
    const haArgs = [
      '--ha', dir, '--ha-node', String(index), '--ha-lan-if', g.lanDev, '--ha-lan-vip', lab.lanVipCidr, '--ha-wan-vip', lab.wanVipCidr,
      '--ha-sync-if', g.syncDev, '--ha-sync-local', g.syncAddress, '--ha-sync-peer', g.peerSyncAddress,
    ];
    cleanup.defer({
      label: `tunnat kernel remove in ${g.netns}`,
      sync: () => void runSync([process.execPath, cliPath, 'kernel', 'remove'], { netns: g.netns, allowFail: true }),
    });
    const applied = runSync([process.execPath, cliPath, 'kernel', 'apply', '--internal', lab.lanSubnet, '--external', g.wanDev, '--public-ip', lab.wanVip, ...haArgs], { netns: g.netns, allowFail: true });
    if (applied.exitCode !== 0) throw new Error(`tunnat kernel apply failed in ${g.netns}: ${applied.stderr}`);
    let notify: { master: string; backup: string; fault: string } | undefined;
    let check: string | null = null;
    if (sync) {
      const cd = await startConntrackd({
        netns: g.netns,
        label: `conntrackd ${lab.id}-${g.name}`,
        cleanup,
        conf: (files) =>
          conntrackdConf({
            node: index, syncIf: g.syncDev, syncLocal: g.syncAddress, syncPeer: g.peerSyncAddress,
            socketPath: files.socketPath, lockFile: files.lockFile, logFile: files.logFile,
            ignore: [lab.lanVip, lab.wanVip, g.lanAddress, g.wanAddress],
          }),
      });
      const script = join(dir, 'tunnat-ha-notify');
      writeFileSync(script, haNotifyScript({ conntrackd: '/usr/sbin/conntrackd', conf: cd.files.conf }), { mode: 0o755 });
      notify = { master: `${script} master`, backup: `${script} backup`, fault: `${script} fault` };
      check = `/usr/sbin/conntrackd -C ${cd.files.conf} -s`;
    }
    const conf = pairKeepalived(lab, index, 'kernel', { trackInterface: null, checkScript: check, ...(notify ? { notify } : {}) });
    kas[index] = startKeepalived({ netns: g.netns, conf, label: `ka-${lab.id}-${g.name}`, cleanup, log });
  };
  log(`starting the kernel engine${sync ? ' with conntrackd' : ''} and keepalived on gateway A`);
  await start(0);
  await kas[0]!.waitForState('MASTER', 15_000);
  log(`starting the kernel engine${sync ? ' with conntrackd' : ''} and keepalived on gateway B`);
  await start(1);
  await kas[1]!.waitForState('BACKUP', 15_000);
  const noRouter = (): never => {
    throw new Error('the kernel engine has no tunnat process on the gateway');
  };
  const gws = ([0, 1] as const).map((index): PairGateway => ({
    index,
    name: lab.gateways[index].name,
    netns: lab.gateways[index].netns,
    socketPath: '',
    router: null,
    keepalived: kas[index]!,
    startRouter: async () => noRouter(),
    killRouter: noRouter,
    stopRouter: async () => noRouter(),
    status: async () => noRouter(),
  })) as [PairGateway, PairGateway];
  const holds = async (i: 0 | 1) => (await lab.vipsOf(i)).wan;
  return {
    engine: 'kernel',
    sync,
    gateways: gws,
    isActive: holds,
    async active() {
      const h = await Promise.all([holds(0), holds(1)]);
      return h[0] && !h[1] ? 0 : h[1] && !h[0] ? 1 : null;
    },
    async waitSynced(i: 0 | 1, timeoutMs = 15_000, applied = 0) {
      // conntrackd says nothing a test could wait on: the standby is back when keepalived says BACKUP, and
      // its cache is refilled by the bulk update the master's notify script asked for; give it a moment.
      await kas[1 - i]!.waitForState('BACKUP', timeoutMs);
      if (!(await holds(i))) throw new Error(`gateway ${lab.gateways[i].name} does not hold the public address`);
      await sleep(1000);
    },
  };
}
