import { Registry, Counter, Gauge, collectDefaultMetrics } from 'prom-client';
import { readFileSync } from 'node:fs';
import type { Translator } from '../nat/translator.js';
import { DROP_REASON_NAMES, PATH_NAMES } from '../nat/translator.js';
import type { Dataplane } from '../dataplane/loop.js';
import { ipToString } from '../wire/addr.js';
import { IPPROTO, PROTO_NAMES, protoName } from '../wire/ipv4.js';

/** The protocols with port pools (every other one is translated by address only). */
const PORTED = [IPPROTO.TCP, IPPROTO.UDP, IPPROTO.ICMP, IPPROTO.SCTP, IPPROTO.UDPLITE] as const;
import { registerHistogram } from './histogram.js';
import type { LoopMetrics } from './loop-metrics.js';

/**
 * Prometheus metrics (names: `tunnat_` prefix, base units, `_total` for counters). The packet path only
 * bumps plain numbers in typed arrays; prom-client reads them when scraped (collect callbacks), so a
 * scrape costs the data plane nothing. Anything that needs a walk over the flow table (flows by
 * state, traffic per LAN host) shares one walk per scrape.
 */

/** Counts the observability streams keep (SSE clients, what they could not keep up with, the pcap). */
export interface ObserveStats {
  clients(): Record<string, number>;
  dropped(): Record<string, number>;
  pcap(): { packets: { before: number; after: number }; dropped: number; bytes: number } | null;
}

/** Traffic of one inside host: what it sent and received, and its flows. */
export interface HostTotals {
  /** The inside address, or "other". */
  host: string;
  /** Outbound: sent by the host (LAN → WAN); inbound: received by it. */
  packets: { outbound: number; inbound: number };
  bytes: { outbound: number; inbound: number };
  /** Flows in the table now. */
  flows: number;
  flowsCreated: number;
}

/** One walk over the flow table, shared by every metric of a scrape. */
export interface FlowCensus {
  hosts: HostTotals[];
  /** Flows in the table by "protocol/state" (e.g. "tcp/ESTABLISHED"). */
  byState: Map<string, number>;
  total: number;
}

/**
 * Where per-host traffic and flows by state come from (observe/hosts.ts keeps them); the registry asks
 * for one census per scrape.
 */
export interface HostCensus {
  /** Hosts with their own label; the rest are summed as host="other". */
  readonly maxHosts: number;
  census(): FlowCensus;
}

export interface RegistryOptions {
  defaultMetrics?: boolean;
  /** Per-LAN-host traffic and flows by state (without it, flows are counted by protocol only). */
  hosts?: HostCensus;
  loopMetrics?: LoopMetrics;
  observe?: ObserveStats;
  /** The TUN's name, to export what the kernel dropped before tunnat could read it. */
  tunName?: string;
  /** Flows by protocol name, when `nat` is a summary of several workers rather than a live table. */
  flowsByProto?: () => Record<string, number>;
}

/** prom-client counters are monotonic by API; ours mirror totals kept elsewhere, so set them on collect. */
function mirror(counter: Counter<string>, labels: Record<string, string>, value: number): void {
  counter.reset();
  counter.inc(labels, value);
}

/**
 * A census shared by the metrics of one scrape: prom-client calls every collect() of a scrape in one
 * synchronous pass, so the census is kept until the microtasks after it and then forgotten (the next
 * scrape, however soon, walks the table again; were the calls ever spread out, each would only walk it
 * once more).
 */
function censusCache(hosts: HostCensus): () => FlowCensus {
  let last: FlowCensus | null = null;
  return () => {
    if (!last) {
      last = hosts.census();
      queueMicrotask(() => (last = null));
    }
    return last;
  };
}

