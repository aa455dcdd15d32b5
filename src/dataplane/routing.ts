import { randomBytes } from 'node:crypto';
import { run, runSync, type RunResult } from '../util/exec.js';
import { ipToString, parseIpv4, prefixMask } from '../wire/addr.js';
import {
  deleteStateFile,
  isProcessAlive,
  netnsInode,
  processStartTime,
  readStateFile,
  stateFilePath,
  stateFilesOfNetns,
  writeStateFile,
} from './state-file.js';
import {
  confKey,
  dotted,
  ipv4ConfDevices,
  isValidIfname,
  neighKey,
  readSysctl,
  sameSysctlValue,
  sysctlExists,
  writeSysctl,
} from './sysctl.js';

/**
 * The gateway set-up that steers LAN traffic into tunnat's TUN and the public address's traffic
 * back through it (DESIGN.md, recipe A), applied on start and removed on exit.
 *
 * Every change is journalled in a state file before it is made, so that a crash at any point
 * leaves an exact list of what to undo; everything tunnat adds to the routing tables also carries
 * ROUTE_PROTOCOL, so leftovers are found even without that file.
 */

/**
 * The `proto` of tunnat's routes, rules and proxy neighbour entries: 0x54, 'T'. Unassigned in
 * /etc/iproute2/rt_protos (99 looks free but is openr's).
 */
export const ROUTE_PROTOCOL = 84;

/** Rule preferences, in the order the kernel consults them. */
export const RULE_PREF = {
  /**
   * iif WAN from <LAN prefix>: a WAN packet claiming a LAN source is dropped before anything else sees it
   * (before the inbound rule, or tunnat would take it for LAN traffic). Silently: an ICMP error would go
   * to the spoofed LAN address.
   */
  antiSpoof: 5,
  /** iif WAN to <LAN prefix>: the WAN never reaches a LAN address directly, only through the translation. */
  wanToLan: 6,
  /** iif WAN to <public address>: replies and the gateway's own inbound traffic go through tunnat. */
  inbound: 10,
  /**
   * iif TUN: what tunnat writes is delivered locally or routed by the main table, and never matches the
   * rules below that send traffic into the TUN (a packet tunnat hands to the gateway must not loop).
   */
  fromTunLocal: 20,
  fromTun: 21,
  /** from <LAN prefix> to <public address>: hairpinned traffic and port forwards reached from the LAN. */
  hairpin: 50,
  /** The local table, moved here from 0 so that the inbound rule can come before it. */
  local: 100,
  /** to <LAN prefix>: LAN-to-LAN traffic is routed, not translated. */
  lanToLan: 996,
  /**
   * iif lo ipproto icmp: the gateway's own ICMP to anywhere but itself and the LAN goes through tunnat,
   * which restores the public side in the quote of an error about a packet it translated into the LAN.
   */
  gatewayIcmp: 998,
  /** from <LAN prefix>: outbound LAN traffic goes into tunnat. */
  outbound: 1000,
} as const;

export const DEFAULT_ROUTING_TABLE = 7301;
export const DEFAULT_GATEWAY_PORTS: readonly [number, number] = [20000, 29999];

/** Metric of the fail-closed route: the worst possible, so any live `default dev <tun>` wins. */
const FAIL_CLOSED_METRIC = 4294967295;
const PROTO = String(ROUTE_PROTOCOL);
const TABLE_LOCAL = 255;
const RESERVED_TABLES = new Set([0, 253, 254, 255]);

export interface RoutingConfig {
  /** TUN interface name, already created and opened by the caller. */
  tun: string;
  /** LAN prefixes (addresses as uint32). */
  internal: { network: number; prefixLength: number }[];
  /** WAN interface. */
  externalIface: string;
  /** uint32; the address translated flows use. */
  publicIp: number;
  /** True when the gateway has publicIp on an interface (masquerade or owned static). */
  publicIpOwned: boolean;
  /** Routing table T for outbound; T+1 for inbound (default 7301). */
  table: number;
  /** The gateway's own ephemeral port range; tunnat maps ports outside it (default [20000, 29999]). */
  gatewayPorts: [number, number];
  tunMtu?: number;
}

/** One journalled change, with what is needed to undo it. */
export type RoutingStep =
  | {
      kind: 'sysctl';
      /** Path under /proc/sys. */
      key: string;
      old: string;
      value: string;
      /** Other sysctls the kernel rewrites as a consequence (ip_forward resets every interface's forwarding). */
      sideEffects?: { key: string; old: string }[];
    }
  | { kind: 'link'; dev: string; wasUp: boolean; oldMtu: number; mtu?: number }
  /** Arguments of `ip route add`, reused for `ip route del`. */
  | { kind: 'route'; args: string[] }
  /** Arguments of `ip rule add`, reused for `ip rule del`; `inbound` marks the rule that follows the public address. */
  | { kind: 'rule'; args: string[]; inbound?: boolean }
  /** The pref-0 `lookup local` rule was deleted (the pref-100 one was added before). */
  | { kind: 'local-rule-moved' }
  | { kind: 'proxy-neigh'; address: string; dev: string }
  /** The TUN was made persistent for a restart (see keepForRestart); undone by deleting the device. */
  | { kind: 'tun-persist'; dev: string };

/** Everything needed to undo the set-up; the same object is the state file's content. */
export interface AppliedRouting {
  version: 1;
  /** Random; tells this run's state file from a later run's file at the same path. */
  runId: string;
  pid: number;
  /** With the pid, identifies the process even after pid reuse. */
  pidStartTime: string | null;
  netnsInode: number;
  stateFile: string;
  /**
   * The WAN link as it was at start. Namespace inodes are reused, so this tells a record of this
   * namespace from one of an earlier namespace that had the same inode.
   */
  wan: { ifindex: number; address: string | null };
  config: RoutingConfig;
  /** In the order applied; undone in reverse. */
  steps: RoutingStep[];
}

export type RoutingErrorCode = 'ROUTING_CONFLICT' | 'ALREADY_RUNNING' | 'ROUTING_FAILED' | 'ROUTING_INVALID';

export class RoutingError extends Error {
  constructor(
    readonly code: RoutingErrorCode,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = 'RoutingError';
  }
}

/** A rule, route or proxy neighbour entry of tunnat's (or in its tables) that exists right now. */
export interface FoundItem {
  kind: 'rule' | 'route' | 'proxy-neigh';
  /** The command that removes it. */
  del: string[];
  /** Carries ROUTE_PROTOCOL; unmarked items in tables T/T+1 belong to someone else. */
  marked: boolean;
  /** A marked `lookup local` rule: removed only once another local rule exists. */
  localRule: boolean;
}

