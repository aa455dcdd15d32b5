/**
 * The core end-to-end test: `tunnat run` in a lab that is not the project's own (plain-lab.sh,
 * plain iproute2), exercised with real programs, while a capture on the internet host's side
 * records everything that left the gateway.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { linesMentioning, type Capture } from '../../src/lab/capture.js';
import { flowsFrom, translatedSource, type FlowJson } from '../../src/lab/flows.js';
import { httpSeenBy, ping, udpEcho } from '../../src/lab/probes.js';
import { startServices } from '../../src/lab/services.js';
import {
  captureOn,
  Cleanup,
  inNs,
  isRoot,
  kernelNatRules,
  plainLabUp,
  randomFile,
  snapshotNetns,
  startTestRouter,
  waitUntil,
  type NetnsSnapshot,
  type PlainLab,
  type TestRouter,
} from './harness.js';

const BIG_FILE_BYTES = 50 * 1024 * 1024;
// The echo on port 7 is a query and its answer to a well-known port: its timer is udpQueryAnswered (udp-timer.ts).
const TIMEOUTS = { udp: 2, udpQueryAnswered: 2, udpQueryUnanswered: 2, icmp: 2 };
const PUBLIC = '203.0.113.1';
const SERVER = '203.0.113.2';

// Needs root: namespaces, veth pairs, a TUN device and tcpdump. CI runs as root.
// The same checks run against both engines the CLI drives: tunnat's own translator, and the kernel's
// NAT (`--engine kernel`) configured by the same flags.
describe.skipIf(!isRoot).each(['userspace', 'kernel'] as const)('tunnat run --engine %s in an independent lab (plain-lab.sh)', (engine) => {
  const cleanup = new Cleanup((l) => console.error(l));
  let lab: PlainLab;
  let router: TestRouter;
  let capture: Capture;
  let before: NetnsSnapshot;
  let blob: { dir: string; name: string; sha256: string };
  let h0: string;
  let h1: string;

  beforeAll(async () => {
    lab = await plainLabUp(cleanup, 2);
    [h0, h1] = lab.hosts as [string, string];
    blob = await randomFile(cleanup, BIG_FILE_BYTES);
    await startServices({ netns: lab.inet, addresses: [SERVER], filesDir: blob.dir, cleanup });
    before = await snapshotNetns(lab.gw);
    capture = await captureOn(lab.inet, lab.inetDev, cleanup);
    router = await startTestRouter({ gwNetns: lab.gw, id: `core-${lab.id}`, cleanup, engine, config: { timeouts: TIMEOUTS } });
  }, 60_000);

  afterAll(async () => {
    await cleanup.run();
  }, 60_000);

  it('HTTP from a LAN host reaches the internet host, which sees the public address', async () => {
    const seen = await httpSeenBy(h0, SERVER);
    expect(seen.remoteAddress).toBe(PUBLIC);
    const flows = flowsFrom(await router.conntrack(), '192.168.1.10').filter((f) => f.protocol === 'tcp');
    expect(flows.map((f) => translatedSource(f))).toContainEqual({ address: PUBLIC, port: seen.remotePort });
  });

  it('UDP request/response', async () => {
    const echo = await udpEcho(h0, SERVER, 7, 'core udp');
    expect(echo.address).toBe(PUBLIC);
    expect(echo.payload).toBe('core udp');
  });

  it('ping', async () => {
    const p = await ping(h0, SERVER, 3);
    expect(p.transmitted).toBe(3);
    expect(p.received).toBe(3);
  });

  it('a 50 MB TCP transfer arrives intact (sha256) within 60 s', async () => {
    const start = Date.now();
    const r = await inNs(
      h0,
      ['sh', '-c', `curl -sS --fail --noproxy '*' --max-time 60 http://${SERVER}/files/${blob.name} | sha256sum`],
      { timeoutMs: 70_000 },
    );
    expect(r.stdout.split(/\s+/)[0]).toBe(blob.sha256);
    expect(Date.now() - start).toBeLessThan(60_000);
  }, 90_000);

  it('two LAN hosts using the same source port get two different mappings, and both work', async () => {
    // One after the other: at the same instant the kernel engine's two first datagrams can race to the
    // same public tuple on two CPUs and conntrack drops one at confirmation (the known Linux UDP NAT race,
    // which a UDP client's retry papers over); the mappings are what this test checks.
    const a = await udpEcho(h0, SERVER, 7, 'from h0', { sourcePort: 40000 });
    const b = await udpEcho(h1, SERVER, 7, 'from h1', { sourcePort: 40000 });
    expect(a.address).toBe(PUBLIC);
    expect(b.address).toBe(PUBLIC);
    expect(a.payload).toBe('from h0');
    expect(b.payload).toBe('from h1');
    expect(a.port).not.toBe(b.port);

    const flows = await router.conntrack();
    const fa = flowsFrom(flows, '192.168.1.10', 40000).filter((f) => f.protocol === 'udp');
    const fb = flowsFrom(flows, '192.168.1.11', 40000).filter((f) => f.protocol === 'udp');
    expect(fa).toHaveLength(1);
    expect(fb).toHaveLength(1);
    expect(translatedSource(fa[0]!)).toEqual({ address: PUBLIC, port: a.port });
    expect(translatedSource(fb[0]!)).toEqual({ address: PUBLIC, port: b.port });

    // The same for TCP, with curl binding the same local port on both hosts at once.
    const [ta, tb] = await Promise.all([
      httpSeenBy(h0, SERVER, { localPort: 40001 }),
      httpSeenBy(h1, SERVER, { localPort: 40001 }),
    ]);
    expect(ta.remoteAddress).toBe(PUBLIC);
    expect(tb.remoteAddress).toBe(PUBLIC);
    expect(ta.remotePort).not.toBe(tb.remotePort);
  });

  it('UDP and ICMP flows expire after the configured timeouts', async () => {
    const flowsOf = async (pred: (f: FlowJson) => boolean): Promise<FlowJson[]> => (await router.conntrack()).filter(pred);
    const isUdp = (f: FlowJson): boolean => f.protocol === 'udp' && f.original.src === '192.168.1.10' && f.original.srcPort === 40100;
    const echo = await udpEcho(h0, SERVER, 7, 'expire me', { sourcePort: 40100 });
    expect(echo.address).toBe(PUBLIC);
    expect(await flowsOf(isUdp)).toHaveLength(1);
    const udpGone = await waitUntil('the UDP flow to expire', async () => (await flowsOf(isUdp)).length === 0, (TIMEOUTS.udp + 8) * 1000);
    // Not before its idle timeout (a little slack for the expiry sweep's granularity).
    expect(udpGone).toBeGreaterThanOrEqual(TIMEOUTS.udp * 1000 - 500);

    const isIcmp = (f: FlowJson): boolean => f.protocol === 'icmp' && f.original.src === '192.168.1.11';
    const p = await ping(h1, SERVER, 1);
    expect(p.received).toBe(1);
    expect((await flowsOf(isIcmp)).length).toBeGreaterThan(0);
    await waitUntil('the ICMP flow to expire', async () => (await flowsOf(isIcmp)).length === 0, (TIMEOUTS.icmp + 8) * 1000);
  }, 40_000);

  it("the gateway's own traffic keeps working while tunnat runs", async () => {
    const seen = await httpSeenBy(lab.gw, SERVER);
    expect(seen.remoteAddress).toBe(PUBLIC);
    const echo = await udpEcho(lab.gw, SERVER, 7, 'from the gateway');
    expect(echo.payload).toBe('from the gateway');
    const p = await ping(lab.gw, SERVER, 3);
    expect(p.received).toBe(3);
  });

  it('the kernel NAT tables hold rules only when the kernel engine translates', async () => {
    const rules = await kernelNatRules(lab.gw);
    if (engine === 'userspace') {
      // The translation is tunnat's own: the kernel's NAT is not involved at all.
      expect(rules.nft).toEqual([]);
      expect(rules.iptables).toEqual([]);
    } else {
      expect(rules.nft.length + rules.iptables.length).toBeGreaterThan(0);
    }
  });

  it('no packet on the WAN carried a 192.168.0.0/16 address', async () => {
    await capture.stop();
    const packets = await capture.packets();
    const ip = packets.filter((p) => p.kind === 'ip');
    // The capture saw the traffic above: TCP, UDP and ICMP between the public address and the server.
    for (const proto of ['tcp', 'udp', 'icmp'] as const) {
      expect(ip.some((p) => p.protocol === proto && p.src === PUBLIC && p.dst === SERVER)).toBe(true);
      expect(ip.some((p) => p.protocol === proto && p.src === SERVER && p.dst === PUBLIC)).toBe(true);
    }
    expect(linesMentioning(packets, '192.168.')).toEqual([]);
  });

  it('after SIGTERM nothing of tunnat is left in the gateway', async () => {
    const code = await router.stop();
    expect(code, `tunnat run output:\n${router.output()}`).toBe(0);
    const after = await snapshotNetns(lab.gw);
    expect(after.tunDevices).toEqual([]);
    expect(after.links).toEqual(before.links);
    expect(after.rules).toBe(before.rules);
    expect(after.rules6).toBe(before.rules6);
    expect(after.routes).toBe(before.routes);
    expect(after.sysctls).toEqual(before.sysctls);
    const rules = await kernelNatRules(lab.gw);
    expect(rules.nft).toEqual([]);
    expect(rules.iptables).toEqual([]);
  }, 30_000);
});
