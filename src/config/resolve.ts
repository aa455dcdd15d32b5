import { readFileSync } from 'node:fs';
import { parseCidr, parseIpv4, ipToString, cidrToString, type Cidr } from '../wire/addr.js';
import { resolveTimeouts, type Timeouts } from '../conntrack/timeouts.js';
import { FILTERING_NAMES, type FilteringName } from '../nat/translator.js';
import { parseForward, forwardText, checkForwards, parseEgress, PolicyError, type PortForward, type EgressRule } from '../nat/policy.js';
import { ConfigError, CONFIG_KEYS, DEFAULTS, MASQUERADE_ALL_USERSPACE, USERSPACE_ONLY, type Endpoint, type RouterConfig } from './config.js';
import { parsePublicPool, parseSnatEntries } from './pool.js';

/**
 * Resolving the router's configuration: defaults, then the JSON file given by --config, then flags
 * (given as the file's keys). Every error names the field it is about.
 */

/** A port range "LO-HI" within 1-65535. */
export function parseRange(field: string, v: unknown): [number, number] {
  if (typeof v !== 'string') throw new ConfigError(field, `expected "LO-HI", got ${JSON.stringify(v)}`);
  const m = /^(\d{1,5})-(\d{1,5})$/.exec(v.trim());
  const lo = m ? Number(m[1]) : NaN;
  const hi = m ? Number(m[2]) : NaN;
  if (!m || lo < 1 || hi > 65535 || lo > hi) {
    throw new ConfigError(field, `expected a port range LO-HI within 1-65535, got ${JSON.stringify(v)}`);
  }
  return [lo, hi];
}

export function parseEndpoint(field: string, v: unknown): Endpoint {
  if (typeof v !== 'string') throw new ConfigError(field, `expected HOST:PORT, got ${JSON.stringify(v)}`);
  const i = v.lastIndexOf(':');
  const host = v.slice(0, i);
  const port = Number(v.slice(i + 1));
  if (i <= 0 || !Number.isInteger(port) || port < 0 || port > 65535 || host === '') {
    throw new ConfigError(field, `expected HOST:PORT (e.g. 127.0.0.1:9100), got ${JSON.stringify(v)}`);
  }
  return { host, port };
}

function parseInternal(v: unknown): Cidr[] {
  const items = typeof v === 'string' ? v.split(',') : Array.isArray(v) ? v : null;
  if (!items || items.length === 0) throw new ConfigError('internal', 'expected CIDR[,CIDR…], e.g. 192.168.1.0/24');
  return items.map((item) => {
    const c = typeof item === 'string' ? parseCidr(item.trim()) : null;
    if (!c) throw new ConfigError('internal', `not an IPv4 prefix: ${JSON.stringify(item)}`);
    if (c.prefixLength < 8) throw new ConfigError('internal', `${item}: prefixes shorter than /8 would capture the internet`);
    return c;
  });
}

/** The largest snaplen: libpcap's own limit (MAXIMUM_SNAPLEN), above any packet the TUN hands over. */
const MAX_SNAPLEN = 262144;

function positiveInt(field: string, v: unknown, max: number): number {
  const n = typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > max) {
    throw new ConfigError(field, `expected an integer in 1..${max}, got ${JSON.stringify(v)}`);
  }
  return n;
}

function boundedInt(field: string, v: unknown, min: number, max: number): number {
  const n = typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < min || n > max) {
    throw new ConfigError(field, `expected an integer in ${min}..${max}, got ${JSON.stringify(v)}`);
  }
  return n;
}

