/**
 * The lab itself, checked with the kernel's NAT as the engine (so it does not depend on the router
 * being finished): building, services, probes, capture, the demo, and cleanup on every exit path.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { linesMentioning } from '../../src/lab/capture.js';
import { runLab } from '../../src/lab/demo.js';
import { flowsFrom, translatedSource } from '../../src/lab/flows.js';
import { listNetns, MAX_IFNAME, randomId } from '../../src/lab/netns.js';
import { httpSeenBy, ping, udpEcho } from '../../src/lab/probes.js';
import { repoRoot, socketPathFor } from '../../src/lab/router.js';
import { startServices } from '../../src/lab/services.js';
import { buildTestLab, captureOn, Cleanup, inNs, isRoot, randomFile, startTestRouter, type Lab, type TestRouter } from './harness.js';

const PUBLIC = '203.0.113.1';

async function namespacesOf(id: string): Promise<string[]> {
  return (await listNetns()).filter((n) => n.includes(id));
}

// Needs root: network namespaces, veth pairs, iptables inside them and tcpdump. CI runs as root.
describe.skipIf(!isRoot)('standard lab with the kernel stand-in', () => {
  const cleanup = new Cleanup((l) => console.error(l));
  let lab: Lab;
  let router: TestRouter;
  let blob: { dir: string; name: string; sha256: string };

  beforeAll(async () => {
    lab = await buildTestLab(cleanup, { lanHosts: 2, inetExtraAddresses: ['203.0.113.3', '198.51.100.1'] });
    blob = await randomFile(cleanup, 4 * 1024 * 1024);
    await startServices({ netns: lab.inet.netns, addresses: lab.inet.addresses, filesDir: blob.dir, cleanup });
    router = await startTestRouter({ gwNetns: lab.gw.netns, id: lab.id, cleanup, engine: 'kernel-manual' });
  });

  afterAll(async () => {
    await cleanup.run();
    expect(await namespacesOf(lab.id)).toEqual([]);
  });

  it('creates uniquely named namespaces with the documented interfaces and addresses', async () => {
    expect(lab.namespaces).toHaveLength(4);
    expect(new Set(await namespacesOf(lab.id))).toEqual(new Set(lab.namespaces));
    const gwAddrs = (await inNs(lab.gw.netns, ['ip', '-o', '-4', 'addr', 'show'])).stdout;
    expect(gwAddrs).toMatch(/br-lan\s+inet 192\.168\.1\.1\/24/);
    expect(gwAddrs).toMatch(/wan0\s+inet 203\.0\.113\.1\/24/);
    const links = (await inNs(lab.gw.netns, ['ip', '-o', 'link', 'show'])).stdout;
    for (const name of links.split('\n').map((l) => (l.split(':')[1] ?? '').trim().replace(/@.*$/, ''))) {
      expect(name.length).toBeLessThanOrEqual(MAX_IFNAME);
    }
    expect(lab.lanHosts.map((h) => h.address)).toEqual(['192.168.1.10', '192.168.1.11']);
    const route = (await inNs(lab.lanHosts[1]!.netns, ['ip', 'route', 'show', 'default'])).stdout;
    expect(route).toContain('via 192.168.1.1');
  });

  it('HTTP from every LAN host is seen from the public address, on every internet address', async () => {
    for (const h of lab.lanHosts) {
      for (const server of lab.inet.addresses) {
        const seen = await httpSeenBy(h.netns, server);
        expect(seen.remoteAddress).toBe(PUBLIC);
        expect(seen.localAddress).toBe(server);
      }
    }
  });

  it('UDP echo answers from each address with the sender it saw', async () => {
    for (const server of lab.inet.addresses) {
      const echo = await udpEcho(lab.lanHosts[0]!.netns, server, 7, `to ${server}`);
      expect(echo).toMatchObject({ address: PUBLIC, payload: `to ${server}` });
    }
  });

  it('ping from a LAN host', async () => {
    expect(await ping(lab.lanHosts[0]!.netns, lab.inet.address, 2)).toMatchObject({ transmitted: 2, received: 2 });
  });

  it('a file transfer from the HTTP service arrives intact', async () => {
    const r = await inNs(lab.lanHosts[0]!.netns, ['sh', '-c', `curl -sS --fail --max-time 20 http://${lab.inet.address}/files/${blob.name} | sha256sum`]);
    expect(r.stdout.split(/\s+/)[0]).toBe(blob.sha256);
  });

  it('flows read from the engine show the same translation the server saw', async () => {
    // One after the other: sent at the same instant, the kernel stand-in's two first packets can race to
    // the same public tuple on two CPUs, and conntrack drops the loser at confirmation (insert_failed, the
    // known Linux UDP NAT race). What this test is about, two hosts sharing a source port, holds either way.
    const a = await udpEcho(lab.lanHosts[0]!.netns, lab.inet.address, 7, 'a', { sourcePort: 41000 });
    const b = await udpEcho(lab.lanHosts[1]!.netns, lab.inet.address, 7, 'b', { sourcePort: 41000 });
    expect(a.port).not.toBe(b.port);
    const flows = await router.conntrack();
    const fa = flowsFrom(flows, '192.168.1.10', 41000);
    const fb = flowsFrom(flows, '192.168.1.11', 41000);
    expect(fa.map(translatedSource)).toEqual([{ address: PUBLIC, port: a.port }]);
    expect(fb.map(translatedSource)).toEqual([{ address: PUBLIC, port: b.port }]);
    expect(fa[0]!.packets).toEqual({ original: 1, reply: 1 });
  });

  it('a WAN capture records the traffic and no private address', async () => {
    const capture = await captureOn(lab.inet.netns, lab.inet.dev, cleanup);
    await httpSeenBy(lab.lanHosts[1]!.netns, lab.inet.address);
    await udpEcho(lab.lanHosts[1]!.netns, lab.inet.address, 7, 'captured');
    await ping(lab.lanHosts[1]!.netns, lab.inet.address, 1);
    await capture.stop();
    const packets = await capture.packets();
    for (const proto of ['tcp', 'udp', 'icmp'] as const) {
      expect(packets.some((p) => p.protocol === proto && p.src === PUBLIC && p.dst === lab.inet.address)).toBe(true);
    }
    expect(linesMentioning(packets, '192.168.')).toEqual([]);
  });

  it('stopping the stand-in removes its rule and restores ip_forward', async () => {
    await router.stop();
    const rules = (await inNs(lab.gw.netns, ['iptables', '-t', 'nat', '-S'])).stdout;
    expect(rules).not.toContain('MASQUERADE');
    expect((await inNs(lab.gw.netns, ['sysctl', '-n', 'net.ipv4.ip_forward'])).stdout.trim()).toBe('0');
  });
});

// Needs root, as above.
describe.skipIf(!isRoot)('lab with extra hops and a reduced path MTU', () => {
  const cleanup = new Cleanup((l) => console.error(l));
  let lab: Lab;

  beforeAll(async () => {
    lab = await buildTestLab(cleanup, { lanHosts: 1, extraHops: 2, pathMtu: 1280, inetExtraAddresses: ['203.0.113.3'] });
    await startServices({ netns: lab.inet.netns, addresses: lab.inet.addresses, cleanup });
    await startTestRouter({ gwNetns: lab.gw.netns, id: lab.id, cleanup, engine: 'kernel-manual' });
  });

  afterAll(async () => {
    await cleanup.run();
    expect(await namespacesOf(lab.id)).toEqual([]);
  });

  it('traceroute from a LAN host lists the gateway, both routers and the server', async () => {
    const r = await inNs(lab.lanHosts[0]!.netns, ['traceroute', '-n', '-q', '1', '-w', '2', '-m', '8', lab.inet.address], { timeoutMs: 40_000 });
    const hops = r.stdout
      .split('\n')
      .slice(1)
      .filter((l) => l.trim() !== '')
      .map((l) => l.trim().split(/\s+/)[1] ?? '');
    expect(hops).toEqual(['192.168.1.1', lab.hops[0]!.westAddress, lab.hops[1]!.westAddress, lab.inet.address]);
  });

  it('the server, its extra address and the far host are reachable through the routers', async () => {
    const h = lab.lanHosts[0]!.netns;
    expect((await httpSeenBy(h, lab.inet.address)).remoteAddress).toBe(PUBLIC);
    expect((await httpSeenBy(h, '203.0.113.3')).remoteAddress).toBe(PUBLIC);
    expect((await ping(h, lab.far!.address, 1)).received).toBe(1);
  });

  it('a too-big DF packet toward the far host teaches the LAN host the path MTU', async () => {
    const h = lab.lanHosts[0]!.netns;
    const r = await ping(h, lab.far!.address, 2, ['-M', 'do', '-s', '1400']);
    expect(r.received).toBe(0);
    expect(r.output).toMatch(/mtu ?= ?1280/);
    const cached = (await inNs(h, ['ip', 'route', 'get', lab.far!.address])).stdout;
    expect(cached).toMatch(/mtu 1280/);
    expect((await ping(h, lab.far!.address, 1, ['-M', 'do', '-s', '1200'])).received).toBe(1);
  });
});

// Needs root, as above.
describe.skipIf(!isRoot)('runLab (the `tunnat lab` demo)', () => {
  it('once, kernel stand-in: runs every check, succeeds and leaves nothing behind', async () => {
    const id = randomId();
    const lines: string[] = [];
    const ok = await runLab({ once: true, engine: 'kernel-manual', id, log: (l) => lines.push(l), trapSignals: false });
    expect(ok, lines.join('\n')).toBe(true);
    expect(lines.join('\n')).toMatch(/All \d+ checks passed/);
    expect(lines.some((l) => /tcp\s+192\.168\.1\.10:\d+ → 203\.0\.113\.2:80\s+203\.0\.113\.1:\d+ → 203\.0\.113\.2:80/.test(l))).toBe(true);
    expect(await namespacesOf(id)).toEqual([]);
  });

  it('staying up, kernel stand-in: serves /conntrack on the host loopback until told to stop', async () => {
    const id = randomId();
    const lines: string[] = [];
    let stop!: () => void;
    const until = new Promise<void>((r) => (stop = r));
    let served!: (url: string) => void;
    const serving = new Promise<string>((r) => (served = r));
    const finished = runLab({ engine: 'kernel-manual', id, httpPort: 0, log: (l) => lines.push(l), trapSignals: false, until, onServing: served });
    const url = await Promise.race([serving, finished.then(() => Promise.reject(new Error(lines.join('\n'))))]);
    const res = await fetch(`${url}/conntrack`);
    expect(res.status).toBe(200);
    const flows = (await res.json()) as { original: { src: string } }[];
    expect(flows.some((f) => f.original.src === '192.168.1.10')).toBe(true);
    expect((await fetch(`${url}/metrics`)).status).toBe(404);
    stop();
    expect(await finished, lines.join('\n')).toBe(true);
    expect(await namespacesOf(id)).toEqual([]);
  });

  it('userspace router, staying up: /metrics and /conntrack reach the host loopback through the unix socket', async () => {
    const id = randomId();
    const lines: string[] = [];
    let stop!: () => void;
    const until = new Promise<void>((r) => (stop = r));
    let served!: (url: string) => void;
    const serving = new Promise<string>((r) => (served = r));
    const finished = runLab({ engine: 'userspace', id, httpPort: 0, log: (l) => lines.push(l), trapSignals: false, until, onServing: served });
    const url = await Promise.race([serving, finished.then(() => Promise.reject(new Error(lines.join('\n'))))]);
    const metrics = await fetch(`${url}/metrics`);
    expect(metrics.status).toBe(200);
    expect(await metrics.text()).toMatch(/^# (HELP|TYPE) /m);
    const flows = (await (await fetch(`${url}/conntrack`)).json()) as { original: { src: string }; reply: { dst: string } }[];
    expect(flows.filter((f) => f.original.src === '192.168.1.11').every((f) => f.reply.dst === PUBLIC)).toBe(true);
    expect(flows.some((f) => f.original.src === '192.168.1.11')).toBe(true);
    stop();
    expect(await finished, lines.join('\n')).toBe(true);
    expect(await namespacesOf(id)).toEqual([]);
    expect(existsSync(socketPathFor(id))).toBe(false);
  });

  it('a failing engine fails the run and still cleans up', async () => {
    const id = randomId();
    const lines: string[] = [];
    const ok = await runLab({ once: true, engine: 'userspace', id, cliPath: '/nonexistent/main.js', log: (l) => lines.push(l), trapSignals: false });
    expect(ok).toBe(false);
    expect(lines.join('\n')).toContain('/nonexistent/main.js does not exist');
    expect(await namespacesOf(id)).toEqual([]);
  });
});

// Needs root, as above. Each case runs a child that builds a lab and then dies in its own way.
describe.skipIf(!isRoot)('cleanup on every exit path of a process', () => {
  const viteNode = join(repoRoot(), 'node_modules', '.bin', 'vite-node');
  const fixture = join(repoRoot(), 'test', 'e2e', 'fixtures', 'lab-child.ts');

  function runChild(mode: string, id: string, signalAfterBuilt?: NodeJS.Signals): Promise<{ code: number | null; signal: string | null; out: string }> {
    return new Promise((resolve) => {
      const child = spawn(viteNode, [fixture, '--', mode, id], { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      const onData = (d: Buffer): void => {
        out += d.toString();
        if (signalAfterBuilt && /^built$/m.test(out)) {
          child.kill(signalAfterBuilt);
          signalAfterBuilt = undefined;
        }
      };
      child.stdout.on('data', onData);
      child.stderr.on('data', onData);
      child.on('exit', (code, signal) => resolve({ code, signal, out }));
    });
  }

  for (const mode of ['throw', 'reject', 'exit'] as const) {
    it(`${mode}: the lab is removed`, async () => {
      const id = randomId();
      const r = await runChild(mode, id);
      expect(r.out).toContain('built');
      expect(r.code).not.toBe(0);
      expect(await namespacesOf(id)).toEqual([]);
    });
  }

  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    it(`${sig}: the lab is removed and the process exits with 128+signal`, async () => {
      const id = randomId();
      const r = await runChild('signal', id, sig);
      expect(r.out).toContain('built');
      expect(r.code).toBe(sig === 'SIGTERM' ? 143 : 130);
      expect(await namespacesOf(id)).toEqual([]);
    });
  }
});

// Needs root, as above.
describe.skipIf(!isRoot)('a build that fails half-way', () => {
  it("removes what it created and leaves the caller's earlier steps alone", async () => {
    const cleanup = new Cleanup();
    const id = randomId();
    let callerStepRan = false;
    cleanup.defer({ label: 'caller', sync: () => (callerStepRan = true) });
    // The second, identical address fails (`ip addr add`: "Address already assigned") after the namespaces are up.
    await expect(buildTestLab(cleanup, { id, lanHosts: 1, inetExtraAddresses: ['203.0.113.3', '203.0.113.3'] })).rejects.toThrow(/already assigned/);
    expect(await namespacesOf(id)).toEqual([]);
    expect(cleanup.labels()).toEqual(['caller']);
    expect(callerStepRan).toBe(false);
    await cleanup.run();
    expect(callerStepRan).toBe(true);
  });

  it('a custom prefix and gateway name are honoured', async () => {
    const cleanup = new Cleanup();
    const id = randomId();
    try {
      const lab = await buildTestLab(cleanup, { id, prefix: 'tnb', gwNetnsName: `tnbgw${id}`, lanHosts: 3 });
      expect(lab.gw.netns).toBe(`tnbgw${id}`);
      expect(lab.lanHosts.map((h) => h.netns)).toEqual([`tnb${id}-h0`, `tnb${id}-h1`, `tnb${id}-h2`]);
      expect((await ping(lab.lanHosts[2]!.netns, lab.gw.lanAddress, 1)).received).toBe(1);
    } finally {
      await cleanup.run();
    }
    expect(await namespacesOf(id)).toEqual([]);
  });
});
