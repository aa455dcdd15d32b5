/**
 * The soak: `tunnat run` in a namespace lab under bounded mixed traffic for a fixed time (10 minutes by
 * default), with the router's resident memory, flows, mappings, drops by reason and packets by path
 * sampled at a fixed interval. Not part of CI (it takes minutes); the figures go in docs/reliability.md.
 *
 *   npm run build && sudo npx vite-node scripts/soak.ts -- [--minutes 10] [--sample-seconds 10] [--out FILE]
 *
 * Traffic, all at once for the whole run, all bounded in rate:
 * - a TCP connection from h0 with a round trip every 200 ms (must never stall or reset);
 * - HTTP requests from h1 (one at a time), a UDP echo and a ping from h2 every second;
 * - every 30 s, the LAN and WAN hostile catalogues of test/e2e/fixtures/hostile-packets.ts;
 * - every 60 s, a burst of 5 000 new UDP flows from h2 (paced, about 10 000/s) and 5 000 SYNs from
 *   the internet at the NAT's ports.
 * At the end: the connection's summary, the WAN capture checked for 192.168 addresses (headers and
 * ICMP quotes), and the samples as JSON (--out) and as a Markdown table on stdout.
 *
 * Needs root; creates only namespaces of its own (prefix "sk") and removes them on every exit path.
 */
import { writeFileSync } from 'node:fs';
import { Cleanup } from '../src/lab/cleanup.js';
import { httpSeenBy, ping, udpEcho } from '../src/lab/probes.js';
import { tcpPacket, udpPacket } from '../src/wire/build.js';
import { TCP_FLAGS } from '../src/wire/tcp.js';
import { DROP_REASON_NAMES } from '../src/nat/translator.js';
import { metricValue } from '../test/e2e/fixtures/rfc-lab.js';
import {
  KEEPALIVE_PORT, SERVER, dropsByReason, keepaliveSummary, linkCounters, rssKiB, sendRaw, setupHostileLab, sleep, wanLeakLines,
} from '../test/e2e/fixtures/hostile-lab.js';
import { addr, lanAttacks, wanAttacks } from '../test/e2e/fixtures/hostile-packets.js';

interface Sample {
  t: number;
  rssMiB: number;
  /** V8 heap in use (prom-client's nodejs_heap_size_used_bytes): tells heap growth from the rest. */
  heapUsedMiB: number;
  flows: number;
  mappings: number;
  tunRead: number;
  tunKernelDropped: number;
  drops: Record<string, number>;
  paths: Record<string, number>;
}

function args(): { minutes: number; sampleSeconds: number; out: string | null } {
  const a = { minutes: 10, sampleSeconds: 10, out: null as string | null };
  const v = process.argv.slice(2).filter((x) => x !== '--');
  for (let i = 0; i < v.length; i += 2) {
    if (v[i] === '--minutes') a.minutes = Number(v[i + 1]);
    else if (v[i] === '--sample-seconds') a.sampleSeconds = Number(v[i + 1]);
    else if (v[i] === '--out') a.out = v[i + 1] ?? null;
    else throw new Error(`unknown argument ${v[i]} (use --minutes, --sample-seconds, --out)`);
  }
  if (!(a.minutes > 0 && a.minutes <= 60)) throw new Error('--minutes must be in (0, 60]');
  return a;
}

