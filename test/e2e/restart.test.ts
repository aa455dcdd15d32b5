import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  isRoot, Cleanup, plainLabUp, startTestRouter, captureOn, snapshotNetns, waitUntil, inNs,
  type PlainLab, type TestRouter, type NetnsSnapshot,
} from './harness.js';
import { spawnIn } from '../../src/lab/process.js';
import { startServices } from '../../src/lab/services.js';
import { linesMentioning } from '../../src/lab/capture.js';
import { udpEcho } from '../../src/lab/probes.js';

const here = dirname(fileURLToPath(import.meta.url));
const CLIENT = join(here, 'fixtures', 'line-echo-client.mjs');
const SERVER = '203.0.113.2';

/**
 * Restart without loss, fail-closed while down, reload without dropping flows. Needs root (namespaces,
 * TUN); CI runs as root.
 */
describe.skipIf(!isRoot)('restarts, crashes and reloads', () => {
  const cleanup = new Cleanup((l) => console.error(l));
  let lab: PlainLab;
  let dir: string;
  let before: NetnsSnapshot;
  let n = 0;

  beforeAll(async () => {
    lab = await plainLabUp(cleanup, 1);
    await startServices({ netns: lab.inet, addresses: [SERVER], cleanup });
    // A line echo server on the internet host for long-lived connections.
    spawnIn(lab.inet, ['socat', 'TCP-LISTEN:5000,reuseaddr,fork', 'EXEC:cat'], { label: 'echo server', cleanup });
    dir = mkdtempSync(join(tmpdir(), 'tunnat-restart-'));
    const made = dir;
    cleanup.defer({ label: `remove ${made}`, sync: () => rmSync(made, { recursive: true, force: true }) });
    before = await snapshotNetns(lab.gw);
  }, 60_000);

  afterAll(async () => {
    await cleanup.run();
  }, 60_000);

  const start = (args: string[] = [], config?: unknown): Promise<TestRouter> =>
    startTestRouter({ gwNetns: lab.gw, id: `rs${lab.id}${n++}`, cleanup, args, ...(config ? { config } : {}) });

  it('keeps a TCP connection alive across SIGTERM and restart with --state; nothing private leaks', async () => {
    const state = join(dir, 'flows.json');
    const capture = await captureOn(lab.inet, lab.inetDev, cleanup);
    const first = await start(['--state', state]);
    const client = spawnIn(lab.hosts[0]!, ['node', CLIENT, SERVER, '5000', '40', '100'], { label: 'echo client', cleanup });
    await client.waitForLine(/"progress":5\b/, 10_000);

    expect(await first.stop()).toBe(0); // SIGTERM: flows saved, gateway left failed closed
    expect(existsSync(state)).toBe(true);
    // While no tunnat runs, the rules still steer LAN traffic into the (persistent) TUN, where it is dropped.
    const rules = (await inNs(lab.gw, ['ip', 'rule'])).stdout;
    expect(rules).toContain('lookup 7301');
    const down = await inNs(lab.hosts[0]!, ['ping', '-c', '1', '-W', '1', SERVER], { allowFail: true });
    expect(down.exitCode).not.toBe(0);

    const second = await start(['--state', state]);
    expect(second.output()).toMatch(/adopted the routing/);
    expect(second.output()).toMatch(/flows restored/);
    const code = await client.exited;
    expect(code, client.output()).toBe(0);
    expect(client.output()).toMatch(/"received":40,"error":null/);

    // SIGINT is a full stop even with --state: everything removed.
    await second.process!.stop('SIGINT');
    await capture.stop();
    expect(linesMentioning(await capture.packets(), '192.168.')).toEqual([]);
    const after = await snapshotNetns(lab.gw);
    expect(after.rules).toBe(before.rules);
    expect(after.tunDevices).toEqual([]);
  }, 60_000);

  it('fails closed after kill -9 and takes the set-up over on the next start without a leak', async () => {
    const capture = await captureOn(lab.inet, lab.inetDev, cleanup);
    const first = await start();
    const ok = await udpEcho(lab.hosts[0]!, SERVER, 7, 'before the crash');
    expect(ok.address).toBe('203.0.113.1');
    await first.process!.stop('SIGKILL');
    // The TUN died with the process; the fail-closed route refuses LAN traffic instead of routing it out.
    const routes = (await inNs(lab.gw, ['ip', 'route', 'show', 'table', '7301'])).stdout;
    expect(routes).toContain('prohibit default');
    const refused = await inNs(lab.hosts[0]!, ['ping', '-c', '2', '-i', '0.2', '-W', '1', SERVER], { allowFail: true });
    expect(refused.exitCode).not.toBe(0);

    const second = await start();
    expect(second.output()).toMatch(/adopted the routing/);
    const again = await udpEcho(lab.hosts[0]!, SERVER, 7, 'after the restart');
    expect(again.address).toBe('203.0.113.1');
    expect(await second.stop()).toBe(0);
    await capture.stop();
    expect(linesMentioning(await capture.packets(), '192.168.')).toEqual([]);
    expect((await snapshotNetns(lab.gw)).rules).toBe(before.rules);
  }, 60_000);

  it('reports and ignores a corrupt state file; tunnat down removes a failed-closed set-up', async () => {
    const state = join(dir, 'corrupt.json');
    writeFileSync(state, '{"format":"tunnat-flows","version":1,"flows":[[1,2');
    const r = await start(['--state', state]);
    expect(r.output()).toMatch(/state file ignored/);
    const echo = await udpEcho(lab.hosts[0]!, SERVER, 7, 'still works');
    expect(echo.payload).toBe('still works');
    expect(await r.stop()).toBe(0); // kept for a restart
    const down = await inNs(lab.gw, ['node', join(here, '..', '..', 'dist', 'src', 'cli', 'main.js'), 'down']);
    expect(down.stdout).toMatch(/removed/);
    const after = await snapshotNetns(lab.gw);
    expect(after.rules).toBe(before.rules);
    expect(after.routes).toBe(before.routes);
    expect(after.tunDevices).toEqual([]);
    expect(after.sysctls).toEqual(before.sysctls);
  }, 60_000);

  it('SIGHUP applies new timeouts without dropping flows', async () => {
    const cfgFile = join(dir, 'hup.json');
    // The echo on port 7 is a query and its answer (a well-known port): its timers are the query ones.
    writeFileSync(cfgFile, JSON.stringify({ timeouts: { udp: 300, udpQueryAnswered: 300, udpQueryUnanswered: 300 } }));
    const r = await start(['--config', cfgFile]);
    await udpEcho(lab.hosts[0]!, SERVER, 7, 'first', { sourcePort: 41000 });
    const flowsBefore = (await r.conntrack()).length;
    expect(flowsBefore).toBeGreaterThan(0);
    writeFileSync(cfgFile, JSON.stringify({ timeouts: { udp: 2, udpQueryAnswered: 2, udpQueryUnanswered: 2 } }));
    r.process!.signal('SIGHUP');
    await r.process!.waitForLine(/configuration reloaded/, 5000);
    expect((await r.conntrack()).length).toBe(flowsBefore); // nothing dropped by the reload
    // A new packet on the flow picks up the new timeout, and the flow then expires quickly.
    await udpEcho(lab.hosts[0]!, SERVER, 7, 'second', { sourcePort: 41000 });
    const isFlow = async () => (await r.conntrack()).some((f) => f.protocol === 'udp' && f.original.srcPort === 41000);
    await waitUntil('the UDP flow to expire on the reloaded timeout', async () => !(await isFlow()), 10_000);
    expect(await r.process!.stop('SIGINT')).toBe(0);
  }, 60_000);
});
