import { parseCidr, ipToString, cidrToString, type Cidr } from '../wire/addr.js';
import { IPPROTO } from '../wire/ipv4.js';
import { FLOW_STATE_NAMES } from '../conntrack/listing.js';

/**
 * Filters for the flow listing and events (`tunnat conntrack --proto/--src/--dst/--state`) and for
 * the trace (`tunnat trace udp and host 192.168.1.10 and port 7`). Parsed once, on the CLI side and
 * again by the router (an HTTP client may send anything); an unknown word or value is a FilterError
 * naming it, never a silent match-all.
 */
export class FilterError extends Error {
  readonly code = 'BAD_FILTER';
  constructor(message: string) {
    super(message);
    this.name = 'FilterError';
  }
}

export const FILTER_PROTOCOLS = ['tcp', 'udp', 'icmp'] as const;
export type FilterProtocol = (typeof FILTER_PROTOCOLS)[number];

// ---------------------------------------------------------------------------------------------
// Flow filters

export interface FlowFilter {
  proto?: FilterProtocol;
  /** Matches the original direction's source (for flows from the LAN: the inside host). */
  src?: Cidr;
  /** Matches the original direction's destination (the remote end). */
  dst?: Cidr;
  state?: string;
}

/** The part of a flow a FlowFilter looks at (FlowRecord and the lab's FlowJson both fit). */
export interface FilterableFlow {
  protocol: string;
  original: { src: string; dst: string };
  state: string;
}

function addressArg(flag: string, v: string): Cidr {
  const c = parseCidr(v.includes('/') ? v : `${v}/32`);
  if (!c) throw new FilterError(`${flag}: expected an IPv4 address or prefix (e.g. 192.168.1.10 or 192.168.1.0/24), got ${JSON.stringify(v)}`);
  return c;
}

function protoArg(flag: string, v: string): FilterProtocol {
  const p = v.toLowerCase();
  if (!(FILTER_PROTOCOLS as readonly string[]).includes(p)) {
    throw new FilterError(`${flag}: unknown protocol ${JSON.stringify(v)} (known: ${FILTER_PROTOCOLS.join(', ')})`);
  }
  return p as FilterProtocol;
}

/** Build a FlowFilter from option values (flags or query parameters); undefined means "any". */
export function parseFlowFilter(v: { proto?: string | undefined; src?: string | undefined; dst?: string | undefined; state?: string | undefined }): FlowFilter {
  const f: FlowFilter = {};
  if (v.proto !== undefined) f.proto = protoArg('--proto', v.proto);
  if (v.src !== undefined) f.src = addressArg('--src', v.src);
  if (v.dst !== undefined) f.dst = addressArg('--dst', v.dst);
  if (v.state !== undefined) {
    const s = v.state.toUpperCase();
    if (!FLOW_STATE_NAMES.includes(s)) {
      throw new FilterError(`--state: unknown state ${JSON.stringify(v.state)} (known: ${FLOW_STATE_NAMES.join(', ')})`);
    }
    f.state = s;
  }
  return f;
}

const FLOW_FILTER_KEYS = ['proto', 'src', 'dst', 'state'] as const;

/** Parse a flow filter from a query string; unknown parameters are errors too. */
export function flowFilterFromQuery(q: URLSearchParams, allowed: readonly string[] = []): FlowFilter {
  for (const k of q.keys()) {
    if (!(FLOW_FILTER_KEYS as readonly string[]).includes(k) && !allowed.includes(k)) {
      throw new FilterError(`unknown filter ${JSON.stringify(k)} (known: ${FLOW_FILTER_KEYS.join(', ')})`);
    }
  }
  return parseFlowFilter({
    proto: q.get('proto') ?? undefined,
    src: q.get('src') ?? undefined,
    dst: q.get('dst') ?? undefined,
    state: q.get('state') ?? undefined,
  });
}

/** The filter as a query string (for the CLI's requests); empty when it matches everything. */
export function flowFilterToQuery(f: FlowFilter): string {
  const q = new URLSearchParams();
  if (f.proto) q.set('proto', f.proto);
  if (f.src) q.set('src', cidrToString(f.src));
  if (f.dst) q.set('dst', cidrToString(f.dst));
  if (f.state) q.set('state', f.state);
  return q.toString();
}