/** A state file of this namespace whose process is gone. */
export interface CrashedRun {
  file: string;
  /** Null when the file could not be parsed. */
  state: AppliedRouting | null;
  /** Whether the record describes this namespace (and not an earlier one with the same inode). */
  trusted: boolean;
  reason: string;
}

export interface Leftover {
  netnsInode: number;
  tun: string;
  table: number;
  crashed: CrashedRun[];
  found: FoundItem[];
  /** The pref-0 `lookup local` rule is missing and no unmarked local rule replaces it. */
  localRuleMissing: boolean;
  /**
   * Some items in tables T/T+1 do not carry tunnat's marker: someone else configured them.
   * cleanLeftovers removes them too, so clean automatically only when this is false.
   */
  foreign: boolean;
}

type Log = (msg: string) => void;
const quiet: Log = () => {};

// ---------------------------------------------------------------------------------------------
// Reading the namespace's current state

interface LinkInfo {
  ifindex: number;
  mtu: number;
  up: boolean;
  address: string | null;
}

interface RuleRow {
  priority: number;
  src?: string;
  srclen?: number;
  dst?: string;
  dstlen?: number;
  iif?: string;
  oif?: string;
  fwmark?: string;
  fwmask?: string;
  table?: string;
  action?: string;
  target?: number;
  protocol?: string;
  /** IP protocol selector; `ip -N` prints it as "ipproto-<number>". */
  ipproto?: string;
  not?: unknown;
}

interface RouteRow {
  type?: string;
  dst: string;
  dev?: string;
  gateway?: string;
  table?: string;
  protocol?: string;
  metric?: number;
}

interface NeighRow {
  dst: string;
  dev?: string;
  protocol?: string;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function parseJsonArray(text: string, what: string): Record<string, unknown>[] {
  // `ip -j` prints nothing at all for some empty listings.
  if (text.trim() === '') return [];
  const v = JSON.parse(text) as unknown;
  if (!Array.isArray(v) || !v.every(isRecord)) throw new Error(`unexpected output of ${what}: ${text.slice(0, 200)}`);
  return v;
}

const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);
const num = (v: unknown): number | undefined => (typeof v === 'number' ? v : undefined);

function linkFromJson(text: string): LinkInfo | null {
  const row = parseJsonArray(text, 'ip link show')[0];
  if (!row) return null;
  const flags = Array.isArray(row['flags']) ? row['flags'] : [];
  return {
    ifindex: num(row['ifindex']) ?? 0,
    mtu: num(row['mtu']) ?? 0,
    up: flags.includes('UP'),
    address: str(row['address']) ?? null,
  };
}

async function linkInfo(dev: string): Promise<LinkInfo | null> {
  const r = await run(['ip', '-j', 'link', 'show', 'dev', dev], { allowFail: true });
  if (r.exitCode !== 0) {
    if (/does not exist|Cannot find device/.test(r.stderr)) return null;
    throw new Error(`ip -j link show dev ${dev} failed: ${r.stderr.trim()}`);
  }
  return linkFromJson(r.stdout);
}

async function listRules(): Promise<RuleRow[]> {
  // -N: tables and protocols as numbers, whatever /etc/iproute2 names them.
  const r = await run(['ip', '-N', '-j', 'rule', 'show']);
  return parseJsonArray(r.stdout, 'ip rule show').map((o) => ({
    priority: num(o['priority']) ?? 0,
    src: str(o['src']),
    srclen: num(o['srclen']),
    dst: str(o['dst']),
    dstlen: num(o['dstlen']),
    iif: str(o['iif']),
    oif: str(o['oif']),
    fwmark: str(o['fwmark']),
    fwmask: str(o['fwmask']),
    table: str(o['table']),
    action: str(o['action']),
    target: num(o['target']),
    protocol: str(o['protocol']),
    ipproto: str(o['ipproto']),
    not: o['not'],
  }));
}

async function listRoutes(): Promise<RouteRow[]> {
  const r = await run(['ip', '-N', '-j', 'route', 'show', 'table', 'all']);
  return parseJsonArray(r.stdout, 'ip route show table all').map((o) => ({
    type: str(o['type']),
    dst: str(o['dst']) ?? 'default',
    dev: str(o['dev']),
    gateway: str(o['gateway']),
    table: str(o['table']),
    protocol: str(o['protocol']),
    metric: num(o['metric']),
  }));
}

async function listProxyNeighbours(): Promise<NeighRow[]> {
  const r = await run(['ip', '-N', '-j', 'neigh', 'show', 'proxy']);
  return parseJsonArray(r.stdout, 'ip neigh show proxy').map((o) => ({
    dst: str(o['dst']) ?? '',
    dev: str(o['dev']),
    protocol: str(o['protocol']),
  }));
}

/** A plain `from all lookup local` rule (the kernel's pref-0 rule or a moved copy of it). */
function isPlainLocalRule(r: RuleRow): boolean {
  return (
    r.table === String(TABLE_LOCAL) &&
    (r.src === undefined || r.src === 'all') &&
    r.dst === undefined &&
    r.iif === undefined &&
    r.oif === undefined &&
    r.fwmark === undefined &&
    r.ipproto === undefined &&
    r.not === undefined
  );
}

function ruleDelArgs(r: RuleRow): string[] {
  const a = ['pref', String(r.priority)];
  if (r.not !== undefined) a.push('not');
  if (r.src !== undefined && r.src !== 'all') a.push('from', r.srclen !== undefined ? `${r.src}/${r.srclen}` : r.src);
  if (r.dst !== undefined && r.dst !== 'all') a.push('to', r.dstlen !== undefined ? `${r.dst}/${r.dstlen}` : r.dst);
  if (r.iif !== undefined) a.push('iif', r.iif);
  if (r.oif !== undefined) a.push('oif', r.oif);
  if (r.fwmark !== undefined) a.push('fwmark', r.fwmask !== undefined ? `${r.fwmark}/${r.fwmask}` : r.fwmark);
  if (r.ipproto !== undefined) a.push('ipproto', r.ipproto.replace(/^ipproto-/, ''));
  if (r.table !== undefined) a.push('lookup', r.table);
  else if (r.action === 'goto' && r.target !== undefined) a.push('goto', String(r.target));
  else if (r.action !== undefined) a.push(r.action);
  if (r.protocol !== undefined) a.push('protocol', r.protocol);
  return a;
}

// `ip -N` prints route types as numbers (include/uapi/linux/rtnetlink.h, enum RTN_*).
const ROUTE_TYPE_NAMES: Record<string, string> = {
  '1': 'unicast', '2': 'local', '3': 'broadcast', '4': 'anycast', '5': 'multicast',
  '6': 'blackhole', '7': 'unreachable', '8': 'prohibit', '9': 'throw', '10': 'nat',
};

