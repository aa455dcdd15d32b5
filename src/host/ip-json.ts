import { parseIpv4, prefixMask } from '../wire/addr.js';
import { cmdText, failure, mustRun, runTool } from './commands.js';

/**
 * Reading the namespace's links, addresses, rules, routes and proxy neighbours from `ip -j`, and
 * the arguments that delete a rule or route exactly as `ip` listed it. `-N` prints tables and
 * protocols as numbers, whatever /etc/iproute2 calls them.
 */

/** The kernel's local table. */
export const TABLE_LOCAL = 255;

export interface LinkInfo {
  ifindex: number;
  mtu: number;
  up: boolean;
  address: string | null;
}

export interface RuleRow {
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

export interface RouteRow {
  type?: string;
  dst: string;
  dev?: string;
  gateway?: string;
  table?: string;
  protocol?: string;
  metric?: number;
}

export interface NeighRow {
  dst: string;
  dev?: string;
  protocol?: string;
}

export function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function parseJsonArray(text: string, what: string): Record<string, unknown>[] {
  // `ip -j` prints nothing at all for some empty listings.
  if (text.trim() === '') return [];
  const v = JSON.parse(text) as unknown;
  if (!Array.isArray(v) || !v.every(isRecord)) throw new Error(`unexpected output of ${what}: ${text.slice(0, 200)}`);
  return v;
}

export const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);
export const num = (v: unknown): number | undefined => (typeof v === 'number' ? v : undefined);

export function linkFromJson(text: string): LinkInfo | null {
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

export async function linkInfo(dev: string): Promise<LinkInfo | null> {
  const r = await runTool(['ip', '-j', 'link', 'show', 'dev', dev]);
  if (r.exitCode !== 0) {
    if (/does not exist|Cannot find device/.test(r.stderr)) return null;
    throw new Error(`ip -j link show dev ${dev} failed: ${r.stderr.trim()}`);
  }
  return linkFromJson(r.stdout);
}

export async function listRules(): Promise<RuleRow[]> {
  // -N: tables and protocols as numbers, whatever /etc/iproute2 names them.
  const r = await mustRun(['ip', '-N', '-j', 'rule', 'show']);
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

export async function listRoutes(): Promise<RouteRow[]> {
  const r = await mustRun(['ip', '-N', '-j', 'route', 'show', 'table', 'all']);
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

export async function listProxyNeighbours(): Promise<NeighRow[]> {
  const r = await mustRun(['ip', '-N', '-j', 'neigh', 'show', 'proxy']);
  return parseJsonArray(r.stdout, 'ip neigh show proxy').map((o) => ({
    dst: str(o['dst']) ?? '',
    dev: str(o['dev']),
    protocol: str(o['protocol']),
  }));
}

/** A plain `from all lookup local` rule (the kernel's pref-0 rule or a moved copy of it). */
export function isPlainLocalRule(r: RuleRow): boolean {
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

export function ruleDelArgs(r: RuleRow): string[] {
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

export function routeDelArgs(r: RouteRow): string[] {
  const type = r.type === undefined ? 'unicast' : (ROUTE_TYPE_NAMES[r.type] ?? r.type);
  const a = [type, r.dst];
  if (r.gateway !== undefined) a.push('via', r.gateway);
  if (r.dev !== undefined) a.push('dev', r.dev);
  a.push('table', r.table ?? '254');
  if (r.metric !== undefined) a.push('metric', String(r.metric));
  if (r.protocol !== undefined) a.push('proto', r.protocol);
  return a;
}

// ---------------------------------------------------------------------------------------------
// Addresses

/**
 * The interface's IPv4 addresses, its primary one (the first global, non-secondary one) first, or an
 * empty list when it has none or does not exist (a PPP link vanishes while it reconnects). With `all`
 * false only the primary is wanted; with it, every global address that is not tentative, primary first.
 */
export async function interfaceIpv4s(iface: string, all = true): Promise<number[]> {
  const argv = ['ip', '-j', '-4', 'addr', 'show', 'dev', iface];
  const r = await runTool(argv);
  if (r.exitCode !== 0) {
    if (/does not exist|Cannot find device/.test(r.stderr)) return [];
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
  if (!primary) return [];
  const rest = all ? usable.filter((a) => a !== primary && a['scope'] === 'global' && a['tentative'] !== true) : [];
  const out: number[] = [];
  for (const a of [primary, ...rest]) {
    const v = parseIpv4(a['local'] as string);
    if (v !== null && !out.includes(v)) out.push(v);
  }
  return out;
}

/** The interface's primary IPv4 address, or null (see interfaceIpv4s). */
export async function interfacePrimaryIpv4(iface: string): Promise<number | null> {
  return (await interfaceIpv4s(iface, false))[0] ?? null;
}

/** Whether the kernel treats the address as one of its own (any `local` route in the local table). */
export async function gatewayOwnsAddress(addr: number): Promise<boolean> {
  const r = await mustRun(['ip', '-j', 'route', 'show', 'table', 'local', 'type', 'local']);
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

/** Every interface's IPv4 addresses (`ip -j -4 addr show`). */
export async function listIpv4Addresses(): Promise<{ ifname: string; addrs: { local: number; prefixlen: number }[] }[]> {
  const r = await mustRun(['ip', '-j', '-4', 'addr', 'show']);
  return parseJsonArray(r.stdout, 'ip -j -4 addr show').map((row) => ({
    ifname: str(row['ifname']) ?? '',
    addrs: (Array.isArray(row['addr_info']) ? row['addr_info'] : []).filter(isRecord).flatMap((a) => {
      const text = str(a['local']);
      const local = text !== undefined ? parseIpv4(text) : null;
      const prefixlen = num(a['prefixlen']);
      return local !== null && prefixlen !== undefined ? [{ local, prefixlen }] : [];
    }),
  }));
}