export function createRegistry(nat: Translator, loop: Dataplane | null, opts: RegistryOptions = {}): Registry {
  const registry = new Registry();
  if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: registry });
  const census = opts.hosts ? censusCache(opts.hosts) : null;

  new Counter({
    name: 'tunnat_packets_total',
    help: 'Packets forwarded, by path: outbound (LAN to WAN, translated), inbound (WAN to LAN, translated), local (the gateway itself: traffic to it, and its own ICMP to the WAN; unchanged), hairpin (LAN to LAN through the public address)',
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
    name: 'tunnat_translations_total',
    help: 'Packets whose addresses or ports were rewritten, by direction (hairpin: LAN to LAN through the public address; ICMP errors included; local packets are not translated)',
    labelNames: ['direction'],
    registers: [registry],
    collect() {
      this.reset();
      for (const d of ['outbound', 'inbound', 'hairpin'] as const) {
        const i = (PATH_NAMES as readonly string[]).indexOf(d);
        if (i >= 0) this.inc({ direction: d }, nat.stats.packets[i] ?? 0);
      }
    },
  });
  new Counter({
    name: 'tunnat_drops_total',
    help: 'Packets dropped, by reason',
    labelNames: ['reason'],
    registers: [registry],
    collect() {
      this.reset();
      DROP_REASON_NAMES.forEach((r, i) => this.inc({ reason: r }, nat.stats.drops[i] ?? 0));
      if (loop) this.inc({ reason: 'oversize' }, loop.stats.oversize);
      if (loop) this.inc({ reason: 'tun-queue-full' }, loop.stats.writeShort);
      if (loop) this.inc({ reason: 'bad-vnet-header' }, loop.stats.badVnet ?? 0);
    },
  });
  new Gauge({
    name: 'tunnat_flows',
    help: 'Flows in the connection-tracking table, by protocol and state (TCP: tracker state; UDP/ICMP: UNREPLIED, REPLIED, ASSURED)',
    labelNames: census ? ['protocol', 'state'] : ['protocol'],
    registers: [registry],
    collect() {
      this.reset();
      if (census) {
        for (const p of Object.values(PROTO_NAMES)) this.set({ protocol: p, state: p === 'tcp' ? 'ESTABLISHED' : 'UNREPLIED' }, 0);
        for (const [key, n] of census().byState) {
          const [protocol, state] = key.split('/') as [string, string];
          this.set({ protocol, state }, n);
        }
        return;
      }
      const counts: Record<string, number> = { tcp: 0, udp: 0, icmp: 0 };
      if (opts.flowsByProto) {
        for (const [protocol, n] of Object.entries(opts.flowsByProto())) counts[protocol] = n;
        for (const [protocol, n] of Object.entries(counts)) this.set({ protocol }, n);
        return;
      }
      const t = nat.flows;
      for (const f of t.flows()) {
        const name = protoName(t.proto[f]!);
        counts[name] = (counts[name] ?? 0) + 1;
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
  new Counter({
    name: 'tunnat_flows_expired_total',
    help: 'Flows removed because their idle timeout passed (the same as tunnat_flows_removed_total{reason="expired"})',
    registers: [registry],
    collect() {
      mirror(this, {}, nat.stats.flowsRemoved.expired);
    },
  });
  new Counter({
    name: 'tunnat_flows_early_dropped_total',
    help: 'Unassured flows evicted to make room when the table was full (the same as tunnat_flows_removed_total{reason="early-drop"})',
    registers: [registry],
    collect() {
      mirror(this, {}, nat.stats.flowsRemoved['early-drop']);
    },
  });
  new Counter({
    name: 'tunnat_ports_reclaimed_total',
    help: 'Public ports taken from an unassured flow (a query, a connection attempt) because the pool was full; that flow is counted in tunnat_flows_removed_total too',
    registers: [registry],
    collect() {
      mirror(this, {}, nat.stats.portsReclaimed);
    },
  });
  new Counter({
    name: 'tunnat_tcp_picked_up_total',
    help: 'TCP connections picked up in the middle from the LAN side (a gateway of a pair, after a failover: the flow had not reached it)',
    registers: [registry],
    collect() {
      mirror(this, {}, nat.stats.tcpPickedUp);
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
    help: 'Public ports (ICMP: identifiers) in use, by protocol and public address',
    labelNames: ['protocol', 'address'],
    registers: [registry],
    collect() {
      this.reset();
      // One series per public address of the pool (a single one without a pool).
      nat.publicAddresses.forEach((a) => {
        const address = ipToString(a);
        for (const p of PORTED) {
          const pool = nat.mappings.poolAt(p, a);
          const name = protoName(p);
          if (pool) this.set({ protocol: name, address }, pool.used);
        }
      });
    },
  });
  new Gauge({
    name: 'tunnat_port_pool_size',
    help: 'Public ports (ICMP: identifiers) that can be mapped, by protocol and public address',
    labelNames: ['protocol', 'address'],
    registers: [registry],
    collect() {
      this.reset();
      // One series per public address of the pool (a single one without a pool).
      nat.publicAddresses.forEach((a) => {
        const address = ipToString(a);
        for (const p of PORTED) {
          const pool = nat.mappings.poolAt(p, a);
          const name = protoName(p);
          if (pool) this.set({ protocol: name, address }, pool.size);
        }
      });
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
  new Counter({
    name: 'tunnat_generated_total',
    help: 'Packets tunnat made itself (ICMP 3/13 and TCP resets refusing a new flow): sent, or suppressed by the rate limit or a full batch',
    labelNames: ['outcome'],
    registers: [registry],
    collect() {
      this.reset();
      this.inc({ outcome: 'sent' }, nat.stats.generated);
      this.inc({ outcome: 'suppressed' }, nat.stats.generatedSuppressed);
    },
  });
  // The FTP ALG (--alg ftp): series only when it is on.
  new Counter({
    name: 'tunnat_alg_rewrites_total',
    help: 'Commands and replies an ALG rewrote (FTP: PORT, EPRT, 227, 229)',
    labelNames: ['alg'],
    registers: [registry],
    collect() {
      this.reset();
      if (nat.alg) this.inc({ alg: 'ftp' }, nat.alg.stats.rewrites);
    },
  });
  new Counter({
    name: 'tunnat_alg_expectations_total',
    help: 'ALG expectations by event: created, used by their data connection, expired unused, removed with their control connection or replaced',
    labelNames: ['alg', 'event'],
    registers: [registry],
    collect() {
      this.reset();
      const a = nat.alg?.stats;
      if (!a) return;
      this.inc({ alg: 'ftp', event: 'created' }, a.expectations);
      this.inc({ alg: 'ftp', event: 'used' }, a.expectationsUsed);
      this.inc({ alg: 'ftp', event: 'expired' }, a.expectationsExpired);
      this.inc({ alg: 'ftp', event: 'removed' }, a.expectationsRemoved);
    },
  });
  new Gauge({
    name: 'tunnat_alg_expectations',
    help: 'ALG expectations waiting for their data connection (bounded)',
    labelNames: ['alg'],
    registers: [registry],
    collect() {
      this.reset();
      if (nat.alg) this.set({ alg: 'ftp' }, nat.alg.pending);
    },
  });
  new Counter({
    name: 'tunnat_alg_refused_total',
    help: 'Commands an ALG left alone, by reason: limit (expectations), no-port, split (over segments), malformed (or a foreign address), no-room (slot), gso',
    labelNames: ['alg', 'reason'],
    registers: [registry],
    collect() {
      this.reset();
      const a = nat.alg?.stats;
      if (!a) return;
      this.inc({ alg: 'ftp', reason: 'limit' }, a.refusedLimit);
      this.inc({ alg: 'ftp', reason: 'no-port' }, a.refusedNoPort);
      this.inc({ alg: 'ftp', reason: 'split' }, a.split);
      this.inc({ alg: 'ftp', reason: 'malformed' }, a.malformed);
      this.inc({ alg: 'ftp', reason: 'no-room' }, a.noRoom);
      this.inc({ alg: 'ftp', reason: 'gso' }, a.gso);
    },
  });
  new Counter({
    name: 'tunnat_alg_seq_adjusted_total',
    help: 'Segments of ALG control connections whose sequence or acknowledgement numbers were moved',
    labelNames: ['alg'],
    registers: [registry],
    collect() {
      this.reset();
      if (nat.alg) this.inc({ alg: 'ftp' }, nat.alg.stats.seqAdjusted);
    },
  });
  new Gauge({
    name: 'tunnat_fragment_datagrams',
    help: 'IP datagrams whose fragments are being tracked (bounded)',
    registers: [registry],
    collect() {
      this.set(nat.fragments.size);
    },
  });
  new Gauge({
    name: 'tunnat_fragment_held_bytes',
    help: 'Bytes of fragments held until their first fragment arrives (bounded)',
    registers: [registry],
    collect() {
      this.set(nat.fragments.heldBytes);
    },
  });
  new Counter({
    name: 'tunnat_fragment_events_total',
    help: 'Fragment tracker events: held, released, expired (incomplete sets), overlaps, limit (bound reached)',
    labelNames: ['event'],
    registers: [registry],
    collect() {
      this.reset();
      const f = nat.fragments.stats;
      this.inc({ event: 'held' }, f.held);
      this.inc({ event: 'released' }, f.released);
      this.inc({ event: 'expired' }, f.expired);
      this.inc({ event: 'overlap' }, f.overlaps);
      this.inc({ event: 'limit' }, f.limitDrops);
    },
  });
  if (opts.tunName) {
    const tunName = opts.tunName;
    new Counter({
      name: 'tunnat_tun_kernel_dropped_total',
      help: 'Packets the kernel dropped queuing them into the TUN for tunnat (its queue was full): tx_dropped of the device',
      registers: [registry],
      collect() {
        let v = 0;
        try {
          v = Number(readFileSync(`/sys/class/net/${tunName}/statistics/tx_dropped`, 'utf8').trim()) || 0;
        } catch {
          // Device gone or sysfs not mounted for this namespace.
        }
        mirror(this, {}, v);
      },
    });
  }

  if (census) {
    const perHost = (name: string, help: string, pick: (h: FlowCensus['hosts'][number], dir: 'outbound' | 'inbound') => number) =>
      new Counter({
        name,
        help,
        labelNames: ['host', 'direction'],
        registers: [registry],
        collect() {
          this.reset();
          for (const h of census().hosts) {
            this.inc({ host: h.host, direction: 'outbound' }, pick(h, 'outbound'));
            this.inc({ host: h.host, direction: 'inbound' }, pick(h, 'inbound'));
          }
        },
      });
    const limit = opts.hosts!.maxHosts;
    perHost(
      'tunnat_host_packets_total',
      `Translated packets per inside (LAN) host: outbound = sent by the host, inbound = received by it. The first ${limit} hosts get their own label; later ones are summed as host="other"`,
      (h, d) => h.packets[d],
    );
    perHost('tunnat_host_bytes_total', 'Translated IP bytes per inside (LAN) host and direction (see tunnat_host_packets_total)', (h, d) => h.bytes[d]);
    new Gauge({
      name: 'tunnat_host_flows',
      help: 'Flows in the table per inside (LAN) host',
      labelNames: ['host'],
      registers: [registry],
      collect() {
        this.reset();
        for (const h of census().hosts) this.set({ host: h.host }, h.flows);
      },
    });
    new Counter({
      name: 'tunnat_host_flows_created_total',
      help: 'Flows created per inside (LAN) host',
      labelNames: ['host'],
      registers: [registry],
      collect() {
        this.reset();
        for (const h of census().hosts) this.inc({ host: h.host }, h.flowsCreated);
      },
    });
  }

  if (loop) {
    new Counter({
      name: 'tunnat_tun_superpackets_total',
      help: 'GSO superpackets read from the TUN (with offloads; each stands for several wire packets)',
      registers: [registry],
      collect() {
        mirror(this, {}, loop.stats.superpackets ?? 0);
      },
    });
    new Counter({
      name: 'tunnat_batches_total',
      help: 'Batches read from the TUN',
      registers: [registry],
      collect() {
        mirror(this, {}, loop.stats.batches);
      },
    });
    new Counter({
      name: 'tunnat_busy_poll_packets_total',
      help: 'Packets caught while busy polling after a wake-up (--busy-poll), each a wake-up saved',
      registers: [registry],
      collect() {
        mirror(this, {}, loop.stats.spinPackets ?? 0);
      },
    });
    new Counter({
      name: 'tunnat_busy_poll_shrinks_total',
      help: 'Busy polls during which the thread was preempted (its core was wanted by other work), each halving the next window',
      registers: [registry],
      collect() {
        mirror(this, {}, loop.stats.spinShrinks ?? 0);
      },
    });
  }
  const lm = opts.loopMetrics;
  if (lm) {
    new Counter({
      name: 'tunnat_tun_read_packets_total',
      help: 'Packets read from the TUN (forwarded, dropped, or too long for a slot)',
      registers: [registry],
      collect() {
        mirror(this, {}, lm.packetsRead);
      },
    });
    registerHistogram(registry, 'tunnat_batch_packets', 'Packets per batch read from the TUN', lm.batchSize);
    registerHistogram(registry, 'tunnat_loop_seconds', 'Time to translate and write one batch, in seconds', lm.loopSeconds);
  }

  const obs = opts.observe;
  if (obs) {
    new Gauge({
      name: 'tunnat_observe_clients',
      help: 'Clients attached to the live streams (events, trace, live page)',
      labelNames: ['stream'],
      registers: [registry],
      collect() {
        this.reset();
        for (const [stream, n] of Object.entries(obs.clients())) this.set({ stream }, n);
      },
    });
    new Counter({
      name: 'tunnat_observe_dropped_total',
      help: 'Messages not sent to a stream client because it was not reading fast enough (the packet loop never waits)',
      labelNames: ['stream'],
      registers: [registry],
      collect() {
        this.reset();
        for (const [stream, n] of Object.entries(obs.dropped())) this.inc({ stream }, n);
      },
    });
    new Counter({
      name: 'tunnat_pcap_packets_total',
      help: 'Packets written to the --pcap file, by side (before: as read from the TUN; after: as written back)',
      labelNames: ['side'],
      registers: [registry],
      collect() {
        this.reset();
        const p = obs.pcap();
        if (!p) return;
        this.inc({ side: 'before' }, p.packets.before);
        this.inc({ side: 'after' }, p.packets.after);
      },
    });
    new Counter({
      name: 'tunnat_pcap_dropped_total',
      help: 'Packets left out of the --pcap file because the disk did not keep up (or writing failed)',
      registers: [registry],
      collect() {
        this.reset();
        const p = obs.pcap();
        if (p) this.inc(p.dropped);
      },
    });
  }
  return registry;
}
