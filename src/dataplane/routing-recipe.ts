import { Journal, type Log } from '../host/journal.js';
import { mustRun } from '../host/commands.js';
import { interfacePrimaryIpv4, isPlainLocalRule, listProxyNeighbours, listRules, type LinkInfo, type NeighRow } from '../host/ip-json.js';
import { confKey, IP_FORWARD, isValidIfname, neighKey } from '../host/sysctl.js';
import { ipToString, parseIpv4, prefixMask } from '../wire/addr.js';
import { cidrText, FAIL_CLOSED_METRIC, PROTO, RESERVED_TABLES, RoutingError, RULE_PREF, type RoutingConfig, type RoutingStep } from './routing-record.js';

/**
 * The recipe (docs/operations.md, "What it changes on the system") as journalled steps, in the order that keeps every instant
 * failed closed: the settings that forward nothing by themselves first, then the fail-closed route
 * and every rule that diverts LAN traffic into the TUN, and forwarding last. The journal keeps the
 * forwarding switches at the end of the record, so undoing in reverse turns them off first.
 */

export function validateConfig(cfg: RoutingConfig): void {
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
  for (const a of [cfg.publicIp, ...(cfg.extraPublicIps ?? [])]) {
    if (!Number.isInteger(a) || a < 0 || a > 0xffffffff) bad(`invalid public address ${a}`);
  }
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

/**
 * Whether the pref-0 local rule must move behind the inbound rule. Throws when the local table is
 * already consulted somewhere that breaks the recipe.
 */
export async function planLocalRule(cfg: RoutingConfig): Promise<boolean> {
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

/** What the recipe reads and runs on the host; a test passes its own to see the plan without root. */
export interface RecipeIo {
  /** Run a command that must succeed. */
  run(argv: string[]): Promise<unknown>;
  proxyNeighbours(): Promise<NeighRow[]>;
  primaryIpv4(dev: string): Promise<number | null>;
}

export const hostRecipeIo: RecipeIo = { run: mustRun, proxyNeighbours: listProxyNeighbours, primaryIpv4: interfacePrimaryIpv4 };

/** Apply the recipe, each change journalled before it is made. */
export async function applySteps(j: Journal, cfg: RoutingConfig, tunLink: LinkInfo, moveLocal: boolean, log: Log, io: RecipeIo = hostRecipeIo): Promise<void> {
  const { tun, externalIface: wan } = cfg;
  const T = String(cfg.table);
  const T1 = String(cfg.table + 1);

  // Translated packets arrive from the TUN with the public source address, which the strict
  // reverse-path check (and the check against local sources) would drop.
  await j.sysctl(confKey('all', 'rp_filter'), '0');
  await j.sysctl(confKey(tun, 'rp_filter'), '0');
  await j.sysctl(confKey(tun, 'accept_local'), '1');
  // A TUN with no process attached (kept for a restart) has no carrier, but the kernel still uses its
  // routes unless told not to: the inbound rule would then swallow the gateway's own traffic into a
  // device nobody reads. Ignored, they let it fall through to the local table (and LAN traffic to the
  // fail-closed route), as when the device is gone after a kill.
  await j.sysctl(confKey(tun, 'ignore_routes_with_linkdown'), '1');
  // Without this the kernel ties a reply for one of the gateway's own sockets to the socket
  // before routing, then drops it when the route says "forward into the TUN" (docs/operations.md, the ip_early_demux row).
  await j.sysctl('net/ipv4/ip_early_demux', '0');
  // The gateway's own sockets stay inside this range; tunnat maps ports outside it.
  await j.sysctl('net/ipv4/ip_local_port_range', `${cfg.gatewayPorts[0]} ${cfg.gatewayPorts[1]}`);
  // Broadcast ARP requests for a proxy entry are otherwise answered after a random delay of up
  // to 0.8 s, meant to let a real owner answer first; here the gateway is the owner.
  await j.sysctl(neighKey(wan, 'proxy_delay'), '0');
  log('sysctls set');

  const linkArgs = ['ip', 'link', 'set', 'dev', tun, ...(cfg.tunMtu !== undefined ? ['mtu', String(cfg.tunMtu)] : []), 'up'];
  await j.step(
    { kind: 'link', dev: tun, wasUp: tunLink.up, oldMtu: tunLink.mtu, ...(cfg.tunMtu !== undefined ? { mtu: cfg.tunMtu } : {}) },
    () => io.run(linkArgs),
  );

  const route = async (args: string[]): Promise<void> => {
    await j.step({ kind: 'route', args }, () => io.run(['ip', 'route', 'add', ...args]));
    log(`ip route add ${args.join(' ')}`);
  };
  // Fail closed: if tunnat dies its TUN and the route through it vanish, and LAN traffic must be
  // refused rather than fall through to the main table and leave untranslated.
  await route(['prohibit', 'default', 'table', T, 'proto', PROTO, 'metric', String(FAIL_CLOSED_METRIC)]);
  // The source of the gateway's own packets on these routes (its ICMP, rule 998) and the address a
  // forwarded packet's Record Route option records: the TUN has no address, and the kernel would
  // otherwise borrow one from another interface, maybe the LAN's, which would then leave on the WAN.
  // A forwarded packet's own source is never changed by it.
  const srcHint = cfg.publicIpOwned ? cfg.publicIp : await io.primaryIpv4(wan);
  const src = srcHint !== null && !cfg.internal.some((c) => ((srcHint & prefixMask(c.prefixLength)) >>> 0) === c.network) ? ['src', ipToString(srcHint)] : [];
  await route(['default', 'dev', tun, 'table', T, 'proto', PROTO, ...src]);
  // No fallback here: without tunnat the gateway's own traffic (inbound, rule 10, and its ICMP, rule
  // 998) falls through to the local and main tables; only LAN traffic is refused.
  await route(['default', 'dev', tun, 'table', T1, 'proto', PROTO, ...src]);

  const rule = async (args: string[]): Promise<void> => {
    const full = [...args, 'protocol', PROTO];
    await j.step({ kind: 'rule', args: full }, () => io.run(['ip', 'rule', 'add', ...full]));
    log(`ip rule add ${full.join(' ')}`);
  };
  for (const c of cfg.internal) await rule(['pref', String(RULE_PREF.antiSpoof), 'iif', wan, 'from', cidrText(c), 'blackhole']);
  for (const c of cfg.internal) await rule(['pref', String(RULE_PREF.wanToLan), 'iif', wan, 'to', cidrText(c), 'blackhole']);
  await rule(['pref', String(RULE_PREF.fromTunLocal), 'iif', tun, 'lookup', 'local']);
  await rule(['pref', String(RULE_PREF.fromTun), 'iif', tun, 'lookup', 'main']);
  for (const c of cfg.internal) await rule(['pref', String(RULE_PREF.lanToLan), 'to', cidrText(c), 'lookup', 'main']);
  await rule(['pref', String(RULE_PREF.gatewayIcmp), 'iif', 'lo', 'ipproto', 'icmp', 'lookup', T1]);
  for (const c of cfg.internal) await rule(['pref', String(RULE_PREF.outbound), 'from', cidrText(c), 'lookup', T]);
  if (cfg.syncPath) {
    const from = ipToString(cfg.syncPath.local);
    const to = ipToString(cfg.syncPath.peer);
    await rule(['pref', String(RULE_PREF.syncPath), 'from', from, 'to', to, 'lookup', 'main', 'suppress_prefixlength', '0']);
    await rule(['pref', String(RULE_PREF.syncBlock), 'from', from, 'to', to, 'unreachable']);
  }
  // Inert until the pref-0 local rule goes, so they are safe to add first.
  await addAddressSteps(j, cfg, cfg.publicIp, true, log, io);
  // The rest of a pool: the same rules and ARP answers, not marked inbound (only the primary address's
  // rules are; see followAddresses).
  for (const extra of cfg.extraPublicIps ?? []) await addAddressSteps(j, cfg, extra, false, log, io);

  if (moveLocal) {
    // Add the new local rule before deleting the old one: a crash in between must not stop local delivery.
    await rule(['pref', String(RULE_PREF.local), 'lookup', 'local']);
    await j.step({ kind: 'local-rule-moved' }, () => io.run(['ip', 'rule', 'del', 'pref', '0', 'lookup', 'local']));
    log('ip rule del pref 0 lookup local');
  }

  // Forwarding last: until now the gateway routed nothing, so no LAN packet could leave before the
  // rules above divert it into the TUN (the journal keeps these at the end, so they go off first).
  // Forwarding on the ingress device is what counts: WAN→TUN inbound, TUN→WAN/LAN translated;
  // answering ARP for a proxy entry also needs it on the WAN side. ip_forward, which switches it on
  // for every interface (the LAN's too), is the very last.
  await j.sysctl(confKey(wan, 'forwarding'), '1');
  await j.sysctl(confKey(tun, 'forwarding'), '1');
  await j.sysctl(IP_FORWARD, '1');
  log('forwarding on');
}

/**
 * The rules that route one public address through tunnat, as `ip rule add` arguments: inbound from the
 * WAN (lookup T+1), and hairpin from each LAN prefix (lookup T).
 */
export function addressRules(cfg: RoutingConfig, addr: number): string[][] {
  const a = ipToString(addr);
  return [
    ['pref', String(RULE_PREF.inbound), 'iif', cfg.externalIface, 'to', a, 'lookup', String(cfg.table + 1), 'protocol', PROTO],
    ...cfg.internal.map((c) => ['pref', String(RULE_PREF.hairpin), 'from', cidrText(c), 'to', a, 'lookup', String(cfg.table), 'protocol', PROTO]),
  ];
}

/** The public address a journalled step is for (its inbound or hairpin rule, its proxy ARP entry), or null. */
export function stepAddress(st: RoutingStep): number | null {
  if (st.kind === 'proxy-neigh') return parseIpv4(st.address);
  if (st.kind !== 'rule' || (st.args[1] !== String(RULE_PREF.inbound) && st.args[1] !== String(RULE_PREF.hairpin))) return null;
  const to = st.args.indexOf('to');
  return to < 0 ? null : parseIpv4(st.args[to + 1] ?? '');
}

/** Route one public address through tunnat: its rules, then the WAN's ARP answer for it (a pair's: by role). */
export async function addAddressSteps(j: Journal, cfg: RoutingConfig, addr: number, primary: boolean, log: Log, io: RecipeIo = hostRecipeIo): Promise<void> {
  for (const args of addressRules(cfg, addr)) {
    await j.step({ kind: 'rule', args, ...(primary ? { inbound: true } : {}) }, () => io.run(['ip', 'rule', 'add', ...args]));
    log(`ip rule add ${args.join(' ')}`);
  }
  if (!cfg.proxyArpByRole) await addProxyNeighbour(j, ipToString(addr), cfg.externalIface, log, io);
}

/**
 * Answer ARP on the WAN for the public address. Needed for an address the gateway does not own,
 * and also for one it does: ARP resolves the target through the routing rules with iif WAN, so
 * the inbound rule makes the kernel see a route into the TUN instead of a local address, and it
 * would stop answering for its own WAN address once neighbours' caches expire.
 */
export async function addProxyNeighbour(j: Journal, address: string, dev: string, log: Log, io: RecipeIo = hostRecipeIo): Promise<void> {
  const existing = await io.proxyNeighbours();
  // Someone else's identical entry: adding would silently succeed and removing would take theirs.
  if (existing.some((n) => n.dst === address && n.dev === dev)) return;
  await j.step({ kind: 'proxy-neigh', address, dev }, () =>
    io.run(['ip', 'neigh', 'add', 'proxy', address, 'dev', dev, 'protocol', PROTO]),
  );
  log(`ip neigh add proxy ${address} dev ${dev} protocol ${PROTO}`);
}
