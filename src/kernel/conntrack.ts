import { existsSync, readFileSync } from 'node:fs';
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { FlowRecord } from '../conntrack/listing.js';
import type { FlowEvent, FlowEventType } from '../observe/events.js';
import type { KernelTable } from './observe.js';
import { run, runSync, CommandError } from '../util/exec.js';
import { inCidr, parseIpv4, type Cidr } from '../wire/addr.js';

/**
 * The kernel's connection-tracking table in tunnat's shapes: flows as /conntrack's FlowRecord and
 * the table's statistics as the same Prometheus metric names the userspace engine serves, so
 * dashboards and `tunnat conntrack` work with either engine.
 *
 * Sources, in order: the `conntrack` tool (conntrack-tools, netlink; gives each entry's id), then
 * /proc/net/nf_conntrack (present when the kernel has CONFIG_NF_CONNTRACK_PROCFS). Both list the
 * calling process's network namespace only.
 */

export const PROC_CONNTRACK = '/proc/net/nf_conntrack';
export const PROC_CONNTRACK_STAT = '/proc/net/stat/nf_conntrack';
const LIST_ARGV = ['conntrack', '-L', '-o', 'extended,id'];

const TRACKED = new Set(['tcp', 'udp', 'icmp']);
/** Keys of a direction's tuple and counters; anything else after the reply tuple is per-entry. */
const TUPLE_KEYS = new Set(['src', 'dst', 'sport', 'dport', 'type', 'code', 'id', 'packets', 'bytes']);

/**
 * One line of `conntrack -L -o extended[,id]` or /proc/net/nf_conntrack, e.g.
 * `ipv4 2 udp 17 29 src=192.168.1.10 dst=203.0.113.2 sport=40000 dport=7 packets=1 bytes=37
 *  src=203.0.113.2 dst=203.0.113.1 sport=7 dport=40000 packets=1 bytes=37 [ASSURED] mark=0 use=1 id=190611`.
 * The plain `conntrack -L` form (no "ipv4 2" prefix) is accepted too. Null for IPv6, other
 * protocols, and lines that are not entries. `fallbackId` is used when the line carries no id.
 */
export function parseConntrackLine(line: string, fallbackId = 0): FlowRecord | null {
  return parseEntry(line.trim().split(/\s+/), fallbackId, true);
}

/**
 * The words of one entry, from the optional "ipv4 2" on. `timeoutRequired`: listings always carry
 * the seconds left; DESTROY events carry none (the entry is gone), and then 0 is reported.
 */
