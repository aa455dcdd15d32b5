import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { readFileSync } from 'node:fs';
import { isRoot, Cleanup, plainLabUp, startTestRouter, snapshotNetns, waitUntil, inNs, type PlainLab, type NetnsSnapshot } from './harness.js';
import { startServices } from '../../src/lab/services.js';
import { udpEcho, httpSeenBy } from '../../src/lab/probes.js';
import { lookupUser } from '../../src/router/privsep.js';
import { run } from '../../src/util/exec.js';

const SERVER = '203.0.113.2';

/** The processes in a namespace whose real uid is `uid`, with their capability sets. */
async function processesOf(netns: string, uid: number): Promise<{ pid: number; capEff: string; capPrm: string }[]> {
  const pids = await run(['ip', 'netns', 'pids', netns]);
  const out: { pid: number; capEff: string; capPrm: string }[] = [];
  for (const p of pids.stdout.split(/\s+/).filter(Boolean).map(Number)) {
    try {
      const status = readFileSync(`/proc/${p}/status`, 'utf8');
      const realUid = Number(/^Uid:\s+(\d+)/m.exec(status)?.[1]);
      if (realUid !== uid) continue;
      out.push({ pid: p, capEff: /^CapEff:\s+(\S+)/m.exec(status)![1]!, capPrm: /^CapPrm:\s+(\S+)/m.exec(status)![1]! });
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

/**
 * Least privilege (`--user`): the process that parses packets runs unprivileged with no capabilities,
 * while the root parent keeps only the routing. Needs root to set up; CI runs as root.
 */
describe.skipIf(!isRoot)('tunnat run --user (privilege separation)', () => {
  const cleanup = new Cleanup((l) => console.error(l));
  let lab: PlainLab;
  let before: NetnsSnapshot;
  const nobody = lookupUser('nobody');

  beforeAll(async () => {
    lab = await plainLabUp(cleanup, 1);
    await startServices({ netns: lab.inet, addresses: [SERVER], cleanup });
    before = await snapshotNetns(lab.gw);
  }, 60_000);

  afterAll(async () => {
    await cleanup.run();
  }, 60_000);

  it('has a nobody user to drop to', () => {
    expect(nobody).not.toBeNull();
    expect(nobody!.uid).not.toBe(0);
  });

  it.each([
    ['one loop', []],
    // The root parent opens and steers the workers' queues; the child's workers read them (docs/workers.md).
    ['two workers', ['--workers', '2']],
  ])('translates with the data plane running as nobody, without any capability (%s)', async (name, extra) => {
    const r = await startTestRouter({ gwNetns: lab.gw, id: `ps${name.length}${lab.id}`, cleanup, args: ['--user', 'nobody', ...extra] });
    const unprivileged = await processesOf(lab.gw, nobody!.uid);
    expect(unprivileged).toHaveLength(1);
    expect(unprivileged[0]!.capEff).toBe('0000000000000000');
    expect(unprivileged[0]!.capPrm).toBe('0000000000000000');
    const seen = await httpSeenBy(lab.hosts[0]!, SERVER);
    expect(seen.remoteAddress).toBe('203.0.113.1');
    const echo = await udpEcho(lab.hosts[0]!, SERVER, 7, 'as nobody');
    expect(echo.payload).toBe('as nobody');
    // /metrics and /conntrack are served by the unprivileged process over the parent's listeners.
    const metrics = await r.metrics();
    expect(metrics).toMatch(/tunnat_packets_total/);
    if (extra.length > 0) {
      expect(metrics).toMatch(/^tunnat_queue_steering 1$/m);
      expect(metrics).toMatch(/^tunnat_worker_packets_total\{worker="1"\} \d+/m);
    }
    expect((await r.conntrack()).some((f) => f.protocol === 'udp')).toBe(true);
    expect(await r.stop()).toBe(0);
    const after = await snapshotNetns(lab.gw);
    expect(after.rules).toBe(before.rules);
    expect(after.tunDevices).toEqual([]);
  }, 60_000);

  it('removes the set-up when the unprivileged data plane dies', async () => {
    const r = await startTestRouter({ gwNetns: lab.gw, id: `pk${lab.id}`, cleanup, args: ['--user', 'nobody'] });
    const [child] = await processesOf(lab.gw, nobody!.uid);
    process.kill(child!.pid, 'SIGKILL');
    await waitUntil('the parent to tear down', async () => r.process!.code !== null, 10_000);
    expect(r.process!.code).toBe(0);
    expect(r.output()).toMatch(/the data plane exited; removing the set-up/);
    expect((await snapshotNetns(lab.gw)).rules).toBe(before.rules);
  }, 60_000);

  it('refuses an unknown user with exit code 2', async () => {
    const res = await inNs(lab.gw, ['node', 'dist/src/cli/main.js', 'run', '--internal', '192.168.1.0/24', '--external', 'wan0', '--user', 'no-such-user-x'], {
      allowFail: true,
    });
    expect(res.exitCode).toBe(2);
    expect(res.stderr).toMatch(/no such user/);
  });
});
