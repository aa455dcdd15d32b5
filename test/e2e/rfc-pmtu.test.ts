/**
 * Path MTU discovery across tunnat (RFC 1191, RFC 5508 §5): full-size TCP segments with DF (the
 * Linux default) meet a narrower link, whoever owns that link answers "fragmentation needed", and
 * the error must reach the sender with its quoted packet as the sender knows it, or the transfer
 * stalls in a PMTU black hole. Files move with socat and are checked by sha256 where they arrive.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnIn } from '../../src/lab/process.js';
import { captureOn, Cleanup, buildTestLab, inNs, isRoot, randomFile, waitUntil, type Capture, type Lab } from './harness.js';
import { re, startRfcRouter, wanLeaks } from './fixtures/rfc-lab.js';

const BLOB_BYTES = 8 * 1024 * 1024;
const PATH_MTU = 1280;
const WAN_MTU = 1400;
const SERVER = '203.0.113.2';
const PUBLIC = '203.0.113.1';
/** socat gives up after this many idle seconds: a black hole fails the test instead of hanging it. */
const IDLE_S = 6;
/** sha256 of nothing: what the receiver reports when not a byte arrived. */
const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';

// Needs root: namespaces, veth pairs, a TUN device and tcpdump.
describe.skipIf(!isRoot)('path MTU discovery through tunnat', () => {
  const cleanup = new Cleanup((l) => console.error(l));
  let lab: Lab;
  let wan: Capture;
  let lan: Capture;
  let h0: string;
  let blob: { dir: string; name: string; sha256: string };

  async function listening(netns: string, port: number): Promise<void> {
    await waitUntil(`${netns}:${port} to listen`, async () => {
      const ss = await inNs(netns, ['ss', '-Hltn', `sport = :${port}`], { allowFail: true });
      return ss.stdout.includes(`:${port}`);
    }, 5_000, 50);
  }

  /** Upload the blob from h0 to a socat sink on netns:port; resolves with the sha256 the sink computed. */
  async function uploadTo(netns: string, host: string, port: number): Promise<string> {
    const sink = spawnIn(netns, ['sh', '-c', `socat -T ${IDLE_S} -u TCP-LISTEN:${port},reuseaddr STDOUT | sha256sum`], {
      label: `sha256 sink :${port}`,
      cleanup,
    });
    await listening(netns, port);
    const r = await inNs(h0, ['socat', '-T', String(IDLE_S), '-u', `OPEN:${blob.dir}/${blob.name}`, `TCP:${host}:${port}`], {
      allowFail: true,
      timeoutMs: 30_000,
    });
    expect(r.exitCode, r.stderr).toBe(0);
    await sink.exited;
    return sink.output().trim().split(/\s+/)[0] ?? '';
  }

  /** Download the blob to h0 from a socat server on the internet host; resolves with h0's sha256. */
  async function downloadFromServer(port: number): Promise<string> {
    const server = spawnIn(lab.inet.netns, ['socat', '-T', String(IDLE_S), '-u', `OPEN:${blob.dir}/${blob.name}`, `TCP-LISTEN:${port},reuseaddr`], {
      label: `socat file server :${port}`,
      cleanup,
    });
    await listening(lab.inet.netns, port);
    const r = await inNs(h0, ['sh', '-c', `socat -T ${IDLE_S} -u TCP:${SERVER}:${port} STDOUT | sha256sum`], { allowFail: true, timeoutMs: 30_000 });
    await server.stop();
    return r.stdout.trim().split(/\s+/)[0] ?? '';
  }

  const why = (hash: string): string => (hash === EMPTY_SHA256 ? 'nothing arrived: a PMTU black hole' : 'the data arrived damaged');

  beforeAll(async () => {
    lab = await buildTestLab(cleanup, { prefix: 'rfp', lanHosts: 1, pathMtu: PATH_MTU });
    h0 = lab.lanHosts[0]!.netns;
    blob = await randomFile(cleanup, BLOB_BYTES);
    // The far host advertises a 1460-byte MSS although its own link is narrower (as a server behind a
    // tunnel does): otherwise MSS negotiation alone would avoid big segments and prove nothing.
    await inNs(lab.far!.netns, ['ip', 'route', 'change', 'default', 'via', '198.51.100.65', 'dev', 'eth0', 'advmss', '1460']);
    wan = await captureOn(lab.inet.netns, lab.inet.dev, cleanup);
    lan = await captureOn(h0, lab.lanHosts[0]!.dev, cleanup, ['icmp']);
  }, 60_000);

  afterAll(async () => {
    await cleanup.run();
  }, 60_000);

  it(`an ${BLOB_BYTES >> 20} MB upload to the far host behind a ${PATH_MTU}-byte link completes intact`, async () => {
    const router = await startRfcRouter(lab, cleanup, 'far');
    try {
      const hash = await uploadTo(lab.far!.netns, lab.far!.address, 9000);
      expect(hash, why(hash)).toBe(blob.sha256);
      // The LAN host learned the path MTU from the translated "fragmentation needed".
      const route = await inNs(h0, ['ip', 'route', 'get', lab.far!.address]);
      expect(route.stdout).toMatch(new RegExp(`mtu ${PATH_MTU}\\b`));
    } finally {
      expect(await router.stop(), router.output()).toBe(0);
    }
  }, 45_000);

  it('the "fragmentation needed" reached the LAN host addressed to it, quoting its own private packet', async () => {
    await lan.stop();
    const text = (await inNs(h0, ['tcpdump', '-nn', '-v', '-r', lan.file], { allowFail: true })).stdout;
    const host = lab.lanHosts[0]!.address;
    expect(text).toMatch(new RegExp(`> ${re(host)}: ICMP ${re(lab.far!.address)} unreachable - need to frag \\(mtu ${PATH_MTU}\\)`));
    expect(text).toMatch(new RegExp(`${re(host)}\\.\\d+ > ${re(lab.far!.address)}\\.9000: Flags`));
  });

  // The gateway's own links can be the narrow ones (PPPoE's 1492 on the WAN is the everyday case).
  // Then the gateway itself must answer "fragmentation needed", and the error must still reach the
  // sender for the packet as the sender knows it.
  it(`a WAN link narrower than the LAN (gateway wan0 at ${WAN_MTU}): an upload to the internet host completes`, async () => {
    await inNs(lab.gw.netns, ['ip', 'link', 'set', 'dev', lab.gw.wanDev, 'mtu', String(WAN_MTU)]);
    const router = await startRfcRouter(lab, cleanup, 'wan1400');
    try {
      const hash = await uploadTo(lab.inet.netns, SERVER, 9001);
      expect(hash, why(hash)).toBe(blob.sha256);
      const route = await inNs(h0, ['ip', 'route', 'get', SERVER]);
      expect(route.stdout).toMatch(new RegExp(`mtu ${WAN_MTU}\\b`));
    } finally {
      expect(await router.stop(), router.output()).toBe(0);
      await inNs(lab.gw.netns, ['ip', 'link', 'set', 'dev', lab.gw.wanDev, 'mtu', '1500']);
    }
  }, 45_000);

  it(`a LAN link narrower than the WAN (gateway LAN port at ${PATH_MTU}): a download from the internet host completes`, async () => {
    // The bridge takes the smallest MTU of its ports; h0 keeps 1500 and so advertises MSS 1460.
    await inNs(lab.gw.netns, ['ip', 'link', 'set', 'dev', 'lan0', 'mtu', String(PATH_MTU)]);
    const router = await startRfcRouter(lab, cleanup, 'lan1280');
    try {
      const hash = await downloadFromServer(9002);
      expect(hash, why(hash)).toBe(blob.sha256);
    } finally {
      expect(await router.stop(), router.output()).toBe(0);
      await inNs(lab.gw.netns, ['ip', 'link', 'set', 'dev', 'lan0', 'mtu', '1500']);
    }
  }, 45_000);

  it('no 192.168.0.0/16 address left on the WAN, not even quoted inside an ICMP error', async () => {
    const { text, leaks } = await wanLeaks(wan);
    // The far side's error went to the public address, quoting the translated packet, which left with DF.
    expect(text).toMatch(new RegExp(`> ${re(PUBLIC)}: ICMP ${re(lab.far!.address)} unreachable - need to frag \\(mtu ${PATH_MTU}\\)`));
    expect(text).toMatch(new RegExp(`flags \\[DF\\], proto TCP \\(6\\), length \\d+\\)\\n\\s+${re(PUBLIC)}\\.\\d+ > ${re(lab.far!.address)}\\.9000: Flags`));
    expect(leaks).toEqual([]);
  });
});
