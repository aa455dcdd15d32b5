/**
 * IP fragments through tunnat (RFC 4787 REQ-14): UDP datagrams and ICMP echoes larger than the MTU
 * leave a LAN host in fragments, are translated without reassembly, and the echo's equally
 * fragmented reply comes back whole; the same inbound through a port forward; and, crafted with
 * scapy, fragments that arrive last-first in either direction.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ping } from '../../src/lab/probes.js';
import type { NsProcess } from '../../src/lab/process.js';
import { captureOn, Cleanup, buildTestLab, inNs, isRoot, type Capture, type Lab, type TestRouter } from './harness.js';
import { PROBE, echoLog, metricValue, re, startRfcRouter, startUdpEcho, udpProbe, wanLeaks } from './fixtures/rfc-lab.js';

const SERVER = '203.0.113.2';
const PUBLIC = '203.0.113.1';
const LAN_ECHO = '192.168.1.10';
const FORWARD_PORT = 5353;
const PYTHON = '/usr/bin/python3';
const CRAFT = join(PROBE, '..', 'rfc-fragments.py');

interface CraftResult {
  outcome: 'reply' | 'timeout';
  fragments: number;
  bytes?: number;
  same?: boolean;
  from?: string;
}

/** Fragments (offset > 0) in the verbose WAN capture, by "src > dst" of the outer header. */
function laterFragments(verbose: string): string[] {
  const out: string[] = [];
  for (const m of verbose.matchAll(/offset (\d+), flags \[[^\]]*\], proto (?:UDP|ICMP) \(\d+\), length \d+\)\n\s+(\S+) > (\S+?):/g)) {
    if (Number(m[1]) > 0) out.push(`${m[2]} > ${m[3]}`);
  }
  return out;
}

// Needs root: namespaces, veth pairs, a TUN device, raw sockets (scapy) and tcpdump.
describe.skipIf(!isRoot)('IP fragments through tunnat', () => {
  const cleanup = new Cleanup((l) => console.error(l));
  let lab: Lab;
  let router: TestRouter;
  let capture: Capture;
  let h0: string;
  let inetEcho: NsProcess;
  let lanEcho: NsProcess;

  beforeAll(async () => {
    lab = await buildTestLab(cleanup, { prefix: 'rfg', lanHosts: 1 });
    h0 = lab.lanHosts[0]!.netns;
    inetEcho = await startUdpEcho(lab.inet.netns, SERVER, 7, cleanup);
    lanEcho = await startUdpEcho(h0, LAN_ECHO, 7, cleanup);
    capture = await captureOn(lab.inet.netns, lab.inet.dev, cleanup);
    router = await startRfcRouter(lab, cleanup, 'frag', ['--forward', `udp:${FORWARD_PORT}=${LAN_ECHO}:7`]);
  }, 60_000);

  afterAll(async () => {
    await cleanup.run();
  }, 60_000);

  for (const size of [4000, 30000]) {
    it(`a ${size}-byte UDP datagram from the LAN arrives whole, and so does the fragmented echo`, async () => {
      const r = await udpProbe(h0, SERVER, 7, { size, timeoutMs: 3000 });
      expect(r.outcome).toBe('reply');
      expect(r.bytes).toBe(size);
      expect(r.endsWithPayload).toBe(true);
      // The echo got it whole, from the public address.
      const got = echoLog(inetEcho).filter((e) => e.bytes === size);
      expect(got).toHaveLength(1);
      expect(got[0]!.from).toMatch(new RegExp(`^${re(PUBLIC)}:\\d+$`));
    });
  }

  it('a 4000-byte UDP datagram from the internet through a port forward arrives whole at the LAN host and back', async () => {
    const r = await udpProbe(lab.inet.netns, PUBLIC, FORWARD_PORT, { size: 4000, timeoutMs: 3000 });
    expect(r.outcome).toBe('reply');
    expect(r.bytes).toBe(4000);
    expect(r.endsWithPayload).toBe(true);
    const got = echoLog(lanEcho).filter((e) => e.bytes === 4000);
    expect(got).toHaveLength(1);
    expect(got[0]!.from).toMatch(new RegExp(`^${re(SERVER)}:\\d+$`));
  });

  it('a 4000-byte ping crosses in fragments both ways', async () => {
    const p = await ping(h0, SERVER, 2, ['-s', '4000']);
    expect(p.received, p.output).toBe(2);
  });

  describe('fragments that arrive last-first (crafted with scapy)', () => {
    const craft = async (netns: string, dst: string, dport: number, sport: number): Promise<CraftResult> => {
      if (!existsSync(PYTHON)) throw new Error(`${PYTHON} is missing: install the Debian packages python3 and python3-scapy`);
      const r = await inNs(netns, [PYTHON, CRAFT, dst, String(dport), String(sport), '3000', '800', 'reverse', '3'], { timeoutMs: 30_000 });
      return JSON.parse(r.stdout.trim().split('\n').pop() ?? '') as CraftResult;
    };

    it('outbound: the LAN host sends its fragments in reverse; the internet echo gets the datagram whole', async () => {
      const r = await craft(h0, SERVER, 7, 41000);
      expect(r.fragments).toBeGreaterThanOrEqual(4);
      expect(r).toMatchObject({ outcome: 'reply', bytes: 3000, same: true, from: `${SERVER}:7` });
      expect(echoLog(inetEcho).filter((e) => e.bytes === 3000).map((e) => e.from)).toEqual([`${PUBLIC}:41000`]);
    });

    it('inbound through the port forward: reversed fragments reach the LAN echo whole', async () => {
      const r = await craft(lab.inet.netns, PUBLIC, FORWARD_PORT, 41001);
      expect(r).toMatchObject({ outcome: 'reply', bytes: 3000, same: true, from: `${PUBLIC}:${FORWARD_PORT}` });
      expect(echoLog(lanEcho).filter((e) => e.bytes === 3000).map((e) => e.from)).toEqual([`${SERVER}:41001`]);
    });
  });

  it('no fragment was dropped, fragments crossed the WAN both ways, and no 192.168.0.0/16 address left it', async () => {
    expect(metricValue(await router.metrics(), 'tunnat_drops_total', { reason: 'fragment' })).toBe(0);
    const { text, leaks } = await wanLeaks(capture);
    const frags = laterFragments(text);
    expect(frags).toContain(`${PUBLIC} > ${SERVER}`);
    expect(frags).toContain(`${SERVER} > ${PUBLIC}`);
    expect(leaks).toEqual([]);
  });
});
