import { FlowTable, DIR_ORIGINAL, DIR_REPLY, FLOW_SEEN_REPLY, FLOW_ASSURED, FLOW_ALG, FLOW_EXPECTED } from './table.js';
import { TCP_STATE_NAMES } from './tcp.js';
import { SCTP_STATE_NAMES } from './sctp.js';
import { ipToString } from '../wire/addr.js';
import { IPPROTO, protoName } from '../wire/ipv4.js';

/** One flow as /conntrack and `tunnat conntrack` show it. */
export interface FlowRecord {
  id: number;
  protocol: 'tcp' | 'udp' | 'icmp' | string;
  original: { src: string; dst: string; srcPort: number; dstPort: number };
  reply: { src: string; dst: string; srcPort: number; dstPort: number };
  /** TCP: the tracker state; UDP/ICMP: UNREPLIED until a reply was seen, then REPLIED (ASSURED for UDP). */
  state: string;
  secondsLeft: number;
  packets: { original: number; reply: number };
  bytes: { original: number; reply: number };
  /** Only on flows an ALG deals with: an FTP control connection it watches, or a data connection it expected. */
  alg?: 'ftp-control' | 'ftp-data';
}

/** Every state name a flow can show (the `state` label values and the `--state` filter's choices). */
export const FLOW_STATE_NAMES: readonly string[] = [...new Set([...TCP_STATE_NAMES, 'UNREPLIED', 'REPLIED', 'ASSURED', ...SCTP_STATE_NAMES])];

/**
 * A flow's state as /conntrack, the metrics and the trace print it: TCP shows its tracker state; UDP
 * and ICMP show UNREPLIED until a reply was seen, then REPLIED (ASSURED for UDP).
 */
export function flowStateName(t: FlowTable, flow: number): string {
  const proto = t.proto[flow]!;
  if (proto === IPPROTO.TCP) return TCP_STATE_NAMES[t.state[flow]!] ?? 'NONE';
  if (proto === IPPROTO.SCTP) return SCTP_STATE_NAMES[t.state[flow]!] ?? 'NONE';
  const flags = t.flags[flow]!;
  if (!(flags & FLOW_SEEN_REPLY)) return 'UNREPLIED';
  return flags & FLOW_ASSURED && (proto === IPPROTO.UDP || proto === IPPROTO.UDPLITE) ? 'ASSURED' : 'REPLIED';
}

export function flowRecord(t: FlowTable, flow: number, now: number): FlowRecord {
  const side = (dir: number) => {
    const e = flow * 2 + dir;
    return { src: ipToString(t.tSrc[e]!), dst: ipToString(t.tDst[e]!), srcPort: t.tSport[e]!, dstPort: t.tDport[e]! };
  };
  const o = flow * 2;
  const f = t.flags[flow]!;
  const alg = f & FLOW_ALG ? 'ftp-control' : f & FLOW_EXPECTED ? 'ftp-data' : null;
  const rec: FlowRecord = {
    id: flow,
    protocol: protoName(t.proto[flow]!),
    original: side(DIR_ORIGINAL),
    reply: side(DIR_REPLY),
    state: flowStateName(t, flow),
    secondsLeft: Math.max(0, Math.round((t.expires[flow]! - now) / 1000)),
    packets: { original: t.packets[o]!, reply: t.packets[o + 1]! },
    bytes: { original: t.bytes[o]!, reply: t.bytes[o + 1]! },
  };
  if (alg !== null) rec.alg = alg;
  return rec;
}

/** Every live flow (expired ones still waiting for the sweep are left out). */
export function listFlows(t: FlowTable, now: number): FlowRecord[] {
  const out: FlowRecord[] = [];
  for (const f of t.flows()) if (t.expires[f]! > now) out.push(flowRecord(t, f, now));
  return out;
}

/** One line per flow in the style of `conntrack -L`. */
export function formatFlow(r: FlowRecord): string {
  const o = r.original;
  const p = r.reply;
  const ports = (s: { srcPort: number; dstPort: number }) =>
    r.protocol === 'icmp' ? `id=${s.srcPort || s.dstPort}` : `sport=${s.srcPort} dport=${s.dstPort}`;
  return [
    r.protocol.padEnd(5),
    String(r.secondsLeft).padStart(6),
    r.state.padEnd(11),
    `src=${o.src} dst=${o.dst} ${ports(o)} packets=${r.packets.original} bytes=${r.bytes.original}`,
    `src=${p.src} dst=${p.dst} ${ports(p)} packets=${r.packets.reply} bytes=${r.bytes.reply}`,
    // conntrack -L names the helper of a control connection; an expected connection shows its master's.
    ...(r.alg === 'ftp-control' ? ['helper=ftp'] : r.alg === 'ftp-data' ? ['expected=ftp'] : []),
  ].join(' ');
}