function routeDelArgs(r: RouteRow): string[] {
  const type = r.type === undefined ? 'unicast' : (ROUTE_TYPE_NAMES[r.type] ?? r.type);
  const a = [type, r.dst];
  if (r.gateway !== undefined) a.push('via', r.gateway);
  if (r.dev !== undefined) a.push('dev', r.dev);
  a.push('table', r.table ?? '254');
  if (r.metric !== undefined) a.push('metric', String(r.metric));
  if (r.protocol !== undefined) a.push('proto', r.protocol);
  return a;
}

/** Everything tunnat marks, anywhere, plus everything in tables T and T+1. */
async function scanNamespace(table: number): Promise<FoundItem[]> {
  const ours = new Set([String(table), String(table + 1)]);
  const found: FoundItem[] = [];
  for (const r of await listRules()) {
    const marked = r.protocol === PROTO;
    if (marked || (r.table !== undefined && ours.has(r.table))) {
      found.push({ kind: 'rule', del: ['ip', 'rule', 'del', ...ruleDelArgs(r)], marked, localRule: marked && isPlainLocalRule(r) });
    }
  }
  for (const r of await listRoutes()) {
    const marked = r.protocol === PROTO;
    if (marked || (r.table !== undefined && ours.has(r.table))) {
      found.push({ kind: 'route', del: ['ip', 'route', 'del', ...routeDelArgs(r)], marked, localRule: false });
    }
  }
  for (const n of await listProxyNeighbours()) {
    if (n.protocol === PROTO && n.dev !== undefined) {
      found.push({ kind: 'proxy-neigh', del: ['ip', 'neigh', 'del', 'proxy', n.dst, 'dev', n.dev], marked: true, localRule: false });
    }
  }
  return found;
}

// ---------------------------------------------------------------------------------------------
// Small helpers

function cidrText(c: { network: number; prefixLength: number }): string {
  return `${ipToString(c.network)}/${c.prefixLength}`;
}

/** `ip` said the thing to delete is not there (or its device is gone, taking it along). */
function isGone(stderr: string): boolean {
  return /No such file or directory|No such process|Cannot find device|does not exist/i.test(stderr);
}

function cmdText(argv: readonly string[]): string {
  return argv.join(' ');
}

function failure(argv: readonly string[], r: RunResult): string {
  return `${cmdText(argv)} failed (exit ${r.exitCode ?? 'none'}): ${r.stderr.trim() || r.stdout.trim() || 'no output'}`;
}

/** Run an `ip` command that must succeed; the error names the command and what ip said. */
async function ip(argv: string[]): Promise<void> {
  const r = await run(argv, { allowFail: true });
  if (r.exitCode !== 0) throw new Error(failure(argv, r));
}

function validateConfig(cfg: RoutingConfig): void {
  const bad = (msg: string): never => {
    throw new RoutingError('ROUTING_INVALID', msg);
  };
  if (!isValidIfname(cfg.tun)) bad(`invalid TUN interface name ${JSON.stringify(cfg.tun)}`);
  if (!isValidIfname(cfg.externalIface)) bad(`invalid WAN interface name ${JSON.stringify(cfg.externalIface)}`);
  if (cfg.tun === cfg.externalIface) bad(`the TUN and the WAN interface are the same (${cfg.tun})`);
  if (cfg.internal.length === 0) bad('no internal prefixes: nothing would be routed into tunnat');
  for (const c of cfg.internal) {
    if (!Number.isInteger(c.prefixLength) || c.prefixLength < 0 || c.prefixLength > 32) bad(`invalid prefix length ${c.prefixLength}`);
    if (!Number.isInteger(c.network) || c.network < 0 || c.network > 0xffffffff) bad(`invalid network address ${c.network}`);
    if (((c.network & prefixMask(c.prefixLength)) >>> 0) !== c.network) bad(`${cidrText(c)} has host bits set`);
  }
  if (!Number.isInteger(cfg.publicIp) || cfg.publicIp < 0 || cfg.publicIp > 0xffffffff) bad(`invalid public address ${cfg.publicIp}`);
  const t = cfg.table;
  if (!Number.isInteger(t) || t < 1 || t + 1 > 0xffffffff || RESERVED_TABLES.has(t) || RESERVED_TABLES.has(t + 1)) {
    bad(`table ${t} is unusable: tables ${t} and ${t + 1} must both be ordinary tables (not 0, 253 default, 254 main, 255 local)`);
  }
  const [lo, hi] = cfg.gatewayPorts;
  if (!Number.isInteger(lo) || !Number.isInteger(hi) || lo < 1 || hi > 65535 || lo > hi) bad(`invalid gateway port range ${lo}-${hi}`);
  if (cfg.tunMtu !== undefined && (!Number.isInteger(cfg.tunMtu) || cfg.tunMtu < 68 || cfg.tunMtu > 65535)) {
    bad(`invalid TUN MTU ${cfg.tunMtu} (IPv4 needs at least 68)`);
  }
}

function parseAppliedRouting(v: unknown): AppliedRouting | null {
  if (!isRecord(v) || v['version'] !== 1 || !Array.isArray(v['steps']) || !isRecord(v['config']) || !isRecord(v['wan'])) return null;
  if (typeof v['runId'] !== 'string' || typeof v['pid'] !== 'number' || typeof v['stateFile'] !== 'string') return null;
  return v as unknown as AppliedRouting;
}

// ---------------------------------------------------------------------------------------------
// The journal: the state file, rewritten before each change and after each undo

class Journal {
  constructor(readonly state: AppliedRouting) {}

  save(): void {
    writeStateFile(this.state.stateFile, this.state);
  }

  /** Record the step, then make the change; a change that fails is struck from the record again. */
  async step(step: RoutingStep, change: () => Promise<void> | void): Promise<void> {
    this.state.steps.push(step);
    this.save();
    try {
      await change();
    } catch (err) {
      const i = this.state.steps.lastIndexOf(step);
      if (i >= 0) this.state.steps.splice(i, 1);
      this.save();
      throw err;
    }
  }

  async sysctl(key: string, value: string, sideEffectKeys: () => string[] = () => []): Promise<void> {
    const old = readSysctl(key);
    if (sameSysctlValue(old, value)) return;
    const sideEffects = sideEffectKeys()
      .filter(sysctlExists)
      .map((k) => ({ key: k, old: readSysctl(k) }));
    const step: RoutingStep = { kind: 'sysctl', key, old, value, ...(sideEffects.length > 0 ? { sideEffects } : {}) };
    await this.step(step, () => writeSysctl(key, value));
  }
}