function inside(c: Cidr, addr: string): boolean {
  const a = parseCidr(`${addr}/32`);
  return a !== null && ((a.network & c.mask) >>> 0) === c.network;
}

export function flowMatches(f: FlowFilter, r: FilterableFlow): boolean {
  if (f.proto && r.protocol !== f.proto) return false;
  if (f.state && r.state !== f.state) return false;
  if (f.src && !inside(f.src, r.original.src)) return false;
  if (f.dst && !inside(f.dst, r.original.dst)) return false;
  return true;
}

// ---------------------------------------------------------------------------------------------
// Packet filters (trace)

export interface PacketFilter {
  /** IP protocol number, or -1 for any. */
  proto: number;
  /** Each must match the source or destination of the packet (before or after translation). */
  hosts: Cidr[];
  /** Each must match the source or destination port. */
  ports: number[];
}

const PROTO_NUMBERS: Record<FilterProtocol, number> = { tcp: IPPROTO.TCP, udp: IPPROTO.UDP, icmp: IPPROTO.ICMP };

export const PACKET_FILTER_HELP = 'FILTER is words joined by "and": tcp | udp | icmp | host ADDR[/LEN] | port N';

/** Parse `tcp and host 192.168.1.10 and port 80` (the "and"s are optional). */
export function parsePacketFilter(words: readonly string[]): PacketFilter {
  const f: PacketFilter = { proto: -1, hosts: [], ports: [] };
  const ws = words.flatMap((w) => w.split(/\s+/)).filter((w) => w !== '');
  for (let i = 0; i < ws.length; i++) {
    const w = ws[i]!.toLowerCase();
    if (w === 'and') continue;
    if ((FILTER_PROTOCOLS as readonly string[]).includes(w)) {
      const p = PROTO_NUMBERS[w as FilterProtocol];
      if (f.proto !== -1 && f.proto !== p) throw new FilterError(`filter: a packet cannot be both ${ws[i]} and another protocol`);
      f.proto = p;
    } else if (w === 'host') {
      const v = ws[++i];
      if (v === undefined) throw new FilterError('filter: "host" needs an address');
      const c = parseCidr(v.includes('/') ? v : `${v}/32`);
      if (!c) throw new FilterError(`filter: "host ${v}": not an IPv4 address or prefix`);
      f.hosts.push(c);
    } else if (w === 'port') {
      const v = ws[++i];
      const n = v !== undefined && /^\d{1,5}$/.test(v) ? Number(v) : NaN;
      if (!(n >= 0 && n <= 65535)) throw new FilterError(`filter: "port ${v ?? ''}": expected a port number 0-65535`);
      f.ports.push(n);
    } else {
      throw new FilterError(`filter: unknown word ${JSON.stringify(ws[i])} (${PACKET_FILTER_HELP})`);
    }
  }
  return f;
}

export function packetFilterToString(f: PacketFilter): string {
  const parts: string[] = [];
  for (const [name, n] of Object.entries(PROTO_NUMBERS)) if (n === f.proto) parts.push(name);
  for (const h of f.hosts) parts.push(`host ${h.prefixLength === 32 ? ipToString(h.network) : cidrToString(h)}`);
  for (const p of f.ports) parts.push(`port ${p}`);
  return parts.join(' and ');
}

/**
 * The fields a packet filter reads, for one packet seen twice (before and after translation).
 * Plain numbers in a reusable object: evaluating a filter allocates nothing.
 */
export interface PacketKey {
  proto: number;
  src: number;
  dst: number;
  /** -1 when the protocol has no ports (ICMP). */
  sport: number;
  dport: number;
}

function hostIn(c: Cidr, a: PacketKey): boolean {
  return ((a.src & c.mask) >>> 0) === c.network || ((a.dst & c.mask) >>> 0) === c.network;
}

/** Does the packet match, judged on its header before or after translation (`after` may be null: dropped)? */
export function packetMatches(f: PacketFilter, before: PacketKey, after: PacketKey | null): boolean {
  if (f.proto !== -1 && before.proto !== f.proto) return false;
  for (const h of f.hosts) if (!hostIn(h, before) && !(after !== null && hostIn(h, after))) return false;
  for (const p of f.ports) {
    const b = before.sport === p || before.dport === p;
    const a = after !== null && (after.sport === p || after.dport === p);
    if (!b && !a) return false;
  }
  return true;
}
