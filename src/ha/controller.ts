import { createSocket, type Socket } from 'node:dgram';
import { readFileSync } from 'node:fs';
import { networkInterfaces } from 'node:os';
import { Counter, Gauge, type Registry } from 'prom-client';
import type { RouterConfig } from '../config/config.js';
import { forEachRecord, REC, type ApplyCounts } from '../nat/replica.js';
import type { RouteHandler } from '../observe/http.js';
import type { Logger } from '../util/log.js';
import { ipToString } from '../wire/addr.js';
import { SyncAgent, TICK_MS, type Role, type SyncStatus } from './sync.js';

/**
 * One gateway of a pair (`--ha-node`, docs/ha.md), above its data plane:
 *
 * - Its role is a fact of the host, not a setting: active while the public address (--public-ip) is on
 *   --external, which is where keepalived puts it on the MASTER; standby otherwise. It is read every
 *   ROLE_POLL_MS (getifaddrs, in process: no fork). A data plane starts as a standby, so nothing is
 *   translated before the first look says otherwise.
 * - Becoming active: the data plane translates from that moment (the replicated flows get their whole
 *   timeouts), then the WAN's ARP answer for the address goes on. Becoming standby: the data plane stops
 *   first, then the ARP answer goes. Either way a gap fails closed.
 * - With --ha-peer, the flow-state sync (sync.ts) over a UDP socket on --ha-sync: the active sends what
 *   its data plane logs, the standby gives the records to its data plane.
 */

export const ROLE_POLL_MS = 20;

/** What the controller needs of a data plane (one loop, or the workers). */
export interface HaPlane {
  /** Forward nothing (standby), or translate (active: the replicated flows get their whole timeouts). */
  setStandby(standby: boolean): void;
  /** Records from the active, in order (UPSERT/REMOVE to the flow's owner, BEGIN/END to every part). */
  apply(records: Uint8Array): void;
  /** Every flow, as records (a full resync). */
  dump(): Promise<Uint8Array[]>;
  /** Set by the controller: what the data plane logged while active. */
  onChanges: ((records: Uint8Array) => void) | null;
  /** Set by the controller: the data plane's change log overflowed, so the peer needs a full resync. */
  onLost: (() => void) | null;
  /** Flows held now. */
  flowCount(): number;
  /** What applying records came to so far. */
  applied(): ApplyCounts;
  /** Whether every part of the data plane answers (a stuck loop does not). */
  healthy(): Promise<boolean>;
}

export interface HaStatus {
  node: number;
  role: Role;
  publicIp: string;
  external: string;
  roleChanges: number;
  lastRoleChangeMsAgo: number | null;
  flows: number;
  applied: ApplyCounts;
  healthy: boolean;
  /** null without --ha-peer (roles only, no state sync). */
  sync: SyncStatus | null;
  errors: { arp: number };
}

export class HaController {
  role: Role = 'standby';
  roleChanges = 0;
  private lastChange = -Infinity;
  private readonly agent: SyncAgent | null;
  private socket: Socket | null = null;
  private readonly timers: NodeJS.Timeout[] = [];
  private readonly vip: string;
  /** ARP changes run one after another, in the order the roles changed. */
  private arpChain: Promise<void> = Promise.resolve();
  private arpErrors = 0;

  private constructor(
    private readonly cfg: RouterConfig,
    private readonly log: Logger,
    private readonly plane: HaPlane,
    private readonly setProxyArp: (on: boolean) => Promise<void>,
    key: Uint8Array | null,
  ) {
    this.vip = ipToString(cfg.publicIp!);
    const now = () => performance.now();
    this.agent =
      key === null
        ? null
        : new SyncAgent({
            key,
            node: cfg.haNode!,
            now,
            send: (msg) => this.send(msg),
            deliver: (records) => this.deliver(records),
            startResync: (epoch) => void this.resync(epoch),
            flowCount: () => plane.flowCount(),
          });
    plane.onChanges = (records) => this.agent?.pushRecords(records);
    plane.onLost = () => this.agent?.requestResync();
  }

  /** Read the key, bind the sync socket, take the role the host says, and start the timers. */
  static async start(cfg: RouterConfig, log: Logger, plane: HaPlane, setProxyArp: (on: boolean) => Promise<void>): Promise<HaController> {
    let key: Uint8Array | null = null;
    if (cfg.haPeer !== null && cfg.haKey !== null) {
      try {
        key = readKey(cfg.haKey);
      } catch (err) {
        throw new HaStartError(`cannot use --ha-key ${cfg.haKey}: ${(err as Error).message}`);
      }
    }
    const c = new HaController(cfg, log, plane, setProxyArp, key);
    if (c.agent !== null) await c.bind();
    plane.setStandby(true);
    c.checkRole();
    // A standby must not answer ARP for the address, whatever an earlier run left.
    if (c.role === 'standby') c.arp(false);
    c.timers.push(setInterval(() => c.checkRole(), ROLE_POLL_MS));
    if (c.agent !== null) c.timers.push(setInterval(() => c.agent!.tick(), TICK_MS));
    log.info('gateway pair', {
      node: cfg.haNode,
      role: c.role,
      publicIp: c.vip,
      sync: cfg.haSync && cfg.haPeer ? `${ipToString(cfg.haSync.address)}:${cfg.haSync.port} ↔ ${ipToString(cfg.haPeer.address)}:${cfg.haPeer.port}` : 'off',
    });
    return c;
  }

