import { httpGet } from './client.js';
import { byLabel, parsePromText, sampleValue, type Sample } from '../observe/promtext.js';
import { HELP_FLAG, verbHelp, type Verb } from './flags.js';
import { DEFAULT_TARGET, parseOptions, processIo, runCommand, type CliIo } from '../observe/cli.js';

/**
 * `tunnat stats`: the running router's counters, like `conntrack -S`: one line per group of
 * `key=value`s, read from /metrics (so it works for any engine that serves tunnat's metric names;
 * the kernel engine adds a `conntrack` line with the kernel's own statistics).
 */
export const STATS_VERB = {
  name: 'stats',
  brief: "the running router's counters, like `conntrack -S`",
  summary: "Print the running router's counters, like `conntrack -S`: one line per group of key=value pairs,\nread from /metrics.",
  flags: {
    http: { type: 'string', arg: 'HOST:PORT|unix:PATH', about: `the router to ask (default ${DEFAULT_TARGET})` },
    json: { type: 'boolean', about: 'JSON instead of key=value lines' },
    help: HELP_FLAG,
  },
} as const satisfies Verb;

export interface StatsSummary {
  packets: Record<string, number>;
  bytes: Record<string, number>;
  translations: Record<string, number>;
  drops: Record<string, number>;
  flows: Record<string, number>;
  flowEvents: Record<string, number>;
  ports: Record<string, { used: number; size: number }>;
  hosts: Record<string, { packetsOut: number; packetsIn: number; bytesOut: number; bytesIn: number; flows: number }>;
  /** The kernel engine: its conntrack statistics as `conntrack -S` sums them (empty for userspace). */
  kernel: Record<string, number>;
}

export function summarize(samples: Map<string, Sample[]>): StatsSummary {
  const flowsByProto = byLabel(samples, 'tunnat_flows', 'protocol');
  const total = Object.values(flowsByProto).reduce((a, b) => a + b, 0);
  const ports: StatsSummary['ports'] = {};
  const used = byLabel(samples, 'tunnat_port_pool_used', 'protocol');
  const size = byLabel(samples, 'tunnat_port_pool_size', 'protocol');
  for (const p of Object.keys(size)) ports[p] = { used: used[p] ?? 0, size: size[p] ?? 0 };
  const hosts: StatsSummary['hosts'] = {};
  for (const s of samples.get('tunnat_host_bytes_total') ?? []) {
    const h = s.labels['host'];
    if (h === undefined || hosts[h]) continue;
    const m = (name: string, direction: string) => sampleValue(samples, name, { host: h, direction });
    hosts[h] = {
      packetsOut: m('tunnat_host_packets_total', 'outbound'),
      packetsIn: m('tunnat_host_packets_total', 'inbound'),
      bytesOut: m('tunnat_host_bytes_total', 'outbound'),
      bytesIn: m('tunnat_host_bytes_total', 'inbound'),
      flows: sampleValue(samples, 'tunnat_host_flows', { host: h }),
    };
  }
  return {
    packets: byLabel(samples, 'tunnat_packets_total', 'path'),
    bytes: byLabel(samples, 'tunnat_bytes_total', 'path'),
    translations: byLabel(samples, 'tunnat_translations_total', 'direction'),
    drops: byLabel(samples, 'tunnat_drops_total', 'reason'),
    flows: { total, max: sampleValue(samples, 'tunnat_flows_max'), ...flowsByProto },
    flowEvents: { created: sampleValue(samples, 'tunnat_flows_created_total'), ...byLabel(samples, 'tunnat_flows_removed_total', 'reason') },
    ports,
    hosts,
    kernel: byLabel(samples, 'tunnat_kernel_conntrack_stat_total', 'stat'),
  };
}

function kv(o: Record<string, number>): string {
  return Object.entries(o)
    .map(([k, v]) => `${k}=${v}`)
    .join(' ');
}

/** One line per group; a group the engine does not count (the kernel's port pools) is left out, not printed empty. */
export function formatStats(s: StatsSummary): string[] {
  const rows: [string, string][] = [
    ['packets', kv(s.packets)],
    ['bytes', kv(s.bytes)],
    ['translated', kv(s.translations)],
    ['drops', kv(s.drops)],
    ['flows', kv(s.flows)],
    ['flow-events', kv(s.flowEvents)],
    [
      'ports',
      Object.entries(s.ports)
        .map(([p, u]) => `${p}=${u.used}/${u.size}`)
        .join(' '),
    ],
    ['conntrack', kv(s.kernel)],
  ];
  const lines = rows.filter(([, v]) => v !== '').map(([k, v]) => `${k.padEnd(12)} ${v}`);
  for (const [h, v] of Object.entries(s.hosts)) {
    lines.push(`host ${h.padEnd(15)} packets=${v.packetsOut}/${v.packetsIn} bytes=${v.bytesOut}/${v.bytesIn} flows=${v.flows}  (out/in)`);
  }
  return lines;
}

export function cmdStats(args: string[], io: CliIo = processIo): Promise<number> {
  return runCommand(io, async () => {
    const { values: v } = parseOptions(args, STATS_VERB.flags);
    if (v.help) {
      io.out(verbHelp(STATS_VERB));
      return 0;
    }
    const text = await httpGet(v.http ?? DEFAULT_TARGET, '/metrics');
    const summary = summarize(parsePromText(text));
    if (v.json) io.out(JSON.stringify(summary, null, 2));
    else for (const l of formatStats(summary)) io.out(l);
    return 0;
  });
}