function parseEntry(all: string[], fallbackId: number, timeoutRequired: boolean): FlowRecord | null {
  let words = all;
  if (words[0] === 'ipv6') return null;
  if (words[0] === 'ipv4') words = words.slice(2);
  const protocol = words[0] ?? '';
  if (!TRACKED.has(protocol)) return null;
  const timeout = /^\d+$/.test(words[2] ?? '') ? Number(words[2]) : null;
  if (timeout === null && timeoutRequired) return null;
  const secondsLeft = timeout ?? 0;
  const dirs: Record<string, string>[] = [];
  const flags: string[] = [];
  let state = '';
  let id: number | null = null;
  let trailer = false;
  for (const w of words.slice(timeout === null ? 2 : 3)) {
    if (w.startsWith('[')) {
      flags.push(w.slice(1, -1));
      continue;
    }
    const eq = w.indexOf('=');
    if (eq <= 0) {
      if (dirs.length === 0) state = w;
      continue;
    }
    const k = w.slice(0, eq);
    const v = w.slice(eq + 1);
    if (!TUPLE_KEYS.has(k)) trailer = dirs.length > 0;
    const d = dirs[dirs.length - 1];
    // After mark=/use=/zone=, "id=" is the entry's id, not an ICMP identifier; event lines have no
    // mark= before it, so an "id=" a TCP/UDP tuple cannot have, or a second one in an ICMP tuple, is too.
    if (k === 'id' && d && dirs.length === 2 && (protocol !== 'icmp' || d['id'] !== undefined)) trailer = true;
    if (trailer) {
      if (k === 'id') id = Number(v);
      continue;
    }
    if (k === 'src') dirs.push({});
    const cur = dirs[dirs.length - 1];
    if (cur) cur[k] = v;
  }
  const o = dirs[0];
  const r = dirs[1];
  if (!o?.src || !o.dst || !r?.src || !r.dst) return null;
  const ports = (d: Record<string, string>): { srcPort: number; dstPort: number } =>
    protocol === 'icmp'
      ? { srcPort: Number(d['id'] ?? 0), dstPort: Number(d['id'] ?? 0) }
      : { srcPort: Number(d['sport'] ?? 0), dstPort: Number(d['dport'] ?? 0) };
  if (protocol !== 'tcp') {
    // The kernel keeps no state word for UDP and ICMP; name them as the userspace engine does.
    state = flags.includes('UNREPLIED') ? 'UNREPLIED' : flags.includes('ASSURED') && protocol === 'udp' ? 'ASSURED' : 'REPLIED';
  }
  return {
    id: id !== null && Number.isFinite(id) ? id : fallbackId,
    protocol,
    original: { src: o.src, dst: o.dst, ...ports(o) },
    reply: { src: r.src, dst: r.dst, ...ports(r) },
    state,
    secondsLeft,
    packets: { original: Number(o['packets'] ?? 0), reply: Number(r['packets'] ?? 0) },
    bytes: { original: Number(o['bytes'] ?? 0), reply: Number(r['bytes'] ?? 0) },
  };
}

const EVENT_TYPES: Record<string, FlowEventType> = { '[NEW]': 'new', '[UPDATE]': 'update', '[DESTROY]': 'destroy' };

/**
 * One line of `conntrack -E -o timestamp,extended,id` as the event record the userspace engine
 * sends, e.g. `[1796459516.938971]\t[DESTROY] ipv4 2 udp 17 src=… packets=1 bytes=31 [UNREPLIED] src=… id=3`.
 * The kernel says neither why an entry was destroyed nor, for TCP, its last state: those stay empty.
 * Counters appear when nf_conntrack_acct is on, and in DESTROY events only. Null for anything else
 * (IPv6, other protocols, the tool's closing summary).
 */
export function parseConntrackEvent(line: string): FlowEvent | null {
  const words = line.trim().split(/\s+/);
  let time = new Date();
  const stamp = /^\[(\d+)\.(\d+)\]$/.exec(words[0] ?? '');
  if (stamp) {
    time = new Date(Number(stamp[1]) * 1000 + Math.floor(Number(`0.${stamp[2]}`) * 1000));
    words.shift();
  }
  const type = EVENT_TYPES[words[0] ?? ''];
  if (!type) return null;
  const flow = parseEntry(words.slice(1), 0, false);
  return flow ? { type, time: time.toISOString(), flow } : null;
}

export function parseConntrackListing(text: string): FlowRecord[] {
  const out: FlowRecord[] = [];
  let n = 0;
  for (const line of text.split('\n')) {
    const f = parseConntrackLine(line, ++n);
    if (f) out.push(f);
  }
  return out;
}

/** Keep the flows whose LAN side lies in `internal` (the ones the NAT handles), like the userspace table. */
export function flowsFromInternal(flows: FlowRecord[], internal: readonly Cidr[]): FlowRecord[] {
  return flows.filter((f) => {
    const a = parseIpv4(f.original.src);
    return a !== null && internal.some((c) => inCidr(a, c));
  });
}

export class ConntrackUnavailableError extends Error {
  readonly code = 'NO_CONNTRACK_SOURCE';
  constructor(detail: string) {
    super(
      `cannot read the kernel's connection table: ${detail}. Install the conntrack tool ` +
        '(Debian/Ubuntu: apt install conntrack; RHEL: dnf install conntrack-tools) or enable CONFIG_NF_CONNTRACK_PROCFS',
    );
    this.name = 'ConntrackUnavailableError';
  }
}

