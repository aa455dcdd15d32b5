import type { Flags } from './flags.js';

/**
 * The flags of `tunnat run`, shared with `tunnat kernel plan|apply` (same flags, same meaning): the one
 * definition the parser, the help text and README's flag table follow. Each maps onto a config key:
 * `--public-ip` is `publicIp`, `--no-icmp-errors` is `icmpErrors: false`.
 */
export const ROUTER_FLAGS = {
  internal: { type: 'string', arg: 'CIDR[,CIDR…]', required: true, about: 'LAN prefixes to translate' },
  external: { type: 'string', arg: 'IFACE', required: true, about: 'WAN interface' },
  'public-ip': { type: 'string', arg: 'ADDR[,ADDR…]|LOW-HIGH', about: "static SNAT address or pool, hosts paired with one address each (default: masquerade on IFACE's primary IPv4)" },
  masquerade: { type: 'string', arg: 'primary|all', about: "without --public-ip: translate to IFACE's primary IPv4 (default), or pair hosts with every IPv4 address IFACE has, following them as they come and go" },
  snat: { type: 'string', multiple: true, arg: 'PREFIX=ADDR', about: 'static SNAT entry: hosts in PREFIX leave through pool address ADDR (most specific wins), repeatable' },
  tun: { type: 'string', arg: 'NAME', about: 'TUN device tunnat creates (default tunnat0)' },
  ports: { type: 'string', arg: 'LO-HI', about: 'public ports mappings may use (default 1024-65535)' },
  'gateway-ports': { type: 'string', arg: 'LO-HI', about: "the gateway's own ephemeral ports while tunnat runs, never mapped (default 20000-29999)" },
  http: { type: 'string', arg: 'HOST:PORT|off', about: 'live page, /metrics, /conntrack, /events, /trace (default 127.0.0.1:9100)' },
  'http-socket': { type: 'string', arg: 'PATH', about: 'the same endpoint on a unix socket too' },
  config: { type: 'string', arg: 'FILE', about: 'JSON with the same settings; flags win; SIGHUP re-reads it' },
  'max-flows': { type: 'string', arg: 'N', about: 'connection-tracking table size (default 262144)' },
  table: { type: 'string', arg: 'N', about: 'routing table for outbound traffic; N+1 is used for inbound (default 7301)' },
  batch: { type: 'string', arg: 'N', about: 'packets read and written per system call (default 64)' },
  workers: { type: 'string', arg: 'N|auto', about: 'data-plane threads, one queue of a multi-queue TUN each (1-64, or auto: one per core, the default; 1: one loop, no threads)' },
  'busy-poll': { type: 'string', arg: 'US', about: 'keep reading for US µs (0-10000) after a wake-up that found packets, then sleep; 0: never (default 50)' },
  'log-level': { type: 'string', arg: 'LEVEL', about: 'debug, info, warn or error (default info)' },
  engine: { type: 'string', arg: 'userspace|kernel|auto', about: 'who translates: tunnat, the kernel, or tunnat falling back to the kernel' },
  backend: { type: 'string', arg: 'auto|nft|iptables', about: "kernel engine: the tool that writes the kernel's NAT rules (default auto)" },
  filtering: { type: 'string', arg: 'endpoint|address|address-port', about: 'who may send to a mapping, RFC 4787 REQ-8 (default address)' },
  forward: { type: 'string', multiple: true, arg: 'PROTO:[PUBADDR:]PORT=ADDR[:PORT]', about: 'port forward (DNAT) for tcp, udp, sctp or udplite, on the first public address or PUBADDR of the pool; repeatable' },
  alg: { type: 'string', multiple: true, arg: 'ftp[:PORT]', about: 'FTP ALG for control connections to PORT (default 21), repeatable; off by default' },
  'allow-egress': { type: 'string', arg: 'LIST', about: 'allowlist for new outbound flows, e.g. tcp:80,tcp:443,udp:53,icmp,gre,tcp:443@CIDR' },
  'egress-reject': { type: 'boolean', about: 'refuse disallowed flows with TCP RST / ICMP 3/13 instead of dropping them' },
  'max-flows-per-host': { type: 'string', arg: 'N', about: 'flows one LAN host may hold (default unlimited)' },
  'no-icmp-errors': { type: 'boolean', about: 'no ICMP 3/13 when the table is full or ports run out' },
  'no-offload': { type: 'boolean', about: 'take no GSO superpackets or partial checksums from the TUN' },
  state: { type: 'string', arg: 'FILE', about: 'SIGTERM saves the flows there and leaves the gateway failed closed; the next start restores them' },
  user: { type: 'string', arg: 'NAME', about: 'run the packet-parsing data plane as NAME, with no capabilities' },
  'ha-node': { type: 'string', arg: '0|1', about: 'one gateway of a pair sharing --public-ip: translate only while holding it, new ports in half 0 or 1 of --ports (docs/ha.md)' },
  'ha-sync': { type: 'string', arg: 'ADDR:PORT', about: "with --ha-node: where this gateway's flow-state sync listens (a dedicated link, or the LAN)" },
  'ha-peer': { type: 'string', arg: 'ADDR:PORT', about: "with --ha-node: the other gateway's --ha-sync" },
  'ha-key': { type: 'string', arg: 'FILE', about: "with --ha-peer: the pair's shared key (16 bytes or more) that authenticates every sync message" },
  pcap: { type: 'string', arg: 'FILE', about: 'write every packet before and after translation (pcapng; userspace engine only)' },
  'pcap-snaplen': { type: 'string', arg: 'headers|BYTES', about: 'what --pcap keeps of each packet: headers, the first BYTES, or 0 for whole packets (default headers)' },
  'pcap-size': { type: 'string', arg: 'MB', about: 'rotate the --pcap file before it passes MB × 10^6 bytes, like tcpdump -C; 0: never (default 100)' },
  'pcap-files': { type: 'string', arg: 'N', about: 'files --pcap keeps when rotating, FILE included, like tcpdump -W (default 10)' },
} as const satisfies Flags;

function camel(flag: string): string {
  return flag.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}

/** parseArgs values → the keys resolveConfig takes (the config file's keys). */
export function configFlags(values: Record<string, unknown>): Record<string, unknown> {
  const flags: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(values)) {
    if (k === 'no-icmp-errors') flags['icmpErrors'] = !v;
    else if (k === 'no-offload') flags['offload'] = !v;
    else flags[camel(k)] = v;
  }
  return flags;
}
