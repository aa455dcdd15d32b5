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

interface ProbeOutcome {
  outcome: 'reply' | 'timeout';
  sent: number;
  seenFrom?: string;
}

async function probe(netns: string, proto: number, token: string, seconds = 6): Promise<ProbeOutcome> {
  const r = await inNs(netns, [PYTHON, SCRIPT, 'probe', SERVER, String(proto), token, String(seconds)], { timeoutMs: (seconds + 5) * 1000 });
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as ProbeOutcome;
}

// Needs root: namespaces, veth pairs, a TUN device and tcpdump.
describe.skipIf(!isRoot)('every IP protocol through tunnat (address-only NAT for GRE, ESP, IPIP, 253)', () => {
  const cleanup = new Cleanup((l) => console.error(l));
  let lab: Lab;
  let responder: NsProcess;
  const captures = new Map<number, Capture>();
  let all: Capture;

  beforeAll(async () => {
    if (!existsSync(PYTHON)) throw new Error(`${PYTHON} is missing: install the Debian package python3`);
    lab = await buildTestLab(cleanup, { prefix: 'rpr', lanHosts: 2 });
    responder = spawnIn(lab.inet.netns, [PYTHON, '-u', SCRIPT, 'respond', SERVER, ...Object.values(GENERIC).map(String)], {
      label: 'raw responder',
      cleanup,
    });
    await responder.waitForLine(/^ready$/, 10_000);
    for (const p of Object.values(GENERIC)) captures.set(p, await captureOn(lab.inet.netns, lab.inet.dev, cleanup, ['ip', 'proto', String(p)]));
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

  it('on the WAN link every protocol carried the public source both ways, and no 192.168/16 address left', async () => {
    for (const [name, p] of Object.entries(GENERIC)) {
      const cap = captures.get(p)!;
      await cap.stop();
      const ip = (await cap.packets()).filter((x) => x.kind === 'ip');
      expect(ip.some((x) => x.src === PUBLIC && x.dst === SERVER), `${name} out: ${ip.map((x) => x.line).join('\n')}`).toBe(true);
      expect(ip.some((x) => x.src === SERVER && x.dst === PUBLIC), `${name} back`).toBe(true);
      expect(ip.filter((x) => x.src !== PUBLIC && x.dst !== PUBLIC).map((x) => x.line)).toEqual([]);
    }
    // The responder only ever heard the public address.
    const heard = responder.output().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { from: string });
    expect(heard.length).toBeGreaterThanOrEqual(4);
    expect(heard.filter((h) => h.from !== PUBLIC)).toEqual([]);
    const { leaks } = await wanLeaks(all);
    expect(leaks).toEqual([]);
  });
});