function isMissingBinary(err: unknown): boolean {
  return err instanceof CommandError && err.exitCode === null && /ENOENT/.test(err.stderr);
}

/** Every IPv4 TCP/UDP/ICMP entry of this namespace. */
export async function listKernelFlows(): Promise<FlowRecord[]> {
  try {
    return parseConntrackListing((await run(LIST_ARGV)).stdout);
  } catch (err) {
    if (!isMissingBinary(err)) throw err;
  }
  if (existsSync(PROC_CONNTRACK)) return parseConntrackListing(readFileSync(PROC_CONNTRACK, 'utf8'));
  throw new ConntrackUnavailableError('no `conntrack` binary and no /proc/net/nf_conntrack');
}

/** The same, synchronously, for the /conntrack route (whose handler expects a value, not a promise). */
export function listKernelFlowsSync(): FlowRecord[] {
  const r = runSync(LIST_ARGV, { allowFail: true });
  if (r.exitCode === 0) return parseConntrackListing(r.stdout);
  if (existsSync(PROC_CONNTRACK)) return parseConntrackListing(readFileSync(PROC_CONNTRACK, 'utf8'));
  throw new ConntrackUnavailableError(r.stderr.trim() || 'no `conntrack` binary and no /proc/net/nf_conntrack');
}

// ---------------------------------------------------------------------------------------------
// Statistics

/**
 * `conntrack -S`: one line per CPU of key=value counters; summed. Example line:
 * `cpu=0 found=0 invalid=3 insert=0 insert_failed=0 drop=0 early_drop=0 error=0 search_restart=0`.
 */
export function parseConntrackStats(text: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of text.split('\n')) {
    if (!/^\s*cpu=/.test(line)) continue;
    for (const w of line.trim().split(/\s+/)) {
      const eq = w.indexOf('=');
      const k = w.slice(0, eq);
      if (eq <= 0 || k === 'cpu') continue;
      const v = Number(w.slice(eq + 1));
      if (Number.isFinite(v)) out[k] = (out[k] ?? 0) + v;
    }
  }
  return out;
}

/**
 * /proc/net/stat/nf_conntrack: a header of names, then one row of hex numbers per CPU. The
 * "entries" column is the table's size (the same on every row), so it is taken once, not summed.
 */
export function parseProcConntrackStat(text: string): Record<string, number> {
  const [header, ...rows] = text.split('\n').filter((l) => l.trim() !== '');
  if (!header) return {};
  const names = header.trim().split(/\s+/);
  const out: Record<string, number> = {};
  for (const row of rows) {
    row
      .trim()
      .split(/\s+/)
      .forEach((hex, i) => {
        const name = names[i];
        if (!name || name === 'entries') return;
        out[name] = (out[name] ?? 0) + parseInt(hex, 16);
      });
  }
  return out;
}

export async function readConntrackStats(): Promise<Record<string, number>> {
  try {
    return parseConntrackStats((await run(['conntrack', '-S'])).stdout);
  } catch (err) {
    if (!isMissingBinary(err)) throw err;
  }
  if (existsSync(PROC_CONNTRACK_STAT)) return parseProcConntrackStat(readFileSync(PROC_CONNTRACK_STAT, 'utf8'));
  return {};
}

/** The table's capacity (net.netfilter.nf_conntrack_max), or null when conntrack is not loaded. */
export function readConntrackMax(): number | null {
  return readProcNumber('/proc/sys/net/netfilter/nf_conntrack_max');
}