  private bind(): Promise<void> {
    const s = createSocket({ type: 'udp4', reuseAddr: false });
    this.socket = s;
    s.on('message', (msg) => this.agent!.receive(msg));
    s.on('error', (err) => this.log.warn('sync socket error', { error: err.message }));
    const at = this.cfg.haSync!;
    return new Promise((resolve, reject) => {
      s.once('error', (err) => reject(new HaStartError(`cannot listen for the sync on ${ipToString(at.address)}:${at.port}: ${err.message}`)));
      s.bind(at.port, ipToString(at.address), () => resolve());
    });
  }

  private send(msg: Uint8Array): void {
    const peer = this.cfg.haPeer!;
    // A peer that is down answers with ICMP errors the socket reports later; the sync notices by itself.
    this.socket?.send(msg, peer.port, ipToString(peer.address), () => {});
  }

  /** Whether this gateway holds the public address on --external now. */
  private holdsAddress(): boolean {
    try {
      return (networkInterfaces()[this.cfg.external] ?? []).some((a) => a.family === 'IPv4' && a.address === this.vip);
    } catch {
      return false;
    }
  }

  private checkRole(): void {
    const next: Role = this.holdsAddress() ? 'active' : 'standby';
    if (next === this.role) return;
    this.role = next;
    this.roleChanges++;
    this.lastChange = performance.now();
    if (next === 'active') {
      // Translate at once: keepalived has the address and has announced it; the ARP answer can follow.
      this.plane.setStandby(false);
      this.agent?.setRole('active');
      this.arp(true);
    } else {
      // Stop translating first: from now on nothing leaves with an address this gateway does not hold.
      this.plane.setStandby(true);
      this.agent?.setRole('standby');
      this.arp(false);
    }
    this.log.info(next === 'active' ? 'this gateway holds the public address: active' : 'this gateway no longer holds the public address: standby', {
      publicIp: this.vip,
      flows: this.plane.flowCount(),
    });
  }

  private arp(on: boolean): void {
    this.arpChain = this.arpChain.then(() =>
      this.setProxyArp(on).catch((err: Error) => {
        this.arpErrors++;
        this.log.error(on ? 'could not answer ARP for the public address' : 'could not stop answering ARP for the public address', { error: err.message });
      }),
    );
  }

  private deliver(records: Uint8Array): void {
    this.plane.apply(records);
    const dv = new DataView(records.buffer, records.byteOffset, records.byteLength);
    forEachRecord(records, (kind, off) => {
      if (kind === REC.END) this.agent!.resyncApplied(dv.getUint32(off + 1));
    });
  }

  private async resync(epoch: number): Promise<void> {
    let parts: Uint8Array[];
    try {
      parts = await this.plane.dump();
    } catch (err) {
      this.log.error('could not read the flows for a full resync', { error: (err as Error).message });
      return;
    }
    for (const p of parts) this.agent?.pushRecords(p);
    this.agent?.endResync(epoch);
    this.log.info('full resync sent to the standby', { epoch, flows: parts.reduce((n, p) => n + p.length, 0) / 85 });
  }

  async status(): Promise<HaStatus> {
    return {
      node: this.cfg.haNode!,
      role: this.role,
      publicIp: this.vip,
      external: this.cfg.external,
      roleChanges: this.roleChanges,
      lastRoleChangeMsAgo: Number.isFinite(this.lastChange) ? Math.round(performance.now() - this.lastChange) : null,
      flows: this.plane.flowCount(),
      applied: this.plane.applied(),
      healthy: await this.plane.healthy(),
      sync: this.agent ? this.agent.status() : null,
      errors: { arp: this.arpErrors },
    };
  }

  /** The live page's line: role, node, and how the peer is heard. */
  liveSummary(): { role: Role; node: number; peer: string } {
    const p = this.agent?.status().peer ?? null;
    const peer = p === null ? 'no sync' : p.session === null ? 'never heard' : p.alive ? `${p.role ?? '?'}, heard ${p.lastHeardMsAgo} ms ago` : 'not heard';
    return { role: this.role, node: this.cfg.haNode!, peer };
  }

  /** GET /ha: the status as JSON; 503 when the data plane does not answer (what `tunnat ha check` asks). */
  readonly handler: RouteHandler = async (_req, res) => {
    const st = await this.status();
    res.writeHead(st.healthy ? 200 : 503, { 'content-type': 'application/json' });
    res.end(JSON.stringify(st));
  };

