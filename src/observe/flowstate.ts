import { FlowTable, FLOW_ASSURED, FLOW_SEEN_REPLY } from '../conntrack/table.js';
import { TCP_STATE_NAMES } from '../conntrack/tcp.js';
import { IPPROTO } from '../wire/ipv4.js';

/**
 * Names of flow states and protocols as /conntrack, the metrics and the trace print them. Same rule
 * as the flow listing: TCP shows its tracker state; UDP and ICMP show UNREPLIED until a reply was
 * seen, then REPLIED (ASSURED for UDP).
 */
export const PROTO_NAMES: Readonly<Record<number, 'tcp' | 'udp' | 'icmp'>> = {
  [IPPROTO.TCP]: 'tcp',
  [IPPROTO.UDP]: 'udp',
  [IPPROTO.ICMP]: 'icmp',
};

export function protoName(proto: number): string {
  return PROTO_NAMES[proto] ?? String(proto);
}

/** Every state name a flow can show (the `state` label values and the `--state` filter's choices). */
export const FLOW_STATE_NAMES: readonly string[] = [...TCP_STATE_NAMES, 'UNREPLIED', 'REPLIED', 'ASSURED'];

export function flowStateName(t: FlowTable, flow: number): string {
  const proto = t.proto[flow]!;
  if (proto === IPPROTO.TCP) return TCP_STATE_NAMES[t.state[flow]!] ?? 'NONE';
  const flags = t.flags[flow]!;
  if (!(flags & FLOW_SEEN_REPLY)) return 'UNREPLIED';
  return flags & FLOW_ASSURED && proto === IPPROTO.UDP ? 'ASSURED' : 'REPLIED';
}
