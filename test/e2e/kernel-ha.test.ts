/**
 * The kernel engine's standby pair: conntrackd, with the configuration src/kernel/ha.ts writes, copies
 * gateway A's SNAT'd flows to gateway B over a dedicated sync link, and B's kernel takes them with the
 * same public ports when told to (`conntrackd -c`, the first step of the notify script on takeover).
 *
 *   h (192.168.1.10) ── lan0 [A] wan0 (203.0.113.1) ── i (203.0.113.2)
 *                           sync0 192.168.255.1/30
 *                             │
 *                           sync0 192.168.255.2/30 [B]
 *
 * Only the flow state is under test here, so B has no LAN or WAN of its own and nothing moves the
 * addresses (keepalived's part is tested with its configuration). conntrackd's sync messages carry no
 * authentication: anyone who can reach the sync port can plant entries in B's external cache. That is
 * why the sync link must be dedicated to the two gateways; this test does not try to forge messages.
 */
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run, runSync } from '../../src/util/exec.js';
import { Cleanup } from '../../src/lab/cleanup.js';
import { addAddress, addRoute, addVeth, createNetns, linkUp, listNetns, netnsName, randomId, setSysctl } from '../../src/lab/netns.js';
import { spawnIn } from '../../src/lab/process.js';
import { startConntrackd, type ConntrackdHandle } from '../../src/lab/kernel-ha.js';
import { conntrackdConf, haNotifyScript } from '../../src/kernel/ha.js';
import { defaultCliPath, repoRoot } from '../../src/lab/router.js';

const isRoot = process.getuid?.() === 0;
const TOOLS = ['conntrackd', 'conntrack', 'socat', 'iptables', 'ping', 'ss'];
const which = (t: string): string => runSync(['sh', '-c', `command -v ${t}`], { allowFail: true }).stdout.trim();
const missing = isRoot ? TOOLS.filter((t) => which(t) === '') : [];
const skipReason = !isRoot ? 'needs root (network namespaces)' : missing.length > 0 ? `needs ${missing.join(', ')} installed` : null;
if (skipReason) console.log(`test/e2e/kernel-ha.test.ts skipped: ${skipReason}`);

/** `tunnat kernel apply --ha` runs the compiled CLI: skipped when dist/ is missing or older than this feature's sources. */
const CLI = defaultCliPath();
const FEATURE = ['src/kernel/ha.ts', 'src/kernel/plan.ts', 'src/cli/kernel-cmd.ts', 'src/cli/kernel-ha.ts', 'src/cli/verbs.ts'];
const distStale = FEATURE.filter((f) => {
  const out = join(repoRoot(), 'dist', f.replace(/\.ts$/, '.js'));
  return !existsSync(out) || statSync(out).mtimeMs < statSync(join(repoRoot(), f)).mtimeMs;
});
const cliSkip = distStale.length > 0 ? `dist/ is missing or older than ${distStale.join(', ')} (npm run build)` : null;
if (!skipReason && cliSkip) console.log(`test/e2e/kernel-ha.test.ts: \`tunnat kernel apply --ha\` skipped: ${cliSkip}`);

const PUBLIC = '203.0.113.1';
const SERVER = '203.0.113.2';
const HOST = '192.168.1.10';
const LAN_VIP = '192.168.1.1';

/** The parts of a `conntrack -L` / `conntrackd -e` line this test looks at. */
interface Entry {
  proto: string;
  line: string;
  orig: Record<string, string>;
  reply: Record<string, string> | null;
}

function parseEntries(text: string): Entry[] {
  return text
    .split('\n')
    .filter((l) => /^(tcp|udp|icmp)\s/.test(l))
    .map((line) => {
      const pairs = [...line.matchAll(/\b(src|dst|sport|dport|type|code|id)=(\S+)/g)].map((m) => [m[1]!, m[2]!] as const);
      // The reply tuple starts at the second src=.
      const second = pairs.findIndex(([k], i) => k === 'src' && i > 0);
      const half = (p: (readonly [string, string])[]) => Object.fromEntries(p);
      return {
        proto: line.split(/\s/)[0]!,
        line,
        orig: half(second < 0 ? pairs : pairs.slice(0, second)),
        reply: second < 0 ? null : half(pairs.slice(second)),
      };
    });
}

const fromHost = (es: Entry[], proto: string, sport?: string): Entry | undefined =>
  es.find((e) => e.proto === proto && e.orig['src'] === HOST && e.orig['dst'] === SERVER && (sport === undefined || e.orig['sport'] === sport));

