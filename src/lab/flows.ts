/**
 * The router's `/conntrack` JSON as the lab sees it, the kernel's `conntrack -L` turned into the
 * same shape (so the kernel stand-in can be shown and checked the same way), and a readable table
 * of translations.
 */

/** tcp, udp, icmp, or another protocol's name (gre, esp, ipip, ah) or number (address-only flows). */
export type FlowProtocol = 'tcp' | 'udp' | 'icmp' | (string & {});

/** One direction of a flow. For ICMP both "ports" are the echo identifier. */
export interface FlowTuple {
  src: string;
  dst: string;
  srcPort: number;
  dstPort: number;
}

/** One element of `GET /conntrack`. */
export interface FlowJson {
  protocol: FlowProtocol;
  /** As the LAN host sent it. */
  original: FlowTuple;
  /** As replies arrive from the WAN: reply.dst/dstPort is the translated source. */
  reply: FlowTuple;
  state: string;
  secondsLeft: number;
  packets: { original: number; reply: number };
  bytes: { original: number; reply: number };
}

/** A protocol as /conntrack names it: a lower-case name, or the number of one without a name. */
const PROTOCOL = /^(?:[a-z][a-z0-9]*|\d{1,3})$/;

function isTuple(v: unknown): v is FlowTuple {
  const t = v as Partial<Record<keyof FlowTuple, unknown>> | null;
  return (
    typeof t === 'object' &&
    t !== null &&
    typeof t.src === 'string' &&
    typeof t.dst === 'string' &&
    typeof t.srcPort === 'number' &&
    typeof t.dstPort === 'number'
  );
}

function isPair(v: unknown): v is { original: number; reply: number } {
  const p = v as { original?: unknown; reply?: unknown } | null;
  return typeof p === 'object' && p !== null && typeof p.original === 'number' && typeof p.reply === 'number';
}

/** Parse and check the `/conntrack` body; throws naming the first element that does not fit. */
export function parseFlows(text: string): FlowJson[] {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw new Error(`/conntrack is not JSON: ${JSON.stringify(text.slice(0, 200))}`);
  }
  if (!Array.isArray(v)) throw new Error('/conntrack is not a JSON array');
  v.forEach((e: unknown, i) => {
    const f = e as Partial<Record<keyof FlowJson, unknown>> | null;
    const ok =
      typeof f === 'object' &&
      f !== null &&
      typeof f.protocol === 'string' &&
      PROTOCOL.test(f.protocol) &&
      isTuple(f.original) &&
      isTuple(f.reply) &&
      typeof f.state === 'string' &&
      typeof f.secondsLeft === 'number' &&
      isPair(f.packets) &&
      isPair(f.bytes);
    if (!ok) throw new Error(`/conntrack element ${i} does not have the documented shape: ${JSON.stringify(e).slice(0, 300)}`);
  });
  return v as FlowJson[];
}

/** The source address and port the WAN sees for this flow. */
export function translatedSource(f: FlowJson): { address: string; port: number } {
  return { address: f.reply.dst, port: f.reply.dstPort };
}

/** Flows whose original source is `address` (and `port`, when given). */
export function flowsFrom(flows: readonly FlowJson[], address: string, port?: number): FlowJson[] {
  return flows.filter((f) => f.original.src === address && (port === undefined || f.original.srcPort === port));
}

function endpoint(protocol: FlowProtocol, address: string, port: number): string {
  return protocol === 'icmp' ? address : `${address}:${port}`;
}

/** "192.168.1.10:40000 → 203.0.113.2:80" (ICMP: "192.168.1.10 → 203.0.113.2 id 7"). */
export function describeOriginal(f: FlowJson): string {
  const s = `${endpoint(f.protocol, f.original.src, f.original.srcPort)} → ${endpoint(f.protocol, f.original.dst, f.original.dstPort)}`;
  return f.protocol === 'icmp' ? `${s} id ${f.original.srcPort}` : s;
}

/** The same flow as it leaves the WAN side (the reply tuple turned around). */
export function describeTranslated(f: FlowJson): string {
  const s = `${endpoint(f.protocol, f.reply.dst, f.reply.dstPort)} → ${endpoint(f.protocol, f.reply.src, f.reply.srcPort)}`;
  return f.protocol === 'icmp' ? `${s} id ${f.reply.dstPort}` : s;
}

