/**
 * ICMP through tunnat with real programs (RFC 5508): traceroute sees every router once, with the
 * gateway counted as a single hop although the packet crosses its routing twice (into the TUN and
 * out); ICMP errors from the far side (time exceeded, port unreachable) are translated back to the
 * LAN host's socket; two LAN hosts ping at once. Lab: LAN → gateway → r1 → r2 → internet host.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FlowJson } from '../../src/lab/flows.js';
import { ping } from '../../src/lab/probes.js';
import { startServices } from '../../src/lab/services.js';
import { captureOn, Cleanup, buildTestLab, inNs, isRoot, type Capture, type Lab, type TestRouter } from './harness.js';
import { metricValue, startRfcRouter, udpProbe, wanLeaks } from './fixtures/rfc-lab.js';

const SERVER = '203.0.113.2';
const PUBLIC = '203.0.113.1';

/** traceroute -n output: per hop, the addresses that answered its probes ('*' for silence). */
function parseTraceroute(out: string): { hop: number; answers: string[] }[] {
  const hops: { hop: number; answers: string[] }[] = [];
  for (const line of out.split('\n')) {
    const m = /^\s*(\d+)\s+(.*)$/.exec(line);
    if (!m) continue;
    // Each probe prints its address (or repeats the previous one implicitly) and a time, or "*".
    const answers: string[] = [];
    let current: string | null = null;
    for (const tok of m[2]!.trim().split(/\s+/)) {
      if (/^\d{1,3}(\.\d{1,3}){3}$/.test(tok)) current = tok;
      else if (tok === '*') answers.push('*');
      else if (tok === 'ms' && current !== null) answers.push(current);
    }
    hops.push({ hop: Number(m[1]), answers });
  }
  return hops;
}

// Needs root: namespaces, veth pairs, a TUN device, raw sockets (traceroute -I) and tcpdump.
describe.skipIf(!isRoot)('ICMP through tunnat (traceroute, errors, concurrent pings)', () => {
  const cleanup = new Cleanup((l) => console.error(l));
  let lab: Lab;
  let router: TestRouter;
  let capture: Capture;
  let h0: string;
  let h1: string;
  let expectedPath: string[];

  beforeAll(async () => {
    lab = await buildTestLab(cleanup, { prefix: 'rfi', lanHosts: 2, extraHops: 2 });
    [h0, h1] = lab.lanHosts.map((h) => h.netns) as [string, string];
    await startServices({ netns: lab.inet.netns, addresses: [SERVER], cleanup });
    // What the gateway's first router sees is exactly what left the gateway.
    capture = await captureOn(lab.hops[0]!.netns, 'west', cleanup);
    router = await startRfcRouter(lab, cleanup, 'icmp');
    // Each router answers a time-exceeded from the address facing the gateway (its route back).
    expectedPath = [lab.gw.lanAddress, ...lab.hops.map((h) => h.westAddress), SERVER];
  }, 60_000);

  afterAll(async () => {
    await cleanup.run();
  }, 60_000);

  for (const [name, flags] of [
    ['UDP probes', []],
    ['ICMP echo probes (-I)', ['-I']],
  ] as const) {
    it(`traceroute with ${name} shows each hop exactly once: gateway, r1, r2, destination`, async () => {
      // -N 1: one probe at a time, so the destination's ICMP rate limit never eats an answer.
      const r = await inNs(h0, ['traceroute', '-n', ...flags, '-N', '1', '-q', '3', '-w', '2', '-m', '8', SERVER], {
        timeoutMs: 40_000,
        allowFail: true,
      });
      const hops = parseTraceroute(r.stdout);
      const context = `traceroute output:\n${r.stdout}${r.stderr}`;
      expect(hops.map((h) => h.hop), context).toEqual(expectedPath.map((_, i) => i + 1));
      hops.forEach((h, i) => {
        // All three probes of hop i+1 answered, all by the expected node.
        expect(h.answers, context).toEqual([expectedPath[i], expectedPath[i], expectedPath[i]]);
      });
      expect(r.exitCode).toBe(0);
    }, 45_000);
  }

  it('two LAN hosts ping the same server at once; each gets its own identifier on the WAN', async () => {
    const [a, b] = await Promise.all([ping(h0, SERVER, 5), ping(h1, SERVER, 5)]);
    expect(a.received, a.output).toBe(5);
    expect(b.received, b.output).toBe(5);
    const icmp = (await router.conntrack()).filter((f) => f.protocol === 'icmp' && f.original.dst === SERVER);
    const of = (addr: string): FlowJson[] => icmp.filter((f) => f.original.src === addr);
    expect(of(lab.lanHosts[0]!.address).length).toBeGreaterThanOrEqual(1);
    expect(of(lab.lanHosts[1]!.address).length).toBeGreaterThanOrEqual(1);
    // On the WAN both flows come from the public address, so their identifiers must differ.
    const ids = [...of(lab.lanHosts[0]!.address), ...of(lab.lanHosts[1]!.address)].map((f) => f.reply.dstPort);
    expect(new Set(ids).size).toBe(ids.length);
    for (const f of icmp) expect(f.reply.dst).toBe(PUBLIC);
  });

  it('a datagram to a closed port comes back as ECONNREFUSED (port unreachable translated to the LAN socket)', async () => {
    const before = metricValue(await router.metrics(), 'tunnat_icmp_errors_translated_total');
    const r = await udpProbe(h0, SERVER, 9, { text: 'anyone there?', timeoutMs: 3000 });
    expect(r.outcome).toBe('error');
    expect(r.code).toBe('ECONNREFUSED');
    expect(r.ms).toBeLessThan(2000);
    const after = metricValue(await router.metrics(), 'tunnat_icmp_errors_translated_total');
    expect(after).toBeGreaterThan(before);
  });

  it('no 192.168.0.0/16 address left on the WAN, not even quoted inside an ICMP error', async () => {
    const { text, leaks } = await wanLeaks(capture);
    // The capture saw the traceroute's time-exceeded answers from r1 and the port unreachable.
    expect(text).toMatch(/ICMP time exceeded in-transit/);
    expect(text).toMatch(/udp port 9 unreachable/);
    expect(leaks).toEqual([]);
  });
});