// ---------------------------------------------------------------------------------------------
// Undo, written once as a generator of commands so that removeRouting (async) and
// removeRoutingSync (for 'exit' handlers) share every decision.

type Cmd = readonly string[];
type Undo<T> = Generator<Cmd, T, RunResult>;

interface UndoCtx {
  errors: string[];
  log: Log;
}

function* undoStep(step: RoutingStep, ctx: UndoCtx): Undo<boolean> {
  switch (step.kind) {
    case 'sysctl': {
      try {
        // Per-interface sysctls vanish with their interface; nothing is left to restore.
        if (!sysctlExists(step.key)) return true;
        if (!sameSysctlValue(readSysctl(step.key), step.old)) {
          writeSysctl(step.key, step.old);
          ctx.log(`restored sysctl ${dotted(step.key)}=${step.old.split(/\s+/).join(' ')}`);
        }
        for (const s of step.sideEffects ?? []) {
          if (sysctlExists(s.key) && !sameSysctlValue(readSysctl(s.key), s.old)) writeSysctl(s.key, s.old);
        }
        return true;
      } catch (err) {
        ctx.errors.push((err as Error).message);
        return false;
      }
    }
    case 'tun-persist':
      return yield* deleteUnlessGone(['ip', 'link', 'del', 'dev', step.dev], ctx);
    case 'link': {
      const show = ['ip', '-j', 'link', 'show', 'dev', step.dev];
      const r = yield show;
      if (r.exitCode !== 0) {
        if (isGone(r.stderr)) return true;
        ctx.errors.push(failure(show, r));
        return false;
      }
      const now = linkFromJson(r.stdout);
      if (now === null) return true;
      const argv = ['ip', 'link', 'set', 'dev', step.dev];
      if (step.mtu !== undefined && now.mtu !== step.oldMtu) argv.push('mtu', String(step.oldMtu));
      if (!step.wasUp && now.up) argv.push('down');
      if (argv.length === 5) return true;
      const s = yield argv;
      if (s.exitCode !== 0 && !isGone(s.stderr)) {
        ctx.errors.push(failure(argv, s));
        return false;
      }
      ctx.log(cmdText(argv));
      return true;
    }
    case 'route':
    case 'rule':
      return yield* deleteUnlessGone(['ip', step.kind, 'del', ...step.args], ctx);
    case 'local-rule-moved': {
      // Put the kernel's pref-0 rule back before the pref-100 copy goes (undo runs in reverse),
      // so that local delivery never stops.
      const show = ['ip', '-N', '-j', 'rule', 'show', 'pref', '0'];
      const r = yield show;
      if (r.exitCode !== 0) {
        ctx.errors.push(failure(show, r));
        return false;
      }
      let present: boolean;
      try {
        present = parseJsonArray(r.stdout, 'ip rule show pref 0').some((o) => o['table'] === String(TABLE_LOCAL));
      } catch (err) {
        ctx.errors.push((err as Error).message);
        return false;
      }
      if (present) return true;
      const argv = ['ip', 'rule', 'add', 'pref', '0', 'lookup', 'local'];
      const a = yield argv;
      if (a.exitCode !== 0 && !/File exists/.test(a.stderr)) {
        ctx.errors.push(failure(argv, a));
        return false;
      }
      ctx.log(cmdText(argv));
      return true;
    }
    case 'proxy-neigh':
      return yield* deleteUnlessGone(['ip', 'neigh', 'del', 'proxy', step.address, 'dev', step.dev], ctx);
  }
}

/** Run a deletion; an object already gone counts as deleted. */
function* deleteUnlessGone(argv: string[], ctx: UndoCtx): Undo<boolean> {
  const r = yield argv;
  if (r.exitCode === 0) ctx.log(cmdText(argv));
  else if (!isGone(r.stderr)) {
    ctx.errors.push(failure(argv, r));
    return false;
  }
  return true;
}

/**
 * Undo the journal in reverse, striking each step from the state file once it is undone, so that
 * a crash during removal also leaves an exact record. Steps that fail stay listed.
 */
function* undoJournal(state: AppliedRouting, ctx: UndoCtx): Undo<void> {
  for (let i = state.steps.length - 1; i >= 0; i--) {
    const step = state.steps[i]!;
    const done = yield* undoStep(step, ctx);
    if (done) {
      state.steps.splice(i, 1);
      try {
        writeStateFile(state.stateFile, state);
      } catch (err) {
        ctx.errors.push(`cannot update ${state.stateFile}: ${(err as Error).message}`);
      }
    }
  }
  if (ctx.errors.length === 0) deleteStateFile(state.stateFile);
}

async function drive<T>(gen: Undo<T>): Promise<T> {
  let next = gen.next();
  while (!next.done) next = gen.next(await run(next.value, { allowFail: true }));
  return next.value;
}

function driveSync<T>(gen: Undo<T>): T {
  let next = gen.next();
  while (!next.done) next = gen.next(runSync(next.value, { allowFail: true }));
  return next.value;
}

function undoFailed(state: AppliedRouting, errors: string[]): RoutingError {
  return new RoutingError(
    'ROUTING_FAILED',
    `could not undo all of tunnat's routing for ${state.config.tun}:\n  ${errors.join('\n  ')}\n` +
      `what remains is listed in ${state.stateFile}; fix the cause and run \`tunnat down --tun ${state.config.tun}\``,
  );
}

// ---------------------------------------------------------------------------------------------
// Apply

function cleanupHint(tun: string, cmds: string[]): string {
  return `Run \`tunnat down --tun ${tun}\` to remove them${cmds.length > 0 ? `, or by hand:\n  ${cmds.join('\n  ')}` : ''}`;
}

/** Refuse to start over another instance or a leftover (see detectLeftovers for cleaning). */
async function refuseConflicts(cfg: RoutingConfig, inode: number): Promise<void> {
  for (const file of stateFilesOfNetns(inode)) {
    let state: AppliedRouting | null = null;
    try {
      state = parseAppliedRouting(readStateFile(file));
    } catch {
      // An unreadable record is still a leftover; fall through to the conflict below.
    }
    if (state && isProcessAlive(state.pid, state.pidStartTime)) {
      throw new RoutingError(
        'ALREADY_RUNNING',
        `tunnat (pid ${state.pid}, TUN ${state.config.tun}) already routes this network namespace (state file ${file}); ` +
          'only one instance per namespace is supported, since both would move the local rule and save each other\'s sysctls',
      );
    }
    throw new RoutingError(
      'ROUTING_CONFLICT',
      `${file} records a tunnat${state ? ` (pid ${state.pid}, TUN ${state.config.tun})` : ''} that exited without undoing its routing. ` +
        `Run \`tunnat down --tun ${state?.config.tun ?? cfg.tun}\` (detectLeftovers + cleanLeftovers) to undo it first.`,
    );
  }
  const found = await scanNamespace(cfg.table);
  if (found.length > 0) {
    const cmds = found.map((f) => cmdText(f.del));
    throw new RoutingError(
      'ROUTING_CONFLICT',
      `rules, routes or proxy entries of tunnat (protocol ${ROUTE_PROTOCOL}) or in tables ${cfg.table}/${cfg.table + 1} already exist ` +
        `and no tunnat state file explains them. ${cleanupHint(cfg.tun, cmds)}`,
    );
  }
}

