/**
 * What an operator can see of `tunnat run --engine kernel`, in a namespace lab with real traffic:
 * `tunnat conntrack --events` shows the kernel's NEW and DESTROY of a UDP and a TCP flow,
 * `tunnat stats` prints per-host rows and counters from conntrack accounting, GET / is the live page
 * and its feed carries the flows, `tunnat trace` exits 1 saying why there is no trace, and `--pcap`
 * is refused at start.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NsProcess } from '../../src/lab/process.js';
import { defaultCliPath, unixGet } from '../../src/lab/router.js';
import { startServices } from '../../src/lab/services.js';
import { sseConnect } from '../../src/observe/sse.js';
import type { LiveSnapshot } from '../../src/observe/live.js';
import { run } from '../../src/util/exec.js';
import { buildTestLab, Cleanup, inNs, isRoot, startTestRouter, waitUntil, type Lab, type TestRouter } from './harness.js';

const SERVER = '203.0.113.2';
const UDP_EVENTS_PORT = 41300;
const TCP_EVENTS_PORT = 41301;
const UDP_LIVE_PORT = 41400;
// Short enough that the flows of the events test leave the table within the test.
const TIMEOUTS = { udp: 3, icmp: 3, tcpFinWait: 3, tcpCloseWait: 3, tcpLastAck: 3, tcpTimeWait: 3, tcpClose: 3 };

// Needs root: namespaces, veth pairs, nft inside them. CI runs as root.
describe.skipIf(!isRoot)('observing the kernel engine', () => {
  const cleanup = new Cleanup((l) => console.error(l));
  let lab: Lab;
  let router: TestRouter;
  let target: string;
  const cli = (args: string[]) => run([process.execPath, defaultCliPath(), ...args], { allowFail: true, timeoutMs: 30_000 });

  beforeAll(async () => {
    lab = await buildTestLab(cleanup, { lanHosts: 2 });
    await startServices({ netns: lab.inet.netns, addresses: [SERVER], cleanup });
    router = await startTestRouter({ gwNetns: lab.gw.netns, id: `ko-${lab.id}`, cleanup, engine: 'kernel', config: { timeouts: TIMEOUTS }, readyTimeoutMs: 30_000 });
    target = `unix:${router.socketPath!}`;
  }, 90_000);

  afterAll(async () => {
    await cleanup.run();
  }, 60_000);

  it('`tunnat conntrack --events` shows NEW and DESTROY of a UDP and a TCP flow, with the counters accounting gives', async () => {
    const h0 = lab.lanHosts[0]!;
    const events = new NsProcess(null, [process.execPath, defaultCliPath(), 'conntrack', '--events', '--http', target, '--src', h0.address], {
      cleanup,
      label: 'tunnat conntrack --events',
    });
    await events.waitForLine(/following flow events/, 20_000);

    const echo = await inNs(h0.netns, ['sh', '-c', `printf 'hello' | socat -T1 - UDP4:${SERVER}:7,sourceport=${UDP_EVENTS_PORT}`]);
    expect(echo.stdout).toMatch(/^203\.0\.113\.1:\d+ hello/);
    await inNs(h0.netns, ['curl', '-sS', '--fail', '--noproxy', '*', '--max-time', '10', '--local-port', String(TCP_EVENTS_PORT), `http://${SERVER}/`]);

    const re = (tag: string, proto: string, port: number, rest = '') =>
      new RegExp(`\\[${tag}\\] ${proto} .*src=192\\.168\\.1\\.10 dst=203\\.0\\.113\\.2 sport=${port} dport=(7|80) ${rest}`);
    await events.waitForLine(re('NEW', 'udp', UDP_EVENTS_PORT), 15_000);
    await events.waitForLine(re('NEW', 'tcp', TCP_EVENTS_PORT), 15_000);
    // The flows time out; listing the table makes the kernel destroy expired entries at once.
    await waitUntil(
      'the flows to leave the table',
      async () => !(await router.conntrack()).some((f) => f.original.srcPort === UDP_EVENTS_PORT || f.original.srcPort === TCP_EVENTS_PORT),
      30_000,
      500,
    );
    const udpEnd = await events.waitForLine(re('DESTROY', 'udp', UDP_EVENTS_PORT), 15_000);
    await events.waitForLine(re('DESTROY', 'tcp', TCP_EVENTS_PORT), 15_000);
    // One datagram each way: accounting (switched on by the engine) counted them.
    expect(udpEnd).toMatch(/packets=1 bytes=33 src=203\.0\.113\.2 dst=203\.0\.113\.1 sport=7 dport=\d+ packets=1 bytes=\d+/);
    // Only h0's flows were asked for.
    expect(events.output()).not.toContain('192.168.1.11');
    await events.stop();
  }, 90_000);

  describe('with a flow kept alive', () => {
    beforeAll(async () => {
      const h0 = lab.lanHosts[0]!;
      // Stopped by the cleanup it is given.
      new NsProcess(h0.netns, ['sh', '-c', `while :; do printf x; sleep 0.3; done | socat -u - UDP4:${SERVER}:7,sourceport=${UDP_LIVE_PORT}`], {
        cleanup,
        label: 'udp keep-alive',
      });
      await waitUntil('the kept flow in the table', async () => (await router.conntrack()).some((f) => f.original.srcPort === UDP_LIVE_PORT), 15_000);
    }, 30_000);

    it('`tunnat stats` prints per-host rows and the counters conntrack gives, no empty row', async () => {
      const h0 = lab.lanHosts[0]!;
      const stats = await cli(['stats', '--http', target]);
      expect(stats.exitCode, stats.stderr).toBe(0);
      expect(stats.stdout).toMatch(/^packets +outbound=[1-9]\d* inbound=\d+$/m);
      expect(stats.stdout).toMatch(/^bytes +outbound=[1-9]\d* inbound=\d+$/m);
      expect(stats.stdout).toMatch(new RegExp(`^host ${h0.address.replace(/\./g, '\\.')} +packets=[1-9]\\d*/\\d+ bytes=[1-9]\\d*/\\d+ flows=[1-9]`, 'm'));
      expect(stats.stdout).toMatch(/^flows +total=[1-9]\d* max=[1-9]/m);
      expect(stats.stdout).toMatch(/^conntrack +.*\binsert_failed=\d+/m);
      expect(stats.stdout.split('\n').filter((l) => /^\S+ *$/.test(l))).toEqual([]);
    }, 40_000);

    it('GET / is the live page, and its feed carries the flows, the hosts and what the kernel engine lacks', async () => {
      const h0 = lab.lanHosts[0]!;
      const page = await unixGet(router.socketPath!, '/', 10_000);
      expect(page.status).toBe(200);
      expect(page.body).toContain('<title>tunnat — live</title>');
      let snap: LiveSnapshot | null = null;
      const conn = await sseConnect(target, '/live', (event, data) => {
        if (event === 'snapshot' && data !== 'null') snap = JSON.parse(data) as LiveSnapshot;
      });
      try {
        await waitUntil('a snapshot', () => Promise.resolve(snap !== null), 15_000, 100);
      } finally {
        conn.close();
      }
      const s = snap as unknown as LiveSnapshot;
      expect(s.engine).toBe('kernel');
      expect(s.flows.some((f) => f.protocol === 'udp' && f.original.src === h0.address && f.original.srcPort === UDP_LIVE_PORT)).toBe(true);
      expect(s.hosts.find((h) => h.host === h0.address)?.packets.outbound).toBeGreaterThan(0);
      expect(s.counters.flowsCreated).toBeGreaterThan(0);
      expect(s.unavailable?.join('\n')).toMatch(/per-packet trace needs the userspace engine/);
    }, 40_000);
  });

  it('`tunnat trace` exits 1 with the reason', async () => {
    const t = await cli(['trace', '--http', target]);
    expect(t.exitCode).toBe(1);
    expect(t.stderr.trim()).toBe('tunnat: the per-packet trace needs the userspace engine (--engine userspace): the kernel translates packets without showing them to tunnat');
  });

  it('--pcap with --engine kernel is refused at start (exit 2), touching nothing', async () => {
    const before = await inNs(lab.gw.netns, ['nft', 'list', 'ruleset']);
    const r = await run(
      ['ip', 'netns', 'exec', lab.gw.netns, process.execPath, defaultCliPath(), 'run', '--engine', 'kernel', '--internal', '192.168.2.0/24', '--external', 'wan0', '--http', 'off', '--pcap', '/tmp/never.pcapng'],
      { allowFail: true, timeoutMs: 30_000 },
    );
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toContain('--pcap needs the userspace engine (--engine userspace): the kernel translates packets without showing them to tunnat');
    expect((await inNs(lab.gw.netns, ['nft', 'list', 'ruleset'])).stdout).toBe(before.stdout);
  });
});
