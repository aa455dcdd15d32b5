import { createHash } from 'node:crypto';
import { createSocket, type Socket } from 'node:dgram';
import { readFileSync } from 'node:fs';
import { networkInterfaces } from 'node:os';
import { Counter, Gauge, type Registry } from 'prom-client';
import type { RouterConfig } from '../config/config.js';
import { forEachRecord, REC, UPSERT_BYTES, type ApplyCounts } from '../nat/replica.js';
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
  /**
   * Every flow, as records (a full resync), each part handed to `each` as soon as it is read (a worker's
   * dump comes before its later changes, which must follow it); false if a part could not be read.
   */
  dump(each: (part: Uint8Array) => void): Promise<boolean>;
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
  /** ARP changes run one after another; what the role wants is applied again until it holds. */
  private arpChain: Promise<void> = Promise.resolve();
  private arpWanted = false;
  /** What the last change achieved (null: unknown, or failed). */
  private arpDone: boolean | null = null;
  private arpBusy = false;
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
    // A resync holds every flow at once: the backlog may always grow to that, and 64 MiB beyond it.
    const backlogLimit = 64 * 1024 * 1024 + Math.ceil(cfg.maxFlows * UPSERT_BYTES * 1.5);
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
            backlogLimit,
            fingerprint: pairFingerprint(cfg),
            onMismatch: () =>
              log.error('the other gateway runs with other settings (workers, ports, public address, table size or LAN): no state sync with it until both match', {
                workers: cfg.workers,
                ports: cfg.ports.join('-'),
                gatewayPorts: cfg.gatewayPorts.join('-'),
              }),
          });
    plane.onChanges = (records) => this.agent?.pushRecords(records);
    plane.onLost = () => this.agent?.requestResync();
  }

  /** Read the key, bind the sync socket, take the role the host says, and start the timers. */
  static async start(
    cfg: RouterConfig, log: Logger, plane: HaPlane, setProxyArp: (on: boolean) => Promise<void>, opts: { key?: Uint8Array } = {},
  ): Promise<HaController> {
    let key: Uint8Array | null = opts.key ?? null;
    if (key === null && cfg.haPeer !== null && cfg.haKey !== null) {
      try {
        key = readKey(cfg.haKey);
      } catch (err) {
        throw new HaStartError(`cannot use --ha-key ${cfg.haKey}: ${(err as Error).message}`);
      }
    }
    const c = new HaController(cfg, log, plane, setProxyArp, key);
    if (c.agent !== null) await c.bind();
    plane.setStandby(true);
    // The first look: a gateway that holds the address becomes active; a standby removes any ARP answer
    // for it that an earlier run left (what it wants, arpWanted false, does not yet hold).
    c.checkRole();
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
    const peer = this.cfg.haPeer!;
    const peerAddr = ipToString(peer.address);
    s.on('message', (msg, from) => {
      // Only the peer's address is worth a MAC check; anything else is counted and dropped unread.
      if (from.address !== peerAddr) this.agent!.stats.stale++;
      else this.agent!.receive(msg);
    });
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
    if (next === this.role) {
      // A change of the ARP answer that failed is tried again until it holds.
      if (this.arpDone !== this.arpWanted && !this.arpBusy) this.arp(this.arpWanted);
      return;
    }
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
    this.arpWanted = on;
    this.arpBusy = true;
    this.arpChain = this.arpChain.then(async () => {
      try {
        await this.setProxyArp(on);
        this.arpDone = on;
      } catch (err) {
        this.arpDone = null;
        this.arpErrors++;
        this.log.error(on ? 'could not answer ARP for the public address; trying again' : 'could not stop answering ARP for the public address; trying again', {
          error: (err as Error).message,
        });
      } finally {
        this.arpBusy = false;
      }
    });
  }

  private deliver(records: Uint8Array): void {
    this.plane.apply(records);
    const dv = new DataView(records.buffer, records.byteOffset, records.byteLength);
    forEachRecord(records, (kind, off) => {
      if (kind === REC.END) this.agent!.resyncApplied(dv.getUint32(off + 1));
    });
  }

  private async resync(epoch: number): Promise<void> {
    let flows = 0;
    let whole = false;
    try {
      whole = await this.plane.dump((part) => {
        // A dump holds UPSERT records only: one per flow.
        flows += part.length / UPSERT_BYTES;
        this.agent?.pushRecords(part);
      });
    } catch (err) {
      this.log.error('could not read the flows for a full resync', { error: (err as Error).message });
    }
    if (!whole) {
      // A part missing would make the standby sweep that part's flows: give it up and start again.
      this.agent?.abortResync(epoch);
      this.log.warn('full resync given up (a data-plane worker did not answer); another follows', { epoch });
      return;
    }
    this.agent?.endResync(epoch);
    this.log.info('full resync sent to the standby', { epoch, flows });
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
      help: 'Sync messages dropped: a bad MAC (not the pair key), malformed, stale (a session that is over, a replay, a duplicate, another sender), or from a peer with other settings (mismatch)',
      labelNames: ['reason'],
      registers: [registry],
      collect() {
        const s = sync()?.stats;
        mirror(this, [{ reason: 'bad-mac' }, s?.badMac ?? 0], [{ reason: 'malformed' }, s?.malformed ?? 0], [{ reason: 'stale' }, s?.stale ?? 0], [{ reason: 'mismatch' }, s?.mismatched ?? 0]);
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

  /** Stop the timers and the socket, and wait for an ARP change in flight (the routing goes next). */
  async close(): Promise<void> {
    this.timers.forEach((t) => clearInterval(t));
    this.timers.length = 0;
    this.socket?.close();
    this.socket = null;
    await this.arpChain;
  }
}

export class HaStartError extends Error {
  readonly code = 'HA_UNAVAILABLE';
  constructor(message: string) {
    super(message);
    this.name = 'HaStartError';
  }
}

/**
 * What both gateways of a pair must agree on for a replicated flow to fit the standby's tables: the worker
 * count (a flow's worker follows from its ports), the port ranges and the node halves, the public address,
 * the LAN, the table size and the filtering. 8 bytes of a hash, in every HELLO.
 */
export function pairFingerprint(cfg: RouterConfig): Uint8Array {
  const facts = JSON.stringify([cfg.workers, cfg.ports, cfg.gatewayPorts, cfg.publicIp, cfg.internal.map((c) => [c.network, c.prefixLength]), cfg.maxFlows, cfg.filtering]);
  return createHash('sha256').update(facts).digest().subarray(0, 8);
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