async function main(): Promise<number> {
  if (process.getuid?.() !== 0) {
    process.stderr.write('soak: needs root (network namespaces, a TUN device, raw sockets)\n');
    return 2;
  }
  const a = args();
  const cleanup = new Cleanup((l) => process.stderr.write(`${l}\n`));
  const trap = cleanup.trapSignals();
  try {
    const h = await setupHostileLab({ cleanup, prefix: 'sk', lanHosts: 3, args: ['--max-flows', '4096'] });
    const pid = h.router.process!.pid;
    const [h0, h1, h2] = h.lab.lanHosts.map((x) => x.netns) as [string, string, string];
    const inet = h.lab.inet.netns;
    const flow = (await h.router.conntrack()).find((f) => f.protocol === 'tcp' && f.original.srcPort === h.keepaliveLocalPort);
    if (!flow) throw new Error('the live connection has no flow');
    const lan = lanAttacks({ lanHost: addr(h.lab.lanHosts[2]!.address), server: addr(SERVER), publicIp: addr('203.0.113.1') });
    const wan = wanAttacks({
      from: addr(SERVER), stranger: addr('198.51.100.77'), publicIp: addr('203.0.113.1'), server: addr(SERVER), serverPort: KEEPALIVE_PORT,
      publicPort: flow.reply.dstPort, lanHost: addr(h.lab.lanHosts[0]!.address), lanPort: h.keepaliveLocalPort,
    });
    void h0;
    const start = Date.now();
    const end = start + a.minutes * 60_000;
    const counts = { http: 0, httpFailed: 0, udp: 0, udpFailed: 0, pings: 0, pingLost: 0, hostileRounds: 0, bursts: 0, burstPackets: 0 };
    const samples: Sample[] = [];

    const sampleOnce = async (): Promise<void> => {
      const m = await h.router.metrics();
      const tun = await linkCounters(h.lab.gw.netns, 'tunnat0');
      samples.push({
        t: Math.round((Date.now() - start) / 1000),
        rssMiB: Math.round((rssKiB(pid) / 1024) * 10) / 10,
        heapUsedMiB: Math.round((metricValue(m, 'nodejs_heap_size_used_bytes') / 1048576) * 10) / 10,
        flows: metricValue(m, 'tunnat_flows'),
        mappings: metricValue(m, 'tunnat_mappings'),
        tunRead: metricValue(m, 'tunnat_tun_read_packets_total'),
        tunKernelDropped: tun.tx_dropped ?? 0,
        drops: dropsByReason(m),
        paths: Object.fromEntries(['outbound', 'inbound', 'local', 'hairpin'].map((p) => [p, metricValue(m, 'tunnat_packets_total', { path: p })])),
      });
      const s = samples[samples.length - 1]!;
      process.stdout.write(`t=${s.t}s rss=${s.rssMiB}MiB heap=${s.heapUsedMiB}MiB flows=${s.flows} mappings=${s.mappings} read=${s.tunRead} drops=${Object.values(s.drops).reduce((x, y) => x + y, 0)}\n`);
    };

    const loops: Promise<void>[] = [
      (async () => {
        while (Date.now() < end) {
          await sampleOnce();
          await sleep(a.sampleSeconds * 1000);
        }
      })(),
      (async () => {
        while (Date.now() < end) {
          try {
            await httpSeenBy(h1, SERVER, { timeoutS: 3 });
            counts.http++;
          } catch {
            counts.httpFailed++;
          }
          await sleep(500);
        }
      })(),
      (async () => {
        while (Date.now() < end) {
          try {
            await udpEcho(h2, SERVER, 7, 'soak', { timeoutMs: 2000 });
            counts.udp++;
          } catch {
            counts.udpFailed++;
          }
          const p = await ping(h2, SERVER, 1).catch(() => ({ transmitted: 1, received: 0 }));
          counts.pings += p.transmitted;
          counts.pingLost += p.transmitted - p.received;
          await sleep(1000);
        }
      })(),
      (async () => {
        while (Date.now() < end) {
          await sleep(30_000);
          if (Date.now() >= end) break;
          for (const x of lan) await sendRaw(h2, 'eth0', h.gwLanMac, x.packets);
          for (const x of wan) await sendRaw(inet, 'eth0', h.gwWanMac, x.packets);
          counts.hostileRounds++;
        }
      })(),
      (async () => {
        let round = 0;
        while (Date.now() < end) {
          await sleep(60_000);
          if (Date.now() >= end) break;
          round++;
          const flood = Array.from({ length: 5_000 }, (_, i) =>
            udpPacket({ src: addr(h.lab.lanHosts[2]!.address), dst: addr(SERVER), srcPort: 40000 + (i % 100), dstPort: 1024 + ((round * 5_000 + i) % 60000), payload: Buffer.from('burst') }));
          const syns = Array.from({ length: 5_000 }, (_, i) =>
            tcpPacket({ src: addr(`198.51.100.${1 + (i % 50)}`), dst: addr('203.0.113.1'), srcPort: 1024 + i, dstPort: 30000 + (i % 30000), seq: i, ack: 0, flags: TCP_FLAGS.SYN }));
          counts.burstPackets += await sendRaw(h2, 'eth0', h.gwLanMac, flood, { gapUs: 50, maxSeconds: 10 });
          counts.burstPackets += await sendRaw(inet, 'eth0', h.gwWanMac, syns, { gapUs: 50, maxSeconds: 10 });
          counts.bursts++;
        }
      })(),
    ];
    await Promise.all(loops);
    await sampleOnce();

    const keepalive = await keepaliveSummary(h.keepalive);
    const { leaks } = await wanLeakLines(h.wan);
    const first = samples[0]!;
    const last = samples[samples.length - 1]!;
    const dropDelta = Object.fromEntries(DROP_REASON_NAMES.map((r) => [r, (last.drops[r] ?? 0) - (first.drops[r] ?? 0)]).filter(([, n]) => n !== 0));
    const result = {
      minutes: a.minutes,
      counts,
      keepalive,
      wanLeaks: leaks,
      rssMiB: { first: first.rssMiB, max: Math.max(...samples.map((s) => s.rssMiB)), last: last.rssMiB },
      heapUsedMiB: { first: first.heapUsedMiB, max: Math.max(...samples.map((s) => s.heapUsedMiB)), last: last.heapUsedMiB },
      flowsMax: Math.max(...samples.map((s) => s.flows)),
      packetsRead: last.tunRead - first.tunRead,
      tunKernelDropped: last.tunKernelDropped - first.tunKernelDropped,
      drops: dropDelta,
      samples,
    };
    if (a.out) writeFileSync(a.out, JSON.stringify(result, null, 2));
    process.stdout.write('\n| t (s) | RSS (MiB) | heap used (MiB) | flows | mappings | packets read | drops (total) |\n|---:|---:|---:|---:|---:|---:|---:|\n');
    for (const s of samples) {
      process.stdout.write(`| ${s.t} | ${s.rssMiB} | ${s.heapUsedMiB} | ${s.flows} | ${s.mappings} | ${s.tunRead} | ${Object.values(s.drops).reduce((x, y) => x + y, 0)} |\n`);
    }
    const { samples: _s, ...summary } = result;
    void _s;
    process.stdout.write(`\n${JSON.stringify(summary, null, 2)}\n`);
    const ok = keepalive.errors.length === 0 && keepalive.late === 0 && keepalive.open && leaks.length === 0;
    process.stdout.write(ok ? 'soak: OK\n' : 'soak: PROBLEMS (see above)\n');
    return ok ? 0 : 1;
  } finally {
    trap.release();
    await cleanup.run();
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`soak: ${(err as Error).stack ?? String(err)}\n`);
    process.exitCode = 1;
  },
);
