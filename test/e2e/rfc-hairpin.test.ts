/**
 * Hairpinning as coturn's RFC 5780 client tests it (`turnutils_natdiscovery -H`, RFC 5780 §4.5) against
 * `turnserver` on the internet host (two addresses, which RFC 5780 needs). The client learns its
 * mapped address from the server and then sends to that public endpoint from the LAN: RFC 4787 REQ-9
 * wants the packet to come back through the NAT to the mapping's own socket, under every filtering mode
 * once the mapping has itself sent to the public address.
 */
import { existsSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnIn } from '../../src/lab/process.js';
import { captureOn, Cleanup, buildTestLab, inNs, isRoot, waitUntil, type Capture, type Lab } from './harness.js';
import { startRfcRouter, wanLeaks } from './fixtures/rfc-lab.js';

const NATDISCOVERY = '/usr/bin/turnutils_natdiscovery';
const TURNSERVER = '/usr/bin/turnserver';
const TURN_PRIMARY = '203.0.113.2';
const TURN_ALTERNATE = '203.0.113.3';

// Needs root (namespaces, TUN, tcpdump). coturn is required, not optional: without it the suite fails
// saying what to install, so CI cannot silently skip the check.
describe.skipIf(!isRoot)('coturn natdiscovery -H finds hairpinning through tunnat in every filtering mode', () => {
  const cleanup = new Cleanup((l) => console.error(l));
  let lab: Lab;
  let h0: string;
  let capture: Capture;

  beforeAll(async () => {
    for (const bin of [NATDISCOVERY, TURNSERVER]) {
      if (!existsSync(bin)) throw new Error(`${bin} is missing: install the Debian package coturn (apt-get install coturn)`);
    }
    lab = await buildTestLab(cleanup, { prefix: 'rhp', lanHosts: 1, inetExtraAddresses: [TURN_ALTERNATE] });
    h0 = lab.lanHosts[0]!.netns;
    spawnIn(
      lab.inet.netns,
      [TURNSERVER, '-L', TURN_PRIMARY, '-L', TURN_ALTERNATE, '--no-auth', '--no-tcp', '--no-tls', '--no-dtls', '--no-cli',
        '--log-file', 'stdout', '--simple-log', '--no-stdout-log', '-r', 'lab', '--pidfile', '/dev/null'],
      { label: 'turnserver', cleanup },
    );
    await waitUntil(
      'turnserver to bind both addresses',
      async () => {
        const ss = await inNs(lab.inet.netns, ['ss', '-Hlun'], { allowFail: true });
        return [TURN_PRIMARY, TURN_ALTERNATE].every((a) => ss.stdout.includes(`${a}:3478`));
      },
      15_000,
    );
    capture = await captureOn(lab.inet.netns, lab.inet.dev, cleanup);
  }, 60_000);

  afterAll(async () => {
    await cleanup.run();
  }, 60_000);

  for (const mode of ['address', 'endpoint', 'address-port'] as const) {
    it(`--filtering ${mode}: natdiscovery -H reports hairpinning`, async () => {
      const router = await startRfcRouter(lab, cleanup, `hp-${mode}`, ['--filtering', mode]);
      try {
        const r = await inNs(h0, [NATDISCOVERY, '-H', TURN_PRIMARY], { allowFail: true, timeoutMs: 30_000 });
        const out = r.stdout + r.stderr;
        expect(out, `natdiscovery output:\n${out}\ntunnat output:\n${router.output()}`).toMatch(/Received a request \(maybe a successful hairpinning\)/);
      } finally {
        expect(await router.stop(), `tunnat output:\n${router.output()}`).toBe(0);
      }
    }, 60_000);
  }

  it('no 192.168.0.0/16 address left on the WAN', async () => {
    const { leaks } = await wanLeaks(capture);
    expect(leaks).toEqual([]);
  });
});