/**
 * Whether the pref-0 local rule must move behind the inbound rule. Throws when the local table is
 * already consulted somewhere that breaks the recipe.
 */
async function planLocalRule(cfg: RoutingConfig): Promise<boolean> {
  const local = (await listRules()).filter(isPlainLocalRule);
  if (local.some((r) => r.priority === 0)) return true;
  const first = local.reduce((m, r) => Math.min(m, r.priority), Infinity);
  if (first > RULE_PREF.hairpin && first < RULE_PREF.lanToLan) return false;
  const why =
    first === Infinity
      ? 'no rule looks up the local table at all'
      : `the local table is looked up first at pref ${first}, but tunnat needs it after pref ${RULE_PREF.hairpin} and before ${RULE_PREF.lanToLan}`;
  throw new RoutingError(
    'ROUTING_CONFLICT',
    `${why}. Restore the kernel's rule with \`ip rule add pref 0 lookup local\` (and remove the moved copy) before starting tunnat on ${cfg.tun}.`,
  );
}

/** The side effects of changing net.ipv4.ip_forward (net/ipv4/devinet.c, inet_forward_change). */
function ipForwardSideEffects(): string[] {
  return [confKey('all', 'accept_redirects'), confKey('default', 'forwarding'), ...ipv4ConfDevices().map((d) => confKey(d, 'forwarding'))];
}

async function applySteps(j: Journal, cfg: RoutingConfig, tunLink: LinkInfo, moveLocal: boolean, log: Log): Promise<void> {
  const { tun, externalIface: wan } = cfg;
  const T = String(cfg.table);
  const T1 = String(cfg.table + 1);
  const pub = ipToString(cfg.publicIp);

  await j.sysctl('net/ipv4/ip_forward', '1', ipForwardSideEffects);
  // Translated packets arrive from the TUN with the public source address, which the strict
  // reverse-path check (and the check against local sources) would drop.
  await j.sysctl(confKey('all', 'rp_filter'), '0');
  await j.sysctl(confKey(tun, 'rp_filter'), '0');
  await j.sysctl(confKey(tun, 'accept_local'), '1');
  // Without this the kernel ties a reply for one of the gateway's own sockets to the socket
  // before routing, then drops it when the route says "forward into the TUN" (DESIGN.md, A).
  await j.sysctl('net/ipv4/ip_early_demux', '0');
  // The gateway's own sockets stay inside this range; tunnat maps ports outside it.
  await j.sysctl('net/ipv4/ip_local_port_range', `${cfg.gatewayPorts[0]} ${cfg.gatewayPorts[1]}`);
  // Forwarding on the ingress device is what counts: WAN→TUN inbound, TUN→WAN/LAN translated.
  // Answering ARP for a proxy entry also needs it on the WAN side.
  await j.sysctl(confKey(wan, 'forwarding'), '1');
  await j.sysctl(confKey(tun, 'forwarding'), '1');
  // Broadcast ARP requests for a proxy entry are otherwise answered after a random delay of up
  // to 0.8 s, meant to let a real owner answer first; here the gateway is the owner.
  await j.sysctl(neighKey(wan, 'proxy_delay'), '0');
  log('sysctls set');

  const linkArgs = ['ip', 'link', 'set', 'dev', tun, ...(cfg.tunMtu !== undefined ? ['mtu', String(cfg.tunMtu)] : []), 'up'];
  await j.step(
    { kind: 'link', dev: tun, wasUp: tunLink.up, oldMtu: tunLink.mtu, ...(cfg.tunMtu !== undefined ? { mtu: cfg.tunMtu } : {}) },
    () => ip(linkArgs),
  );

  const route = async (args: string[]): Promise<void> => {
    await j.step({ kind: 'route', args }, () => ip(['ip', 'route', 'add', ...args]));
    log(`ip route add ${args.join(' ')}`);
  };
  // Fail closed: if tunnat dies its TUN and the route through it vanish, and LAN traffic must be
  // refused rather than fall through to the main table and leave untranslated.
  await route(['prohibit', 'default', 'table', T, 'proto', PROTO, 'metric', String(FAIL_CLOSED_METRIC)]);
  // The source the gateway's own packets take on this route (its ICMP errors, rule 998): the TUN has no
  // address, and the kernel would otherwise borrow one from another interface, maybe the LAN's, which
  // would then leave on the WAN (a Record Route option too records the route's source).
  const srcHint = cfg.publicIpOwned ? cfg.publicIp : await interfacePrimaryIpv4(wan);
  await route(['default', 'dev', tun, 'table', T, 'proto', PROTO, ...(srcHint !== null && !cfg.internal.some((c) => ((srcHint & prefixMask(c.prefixLength)) >>> 0) === c.network) ? ['src', ipToString(srcHint)] : [])]);
  // No fallback here: without tunnat the gateway's own inbound traffic falls through to the local table.
  await route(['default', 'dev', tun, 'table', T1, 'proto', PROTO]);

  const rule = async (args: string[], inbound = false): Promise<void> => {
    const full = [...args, 'protocol', PROTO];
    await j.step({ kind: 'rule', args: full, ...(inbound ? { inbound } : {}) }, () => ip(['ip', 'rule', 'add', ...full]));
    log(`ip rule add ${full.join(' ')}`);
  };
  for (const c of cfg.internal) await rule(['pref', String(RULE_PREF.antiSpoof), 'iif', wan, 'from', cidrText(c), 'blackhole']);
  for (const c of cfg.internal) await rule(['pref', String(RULE_PREF.wanToLan), 'iif', wan, 'to', cidrText(c), 'blackhole']);
  await rule(['pref', String(RULE_PREF.fromTunLocal), 'iif', tun, 'lookup', 'local']);
  await rule(['pref', String(RULE_PREF.fromTun), 'iif', tun, 'lookup', 'main']);
  for (const c of cfg.internal) await rule(['pref', String(RULE_PREF.lanToLan), 'to', cidrText(c), 'lookup', 'main']);
  await rule(['pref', String(RULE_PREF.gatewayIcmp), 'iif', 'lo', 'ipproto', 'icmp', 'lookup', T]);
  for (const c of cfg.internal) await rule(['pref', String(RULE_PREF.outbound), 'from', cidrText(c), 'lookup', T]);
  // Inert until the pref-0 local rule goes, so they are safe to add first.
  await rule(['pref', String(RULE_PREF.inbound), 'iif', wan, 'to', pub, 'lookup', T1], true);
  for (const c of cfg.internal) await rule(['pref', String(RULE_PREF.hairpin), 'from', cidrText(c), 'to', pub, 'lookup', T], true);
  await addProxyNeighbour(j, pub, wan, log);

  if (moveLocal) {
    // Add the new local rule before deleting the old one: a crash in between must not stop local delivery.
    await rule(['pref', String(RULE_PREF.local), 'lookup', 'local']);
    await j.step({ kind: 'local-rule-moved' }, () => ip(['ip', 'rule', 'del', 'pref', '0', 'lookup', 'local']));
    log('ip rule del pref 0 lookup local');
  }
}

