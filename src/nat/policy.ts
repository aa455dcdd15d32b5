import { parseCidr, parseIpv4, ipToString, type Cidr } from '../wire/addr.js';
import { IPPROTO } from '../wire/ipv4.js';

/**
 * Port forwards (DNAT) and the egress allowlist: what may come in unasked, and what may go out.
 * Both are parsed from the CLI/config strings here, with errors that quote the bad item.
 */
export class PolicyError extends Error {
  constructor(readonly field: string, message: string) {
    super(message);
    this.name = 'PolicyError';
  }
}

const PROTOS: Record<string, number> = { tcp: IPPROTO.TCP, udp: IPPROTO.UDP, icmp: IPPROTO.ICMP };
export const PROTO_NAME: Record<number, string> = { [IPPROTO.TCP]: 'tcp', [IPPROTO.UDP]: 'udp', [IPPROTO.ICMP]: 'icmp' };
/**
 * What an egress rule may name: every protocol tunnat translates. Only TCP, UDP, SCTP and UDP-Lite have
 * ports; the others (and any protocol given by number) are allowed or not per destination.
 */
const EGRESS_PROTOS: Record<string, number> = {
  ...PROTOS, sctp: IPPROTO.SCTP, udplite: IPPROTO.UDPLITE, gre: 47, esp: 50, ah: 51, ipip: 4,
};
const PORTED = new Set<number>([IPPROTO.TCP, IPPROTO.UDP, IPPROTO.SCTP, IPPROTO.UDPLITE]);

export interface PortForward {
  protocol: number;
  /** The public address it lives on; absent or 0 for the first (primary) one, whatever that is at the time. */
  publicAddress?: number;
  publicPort: number;
  address: number;
  port: number;
}

/** The protocols a forward may name: those with ports. */
const FORWARD_PROTOS: Record<string, number> = { tcp: IPPROTO.TCP, udp: IPPROTO.UDP, sctp: IPPROTO.SCTP, udplite: IPPROTO.UDPLITE };
const FORWARD_NAME: Record<number, string> = Object.fromEntries(Object.entries(FORWARD_PROTOS).map(([k, v]) => [v, k]));

/**
 * `tcp:8080=192.168.1.10:80` (the LAN port defaults to the public one: `udp:5060=192.168.1.20`); a
 * public address before the port puts the forward on that pool address (`tcp:203.0.113.11:443=…`).
 */
export function parseForward(spec: string, isInternal: (a: number) => boolean): PortForward {
  const m = /^(tcp|udp|sctp|udplite):(?:([0-9.]+):)?(\d{1,5})=([0-9.]+)(?::(\d{1,5}))?$/.exec(spec.trim());
  if (!m) {
    throw new PolicyError('forward', `expected PROTO:[PUBLICADDR:]PUBLICPORT=ADDR[:PORT] with PROTO tcp, udp, sctp or udplite, got ${JSON.stringify(spec)}`);
  }
  const publicPort = Number(m[3]);
  const port = m[5] !== undefined ? Number(m[5]) : publicPort;
  const address = parseIpv4(m[4]!);
  if (address === null) throw new PolicyError('forward', `${spec}: ${m[4]} is not an IPv4 address`);
  const publicAddress = m[2] !== undefined ? parseIpv4(m[2]) : 0;
  if (publicAddress === null || publicAddress === 0 && m[2] !== undefined) throw new PolicyError('forward', `${spec}: ${m[2]} is not a public IPv4 address`);
  if (publicPort < 1 || publicPort > 65535 || port < 1 || port > 65535) throw new PolicyError('forward', `${spec}: ports must be 1-65535`);
  if (!isInternal(address)) throw new PolicyError('forward', `${spec}: ${ipToString(address)} is not inside --internal`);
  if (isInternal(publicAddress)) throw new PolicyError('forward', `${spec}: the public address ${ipToString(publicAddress)} is inside --internal`);
  return { protocol: FORWARD_PROTOS[m[1]!]!, publicAddress, publicPort, address, port };
}