  /** The tunnat_ha_* metrics, read at scrape time. */
  register(registry: Registry): void {
    const self = this;
    const sync = () => this.agent?.status() ?? null;
    new Gauge({
      name: 'tunnat_ha_role',
      help: 'This gateway of the pair: 1 for its role now (active: it holds the public address and translates; standby: it holds the replicated flows and forwards nothing)',
      labelNames: ['role'],
      registers: [registry],
      collect() {
        this.set({ role: 'active' }, self.role === 'active' ? 1 : 0);
        this.set({ role: 'standby' }, self.role === 'standby' ? 1 : 0);
      },
    });
    new Counter({
      name: 'tunnat_ha_role_changes_total',
      help: 'Times this gateway became active or standby',
      registers: [registry],
      collect() {
        mirror(this, [{}, self.roleChanges]);
      },
    });
    new Gauge({
      name: 'tunnat_ha_peer_up',
      help: 'Whether the other gateway was heard on the sync link within the last 1.5 s',
      registers: [registry],
      collect() {
        this.set(sync()?.peer.alive ? 1 : 0);
      },
    });
    new Counter({
      name: 'tunnat_ha_sync_messages_total',
      help: 'Sync messages sent to and accepted from the other gateway',
      labelNames: ['direction'],
      registers: [registry],
      collect() {
        const s = sync()?.stats;
        mirror(this, [{ direction: 'sent' }, s?.sent ?? 0], [{ direction: 'received' }, s?.received ?? 0]);
      },
    });
    new Counter({
      name: 'tunnat_ha_sync_rejected_total',
      help: 'Sync messages dropped unread: a bad MAC (not the pair key), malformed, or stale (a session that is over, a replay)',
      labelNames: ['reason'],
      registers: [registry],
      collect() {
        const s = sync()?.stats;
        mirror(this, [{ reason: 'bad-mac' }, s?.badMac ?? 0], [{ reason: 'malformed' }, s?.malformed ?? 0], [{ reason: 'stale' }, s?.stale ?? 0]);
      },
    });
    new Counter({
      name: 'tunnat_ha_sync_records_sent_total',
      help: 'Flow records sent to the standby (creations, changes, removals, resync contents)',
      registers: [registry],
      collect() {
        mirror(this, [{}, sync()?.stats.recordsSent ?? 0]);
      },
    });
    new Counter({
      name: 'tunnat_ha_sync_retransmits_total',
      help: 'Sync messages sent again because the standby had not acknowledged them',
      registers: [registry],
      collect() {
        mirror(this, [{}, sync()?.stats.retransmits ?? 0]);
      },
    });
    new Counter({
      name: 'tunnat_ha_resyncs_total',
      help: 'Full resyncs sent to the standby, and applied from the active',
      labelNames: ['side'],
      registers: [registry],
      collect() {
        const s = sync()?.stats;
        mirror(this, [{ side: 'sent' }, s?.resyncsSent ?? 0], [{ side: 'applied' }, s?.resyncsApplied ?? 0]);
      },
    });
    new Counter({
      name: 'tunnat_ha_backlogs_dropped_total',
      help: 'Times the active gave up a backlog for the standby (gone, or too slow) and owed it a full resync instead',
      registers: [registry],
      collect() {
        mirror(this, [{}, sync()?.stats.backlogsDropped ?? 0]);
      },
    });
    new Gauge({
      name: 'tunnat_ha_sync_unacked_messages',
      help: 'Sync messages sent and not yet acknowledged by the standby',
      registers: [registry],
      collect() {
        this.set(sync()?.lag.unacked ?? 0);
      },
    });
    new Gauge({
      name: 'tunnat_ha_sync_lag_seconds',
      help: 'Age of the oldest sync message the standby has not acknowledged (0: it has everything)',
      registers: [registry],
      collect() {
        this.set((sync()?.lag.oldestMs ?? 0) / 1000);
      },
    });
    new Counter({
      name: 'tunnat_ha_records_applied_total',
      help: 'Flow records from the active applied on this standby, by result (failed: no room, or a port another flow still held)',
      labelNames: ['result'],
      registers: [registry],
      collect() {
        const a = self.plane.applied();
        mirror(this, [{ result: 'upsert' }, a.upserts], [{ result: 'remove' }, a.removes], [{ result: 'failed' }, a.failed + a.malformed], [{ result: 'swept' }, a.swept]);
      },
    });
  }

  close(): void {
    this.timers.forEach((t) => clearInterval(t));
    this.timers.length = 0;
    this.socket?.close();
    this.socket = null;
  }
}

export class HaStartError extends Error {
  readonly code = 'HA_UNAVAILABLE';
  constructor(message: string) {
    super(message);
    this.name = 'HaStartError';
  }
}

/** The pair's key: the file's bytes, without a trailing newline; at least 16 of them. */
export function readKey(path: string): Uint8Array {
  let text = readFileSync(path);
  while (text.length > 0 && (text[text.length - 1] === 0x0a || text[text.length - 1] === 0x0d)) text = text.subarray(0, text.length - 1);
  if (text.length < 16) throw new Error(`the key has ${text.length} bytes; it needs at least 16 (e.g. \`head -c 32 /dev/urandom | base64 > FILE\`)`);
  return text;
}

/** Counters that mirror numbers kept elsewhere: reset and set at scrape time, every label set at once. */
function mirror(c: Counter, ...series: [Record<string, string>, number][]): void {
  c.reset();
  for (const [labels, value] of series) c.inc(labels, value);
}