function readProcNumber(path: string): number | null {
  try {
    const v = Number(readFileSync(path, 'utf8').trim());
    return Number.isFinite(v) ? v : null;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------------
// Metrics

export interface KernelMetricsSource {
  backend: string;
  /** The LAN prefixes: tunnat_flows counts the flows that come from them. */
  internal: readonly Cidr[];
  /** Packets counted by tunnat's own NAT rules (each is a flow's first packet) and invalid drops. */
  ruleCounters: () => Promise<{ natPackets: number; invalidDrops: number }>;
  listFlows?: () => Promise<FlowRecord[]>;
  stats?: () => Promise<Record<string, number>>;
  /**
   * Per-host traffic from conntrack's accounting (observe.ts); with it the registry also serves the
   * packet, byte and per-host counters the userspace engine does, and lists flows through it.
   */
  table?: Pick<KernelTable, 'look'>;
}

/**
 * prom-client counters only go up by API, but these mirror totals the kernel keeps: each collect
 * resets the counter, then adds the current total through this.
 */
function mirror(counter: Counter<string>, labels: Record<string, string>, value: number): void {
  counter.inc(labels, value);
}

/**
 * The kernel engine's registry. Names shared with the userspace engine keep their meaning:
 * tunnat_flows{protocol} (flows from --internal), tunnat_flows_max (nf_conntrack_max),
 * tunnat_flows_created_total (first packets through the NAT rule = flows translated),
 * tunnat_flows_removed_total{reason="early-drop"}, tunnat_drops_total{reason="table-full"} (conntrack's
 * "drop": no entry could be made). Kernel-only ones carry "kernel" in their names.
 */
export function createKernelRegistry(src: KernelMetricsSource, opts: { defaultMetrics?: boolean } = {}): Registry {
  const registry = new Registry();
  if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: registry });
  const table = src.table;
  const listFlows = table ? async () => (await table.look()).flows : (src.listFlows ?? listKernelFlows);
  const stats = src.stats ?? readConntrackStats;

  new Gauge({
    name: 'tunnat_engine_info',
    help: 'Which engine translates (always 1; the labels say which)',
    labelNames: ['engine', 'backend'],
    registers: [registry],
    collect() {
      this.set({ engine: 'kernel', backend: src.backend }, 1);
    },
  });
  new Gauge({
    name: 'tunnat_flows',
    help: 'Flows from the --internal prefixes in the kernel\'s connection-tracking table, by protocol',
    labelNames: ['protocol'],
    registers: [registry],
    async collect() {
      const counts: Record<string, number> = { tcp: 0, udp: 0, icmp: 0 };
      for (const f of flowsFromInternal(await listFlows(), src.internal)) counts[f.protocol] = (counts[f.protocol] ?? 0) + 1;
      for (const [protocol, n] of Object.entries(counts)) this.set({ protocol }, n);
    },
  });
  new Gauge({
    name: 'tunnat_flows_max',
    help: 'Capacity of the kernel\'s connection-tracking table (net.netfilter.nf_conntrack_max)',
    registers: [registry],
    collect() {
      const v = readConntrackMax();
      if (v !== null) this.set(v);
    },
  });
  new Gauge({
    name: 'tunnat_kernel_conntrack_entries',
    help: 'All entries in this namespace\'s connection-tracking table, translated or not (net.netfilter.nf_conntrack_count)',
    registers: [registry],
    collect() {
      const v = readProcNumber('/proc/sys/net/netfilter/nf_conntrack_count');
      if (v !== null) this.set(v);
    },
  });
  new Counter({
    name: 'tunnat_flows_created_total',
    help: 'Flows translated: packets that went through tunnat\'s NAT rule (netfilter shows a nat chain only the first packet of each flow)',
    registers: [registry],
    async collect() {
      this.reset();
      mirror(this, {}, (await src.ruleCounters()).natPackets);
    },
  });
  // One scrape reads `conntrack -S` once for the three counters below.
  let pending: Promise<Record<string, number>> | null = null;
  const statsOnce = (): Promise<Record<string, number>> => {
    if (!pending) {
      pending = stats().finally(() => {
        setImmediate(() => (pending = null));
      });
    }
    return pending;
  };
  new Counter({
    name: 'tunnat_flows_removed_total',
    help: 'Flows removed, by reason (kernel: early-drop, when the table was full and an unreplied flow made room)',
    labelNames: ['reason'],
    registers: [registry],
    async collect() {
      this.reset();
      mirror(this, { reason: 'early-drop' }, (await statsOnce())['early_drop'] ?? 0);
    },
  });
  new Counter({
    name: 'tunnat_drops_total',
    help: 'Packets dropped, by reason (kernel: table-full = conntrack could not make an entry; conntrack-invalid = tunnat\'s rule dropped an untranslatable packet)',
    labelNames: ['reason'],
    registers: [registry],
    async collect() {
      this.reset();
      const [s, c] = await Promise.all([statsOnce(), src.ruleCounters()]);
      mirror(this, { reason: 'table-full' }, s['drop'] ?? 0);
      mirror(this, { reason: 'conntrack-invalid' }, c.invalidDrops);
    },
  });
  new Counter({
    name: 'tunnat_kernel_conntrack_stat_total',
    help: 'The kernel\'s conntrack statistics as `conntrack -S` prints them, summed over CPUs',
    labelNames: ['stat'],
    registers: [registry],
    async collect() {
      this.reset();
      for (const [stat, v] of Object.entries(await statsOnce())) mirror(this, { stat }, v);
    },
  });
  if (table) registerTraffic(registry, table);
  return registry;
}