/** A forward as `--forward` writes it. */
export function forwardText(f: PortForward): string {
  const at = f.publicAddress ? `${ipToString(f.publicAddress)}:` : '';
  return `${FORWARD_NAME[f.protocol] ?? f.protocol}:${at}${f.publicPort}=${ipToString(f.address)}:${f.port}`;
}

export function checkForwards(list: readonly PortForward[]): void {
  const seen = new Set<string>();
  for (const f of list) {
    const key = `${f.protocol}:${f.publicAddress ?? 0}:${f.publicPort}`;
    if (seen.has(key)) {
      const at = f.publicAddress ? `${ipToString(f.publicAddress)}:` : '';
      throw new PolicyError('forward', `two forwards for ${FORWARD_NAME[f.protocol]}:${at}${f.publicPort}`);
    }
    seen.add(key);
  }
}

export interface EgressRule {
  protocol: number;
  /** Destination port; -1 for any (always -1 for ICMP and the other protocols without ports). */
  port: number;
  /** Destination prefix, or null for anywhere. */
  to: Cidr | null;
}

/** `tcp:80,tcp:443,udp:53,icmp,tcp:443@198.51.100.0/24,udp:*` */
export function parseEgress(spec: string): EgressRule[] {
  const rules: EgressRule[] = [];
  for (const raw of spec.split(',')) {
    const item = raw.trim();
    if (item === '') continue;
    const m = /^([a-z]+|\d{1,3})(?::(\*|\d{1,5}))?(?:@(.+))?$/.exec(item);
    if (!m) throw new PolicyError('allowEgress', `${JSON.stringify(item)}: expected PROTO[:PORT][@CIDR], e.g. tcp:443 or udp:53@198.51.100.0/24`);
    const protocol = /^\d/.test(m[1]!) ? Number(m[1]) : EGRESS_PROTOS[m[1]!];
    if (protocol === undefined || protocol > 255) {
      throw new PolicyError('allowEgress', `${JSON.stringify(item)}: unknown protocol (known: ${Object.keys(EGRESS_PROTOS).join(', ')}, or a number 0-255)`);
    }
    let port = -1;
    if (m[2] !== undefined && m[2] !== '*') {
      if (!PORTED.has(protocol)) throw new PolicyError('allowEgress', `${item}: ${m[1]} has no ports`);
      port = Number(m[2]);
      if (port < 1 || port > 65535) throw new PolicyError('allowEgress', `${item}: port must be 1-65535`);
    }
    let to: Cidr | null = null;
    if (m[3] !== undefined) {
      const addr = parseIpv4(m[3]);
      to = addr !== null ? parseCidr(`${m[3]}/32`) : parseCidr(m[3]);
      if (!to) throw new PolicyError('allowEgress', `${item}: ${m[3]} is not an address or prefix`);
    }
    rules.push({ protocol, port, to });
  }
  if (rules.length === 0) throw new PolicyError('allowEgress', 'empty allowlist (to allow nothing, say so with a rule you mean)');
  return rules;
}

/** Compiled allowlist: a per-protocol port bitmap for the common "any destination" rules, then the prefixed ones. */
export class EgressPolicy {
  private readonly anyPort = new Set<number>();
  private readonly ports = new Map<number, Uint8Array>();
  private readonly prefixed: EgressRule[] = [];

  constructor(readonly rules: readonly EgressRule[]) {
    for (const r of rules) {
      if (r.to !== null) this.prefixed.push(r);
      else if (r.port < 0) this.anyPort.add(r.protocol);
      else {
        let bits = this.ports.get(r.protocol);
        if (!bits) this.ports.set(r.protocol, (bits = new Uint8Array(65536)));
        bits[r.port] = 1;
      }
    }
  }

  allows(protocol: number, dst: number, dport: number): boolean {
    if (this.anyPort.has(protocol)) return true;
    if (protocol !== IPPROTO.ICMP && this.ports.get(protocol)?.[dport] === 1) return true;
    for (const r of this.prefixed) {
      if (r.protocol !== protocol) continue;
      if (r.port >= 0 && r.port !== dport) continue;
      if (((dst & r.to!.mask) >>> 0) === r.to!.network) return true;
    }
    return false;
  }
}
