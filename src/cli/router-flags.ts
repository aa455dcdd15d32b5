import type { ParseArgsConfig } from 'node:util';

/**
 * The flags of `tunnat run`, shared with `tunnat kernel plan|apply` (same flags, same meaning), and their
 * mapping onto config keys: `--public-ip` is `publicIp`, `--no-icmp-errors` is `icmpErrors: false`.
 */
export const ROUTER_OPTIONS = {
  internal: { type: 'string' },
  external: { type: 'string' },
  'public-ip': { type: 'string' },
  tun: { type: 'string' },
  ports: { type: 'string' },
  'gateway-ports': { type: 'string' },
  http: { type: 'string' },
  'http-socket': { type: 'string' },
  config: { type: 'string' },
  'max-flows': { type: 'string' },
  table: { type: 'string' },
  batch: { type: 'string' },
  'busy-poll': { type: 'string' },
  'log-level': { type: 'string' },
  engine: { type: 'string' },
  backend: { type: 'string' },
  filtering: { type: 'string' },
  forward: { type: 'string', multiple: true },
  'allow-egress': { type: 'string' },
  'egress-reject': { type: 'boolean' },
  'max-flows-per-host': { type: 'string' },
  'no-icmp-errors': { type: 'boolean' },
  'no-offload': { type: 'boolean' },
  state: { type: 'string' },
  user: { type: 'string' },
  pcap: { type: 'string' },
  'pcap-snaplen': { type: 'string' },
  'pcap-size': { type: 'string' },
  'pcap-files': { type: 'string' },
} satisfies ParseArgsConfig['options'];

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