/**
 * Answer ARP on the WAN for the public address. Needed for an address the gateway does not own,
 * and also for one it does: ARP resolves the target through the routing rules with iif WAN, so
 * the inbound rule makes the kernel see a route into the TUN instead of a local address, and it
 * would stop answering for its own WAN address once neighbours' caches expire.
 */
async function addProxyNeighbour(j: Journal, address: string, dev: string, log: Log): Promise<void> {
  const existing = await listProxyNeighbours();
  // Someone else's identical entry: adding would silently succeed and removing would take theirs.
  if (existing.some((n) => n.dst === address && n.dev === dev)) return;
  await j.step({ kind: 'proxy-neigh', address, dev }, () =>
    ip(['ip', 'neigh', 'add', 'proxy', address, 'dev', dev, 'protocol', PROTO]),
  );
  log(`ip neigh add proxy ${address} dev ${dev} protocol ${PROTO}`);
}

/**
 * Set up the gateway's routing for tunnat (see the module comment and DESIGN.md). Refuses with
 * ALREADY_RUNNING when a live tunnat owns this namespace and ROUTING_CONFLICT over leftovers or
 * someone else's rules in tables T/T+1. On failure everything applied so far is undone.
 */
export async function applyRouting(cfg: RoutingConfig, log: Log = quiet): Promise<AppliedRouting> {
  validateConfig(cfg);
  const inode = netnsInode();
  await refuseConflicts(cfg, inode);

  const tunLink = await linkInfo(cfg.tun);
  if (tunLink === null) throw new RoutingError('ROUTING_INVALID', `TUN interface ${cfg.tun} does not exist`);
  const wanLink = await linkInfo(cfg.externalIface);
  if (wanLink === null) throw new RoutingError('ROUTING_INVALID', `WAN interface ${cfg.externalIface} does not exist`);
  const moveLocal = await planLocalRule(cfg);

  const state: AppliedRouting = {
    version: 1,
    runId: randomBytes(8).toString('hex'),
    pid: process.pid,
    pidStartTime: processStartTime(process.pid),
    netnsInode: inode,
    stateFile: stateFilePath(inode, cfg.tun),
    wan: { ifindex: wanLink.ifindex, address: wanLink.address },
    config: structuredClone(cfg),
    steps: [],
  };
  const j = new Journal(state);
  try {
    j.save();
  } catch (err) {
    throw new RoutingError('ROUTING_FAILED', `cannot write the state file ${state.stateFile}: ${(err as Error).message}`, { cause: err });
  }
  try {
    await applySteps(j, cfg, tunLink, moveLocal, log);
  } catch (err) {
    const ctx: UndoCtx = { errors: [], log };
    await drive(undoJournal(state, ctx));
    const undone = ctx.errors.length === 0 ? 'everything applied before it was undone' : `undoing failed too:\n  ${ctx.errors.join('\n  ')}`;
    throw new RoutingError('ROUTING_FAILED', `setting up routing for ${cfg.tun} failed: ${(err as Error).message}; ${undone}`, { cause: err });
  }
  log(`routing for ${cfg.tun} in place (state file ${state.stateFile})`);
  return structuredClone(state);
}

// ---------------------------------------------------------------------------------------------
// Remove

/**
 * The record to undo: the state file, which reflects partial removals and address updates. When
 * it is gone (removed already) or belongs to a later run at the same path, there is nothing to do:
 * undoing the caller's copy again could overwrite sysctls someone changed since.
 */
function stateToUndo(applied: AppliedRouting): AppliedRouting | null {
  let onDisk: AppliedRouting | null = null;
  try {
    onDisk = parseAppliedRouting(readStateFile(applied.stateFile));
  } catch {
    onDisk = null;
  }
  return onDisk !== null && onDisk.runId === applied.runId ? onDisk : null;
}

/**
 * Undo everything the state file lists, in reverse, tolerating things already gone (a vanished
 * TUN takes its routes and sysctls along). Idempotent: once the state file is gone this does
 * nothing. On failure the file keeps what could not be undone, and the error says so.
 */
export async function removeRouting(applied: AppliedRouting, log: Log = quiet): Promise<void> {
  const state = stateToUndo(applied);
  if (state === null) return;
  const ctx: UndoCtx = { errors: [], log };
  await drive(undoJournal(state, ctx));
  if (ctx.errors.length > 0) throw undoFailed(state, ctx.errors);
  log(`routing for ${state.config.tun} removed`);
}

/** removeRouting for process 'exit' handlers, where the event loop no longer runs. */
export function removeRoutingSync(applied: AppliedRouting): void {
  const state = stateToUndo(applied);
  if (state === null) return;
  const ctx: UndoCtx = { errors: [], log: quiet };
  driveSync(undoJournal(state, ctx));
  if (ctx.errors.length > 0) throw undoFailed(state, ctx.errors);
}

// ---------------------------------------------------------------------------------------------
// Masquerade: follow a changed WAN address

/**
 * Point the inbound rule (and the proxy ARP entry) at a new public address: the new ones are
 * added before the old ones go, so no packet for either address is mis-delivered in between.
 */