describe.skipIf(skipReason !== null)('kernel engine pair: conntrackd replicates SNAT flows', () => {
  const cleanup = new Cleanup((l) => console.log(l));
  const id = randomId(6);
  const ns = { a: netnsName(id, 'ha-a'), b: netnsName(id, 'ha-b'), h: netnsName(id, 'ha-h'), i: netnsName(id, 'ha-i') };
  let ctA: ConntrackdHandle;
  let ctB: ConntrackdHandle;
  let scriptDir: string;
  const aTable = async (): Promise<Entry[]> => parseEntries((await run(['conntrack', '-L'], { netns: ns.a, allowFail: true })).stdout);
  const bTable = async (): Promise<Entry[]> => parseEntries((await run(['conntrack', '-L'], { netns: ns.b, allowFail: true })).stdout);
  const external = async (c: ConntrackdHandle): Promise<Entry[]> => parseEntries((await c.run(['-e'])).stdout);

  beforeAll(async () => {
    for (const n of Object.values(ns)) await createNetns(n, cleanup);
    await addVeth({ netns: ns.a, name: 'lan0' }, { netns: ns.h, name: 'eth0' });
    await addVeth({ netns: ns.a, name: 'wan0' }, { netns: ns.i, name: 'eth0' });
    await addVeth({ netns: ns.a, name: 'sync0' }, { netns: ns.b, name: 'sync0' });
    const addrs: [string, string, string][] = [
      [ns.a, 'lan0', `${LAN_VIP}/24`],
      // On a real pair keepalived puts the public VIP on the master; here A simply holds it.
      [ns.a, 'wan0', `${PUBLIC}/24`],
      [ns.a, 'sync0', '192.168.255.1/30'],
      [ns.b, 'sync0', '192.168.255.2/30'],
      [ns.h, 'eth0', `${HOST}/24`],
      [ns.i, 'eth0', `${SERVER}/24`],
    ];
    for (const [n, dev, cidr] of addrs) {
      await addAddress(n, dev, cidr);
      await linkUp(n, dev);
    }
    await addRoute(ns.h, 'default', { via: LAN_VIP });
    await setSysctl(ns.a, 'net.ipv4.ip_forward', '1');
    // A's SNAT by hand, with a port range, so that the public port differs from the host's and "the same
    // public port on B" means the binding was copied, not chosen again. B's comes from `tunnat kernel apply
    // --ha` (first test); the commit does not need it (ctnetlink sets the copied binding up by itself), the
    // flows B opens after a takeover do.
    for (const p of ['tcp', 'udp']) {
      await run(['iptables', '-t', 'nat', '-A', 'POSTROUTING', '-s', '192.168.1.0/24', '-o', 'wan0', '-p', p, '-j', 'SNAT', '--to-source', `${PUBLIC}:50000-50999`], { netns: ns.a });
    }
    await run(['iptables', '-t', 'nat', '-A', 'POSTROUTING', '-s', '192.168.1.0/24', '-o', 'wan0', '-j', 'SNAT', '--to-source', PUBLIC], { netns: ns.a });
    // B's own WAN, on the public VIP's subnet: without --ha, the plan would take the VIP there (ip addr add).
    // (A veth with both ends in B: this kernel has no dummy interfaces.)
    await addVeth({ netns: ns.b, name: 'wan0' }, { netns: ns.b, name: 'wan0p' });
    await addAddress(ns.b, 'wan0', '203.0.113.3/24');
    await linkUp(ns.b, 'wan0');
    await linkUp(ns.b, 'wan0p');

    const conf = (node: 0 | 1, local: string, peer: string) => (f: { socketPath: string; lockFile: string; logFile: string }) =>
      conntrackdConf({
        node,
        syncIf: 'sync0',
        syncLocal: local,
        syncPeer: peer,
        socketPath: f.socketPath,
        lockFile: f.lockFile,
        logFile: f.logFile,
        ignore: [LAN_VIP, PUBLIC],
        hashSize: 1024,
        limit: 8192,
      });
    ctA = await startConntrackd({ netns: ns.a, conf: conf(0, '192.168.255.1', '192.168.255.2'), label: 'conntrackd A', cleanup });
    ctB = await startConntrackd({ netns: ns.b, conf: conf(1, '192.168.255.2', '192.168.255.1'), label: 'conntrackd B', cleanup });

    // The notify script, with a stand-in logger first in PATH: the script's syslog lines stay out of the host's log.
    scriptDir = mkdtempSync(join(tmpdir(), 'tunnat-ha-notify-'));
    cleanup.defer({ label: `remove ${scriptDir}`, sync: () => rmSync(scriptDir, { recursive: true, force: true }) });
    writeFileSync(join(scriptDir, 'logger'), '#!/bin/sh\nexit 0\n', { mode: 0o755 });
    chmodSync(join(scriptDir, 'logger'), 0o755);

    spawnIn(ns.i, ['socat', 'TCP4-LISTEN:7000,reuseaddr', 'PIPE'], { cleanup, label: 'tcp echo' });
    spawnIn(ns.i, ['socat', 'UDP4-LISTEN:7001,reuseaddr,fork', 'PIPE'], { cleanup, label: 'udp echo' });
    const deadline = Date.now() + 10_000;
    while (!/:7000\b/.test((await run(['ss', '-Hltn'], { netns: ns.i })).stdout) || !/:7001\b/.test((await run(['ss', '-Hlun'], { netns: ns.i })).stdout)) {
      if (Date.now() > deadline) throw new Error('the echo servers did not start');
      await new Promise((r) => setTimeout(r, 50));
    }
  });

  afterAll(async () => {
    await cleanup.run();
    expect((await listNetns()).filter((n) => n.includes(id))).toEqual([]);
  });

  it.skipIf(cliSkip !== null)('the standby applies its NAT with `tunnat kernel apply --ha`: SNAT to the VIP, the VIP not taken, the files written', async () => {
    const dir = join(scriptDir, 'ha');
    const args = ['--internal', '192.168.1.0/24', '--external', 'wan0', '--public-ip', PUBLIC, '--backend', 'iptables', '--http', 'off'];
    const pair = ['--ha', dir, '--ha-node', '1', '--ha-lan-if', 'lan0', '--ha-lan-vip', `${LAN_VIP}/24`, '--ha-sync-if', 'sync0', '--ha-sync-local', '192.168.255.2', '--ha-sync-peer', '192.168.255.1'];
    const remove = (): void => void runSync([process.execPath, CLI, 'kernel', 'remove'], { netns: ns.b, allowFail: true });
    const forget = cleanup.defer({ label: `tunnat kernel remove in ${ns.b}`, sync: remove });
    const plain = await run([process.execPath, CLI, 'kernel', 'plan', ...args], { netns: ns.b });
    expect(plain.stdout).toContain(`ip addr add ${PUBLIC}/32 dev wan0`);
    const r = await run([process.execPath, CLI, 'kernel', 'apply', ...args, ...pair], { netns: ns.b, allowFail: true });
    expect(r.exitCode, r.stderr + r.stdout).toBe(0);
    expect(r.stdout).toContain(`wrote ${dir}/conntrackd.conf, ${dir}/tunnat-ha-notify and ${dir}/keepalived.conf`);
    const rules = (await run(['iptables', '-t', 'nat', '-S'], { netns: ns.b })).stdout;
    expect(rules).toContain(`-A TUNNAT-POSTROUTING -s 192.168.1.0/24 -o wan0 -j SNAT --to-source ${PUBLIC}`);
    expect((await run(['ip', '-4', '-o', 'addr', 'show'], { netns: ns.b })).stdout).not.toContain(PUBLIC);
    expect(readFileSync(join(dir, 'conntrackd.conf'), 'utf8')).toContain('IPv4_Destination_Address 192.168.255.1');
    expect(statSync(join(dir, 'tunnat-ha-notify')).mode & 0o777).toBe(0o755);
    // keepalived's own parser accepts the file (-t: check the configuration and exit; it starts nothing).
    if (which('keepalived') !== '') {
      const k = await run(['keepalived', '-t', '-f', join(dir, 'keepalived.conf')], { netns: ns.b, allowFail: true });
      expect(k.exitCode, k.stdout + k.stderr).toBe(0);
    }
    remove();
    forget();
    expect((await run(['iptables', '-t', 'nat', '-S'], { netns: ns.b })).stdout).not.toContain('TUNNAT');
  });

  it("copies A's TCP, UDP and ICMP flows to B's external cache, leaves the gateway's own out, and B's kernel takes them on commit", async () => {
    const t0 = Date.now();
    // Kept open for the whole test: the TCP connection stays ESTABLISHED, the UDP flow replied.
    spawnIn(ns.h, ['sh', '-c', `sleep 60 | socat - TCP4:${SERVER}:7000,sourceport=40000`], { cleanup, label: 'tcp client' });
    spawnIn(ns.h, ['sh', '-c', `(echo hello; sleep 60) | socat - UDP4:${SERVER}:7001,sourceport=40001`], { cleanup, label: 'udp client' });
    await run(['ping', '-c', '1', '-W', '2', SERVER], { netns: ns.h });
    // To the gateway itself (its LAN VIP): conntrack tracks it, conntrackd must not copy it.
    await run(['ping', '-c', '1', '-W', '2', LAN_VIP], { netns: ns.h });

    let onA: Entry[] = [];
    for (;;) {
      onA = await aTable();
      if (fromHost(onA, 'tcp', '40000')?.line.includes('ESTABLISHED') && fromHost(onA, 'udp', '40001')?.reply && fromHost(onA, 'icmp')) break;
      if (Date.now() - t0 > 10_000) throw new Error(`A's table never held the three flows:\n${onA.map((e) => e.line).join('\n')}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    const tA = Date.now();
    // The ping to the gateway is in A's table: what keeps it out of B's cache below is the Address Ignore.
    expect(onA.some((e) => e.proto === 'icmp' && e.orig['src'] === HOST && e.orig['dst'] === LAN_VIP)).toBe(true);
    const tcpA = fromHost(onA, 'tcp', '40000')!;
    const udpA = fromHost(onA, 'udp', '40001')!;
    expect(tcpA.reply).toMatchObject({ src: SERVER, dst: PUBLIC });
    expect(udpA.reply).toMatchObject({ src: SERVER, dst: PUBLIC });
    const tcpPort = tcpA.reply!['dport']!;
    const udpPort = udpA.reply!['dport']!;
    expect(Number(tcpPort)).toBeGreaterThanOrEqual(50000);
    expect(Number(udpPort)).toBeGreaterThanOrEqual(50000);

    let ext: Entry[] = [];
    for (;;) {
      ext = await external(ctB);
      const tcp = fromHost(ext, 'tcp', '40000');
      if (tcp?.line.includes('ESTABLISHED') && fromHost(ext, 'udp', '40001') && fromHost(ext, 'icmp')) break;
      if (Date.now() - tA > 5_000) throw new Error(`B's external cache never held the three flows:\n${ext.map((e) => e.line).join('\n')}\nA: ${ctA.output()}\nB: ${ctB.output()}`);
      await new Promise((r) => setTimeout(r, 10));
    }
    const tB = Date.now();
    console.log(`kernel-ha: flows in B's external cache ${tB - tA} ms after A's table showed them (${tB - t0} ms after the clients started)`);
    // conntrackd 1.4.7 lists only the original tuple of an external-cache entry (its XML has an empty
    // reply): the NAT binding travels as SNAT attributes, and the kernel rebuilds the reply tuple from them
    // on commit. So the public port is checked in B's kernel table below.
    expect(ext.filter((e) => e.orig['dst'] === LAN_VIP || e.orig['src'] === LAN_VIP)).toEqual([]);
    // The caches are conntrackd's alone: nothing of A's is in B's kernel before the commit.
    expect((await bTable()).filter((e) => e.orig['src'] === HOST)).toEqual([]);

    const commit = await ctB.run(['-c']);
    expect(commit.exitCode, commit.stderr).toBe(0);
    const onB = await bTable();
    const tcpB = fromHost(onB, 'tcp', '40000');
    const udpB = fromHost(onB, 'udp', '40001');
    expect(tcpB?.line, onB.map((e) => e.line).join('\n')).toContain('ESTABLISHED');
    expect(tcpB!.reply).toEqual(tcpA.reply);
    expect(udpB!.reply).toEqual(udpA.reply);
    expect(tcpB!.reply!['dport']).toBe(tcpPort);
    expect(udpB!.reply!['dport']).toBe(udpPort);
    expect(fromHost(onB, 'icmp')).toBeDefined();
    expect(onB.filter((e) => e.orig['dst'] === LAN_VIP)).toEqual([]);
  });

  it('the notify script against live daemons: B takes over as master and bulk-sends, A as backup gets the flows back, a dead daemon is reported', async () => {
    const bin = which('conntrackd');
    const script = (conf: string): string => {
      const p = join(scriptDir, `notify-${conf === ctA.files.conf ? 'a' : 'b'}`);
      writeFileSync(p, haNotifyScript({ conntrackd: bin, conf }), { mode: 0o755 });
      return p;
    };
    const env = `PATH=${scriptDir}:${process.env.PATH ?? ''}`;
    const notify = (netns: string, path: string, state: string) => run(['env', env, 'sh', path, state], { netns, allowFail: true });

    const master = await notify(ns.b, script(ctB.files.conf), 'master');
    expect(master.exitCode, master.stderr).toBe(0);
    expect(master.stderr.match(/: done$/gm)).toHaveLength(4);
    const backup = await notify(ns.a, script(ctA.files.conf), 'backup');
    expect(backup.exitCode, backup.stderr).toBe(0);
    expect(backup.stderr.match(/: done$/gm)).toHaveLength(2);
    // B resynchronised its internal cache with its kernel (the committed flows) and sent it all to A.
    const t0 = Date.now();
    for (;;) {
      const ext = await external(ctA);
      if (fromHost(ext, 'tcp', '40000') && fromHost(ext, 'udp', '40001')) break;
      if (Date.now() - t0 > 5_000) throw new Error(`A's external cache never got B's flows back:\n${ext.map((e) => e.line).join('\n')}`);
      await new Promise((r) => setTimeout(r, 20));
    }

    await ctA.kill();
    const fault = await notify(ns.a, script(ctA.files.conf), 'fault');
    expect(fault.exitCode).toBe(0);
    expect(fault.stderr).toMatch(/fault: conntrackd is not running/);
  });
});
