/**
 * Every IP protocol through tunnat: protocols it has no tracker for (GRE, ESP, IPIP, an unassigned
 * number) are translated by address only, as the kernel's generic tracker does. A LAN host sends each of
 * them from a raw socket to the internet host, which answers from a raw socket of its own (raw sockets
 * also keep either kernel from answering with ICMP "protocol unreachable"). Each protocol's packets on
 * the WAN link are captured with a filter of their own: they must carry the public source, and the
 * reply must come back to the LAN host. A second LAN host talking the same protocol to the same remote
 * address is refused (protocol-busy) and told with ICMP.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnIn, type NsProcess } from '../../src/lab/process.js';
import { captureOn, Cleanup, buildTestLab, inNs, isRoot, type Capture, type Lab } from './harness.js';
import { metricValue, startRfcRouter, wanLeaks } from './fixtures/rfc-lab.js';

const here = dirname(fileURLToPath(import.meta.url));
const SCRIPT = join(here, 'fixtures', 'rfc-protocols.py');
const PYTHON = '/usr/bin/python3';
const SERVER = '203.0.113.2';
const PUBLIC = '203.0.113.1';
const GENERIC = { gre: 47, esp: 50, ipip: 4, unassigned: 253 } as const;
const SCTP = 132;
const UDPLITE = 136;
const UDPLITE_PORT = 9136;
const SCTP_PORT = 36412;
const CAPTURED = { ...GENERIC, sctp: SCTP, udplite: UDPLITE } as const;

interface ProbeOutcome {
  outcome: 'reply' | 'timeout';
  sent: number;
  seenFrom?: string;
}

async function probe(netns: string, proto: number, token: string, seconds = 6, ports: number[] = []): Promise<ProbeOutcome> {
  const argv = [PYTHON, SCRIPT, 'probe', SERVER, String(proto), token, String(seconds), ...ports.map(String)];
  const r = await inNs(netns, argv, { timeoutMs: (seconds + 5) * 1000 });
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as ProbeOutcome;
}

// Needs root: namespaces, veth pairs, a TUN device and tcpdump.
describe.skipIf(!isRoot)('every IP protocol through tunnat (GRE, ESP, IPIP, 253 by address; SCTP, UDP-Lite with ports)', () => {
  const cleanup = new Cleanup((l) => console.error(l));
  let lab: Lab;
  let responder: NsProcess;
  let udpliteEcho: NsProcess;
  const captures = new Map<number, Capture>();
  let all: Capture;

  beforeAll(async () => {
    if (!existsSync(PYTHON)) throw new Error(`${PYTHON} is missing: install the Debian package python3`);
    lab = await buildTestLab(cleanup, { prefix: 'rpr', lanHosts: 2 });
    responder = spawnIn(lab.inet.netns, [PYTHON, '-u', SCRIPT, 'respond', SERVER, ...Object.values(GENERIC).map(String), String(SCTP)], {
      label: 'raw responder',
      cleanup,
    });
    await responder.waitForLine(/^ready$/, 10_000);
    udpliteEcho = spawnIn(lab.inet.netns, [PYTHON, '-u', SCRIPT, 'udplite-echo', SERVER, String(UDPLITE_PORT)], { label: 'udp-lite echo', cleanup });
    await udpliteEcho.waitForLine(/^ready$/, 10_000);
    for (const p of Object.values(CAPTURED)) captures.set(p, await captureOn(lab.inet.netns, lab.inet.dev, cleanup, ['ip', 'proto', String(p)]));
    all = await captureOn(lab.inet.netns, lab.inet.dev, cleanup, ['not', 'arp']);
  }, 60_000);

  afterAll(async () => {
    await cleanup.run();
  }, 60_000);

  it('GRE, ESP, IPIP and protocol 253 leave with the public source, their replies reach the LAN host, one host per protocol and remote', async () => {
    const router = await startRfcRouter(lab, cleanup, 'proto');
    try {
      const h0 = lab.lanHosts[0]!.netns;
      const h1 = lab.lanHosts[1]!.netns;
      for (const [name, p] of Object.entries(GENERIC)) {
        const r = await probe(h0, p, `${name}-h0`);
        expect(r.outcome, `${name} (${p})`).toBe('reply');
        expect(r.seenFrom, `${name}: the server saw the public address`).toBe(PUBLIC);
      }
      const flows = await router.conntrack();
      for (const [name, p] of Object.entries(GENERIC)) {
        const f = flows.find((x) => x.original.src === lab.lanHosts[0]!.address && x.original.dst === SERVER && x.reply.dst === PUBLIC &&
          (x.protocol === name || x.protocol === String(p)));
        expect(f, `${name} flow in the listing: ${JSON.stringify(flows)}`).toBeDefined();
        expect(f!.state).toBe('REPLIED');
      }

      // The second LAN host, same protocol, same remote: refused, counted, told (the probe sees no reply).
      const before = metricValue(await router.metrics(), 'tunnat_drops_total', { reason: 'protocol-busy' });
      const busy = await probe(h1, GENERIC.gre, 'gre-h1', 2);
      expect(busy.outcome).toBe('timeout');
      const after = await router.metrics();
      expect(metricValue(after, 'tunnat_drops_total', { reason: 'protocol-busy' }) - before).toBeGreaterThanOrEqual(1);
      expect(metricValue(after, 'tunnat_generated_total')).toBeGreaterThanOrEqual(1);
    } finally {
      expect(await router.stop(), router.output()).toBe(0);
    }
  }, 90_000);

  it('SCTP (raw, CRC32c checked at each end) and UDP-Lite (kernel sockets, partial coverage) get public ports and their replies back', async () => {
    const router = await startRfcRouter(lab, cleanup, 'ported');
    try {
      const [a, b] = lab.lanHosts as [Lab['lanHosts'][0], Lab['lanHosts'][0]];
      // Both hosts use SCTP source port 5000: the first keeps it, the second is remapped.
      const s0 = await probe(a.netns, SCTP, 'sctp-h0', 6, [5000, SCTP_PORT]);
      expect(s0.outcome).toBe('reply');
      expect(s0.seenFrom).toBe(`${PUBLIC}:5000`);
      const s1 = await probe(b.netns, SCTP, 'sctp-h1', 6, [5000, SCTP_PORT]);
      expect(s1.outcome).toBe('reply');
      expect(s1.seenFrom).toMatch(new RegExp(`^${PUBLIC.replace(/\./g, '\\.')}:\\d+$`));
      expect(s1.seenFrom).not.toBe(`${PUBLIC}:5000`);

      const r = await inNs(a.netns, [PYTHON, SCRIPT, 'udplite-probe', SERVER, String(UDPLITE_PORT), 'lite-h0', '6'], { timeoutMs: 12_000 });
      const lite = JSON.parse(r.stdout.trim().split('\n').pop()!) as ProbeOutcome & { localPort: number };
      expect(lite.outcome).toBe('reply');
      expect(lite.seenFrom?.startsWith(`${PUBLIC}:`)).toBe(true);

      const flows = await router.conntrack();
      const sctp = flows.filter((f) => f.protocol === 'sctp');
      expect(sctp.map((f) => [f.original.src, f.original.srcPort, f.state]).sort()).toEqual([
        [a.address, 5000, 'ESTABLISHED'], [b.address, 5000, 'ESTABLISHED'],
      ]);
      const udplite = flows.find((f) => f.protocol === 'udplite');
      expect(udplite).toMatchObject({ original: { src: a.address, srcPort: lite.localPort, dstPort: UDPLITE_PORT }, reply: { dst: PUBLIC }, state: 'ASSURED' });
      const m = await router.metrics();
      expect(metricValue(m, 'tunnat_drops_total', { reason: 'checksum' })).toBe(0);
    } finally {
      expect(await router.stop(), router.output()).toBe(0);
    }
  }, 90_000);

  it('on the WAN link every protocol carried the public source both ways, and no 192.168/16 address left', async () => {
    for (const [name, p] of Object.entries(CAPTURED)) {
      const cap = captures.get(p)!;
      await cap.stop();
      const ip = (await cap.packets()).filter((x) => x.kind === 'ip');
      expect(ip.some((x) => x.src === PUBLIC && x.dst === SERVER), `${name} out: ${ip.map((x) => x.line).join('\n')}`).toBe(true);
      expect(ip.some((x) => x.src === SERVER && x.dst === PUBLIC), `${name} back`).toBe(true);
      expect(ip.filter((x) => x.src !== PUBLIC && x.dst !== PUBLIC).map((x) => x.line)).toEqual([]);
    }
    // The responder only ever heard the public address.
    const heard = responder.output().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { from: string });
    expect(heard.length).toBeGreaterThanOrEqual(6);
    const lite = udpliteEcho.output().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { from: string });
    expect(lite.length).toBeGreaterThanOrEqual(1);
    expect(lite.filter((h) => h.from !== PUBLIC)).toEqual([]);
    expect(heard.filter((h) => h.from !== PUBLIC)).toEqual([]);
    const { leaks } = await wanLeaks(all);
    expect(leaks).toEqual([]);
  });
});