export async function updatePublicIp(applied: AppliedRouting, newIp: number, log: Log = quiet): Promise<AppliedRouting> {
  if (!Number.isInteger(newIp) || newIp < 0 || newIp > 0xffffffff) throw new RoutingError('ROUTING_INVALID', `invalid public address ${newIp}`);
  let state: AppliedRouting | null = null;
  try {
    state = parseAppliedRouting(readStateFile(applied.stateFile));
  } catch {
    state = null;
  }
  if (state === null || state.runId !== applied.runId) {
    throw new RoutingError('ROUTING_FAILED', `no routing of this run to update (state file ${applied.stateFile} is gone or belongs to another run)`);
  }
  if (state.config.publicIp === newIp) return structuredClone(state);

  const { externalIface: wan } = state.config;
  const pub = ipToString(newIp);
  const oldSteps = state.steps.filter((s) => (s.kind === 'rule' && s.inbound === true) || s.kind === 'proxy-neigh');
  const j = new Journal(state);
  // Every rule that names the public address (inbound, hairpin) is re-made with the new one.
  const newRules = oldSteps
    .filter((st): st is Extract<RoutingStep, { kind: 'rule' }> => st.kind === 'rule')
    .map((st) => st.args.map((a, i) => (i > 0 && st.args[i - 1] === 'to' ? pub : a)));
  try {
    for (const args of newRules) {
      await j.step({ kind: 'rule', args, inbound: true }, () => ip(['ip', 'rule', 'add', ...args]));
      log(`ip rule add ${args.join(' ')}`);
    }
    await addProxyNeighbour(j, pub, wan, log);
    // The outbound route's source hint was the old address (see applySteps): it moves with it.
    const old = ipToString(state.config.publicIp);
    for (const st of state.steps) {
      if (st.kind !== 'route') continue;
      const at = st.args.indexOf('src');
      if (at < 0 || st.args[at + 1] !== old) continue;
      let args = st.args.map((a, i) => (i === at + 1 ? pub : a));
      try {
        await ip(['ip', 'route', 'replace', ...args]);
      } catch {
        // Not (yet) an address of the gateway: the kernel picks the source itself, as without a hint.
        args = st.args.filter((_, i) => i !== at && i !== at + 1);
        await ip(['ip', 'route', 'replace', ...args]);
      }
      st.args = args;
      j.save();
      log(`ip route replace ${args.join(' ')}`);
    }
  } catch (err) {
    throw new RoutingError('ROUTING_FAILED', `could not move the inbound rules to ${pub}: ${(err as Error).message}`, { cause: err });
  }

  const ctx: UndoCtx = { errors: [], log };
  for (const step of oldSteps) {
    if (await drive(undoStep(step, ctx))) state.steps.splice(state.steps.indexOf(step), 1);
  }
  state.config = { ...state.config, publicIp: newIp };
  j.save();
  if (ctx.errors.length > 0) {
    throw new RoutingError('ROUTING_FAILED', `${pub} is routed, but the old address's entries remain:\n  ${ctx.errors.join('\n  ')}`);
  }
  return structuredClone(state);
}

// ---------------------------------------------------------------------------------------------
// Restart without loss

/**
 * Record that the TUN has been made persistent (the caller does the ioctl) and leave everything in place:
 * the rules keep steering traffic into the TUN, whose routes survive with it, and a TUN nobody reads drops
 * what is routed into it. The gateway stays failed closed until `adoptRouting` (the next `tunnat run
 * --state`) or `tunnat down` (cleanLeftovers deletes the device).
 */
export function keepForRestart(applied: AppliedRouting): void {
  const state = stateToUndo(applied);
  if (state === null) throw new RoutingError('ROUTING_FAILED', `no routing of this run to keep (state file ${applied.stateFile} is gone)`);
  if (!state.steps.some((st) => st.kind === 'tun-persist')) {
    state.steps.push({ kind: 'tun-persist', dev: state.config.tun });
    writeStateFile(state.stateFile, state);
  }
}

/** Whether adoptRouting would take over this leftover (pure: nothing is changed or run). */
export function canAdoptRouting(cfg: RoutingConfig, l: Leftover): boolean {
  const trusted = l.crashed.filter((c) => c.trusted && c.state !== null);
  if (l.foreign || trusted.length !== 1) return false;
  const old = trusted[0]!.state!.config;
  return (
    old.tun === cfg.tun &&
    old.table === cfg.table &&
    old.externalIface === cfg.externalIface &&
    old.publicIpOwned === cfg.publicIpOwned &&
    old.gatewayPorts[0] === cfg.gatewayPorts[0] &&
    old.gatewayPorts[1] === cfg.gatewayPorts[1] &&
    JSON.stringify(old.internal.map(cidrText)) === JSON.stringify(cfg.internal.map(cidrText))
  );
}

/**
 * Take over the set-up a previous run left behind — kept for a restart (keepForRestart) or left by a
 * killed run — without removing a single rule, so no packet slips out untranslated in between (the
 * rules keep steering LAN traffic into the TUN or, while it is gone, into the fail-closed route).
 * Returns null when there is nothing to adopt: no trusted record, another TUN or table, or a different
 * LAN/WAN — the caller then cleans up and applies afresh. The caller must already hold the TUN open.
 */
export async function adoptRouting(cfg: RoutingConfig, l: Leftover, log: Log = quiet): Promise<AppliedRouting | null> {
  if (!canAdoptRouting(cfg, l)) return null;
  const old = l.crashed.find((c) => c.trusted && c.state !== null)!.state!;
  if ((await linkInfo(cfg.tun)) === null) return null;
  // A killed run's TUN vanished with its routes and per-device sysctls; a persistent one kept them.
  // Re-assert exactly those (idempotently) — the rules, which never went away, are not touched.
  const tunConf = `/conf/${cfg.tun}/`;
  for (const st of old.steps) {
    if (st.kind === 'sysctl' && st.key.includes(tunConf)) {
      writeSysctl(st.key, st.value);
    } else if (st.kind === 'link' && st.dev === cfg.tun) {
      await ip(['ip', 'link', 'set', 'dev', cfg.tun, ...(st.mtu !== undefined ? ['mtu', String(st.mtu)] : []), 'up']);
    } else if (st.kind === 'route' && st.args.includes(cfg.tun)) {
      await ip(['ip', 'route', 'replace', ...st.args]);
    }
  }
  const state: AppliedRouting = {
    ...old,
    runId: randomBytes(8).toString('hex'),
    pid: process.pid,
    pidStartTime: processStartTime(process.pid),
    // Persistent again only if this run is stopped for a restart too.
    steps: old.steps.filter((st) => st.kind !== 'tun-persist'),
  };
  writeStateFile(state.stateFile, state);
  log(`adopted the routing of pid ${old.pid} for ${cfg.tun} (state file ${state.stateFile})`);
  let adopted = structuredClone(state);
  if (old.config.publicIp !== cfg.publicIp) adopted = await updatePublicIp(adopted, cfg.publicIp, log);
  return adopted;
}

// ---------------------------------------------------------------------------------------------
// Leftovers of a crashed run