/** Read and parse the JSON config file; unknown keys are errors (a typo must not pass silently). */
export function readConfigFile(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError('config', `cannot read ${path}: ${(err as Error).message}`);
  }
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw new ConfigError('config', `${path} is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof data !== 'object' || data === null || Array.isArray(data)) {
    throw new ConfigError('config', `${path} must hold a JSON object`);
  }
  for (const key of Object.keys(data)) {
    if (!(CONFIG_KEYS as readonly string[]).includes(key)) {
      throw new ConfigError(key, `unknown setting in ${path} (known: ${CONFIG_KEYS.join(', ')})`);
    }
  }
  return data as Record<string, unknown>;
}

/** Build the router config: file values first, flag values over them. */
export function resolveConfig(flags: Record<string, unknown>): RouterConfig {
  const file = typeof flags.config === 'string' ? readConfigFile(flags.config) : {};
  const get = (k: string): unknown => (flags[k] !== undefined ? flags[k] : file[k]);

  if (get('internal') === undefined) throw new ConfigError('internal', 'required: the LAN prefixes to translate (--internal CIDR[,CIDR…])');
  if (get('external') === undefined) throw new ConfigError('external', 'required: the WAN interface (--external IFACE)');
  const external = get('external');
  if (typeof external !== 'string' || !/^[A-Za-z0-9_.@-]{1,15}$/.test(external)) {
    throw new ConfigError('external', `not an interface name: ${JSON.stringify(external)}`);
  }
  const tun = get('tun') ?? DEFAULTS.tun;
  if (typeof tun !== 'string' || !/^[A-Za-z0-9_.-]{1,15}$/.test(tun)) {
    throw new ConfigError('tun', `not an interface name (1-15 of A-Z a-z 0-9 _ . -): ${JSON.stringify(tun)}`);
  }
  let publicIp: number | null = null;
  const pub = get('publicIp');
  const publicPool = pub !== undefined && pub !== null ? parsePublicPool(pub) : [];
  if (publicPool.length > 0) publicIp = publicPool[0]!;
  const snat = parseSnatEntries(get('snat'), publicPool);
  const masqueradeV = get('masquerade') ?? 'primary';
  if (masqueradeV !== 'primary' && masqueradeV !== 'all') {
    throw new ConfigError('masquerade', `expected primary or all, got ${JSON.stringify(masqueradeV)}`);
  }
  if (masqueradeV === 'all' && publicPool.length > 0) {
    throw new ConfigError('masquerade', '--masquerade all follows the addresses of --external; it cannot be combined with --public-ip');
  }
  const ports = get('ports') !== undefined ? parseRange('ports', get('ports')) : DEFAULTS.ports;
  const gatewayPorts = get('gatewayPorts') !== undefined ? parseRange('gatewayPorts', get('gatewayPorts')) : DEFAULTS.gatewayPorts;
  const httpV = get('http');
  const http = httpV === undefined ? DEFAULTS.http : httpV === 'off' || httpV === null ? null : parseEndpoint('http', httpV);
  const httpSocket = get('httpSocket');
  if (httpSocket !== undefined && (typeof httpSocket !== 'string' || !httpSocket.startsWith('/'))) {
    throw new ConfigError('httpSocket', `expected an absolute path, got ${JSON.stringify(httpSocket)}`);
  }
  const timeoutsV = get('timeouts') ?? {};
  if (typeof timeoutsV !== 'object' || Array.isArray(timeoutsV) || timeoutsV === null) {
    throw new ConfigError('timeouts', 'expected an object of seconds, e.g. {"udp": 300}');
  }
  let timeouts: Timeouts;
  try {
    timeouts = resolveTimeouts(timeoutsV as Record<string, unknown>);
  } catch (err) {
    const msg = (err as Error).message;
    throw new ConfigError(msg.split(':')[0]!, msg.slice(msg.indexOf(':') + 2));
  }
  const logLevel = get('logLevel') ?? DEFAULTS.logLevel;
  if (!['debug', 'info', 'warn', 'error'].includes(logLevel as string)) {
    throw new ConfigError('logLevel', `expected debug|info|warn|error, got ${JSON.stringify(logLevel)}`);
  }
  const engine = get('engine') ?? 'userspace';
  if (!['userspace', 'kernel', 'auto'].includes(engine as string)) {
    throw new ConfigError('engine', `expected userspace|kernel|auto, got ${JSON.stringify(engine)}`);
  }
  const backend = get('backend') ?? 'auto';
  if (!['auto', 'nft', 'iptables'].includes(backend as string)) {
    throw new ConfigError('backend', `expected auto|nft|iptables, got ${JSON.stringify(backend)}`);
  }
  const filtering = get('filtering') ?? 'address';
  if (!(FILTERING_NAMES as readonly string[]).includes(filtering as string)) {
    throw new ConfigError('filtering', `expected ${FILTERING_NAMES.join('|')}, got ${JSON.stringify(filtering)}`);
  }
  const internal = parseInternal(get('internal'));
  const isInternal = (a: number) => internal.some((c) => ((a & c.mask) >>> 0) === c.network);
  const forwardV = get('forward') ?? [];
  const forwardList = typeof forwardV === 'string' ? [forwardV] : forwardV;
  if (!Array.isArray(forwardList) || forwardList.some((f) => typeof f !== 'string')) {
    throw new ConfigError('forward', 'expected a list of "PROTO:[PUBLICADDR:]PUBLICPORT=ADDR[:PORT]"');
  }
  const algFtp = parseAlg(get('alg'));
  const egressV = get('allowEgress');
  if (egressV !== undefined && egressV !== null && typeof egressV !== 'string') {
    throw new ConfigError('allowEgress', 'expected a string like "tcp:80,tcp:443,udp:53,icmp"');
  }
  let forwards: PortForward[];
  let allowEgress: EgressRule[] | null;
  try {
    forwards = (forwardList as string[]).map((f) => parseForward(f, isInternal));
    // With a static pool a forward may name only one of its addresses; the first is the default, so naming
    // it is the same forward as naming none. Masquerade's addresses are the WAN's: a named one takes
    // effect while the WAN has it.
    if (publicPool.length > 0) {
      forwards = forwards.map((f, i) => {
        if (!f.publicAddress) return f;
        if (!publicPool.includes(f.publicAddress)) {
          throw new PolicyError('forward', `${String((forwardList as string[])[i])}: ${ipToString(f.publicAddress)} is not one of --public-ip (${publicPool.map(ipToString).join(', ')})`);
        }
        return f.publicAddress === publicPool[0] ? { ...f, publicAddress: 0 } : f;
      });
    }
    checkForwards(forwards);
    allowEgress = typeof egressV === 'string' ? parseEgress(egressV) : null;
  } catch (err) {
    if (err instanceof PolicyError) throw new ConfigError(err.field, err.message);
    throw err;
  }
  const bool = (field: string, v: unknown, dflt: boolean): boolean => {
    if (v === undefined) return dflt;
    if (typeof v !== 'boolean') throw new ConfigError(field, `expected true or false, got ${JSON.stringify(v)}`);
    return v;
  };
  const perHost = get('maxFlowsPerHost');
  const stateV = get('state');
  if (stateV !== undefined && stateV !== null && (typeof stateV !== 'string' || stateV === '')) {
    throw new ConfigError('state', `expected a file path, got ${JSON.stringify(stateV)}`);
  }
  const stateFile = stateV as string | null | undefined;
  const userV = get('user') as string | null | undefined;
  if (userV !== undefined && userV !== null && (typeof userV !== 'string' || !/^[a-z_][a-z0-9_-]*\$?$/i.test(userV))) {
    throw new ConfigError('user', `not a user name: ${JSON.stringify(userV)}`);
  }
  const pcap = get('pcap');
  if (pcap !== undefined && pcap !== null && (typeof pcap !== 'string' || pcap === '')) {
    throw new ConfigError('pcap', `expected a file name, got ${JSON.stringify(pcap)}`);
  }
  if (masqueradeV === 'all' && engine === 'kernel') throw new ConfigError('masquerade', `--masquerade all ${MASQUERADE_ALL_USERSPACE}`);
  if (typeof pcap === 'string' && engine === 'kernel') throw new ConfigError('pcap', `--pcap ${USERSPACE_ONLY}`);
  const snapV = get('pcapSnaplen');
  let pcapSnaplen: RouterConfig['pcapSnaplen'] = DEFAULTS.pcapSnaplen;
  if (snapV !== undefined && snapV !== 'headers') {
    try {
      pcapSnaplen = boundedInt('pcapSnaplen', snapV, 0, MAX_SNAPLEN);
    } catch {
      throw new ConfigError('pcapSnaplen', `expected "headers" or bytes per packet in 0..${MAX_SNAPLEN} (0: whole packets), got ${JSON.stringify(snapV)}`);
    }
  }
  const ha = resolveHa(get, { publicPool, engine: engine as string, masquerade: publicIp === null });
  const cfg: RouterConfig = {
    internal,
    external,
    publicIp,
    masquerade: masqueradeV,
    publicPool,
    snat,
    tun,
    ports,
    gatewayPorts,
    http,
    httpSocket: (httpSocket as string | undefined) ?? null,
    maxFlows: get('maxFlows') !== undefined ? positiveInt('maxFlows', get('maxFlows'), 1 << 24) : DEFAULTS.maxFlows,
    timeouts,
    table: get('table') !== undefined ? positiveInt('table', get('table'), 0x7ffffffe) : DEFAULTS.table,
    batch: get('batch') !== undefined ? positiveInt('batch', get('batch'), 1024) : DEFAULTS.batch,
    busyPoll: get('busyPoll') !== undefined ? boundedInt('busyPoll', get('busyPoll'), 0, 10_000) : DEFAULTS.busyPoll,
    workers: get('workers') !== undefined && get('workers') !== 'auto' ? boundedInt('workers', get('workers'), 1, 64) : DEFAULTS.workers,
    logLevel: logLevel as RouterConfig['logLevel'],
    engine: engine as RouterConfig['engine'],
    backend: backend as RouterConfig['backend'],
    filtering: filtering as FilteringName,
    forwards,
    algFtp,
    allowEgress,
    egressReject: bool('egressReject', get('egressReject'), false),
    maxFlowsPerHost: perHost !== undefined ? positiveInt('maxFlowsPerHost', perHost, 1 << 24) : 0,
    icmpErrors: bool('icmpErrors', get('icmpErrors'), true),
    pcap: (pcap as string | null | undefined) ?? null,
    pcapSnaplen,
    pcapSize: get('pcapSize') !== undefined ? boundedInt('pcapSize', get('pcapSize'), 0, 1_000_000) : DEFAULTS.pcapSize,
    pcapFiles: get('pcapFiles') !== undefined ? positiveInt('pcapFiles', get('pcapFiles'), 1000) : DEFAULTS.pcapFiles,
    offload: bool('offload', get('offload'), true),
    stateFile: stateFile ?? null,
    user: userV ?? null,
    ...ha,
  };
  for (const a of publicPool) {
    if (cfg.internal.some((c) => ((a & c.mask) >>> 0) === c.network)) throw new ConfigError('publicIp', `${ipToString(a)} lies inside --internal`);
  }
  const [glo, ghi] = cfg.gatewayPorts;
  const [plo, phi] = cfg.ports;
  if (glo <= plo && ghi >= phi) {
    throw new ConfigError('gatewayPorts', `${glo}-${ghi} covers the whole --ports range ${plo}-${phi}: nothing left to map`);
  }
  return cfg;
}

/** An address and a port: `192.168.255.1:7400`. */
function parseAddrPort(field: string, v: unknown): { address: number; port: number } {
  const e = parseEndpoint(field, v);
  const address = parseIpv4(e.host);
  if (address === null || e.port < 1) throw new ConfigError(field, `expected ADDR:PORT with an IPv4 address and a port 1-65535, got ${JSON.stringify(v)}`);
  return { address, port: e.port };
}

/** The pair settings (`--ha-…`), checked against what a pair needs. */
function resolveHa(
  get: (k: string) => unknown,
  o: { publicPool: number[]; engine: string; masquerade: boolean },
): Pick<RouterConfig, 'haNode' | 'haSync' | 'haPeer' | 'haKey'> {
  const nodeV = get('haNode');
  const syncV = get('haSync');
  const peerV = get('haPeer');
  const keyV = get('haKey');
  const none = { haNode: null, haSync: null, haPeer: null, haKey: null };
  if (nodeV === undefined || nodeV === null) {
    for (const [k, v] of [['haSync', syncV], ['haPeer', peerV], ['haKey', keyV]] as const) {
      if (v !== undefined && v !== null) throw new ConfigError(k, 'needs --ha-node (this gateway is 0 or 1 of the pair)');
    }
    return none;
  }
  const node = String(nodeV) === '0' ? 0 : String(nodeV) === '1' ? 1 : null;
  if (node === null) throw new ConfigError('haNode', `expected 0 or 1, got ${JSON.stringify(nodeV)}`);
  if (o.engine !== 'userspace') {
    throw new ConfigError('haNode', "--ha-node is the userspace engine's pair; the kernel engine's is keepalived and conntrackd (docs/ha.md)");
  }
  if (o.masquerade || o.publicPool.length !== 1) {
    throw new ConfigError('haNode', 'a pair shares one public address that keepalived moves: give it as --public-ip ADDR (one address, not masquerade)');
  }
  if (peerV === undefined || peerV === null) {
    if (syncV !== undefined && syncV !== null) throw new ConfigError('haSync', 'needs --ha-peer too');
    if (keyV !== undefined && keyV !== null) throw new ConfigError('haKey', 'needs --ha-peer too');
    return { ...none, haNode: node };
  }
  if (syncV === undefined || syncV === null) throw new ConfigError('haPeer', 'needs --ha-sync (where this gateway listens) too');
  if (typeof keyV !== 'string' || keyV === '') throw new ConfigError('haPeer', 'needs --ha-key FILE: the sync is authenticated with the pair\'s shared key');
  const haSync = parseAddrPort('haSync', syncV);
  const haPeer = parseAddrPort('haPeer', peerV);
  if (haSync.address === haPeer.address && haSync.port === haPeer.port) throw new ConfigError('haPeer', 'is this gateway\'s own --ha-sync');
  return { haNode: node, haSync, haPeer, haKey: keyV };
}

/** The config as JSON-friendly values (for logs and `tunnat run --dry-run`). */
export function describeConfig(c: RouterConfig): Record<string, unknown> {
  return {
    ...c,
    internal: c.internal.map(cidrToString),
    publicIp: c.publicIp === null ? 'masquerade' : c.publicPool.length > 1 ? c.publicPool.map(ipToString).join(',') : ipToString(c.publicIp),
    publicPool: c.publicPool.map(ipToString),
    snat: c.snat.map((e) => `${ipToString(e.network)}/${e.prefixLength}=${ipToString(e.address)}`),
    ports: c.ports.join('-'),
    gatewayPorts: c.gatewayPorts.join('-'),
    http: c.http ? `${c.http.host}:${c.http.port}` : 'off',
    forwards: c.forwards.map(forwardText),
    allowEgress: c.allowEgress === null ? 'everything' : c.allowEgress.length + ' rule(s)',
    haSync: c.haSync ? `${ipToString(c.haSync.address)}:${c.haSync.port}` : null,
    haPeer: c.haPeer ? `${ipToString(c.haPeer.address)}:${c.haPeer.port}` : null,
  };
}

/**
 * `--alg ftp[:PORT]` (repeatable; a string or a list in the config file): the server ports the FTP ALG
 * watches. Only FTP is known; the port defaults to 21.
 */
export function parseAlg(v: unknown): number[] {
  if (v === undefined || v === null) return [];
  const list = typeof v === 'string' ? [v] : v;
  if (!Array.isArray(list) || list.some((a) => typeof a !== 'string')) throw new ConfigError('alg', 'expected "ftp" or "ftp:PORT", or a list of them');
  const ports: number[] = [];
  for (const a of list as string[]) {
    const m = /^ftp(?::(\d{1,5}))?$/.exec(a.trim().toLowerCase());
    const port = m ? (m[1] === undefined ? 21 : Number(m[1])) : NaN;
    if (!(port >= 1 && port <= 65535)) throw new ConfigError('alg', `expected ftp or ftp:PORT (1-65535), got ${JSON.stringify(a)}`);
    if (!ports.includes(port)) ports.push(port);
  }
  return ports;
}
