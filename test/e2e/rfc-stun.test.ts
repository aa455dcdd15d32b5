/**
 * RFC 4787 / RFC 3489 NAT behaviour as a real STUN client classifies it: the Debian `stun` client
 * (stun-client) on a LAN host against `stund` (stun-server) on the internet host, which answers
 * from two addresses and two ports so the client can tell the filtering apart. For each
 * `--filtering` mode the client must find endpoint-independent mapping (REQ-1), port preservation,
 * hairpinning (REQ-9) and the filtering that mode chose (REQ-8).
 */
import { existsSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { flowsFrom, translatedSource } from '../../src/lab/flows.js';
import { spawnIn } from '../../src/lab/process.js';
import { captureOn, Cleanup, buildTestLab, inNs, isRoot, waitUntil, type Capture, type Lab } from './harness.js';
import { re, startRfcRouter, wanLeaks } from './fixtures/rfc-lab.js';

const STUN = '/usr/bin/stun';
const STUND = '/usr/sbin/stund';
const PUBLIC = '203.0.113.1';
const STUN_PRIMARY = '203.0.113.2';
const STUN_ALTERNATE = '203.0.113.3';

/** What `stun -v` concluded, from its "Primary:" line and the mapped addresses it printed. */
interface StunReport {
  primary: string;
  parts: string[];
  mapped: string[];
  output: string;
}

function parseStun(output: string): StunReport {
  const primary = /^Primary: (.*)$/m.exec(output)?.[1]?.trim() ?? '';
  return {
    primary,
    parts: primary === '' ? [] : primary.split(',').map((s) => s.trim()),
    mapped: [...output.matchAll(/^MappedAddress = (\S+)$/gm)].map((m) => m[1]!),
    output,
  };
}

// The client's own names for the three filtering behaviours.
const CASES = [
  { mode: 'endpoint', filter: 'Independent Filter', port: 40000 },
  { mode: 'address', filter: 'Address Dependent Filter', port: 40010 },
  { mode: 'address-port', filter: 'Port Dependent Filter', port: 40020 },
] as const;

// Needs root (namespaces, TUN, tcpdump). The STUN programs are required, not optional: without them
// the suite fails saying what to install, so CI cannot silently skip the check.
describe.skipIf(!isRoot)('STUN classifies tunnat as RFC 4787 wants, in every filtering mode', () => {
  const cleanup = new Cleanup((l) => console.error(l));
  let lab: Lab;
  let h0: string;
  let capture: Capture;

  beforeAll(async () => {
    for (const [bin, pkg] of [[STUN, 'stun-client'], [STUND, 'stun-server']] as const) {
      if (!existsSync(bin)) throw new Error(`${bin} is missing: install the Debian package ${pkg} (apt-get install stun-client stun-server)`);
    }
    lab = await buildTestLab(cleanup, { prefix: 'rfs', lanHosts: 1, inetExtraAddresses: [STUN_ALTERNATE] });
    h0 = lab.lanHosts[0]!.netns;
    // stund binds 3478 and 3479 on both addresses: the "changed address/port" a classic STUN test needs.
    spawnIn(lab.inet.netns, [STUND, '-h', STUN_PRIMARY, '-a', STUN_ALTERNATE], { label: 'stund', cleanup });
    await waitUntil(
      'stund to bind its four sockets',
      async () => {
        const ss = await inNs(lab.inet.netns, ['ss', '-Hlun'], { allowFail: true });
        return [STUN_PRIMARY, STUN_ALTERNATE].every((a) => ['3478', '3479'].every((p) => ss.stdout.includes(`${a}:${p}`)));
      },
      10_000,
    );
    capture = await captureOn(lab.inet.netns, lab.inet.dev, cleanup);
  }, 60_000);

  afterAll(async () => {
    await cleanup.run();
  }, 60_000);

  for (const c of CASES) {
    it(`--filtering ${c.mode}: independent mapping, ${c.filter}, preserves ports, will hairpin`, async () => {
      const router = await startRfcRouter(lab, cleanup, c.mode, ['--filtering', c.mode]);
      try {
        // An explicit source port outside the gateway's own ephemeral range (20000-29999), which
        // tunnat never hands out; the client's default random port (16384-32767) often falls inside it.
        const r = await inNs(h0, [STUN, STUN_PRIMARY, '-v', '-p', String(c.port)], { allowFail: true, timeoutMs: 30_000 });
        const report = parseStun(r.stdout + r.stderr);
        expect(report.parts, `stun output:\n${report.output}`).toEqual(['Independent Mapping', c.filter, 'preserves ports', 'will hairpin']);
        // Every binding response named the public address and the client's own port (P or P+1, its
        // pair). Tests I and I(2) always come back; II and III only where the filtering admits them.
        expect(report.mapped.length).toBeGreaterThanOrEqual(2);
        for (const m of report.mapped) expect([`${PUBLIC}:${c.port}`, `${PUBLIC}:${c.port + 1}`]).toContain(m);

        const flows = flowsFrom(await router.conntrack(), lab.lanHosts[0]!.address, c.port).filter((f) => f.protocol === 'udp');
        // One mapping for all of them (tests I and I(2) to both server addresses, and the hairpin to
        // the client's own public endpoint).
        const destinations = flows.map((f) => `${f.original.dst}:${f.original.dstPort}`);
        expect(destinations).toEqual(expect.arrayContaining([`${STUN_PRIMARY}:3478`, `${STUN_ALTERNATE}:3478`, `${PUBLIC}:${c.port}`]));
        for (const f of flows) expect(translatedSource(f)).toEqual({ address: PUBLIC, port: c.port });
      } finally {
        expect(await router.stop(), `tunnat output:\n${router.output()}`).toBe(0);
      }
    }, 45_000);
  }

  it('no 192.168.0.0/16 address left on the WAN, not even quoted inside an ICMP error', async () => {
    const { text, leaks } = await wanLeaks(capture);
    // The capture did see the STUN exchanges (from the public address to both server addresses).
    expect(text).toMatch(new RegExp(`${re(PUBLIC)}\\.40000 > ${re(STUN_ALTERNATE)}\\.3478`));
    expect(leaks).toEqual([]);
  });
});