/**
 * The counters conntrack's accounting gives, under the userspace engine's names: packets and bytes
 * of translated flows by direction (the kernel rewrites every packet of such a flow, so these are
 * also its translations), and the same per inside host.
 */
function registerTraffic(registry: Registry, table: Pick<KernelTable, 'look'>): void {
  const directions = ['outbound', 'inbound'] as const;
  const byPath = (name: string, label: string, help: string, pick: 'packets' | 'bytes') =>
    new Counter({
      name,
      help,
      labelNames: [label],
      registers: [registry],
      async collect() {
        this.reset();
        const look = await table.look();
        for (const d of directions) mirror(this, { [label]: d }, look[pick][d]);
      },
    });
  byPath('tunnat_packets_total', 'path', 'Packets of translated flows, by path (kernel: conntrack accounting, outbound = LAN to WAN, inbound = the replies)', 'packets');
  byPath('tunnat_bytes_total', 'path', 'IP bytes of translated flows, by path (kernel: conntrack accounting)', 'bytes');
  byPath('tunnat_translations_total', 'direction', 'Packets rewritten, by direction (kernel: every packet of a source-NATed flow)', 'packets');
  const perHost = (name: string, help: string, pick: 'packets' | 'bytes') =>
    new Counter({
      name,
      help,
      labelNames: ['host', 'direction'],
      registers: [registry],
      async collect() {
        this.reset();
        for (const h of (await table.look()).hosts) for (const d of directions) mirror(this, { host: h.host, direction: d }, h[pick][d]);
      },
    });
  perHost('tunnat_host_packets_total', 'Translated packets per inside (LAN) host and direction, from conntrack accounting (host="other" past the first 256)', 'packets');
  perHost('tunnat_host_bytes_total', 'Translated IP bytes per inside (LAN) host and direction, from conntrack accounting', 'bytes');
  new Gauge({
    name: 'tunnat_host_flows',
    help: 'Translated flows in the kernel\'s table per inside (LAN) host',
    labelNames: ['host'],
    registers: [registry],
    async collect() {
      this.reset();
      for (const h of (await table.look()).hosts) this.set({ host: h.host }, h.flows);
    },
  });
  new Counter({
    name: 'tunnat_host_flows_created_total',
    help: 'Translated flows seen per inside (LAN) host (kernel: a flow that starts and ends between two looks is missed)',
    labelNames: ['host'],
    registers: [registry],
    async collect() {
      this.reset();
      for (const h of (await table.look()).hosts) mirror(this, { host: h.host }, h.flowsCreated);
    },
  });
}
