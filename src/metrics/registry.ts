import { Registry, Counter, Gauge, collectDefaultMetrics } from 'prom-client';
import type { Translator } from '../nat/translator.js';
import { DROP_REASON_NAMES, PATH_NAMES } from '../nat/translator.js';
import type { Dataplane } from '../dataplane/loop.js';
import { IPPROTO } from '../wire/ipv4.js';

/**
 * Prometheus metrics. The packet path only bumps plain numbers in typed arrays; prom-client reads them
 * when scraped (collect callbacks), so a scrape costs the data plane nothing.
 */
const PROTO_NAMES: Record<number, string> = { [IPPROTO.TCP]: 'tcp', [IPPROTO.UDP]: 'udp', [IPPROTO.ICMP]: 'icmp' };

/** prom-client counters are monotonic by API; ours mirror totals kept elsewhere, so set them on collect. */
function mirror(counter: Counter<string>, labels: Record<string, string>, value: number): void {
  counter.reset();
  counter.inc(labels, value);
}

export function createRegistry(nat: Translator, loop: Dataplane | null, opts: { defaultMetrics?: boolean } = {}): Registry {
  const registry = new Registry();
  if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: registry });

  new Counter({
    name: 'tunnat_packets_total',
    help: 'Packets forwarded, by path: outbound (LAN to WAN, translated), inbound (WAN to LAN, translated), local (to the gateway itself, unchanged)',
    labelNames: ['path'],
    registers: [registry],
    collect() {
      this.reset();
      PATH_NAMES.forEach((p, i) => this.inc({ path: p }, nat.stats.packets[i]!));
    },
  });
  new Counter({
    name: 'tunnat_bytes_total',
    help: 'IP bytes forwarded, by path',
    labelNames: ['path'],
    registers: [registry],
    collect() {
      this.reset();
      PATH_NAMES.forEach((p, i) => this.inc({ path: p }, nat.stats.bytes[i]!));
    },
  });
  new Counter({
    name: 'tunnat_drops_total',
    help: 'Packets dropped, by reason',
    labelNames: ['reason'],
    registers: [registry],
    collect() {
      this.reset();
      DROP_REASON_NAMES.forEach((r, i) => this.inc({ reason: r }, nat.stats.drops[i]!));
      if (loop) this.inc({ reason: 'oversize' }, loop.stats.oversize);
      if (loop) this.inc({ reason: 'tun-queue-full' }, loop.stats.writeShort);
    },
  });
  new Gauge({
    name: 'tunnat_flows',
    help: 'Flows in the connection-tracking table, by protocol',
    labelNames: ['protocol'],
    registers: [registry],
    collect() {
      const counts: Record<string, number> = { tcp: 0, udp: 0, icmp: 0 };
      const t = nat.flows;
      for (const f of t.flows()) {
        const name = PROTO_NAMES[t.proto[f]!];
        if (name) counts[name]!++;
      }
      for (const [protocol, n] of Object.entries(counts)) this.set({ protocol }, n);
    },
  });
  new Gauge({
    name: 'tunnat_flows_max',
    help: 'Capacity of the connection-tracking table (--max-flows)',
    registers: [registry],
    collect() {
      this.set(nat.flows.capacity);
    },
  });
  new Counter({
    name: 'tunnat_flows_created_total',
    help: 'Flows created',
    registers: [registry],
    collect() {
      mirror(this, {}, nat.stats.flowsCreated);
    },
  });
  new Counter({
    name: 'tunnat_flows_removed_total',
    help: 'Flows removed, by reason (expired, early-drop when the table was full, flush on an address change, closed)',
    labelNames: ['reason'],
    registers: [registry],
    collect() {
      this.reset();
      for (const [reason, n] of Object.entries(nat.stats.flowsRemoved)) this.inc({ reason }, n);
    },
  });
  new Gauge({
    name: 'tunnat_mappings',
    help: 'NAT mappings (internal endpoint to public port) in use',
    registers: [registry],
    collect() {
      this.set(nat.mappings.size);
    },
  });
  new Gauge({
    name: 'tunnat_port_pool_used',
    help: 'Public ports (ICMP: identifiers) in use, by protocol',
    labelNames: ['protocol'],
    registers: [registry],
    collect() {
      for (const [p, name] of Object.entries(PROTO_NAMES)) {
        const pool = nat.mappings.pool(Number(p));
        if (pool) this.set({ protocol: name }, pool.used);
      }
    },
  });
  new Gauge({
    name: 'tunnat_port_pool_size',
    help: 'Public ports (ICMP: identifiers) that can be mapped, by protocol',
    labelNames: ['protocol'],
    registers: [registry],
    collect() {
      for (const [p, name] of Object.entries(PROTO_NAMES)) {
        const pool = nat.mappings.pool(Number(p));
        if (pool) this.set({ protocol: name }, pool.size);
      }
    },
  });
  new Counter({
    name: 'tunnat_icmp_errors_translated_total',
    help: 'ICMP error messages whose quoted packet was translated',
    registers: [registry],
    collect() {
      mirror(this, {}, nat.stats.icmpErrorsTranslated);
    },
  });
  if (loop) {
    new Counter({
      name: 'tunnat_batches_total',
      help: 'Batches read from the TUN',
      registers: [registry],
      collect() {
        mirror(this, {}, loop.stats.batches);
      },
    });
  }
  return registry;
}