/** Render flows as an aligned text table, one line per flow, sorted by protocol then source. */
export function formatFlowTable(flows: readonly FlowJson[]): string {
  if (flows.length === 0) return '(no flows)';
  const header = ['PROTO', 'LAN SIDE (original)', 'WAN SIDE (translated)', 'STATE', 'EXPIRES', 'PKTS out/in'];
  const sorted = [...flows].sort(
    (a, b) =>
      a.protocol.localeCompare(b.protocol) ||
      a.original.src.localeCompare(b.original.src, 'en', { numeric: true }) ||
      a.original.srcPort - b.original.srcPort,
  );
  const rows = sorted.map((f) => [
    f.protocol,
    describeOriginal(f),
    describeTranslated(f),
    f.state,
    `${Math.max(0, Math.round(f.secondsLeft))}s`,
    `${f.packets.original}/${f.packets.reply}`,
  ]);
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c]!.length)));
  const line = (cells: string[]): string =>
    cells
      .map((cell, c) => cell.padEnd(widths[c]!))
      .join('  ')
      .trimEnd();
  return [line(header), ...rows.map(line)].join('\n');
}

// ---------------------------------------------------------------------------------------------
// The kernel's table, for the kernel stand-in

const KERNEL_PROTOCOLS: Record<string, FlowProtocol> = { tcp: 'tcp', udp: 'udp', icmp: 'icmp' };

/**
 * Parse one line of `conntrack -L` into the `/conntrack` shape (null for other protocols or lines).
 * Example: `tcp 6 117 TIME_WAIT src=192.168.1.10 dst=203.0.113.2 sport=39012 dport=80 packets=6
 * bytes=397 src=203.0.113.2 dst=203.0.113.1 sport=80 dport=39012 packets=4 bytes=439 [ASSURED] mark=0 use=1`
 */
export function parseKernelConntrackLine(line: string): FlowJson | null {
  const words = line.trim().split(/\s+/);
  const protocol = KERNEL_PROTOCOLS[words[0] ?? ''];
  if (!protocol) return null;
  const secondsLeft = Number(words[2]);
  // The first key=value group is the original direction; a repeated "src=" starts the reply.
  const dirs: Record<string, string>[] = [];
  const flags: string[] = [];
  let state = '';
  for (const w of words.slice(3)) {
    const eq = w.indexOf('=');
    if (eq > 0) {
      const k = w.slice(0, eq);
      if (k === 'src' || dirs.length === 0) dirs.push({});
      dirs[dirs.length - 1]![k] = w.slice(eq + 1);
    } else if (w.startsWith('[')) {
      flags.push(w.slice(1, -1));
    } else if (dirs.length === 0) {
      state = w;
    }
  }
  const o = dirs[0];
  const r = dirs[1];
  if (!o || !r || !o.src || !o.dst || !r.src || !r.dst) return null;
  const ports = (d: Record<string, string>): [number, number] =>
    protocol === 'icmp' ? [Number(d.id ?? 0), Number(d.id ?? 0)] : [Number(d.sport ?? 0), Number(d.dport ?? 0)];
  const [osp, odp] = ports(o);
  const [rsp, rdp] = ports(r);
  if (!state) state = flags.includes('UNREPLIED') ? 'UNREPLIED' : flags.includes('ASSURED') ? 'ASSURED' : 'REPLIED';
  return {
    protocol,
    original: { src: o.src, dst: o.dst, srcPort: osp, dstPort: odp },
    reply: { src: r.src, dst: r.dst, srcPort: rsp, dstPort: rdp },
    state,
    secondsLeft: Number.isFinite(secondsLeft) ? secondsLeft : 0,
    packets: { original: Number(o.packets ?? 0), reply: Number(r.packets ?? 0) },
    bytes: { original: Number(o.bytes ?? 0), reply: Number(r.bytes ?? 0) },
  };
}

/** Parse all of `conntrack -L`'s output. */
export function parseKernelConntrack(text: string): FlowJson[] {
  const out: FlowJson[] = [];
  for (const line of text.split('\n')) {
    const f = parseKernelConntrackLine(line);
    if (f) out.push(f);
  }
  return out;
}