/**
 * What a crashed tunnat left in this namespace: state files whose process is gone and rules,
 * routes and proxy entries that carry tunnat's marker or sit in tables T/T+1. Null when there is
 * nothing. Throws ALREADY_RUNNING when a live tunnat owns the namespace (its routing is no leftover).
 */
export async function detectLeftovers(tun: string, table: number): Promise<Leftover | null> {
  if (!isValidIfname(tun)) throw new RoutingError('ROUTING_INVALID', `invalid TUN interface name ${JSON.stringify(tun)}`);
  const inode = netnsInode();
  const found = await scanNamespace(table);
  const anyMarkedRule = found.some((f) => f.kind === 'rule' && f.marked);
  const crashed: CrashedRun[] = [];
  for (const file of stateFilesOfNetns(inode)) {
    let state: AppliedRouting | null = null;
    try {
      state = parseAppliedRouting(readStateFile(file));
    } catch {
      state = null;
    }
    if (state === null) {
      crashed.push({ file, state: null, trusted: false, reason: 'the file is not a tunnat state record' });
      continue;
    }
    if (isProcessAlive(state.pid, state.pidStartTime)) {
      throw new RoutingError('ALREADY_RUNNING', `tunnat (pid ${state.pid}, TUN ${state.config.tun}) is running in this namespace (state file ${file})`);
    }
    const wanNow = await linkInfo(state.config.externalIface);
    const sameWan = wanNow !== null && wanNow.ifindex === state.wan.ifindex && wanNow.address === state.wan.address;
    if (state.netnsInode === inode && (sameWan || anyMarkedRule)) {
      crashed.push({ file, state, trusted: true, reason: `pid ${state.pid} exited without undoing its routing` });
    } else {
      crashed.push({
        file,
        state,
        trusted: false,
        reason:
          `the record (pid ${state.pid}) seems to belong to an earlier namespace with the same inode: ` +
          `its WAN link ${state.config.externalIface} differs and no tunnat rule is present`,
      });
    }
  }
  const rules = await listRules();
  const unmarkedLocal = rules.some((r) => isPlainLocalRule(r) && r.protocol !== PROTO);
  const localRuleMissing = !unmarkedLocal;
  if (crashed.length === 0 && found.length === 0) return null;
  return { netnsInode: inode, tun, table, crashed, found, localRuleMissing, foreign: found.some((f) => !f.marked) };
}

/**
 * Remove what detectLeftovers found, logging each removal: trusted records are undone step by
 * step (sysctls restored to their saved values), then whatever is still marked or in tables
 * T/T+1 is deleted. Without a trusted record the old sysctl values are unknown; they are left
 * as they are and the log says so.
 */
export async function cleanLeftovers(l: Leftover, log: Log = quiet): Promise<void> {
  const errors: string[] = [];
  let restoredSysctls = false;
  for (const c of l.crashed) {
    if (c.trusted && c.state) {
      log(`undoing the routing of crashed tunnat pid ${c.state.pid} (TUN ${c.state.config.tun}) from ${c.file}`);
      const ctx: UndoCtx = { errors: [], log: (m) => log(`  ${m}`) };
      await drive(undoJournal(c.state, ctx));
      errors.push(...ctx.errors);
      restoredSysctls = true;
    } else {
      log(`removing ${c.file} without acting on it: ${c.reason}`);
      deleteStateFile(c.file);
    }
  }

  const remaining = await scanNamespace(l.table);
  if (remaining.length > 0) {
    const rules = await listRules();
    const unmarkedLocal = rules.some((r) => isPlainLocalRule(r) && r.protocol !== PROTO);
    if (!unmarkedLocal && remaining.some((f) => f.localRule)) {
      const argv = ['ip', 'rule', 'add', 'pref', '0', 'lookup', 'local'];
      const r = await run(argv, { allowFail: true });
      if (r.exitCode !== 0) errors.push(failure(argv, r));
      else log(cmdText(argv));
    }
    // Marked local rules last: by then the pref-0 rule is back.
    const ordered = [...remaining.filter((f) => !f.localRule), ...remaining.filter((f) => f.localRule)];
    for (const f of ordered) {
      const r = await run(f.del, { allowFail: true });
      if (r.exitCode === 0) log(cmdText(f.del));
      else if (!isGone(r.stderr)) errors.push(failure(f.del, r));
    }
    if (!restoredSysctls) {
      log(
        'no state file recorded the sysctls tunnat changed; left as they are: net.ipv4.ip_forward, net.ipv4.conf.all.rp_filter, ' +
          'net.ipv4.ip_early_demux, net.ipv4.ip_local_port_range and per-interface forwarding/proxy_delay',
      );
    }
  }
  if (errors.length > 0) {
    throw new RoutingError('ROUTING_FAILED', `could not remove all leftovers of tunnat in this namespace:\n  ${errors.join('\n  ')}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Addresses

/**
 * The interface's primary IPv4 address (the first global, non-secondary one), or null when it
 * has none or does not exist (a PPP link vanishes while it reconnects).
 */
export async function interfacePrimaryIpv4(iface: string): Promise<number | null> {
  const argv = ['ip', '-j', '-4', 'addr', 'show', 'dev', iface];
  const r = await run(argv, { allowFail: true });
  if (r.exitCode !== 0) {
    if (/does not exist|Cannot find device/.test(r.stderr)) return null;
    throw new Error(failure(argv, r));
  }
  const infos: Record<string, unknown>[] = [];
  for (const link of parseJsonArray(r.stdout, cmdText(argv))) {
    const ai = link['addr_info'];
    if (Array.isArray(ai)) infos.push(...ai.filter(isRecord));
  }
  const usable = infos.filter((a) => a['family'] === 'inet' && typeof a['local'] === 'string');
  const primary =
    usable.find((a) => a['scope'] === 'global' && a['secondary'] !== true && a['tentative'] !== true) ?? usable[0];
  return primary ? parseIpv4(primary['local'] as string) : null;
}

/** Whether the kernel treats the address as one of its own (any `local` route in the local table). */
export async function gatewayOwnsAddress(addr: number): Promise<boolean> {
  const r = await run(['ip', '-j', 'route', 'show', 'table', 'local', 'type', 'local']);
  for (const row of parseJsonArray(r.stdout, 'ip route show table local')) {
    const dst = str(row['dst']);
    if (dst === undefined) continue;
    const [a, len] = dst.split('/');
    const net = parseIpv4(a ?? '');
    if (net === null) continue;
    const mask = prefixMask(len === undefined ? 32 : Number(len));
    if (((addr & mask) >>> 0) === ((net & mask) >>> 0)) return true;
  }
  return false;
}
