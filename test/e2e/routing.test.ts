import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { run } from '../../src/util/exec.js';
import { parseIpv4 } from '../../src/wire/addr.js';
import type { AppliedRouting, Leftover, RoutingConfig } from '../../src/dataplane/routing.js';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const CHILD = join(REPO, 'test/fixtures/routing-child.mjs');
const COMPILED = join(REPO, 'dist/src/dataplane/routing.js');

const ip4 = (s: string): number => {
  const n = parseIpv4(s);
  if (n === null) throw new Error(`bad test address ${s}`);
  return n;
};

const RUN_ID = `${process.pid}${randomBytes(2).toString('hex')}`;
let labCount = 0;
// State files go to a private directory: /run/tunnat may hold records of other runs' namespaces
// whose inode numbers the kernel hands out again.
let stateDir = '';

interface Lab {
  gw: string;
  peer: string;
}
const labs: Lab[] = [];
const children: ChildProcessWithoutNullStreams[] = [];

/**
 * The gateway namespace: wan0 (203.0.113.1/24, veth to `peer` holding 203.0.113.2/24), lan0
 * (192.168.1.1/24, a veth whose other end lanh stays in the gateway) and a TUN tun0 made with
 * `ip tuntap` (nothing reads it: these tests check configuration and ARP, not forwarding).
 */
async function createLab(): Promise<Lab> {
  const base = `trt${RUN_ID}n${labCount++}`;
  const lab = { gw: `${base}g`, peer: `${base}p` };
  labs.push(lab);
  const sh = (ns: string, argv: string[]) => run(['ip', '-n', ns, ...argv]);
  await run(['ip', 'netns', 'add', lab.gw]);
  await run(['ip', 'netns', 'add', lab.peer]);
  // No IPv6: link-local addresses appear some time after a link comes up and would make the
  // before/after listings of `ip route show table all` differ for reasons unrelated to tunnat.
  for (const ns of [lab.gw, lab.peer]) {
    await run(['sysctl', '-q', '-w', 'net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1'], { netns: ns });
  }
  await sh(lab.gw, ['link', 'set', 'lo', 'up']);
  await sh(lab.peer, ['link', 'set', 'lo', 'up']);
  await sh(lab.gw, ['link', 'add', 'wan0', 'type', 'veth', 'peer', 'name', 'wanp', 'netns', lab.peer]);
  await sh(lab.gw, ['addr', 'add', '203.0.113.1/24', 'dev', 'wan0']);
  await sh(lab.gw, ['link', 'set', 'wan0', 'up']);
  await sh(lab.peer, ['addr', 'add', '203.0.113.2/24', 'dev', 'wanp']);
  await sh(lab.peer, ['link', 'set', 'wanp', 'up']);
  await sh(lab.gw, ['link', 'add', 'lan0', 'type', 'veth', 'peer', 'name', 'lanh']);
  await sh(lab.gw, ['addr', 'add', '192.168.1.1/24', 'dev', 'lan0']);
  await sh(lab.gw, ['link', 'set', 'lan0', 'up']);
  await sh(lab.gw, ['link', 'set', 'lanh', 'up']);
  await run(['ip', 'tuntap', 'add', 'dev', 'tun0', 'mode', 'tun'], { netns: lab.gw });
  // Namespaces inherit IPv4 sysctls from the host; pin the ones that matter so runs compare,
  // and give one interface a non-default forwarding value that a naive restore of ip_forward
  // would lose (writing ip_forward rewrites every interface's forwarding).
  await run(['sysctl', '-q', '-w', 'net.ipv4.ip_forward=0'], { netns: lab.gw });
  await run(['sysctl', '-q', '-w', 'net.ipv4.conf.lanh.forwarding=1'], { netns: lab.gw });
  await run(['sysctl', '-q', '-w', 'net.ipv4.ip_early_demux=1'], { netns: lab.gw });
  return lab;
}

async function destroyLab(lab: Lab): Promise<void> {
  await run(['ip', 'netns', 'del', lab.gw], { allowFail: true });
  await run(['ip', 'netns', 'del', lab.peer], { allowFail: true });
}

function config(over: Partial<RoutingConfig> = {}): RoutingConfig {
  return {
    tun: 'tun0',
    internal: [{ network: ip4('192.168.1.0'), prefixLength: 24 }],
    externalIface: 'wan0',
    publicIp: ip4('203.0.113.1'),
    publicIpOwned: true,
    table: 7301,
    gatewayPorts: [20000, 29999],
    tunMtu: 1400,
    ...over,
  };
}

type Message = { ok?: boolean; code?: string | null; message?: string; progress?: string; [k: string]: unknown };

/** A routing-child process in the gateway namespace, read one JSON line at a time. */
class Child {
  readonly proc: ChildProcessWithoutNullStreams;
  private lines: Message[] = [];
  private waiting: ((m: Message) => void) | null = null;
  private buf = '';
  private stderr = '';
  readonly exited: Promise<number | null>;

  constructor(ns: string, command: string, arg: unknown) {
    this.proc = spawn('ip', ['netns', 'exec', ns, process.execPath, CHILD, command, JSON.stringify(arg)], {
      env: { ...process.env, TUNNAT_STATE_DIR: stateDir },
    });
    children.push(this.proc);
    this.proc.stdout.setEncoding('utf8');
    this.proc.stdout.on('data', (chunk: string) => {
      this.buf += chunk;
      let nl: number;
      while ((nl = this.buf.indexOf('\n')) >= 0) {
        const m = JSON.parse(this.buf.slice(0, nl)) as Message;
        this.buf = this.buf.slice(nl + 1);
        if (this.waiting) {
          const w = this.waiting;
          this.waiting = null;
          w(m);
        } else this.lines.push(m);
      }
    });
    this.proc.stderr.on('data', (c: Buffer) => (this.stderr += c.toString()));
    this.exited = new Promise((res) => this.proc.on('exit', (code) => res(code)));
  }

  /** The next message, skipping progress lines unless asked for them. */
  async next(withProgress = false, timeoutMs = 20_000): Promise<Message> {
    for (;;) {
      const m =
        this.lines.shift() ??
        (await new Promise<Message>((res, rej) => {
          const t = setTimeout(() => rej(new Error(`routing-child sent nothing in ${timeoutMs} ms; stderr: ${this.stderr}`)), timeoutMs);
          this.waiting = (msg) => {
            clearTimeout(t);
            res(msg);
          };
        }));
      if (withProgress || m.progress === undefined) return m;
    }
  }

  send(line: string): void {
    this.proc.stdin.write(line + '\n');
  }

  async close(): Promise<number | null> {
    this.proc.stdin.end();
    return this.exited;
  }
}

/** Run a one-shot child command and return its result line. */
async function once(ns: string, command: string, arg: unknown): Promise<Message> {
  const c = new Child(ns, command, arg);
  const m = await c.next();
  await c.close();
  return m;
}

async function serve(ns: string, cfg: RoutingConfig): Promise<{ child: Child; applied: AppliedRouting }> {
  const child = new Child(ns, 'serve', cfg);
  const m = await child.next();
  expect(m, JSON.stringify(m)).toMatchObject({ ok: true });
  return { child, applied: m['applied'] as AppliedRouting };
}

interface Snapshot {
  rules: string;
  routes: string;
  proxy: string;
  sysctls: string;
  tun: string;
}

/** What apply must leave unchanged after removal, as text. */
async function snapshot(ns: string): Promise<Snapshot> {
  const out = async (argv: string[]) => (await run(argv)).stdout;
  const sysctls = await run(['sysctl', '-a', '-r', '^net\\.ipv4\\.'], { netns: ns, allowFail: true });
  return {
    rules: await out(['ip', '-n', ns, 'rule', 'show']),
    routes: await out(['ip', '-n', ns, 'route', 'show', 'table', 'all']),
    proxy: await out(['ip', '-n', ns, 'neigh', 'show', 'proxy']),
    sysctls: sysctls.stdout,
    // Flags and MTU only: the first `up` attaches a default qdisc that stays, which is the kernel's
    // business and vanishes with the TUN anyway.
    tun: ((l) => `${l.flags} mtu ${l.mtu}`)(
      (JSON.parse(await out(['ip', '-n', ns, '-j', 'link', 'show', 'dev', 'tun0'])) as { flags: string[]; mtu: number }[])[0]!,
    ),
  };
}

async function sysctl(ns: string, name: string): Promise<string> {
  return (await run(['sysctl', '-n', name], { netns: ns })).stdout.trim();
}

async function netnsInodeOf(ns: string): Promise<string> {
  return (await run(['stat', '-L', '-c', '%i', '/proc/self/ns/net'], { netns: ns })).stdout.trim();
}

async function stateFilesOf(ns: string): Promise<string[]> {
  const prefix = `${await netnsInodeOf(ns)}-`;
  return readdirSync(stateDir).filter((f) => f.startsWith(prefix));
}

/** Whether `peer` resolves `addr` on its WAN link to the gateway's wan0 MAC, starting from an empty cache. */
// Attaches to the TUN named in argv[1] (TUNSETIFF, IFF_TUN | IFF_NO_PI as `ip tuntap` made it) and holds it
// until killed, reading nothing.
const HOLD_TUN = `
import fcntl, os, signal, struct, sys
fd = os.open('/dev/net/tun', os.O_RDWR)
fcntl.ioctl(fd, 0x400454ca, struct.pack('16sH', sys.argv[1].encode(), 0x0001 | 0x1000))
print('attached', flush=True)
signal.pause()
`;

/**
 * Whether the WAN peer resolves \`addr\` to the gateway. While tunnat runs its TUN has a reader, hence a
 * carrier; without one the kernel ignores the routes through it (ignore_routes_with_linkdown), and proxy
 * ARP for an address the gateway does not own needs the route into the TUN. So the TUN is held open here.
 */
async function peerResolves(lab: Lab, addr: string): Promise<boolean> {
  const holder = spawn('ip', ['netns', 'exec', lab.gw, 'python3', '-c', HOLD_TUN, 'tun0']);
  children.push(holder);
  try {
    await new Promise<void>((resolve, reject) => {
      holder.stdout.on('data', (d: Buffer) => (d.toString().includes('attached') ? resolve() : undefined));
      holder.once('exit', (code) => reject(new Error(`could not attach to tun0 (exit ${code})`)));
    });
    await run(['ip', '-n', lab.peer, 'neigh', 'flush', 'dev', 'wanp']);
    // The echo itself goes into the TUN, which nobody reads; only the ARP exchange matters.
    await run(['ping', '-c', '1', '-W', '1', addr], { netns: lab.peer, allowFail: true });
  } finally {
    holder.kill('SIGKILL');
    await new Promise((r) => (holder.exitCode !== null ? r(null) : holder.once('exit', r)));
  }
  const gwMac = /link\/ether ([0-9a-f:]+)/.exec((await run(['ip', '-n', lab.gw, 'link', 'show', 'dev', 'wan0'])).stdout)?.[1];
  const neigh = (await run(['ip', '-n', lab.peer, 'neigh', 'show', addr, 'dev', 'wanp'])).stdout;
  return gwMac !== undefined && neigh.includes(`lladdr ${gwMac}`);
}

// Needs root: it creates network namespaces, veths and a TUN, and changes rules and sysctls in them.
describe.skipIf(process.getuid?.() !== 0)('gateway routing (namespaces)', () => {
  beforeAll(async () => {
    stateDir = mkdtempSync(join(tmpdir(), 'tunnat-routing-'));
    // The child runs the compiled module; other engineers' files may not compile yet, but tsc
    // still emits, so only the presence of our output counts.
    await run(['npx', 'tsc', '-p', 'tsconfig.build.json'], { allowFail: true, timeoutMs: 120_000 });
    if (!existsSync(COMPILED)) throw new Error(`${COMPILED} was not built`);
  }, 150_000);

  afterEach(async () => {
    for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    for (const lab of labs.splice(0)) await destroyLab(lab);
  });

  afterAll(() => {
    if (stateDir) rmSync(stateDir, { recursive: true, force: true });
  });

  it('applies the rules, routes and sysctls of the recipe and removes them to the byte', async () => {
    const lab = await createLab();
    const before = await snapshot(lab.gw);
    expect(await peerResolves(lab, '203.0.113.1')).toBe(true);

    const { child, applied } = await serve(lab.gw, config());
    const inode = await netnsInodeOf(lab.gw);
    expect(applied.stateFile).toBe(join(stateDir, `${inode}-tun0.json`));
    expect(existsSync(applied.stateFile)).toBe(true);
    expect(applied.pid).toBe(child.proc.pid);

    const rules = (await run(['ip', '-n', lab.gw, 'rule', 'show'])).stdout.replace(/[ \t]+\n/g, '\n');
    expect(rules).toBe(
      [
        '5:\tfrom 192.168.1.0/24 iif wan0 blackhole proto 84',
        '6:\tfrom all to 192.168.1.0/24 iif wan0 blackhole proto 84',
        '10:\tfrom all to 203.0.113.1 iif wan0 lookup 7302 proto 84',
        '20:\tfrom all iif tun0 lookup local proto 84',
        '21:\tfrom all iif tun0 lookup main proto 84',
        '50:\tfrom 192.168.1.0/24 to 203.0.113.1 lookup 7301 proto 84',
        '100:\tfrom all lookup local proto 84',
        '996:\tfrom all to 192.168.1.0/24 lookup main proto 84',
        '998:\tfrom all iif lo ipproto icmp lookup 7302 proto 84',
        '1000:\tfrom 192.168.1.0/24 lookup 7301 proto 84',
        '32766:\tfrom all lookup main',
        '32767:\tfrom all lookup default',
        '',
      ].join('\n'),
    );
    const table = async (t: string) =>
      (await run(['ip', '-n', lab.gw, 'route', 'show', 'table', t])).stdout
        .split('\n')
        // Nothing reads the TUN: its routes are flagged as without carrier (and ignored, hence dead).
        .map((l) => l.trim().replace(/( dead)? linkdown$/, ''))
        .filter(Boolean)
        .sort();
    expect(await table('7301')).toEqual(['default dev tun0 proto 84 scope link src 203.0.113.1', 'prohibit default proto 84 metric 4294967295']);
    expect(await table('7302')).toEqual(['default dev tun0 proto 84 scope link src 203.0.113.1']);
    expect((await run(['ip', '-n', lab.gw, 'neigh', 'show', 'proxy'])).stdout.trim()).toBe('203.0.113.1 dev wan0 proxy proto 84');

    expect(await sysctl(lab.gw, 'net.ipv4.ip_forward')).toBe('1');
    expect(await sysctl(lab.gw, 'net.ipv4.conf.all.rp_filter')).toBe('0');
    expect(await sysctl(lab.gw, 'net.ipv4.conf.tun0.rp_filter')).toBe('0');
    expect(await sysctl(lab.gw, 'net.ipv4.conf.tun0.accept_local')).toBe('1');
    expect(await sysctl(lab.gw, 'net.ipv4.conf.wan0.forwarding')).toBe('1');
    expect(await sysctl(lab.gw, 'net.ipv4.ip_early_demux')).toBe('0');
    expect(await sysctl(lab.gw, 'net.ipv4.ip_local_port_range')).toBe('20000\t29999');
    expect(await sysctl(lab.gw, 'net.ipv4.neigh.wan0.proxy_delay')).toBe('0');
    const link = (await run(['ip', '-n', lab.gw, 'link', 'show', 'dev', 'tun0'])).stdout;
    expect(link).toMatch(/<[^>]*\bUP\b[^>]*> mtu 1400 /);

    // With the inbound rule ahead of the local table, ARP for the gateway's own WAN address
    // resolves through a route into the TUN; the proxy entry keeps it answered.
    expect(await peerResolves(lab, '203.0.113.1')).toBe(true);

    child.send('remove');
    expect(await child.next()).toMatchObject({ ok: true });
    expect(await snapshot(lab.gw)).toEqual(before);
    expect(existsSync(applied.stateFile)).toBe(false);
    expect(await child.close()).toBe(0);

    // Removing again, from another process, changes nothing and does not fail.
    expect(await once(lab.gw, 'remove', applied)).toMatchObject({ ok: true });
    expect(await snapshot(lab.gw)).toEqual(before);
  });

  it('undoes everything from a process exit handler (removeRoutingSync)', async () => {
    const lab = await createLab();
    const before = await snapshot(lab.gw);
    const { child, applied } = await serve(lab.gw, config());
    expect(await sysctl(lab.gw, 'net.ipv4.ip_early_demux')).toBe('0');
    child.send('exit');
    expect(await child.exited).toBe(0);
    expect(await snapshot(lab.gw)).toEqual(before);
    expect(existsSync(applied.stateFile)).toBe(false);
  });

  it('detects the leftovers of a crashed run, refuses to start over them, and cleans them', async () => {
    const lab = await createLab();
    const before = await snapshot(lab.gw);
    const { child, applied } = await serve(lab.gw, config());
    child.proc.kill('SIGKILL');
    await child.exited;

    const det = await once(lab.gw, 'detect', { tun: 'tun0', table: 7301 });
    const leftover = det['leftover'] as Leftover;
    expect(leftover.crashed).toHaveLength(1);
    expect(leftover.crashed[0]).toMatchObject({ file: applied.stateFile, trusted: true });
    expect(leftover.foreign).toBe(false);
    expect(leftover.found.filter((f) => f.kind === 'rule')).toHaveLength(10);
    expect(leftover.found.filter((f) => f.kind === 'route')).toHaveLength(3);
    expect(leftover.localRuleMissing).toBe(true);

    const refused = await once(lab.gw, 'apply', config());
    expect(refused).toMatchObject({ ok: false, code: 'ROUTING_CONFLICT' });
    expect(refused.message).toContain('tunnat down --tun tun0');

    const cleaned = await once(lab.gw, 'clean', { tun: 'tun0', table: 7301 });
    expect(cleaned).toMatchObject({ ok: true });
    const logs = (cleaned['logs'] as string[]).join('\n');
    expect(logs).toContain(`crashed tunnat pid ${applied.pid}`);
    expect(logs).toContain('ip rule add pref 0 lookup local');
    expect(logs).toContain('ip rule del pref 10 iif wan0 to 203.0.113.1 lookup 7302 protocol 84');
    expect(logs).toContain('restored sysctl net.ipv4.ip_early_demux=1');
    expect(await snapshot(lab.gw)).toEqual(before);
    expect(await once(lab.gw, 'detect', { tun: 'tun0', table: 7301 })).toEqual({ ok: true, leftover: null });

    // And a new run starts cleanly.
    const again = await serve(lab.gw, config());
    again.child.send('remove');
    expect(await again.child.next()).toMatchObject({ ok: true });
    expect(await snapshot(lab.gw)).toEqual(before);
  });

  it('removes cleanly when the TUN vanished first, taking its routes and sysctls along', async () => {
    const lab = await createLab();
    const before = await snapshot(lab.gw);
    const { child } = await serve(lab.gw, config());
    await run(['ip', 'tuntap', 'del', 'dev', 'tun0', 'mode', 'tun'], { netns: lab.gw });
    child.send('remove');
    const m = await child.next();
    expect(m).toMatchObject({ ok: true });
    expect((m['logs'] as string[]).join('\n')).toContain('restored sysctl net.ipv4.ip_forward=0');
    // A fresh TUN of the same name has default settings, as the old one had before tunnat.
    await run(['ip', 'tuntap', 'add', 'dev', 'tun0', 'mode', 'tun'], { netns: lab.gw });
    expect(await snapshot(lab.gw)).toEqual(before);
  });

  it('leaves a record from which a crash in the middle of applying is undone', async () => {
    const lab = await createLab();
    const before = await snapshot(lab.gw);
    const child = new Child(lab.gw, 'serve', config({ internal: [
      { network: ip4('192.168.1.0'), prefixLength: 24 },
      { network: ip4('192.168.2.0'), prefixLength: 24 },
    ] }));
    // Kill while the rules go in: routes and the first sysctls are done, the local rule not yet moved,
    // and forwarding (last of all) not yet on.
    for (;;) {
      const m = await child.next(true);
      if (m.ok !== undefined) throw new Error(`apply finished before the kill point: ${JSON.stringify(m)}`);
      if (m.progress?.includes('pref 996')) break;
    }
    child.proc.kill('SIGKILL');
    await child.exited;
    expect(await sysctl(lab.gw, 'net.ipv4.ip_early_demux')).toBe('0');

    const cleaned = await once(lab.gw, 'clean', { tun: 'tun0', table: 7301 });
    expect(cleaned).toMatchObject({ ok: true });
    expect((cleaned['leftover'] as Leftover).crashed[0]?.trusted).toBe(true);
    expect(await snapshot(lab.gw)).toEqual(before);
  });

  it('refuses a second instance while the first one runs', async () => {
    const lab = await createLab();
    const before = await snapshot(lab.gw);
    const first = await serve(lab.gw, config());
    const during = await snapshot(lab.gw);

    const second = await once(lab.gw, 'apply', config());
    expect(second).toMatchObject({ ok: false, code: 'ALREADY_RUNNING' });
    expect(second.message).toContain(`pid ${first.applied.pid}`);
    expect(await once(lab.gw, 'detect', { tun: 'tun0', table: 7301 })).toMatchObject({ ok: false, code: 'ALREADY_RUNNING' });
    expect(await snapshot(lab.gw)).toEqual(during);

    first.child.send('remove');
    expect(await first.child.next()).toMatchObject({ ok: true });
    expect(await snapshot(lab.gw)).toEqual(before);
  });

  it("refuses to start over someone else's rule in its table, saying how to remove it", async () => {
    const lab = await createLab();
    await run(['ip', '-n', lab.gw, 'rule', 'add', 'pref', '5000', 'from', '192.168.2.0/24', 'lookup', '7301']);
    const before = await snapshot(lab.gw);

    const res = await once(lab.gw, 'apply', config());
    expect(res).toMatchObject({ ok: false, code: 'ROUTING_CONFLICT' });
    expect(res.message).toContain('ip rule del pref 5000 from 192.168.2.0/24 lookup 7301');
    expect(res.message).toContain('tunnat down --tun tun0');
    expect(await snapshot(lab.gw)).toEqual(before);
    expect(await stateFilesOf(lab.gw)).toEqual([]);

    const det = await once(lab.gw, 'detect', { tun: 'tun0', table: 7301 });
    expect(det['leftover']).toMatchObject({ foreign: true, crashed: [] });
  });

  it('rolls back every change when a step fails', async () => {
    const lab = await createLab();
    const before = await snapshot(lab.gw);
    // The kernel refuses a local port range below ip_unprivileged_port_start (1024), after
    // ip_forward, rp_filter, accept_local and early_demux were already changed.
    const res = await once(lab.gw, 'apply', config({ gatewayPorts: [100, 200] }));
    expect(res).toMatchObject({ ok: false, code: 'ROUTING_FAILED' });
    expect(res.message).toContain('ip_local_port_range');
    expect(res.message).toContain('undone');
    expect(await snapshot(lab.gw)).toEqual(before);
    expect(await stateFilesOf(lab.gw)).toEqual([]);
  });

  it('moves the inbound rule and the ARP entry when the public address changes', async () => {
    const lab = await createLab();
    const before = await snapshot(lab.gw);
    const { child } = await serve(lab.gw, config());
    child.send(`update ${ip4('203.0.113.7')}`);
    const m = await child.next();
    expect(m).toMatchObject({ ok: true });
    expect((m['applied'] as AppliedRouting).config.publicIp).toBe(ip4('203.0.113.7'));

    const inbound = (await run(['ip', '-n', lab.gw, 'rule', 'show', 'pref', '10'])).stdout.trim();
    expect(inbound).toBe('10:\tfrom all to 203.0.113.7 iif wan0 lookup 7302 proto 84');
    const hairpin = (await run(['ip', '-n', lab.gw, 'rule', 'show', 'pref', '50'])).stdout.trim();
    expect(hairpin).toBe('50:\tfrom 192.168.1.0/24 to 203.0.113.7 lookup 7301 proto 84');
    expect((await run(['ip', '-n', lab.gw, 'neigh', 'show', 'proxy'])).stdout.trim()).toBe('203.0.113.7 dev wan0 proxy proto 84');
    expect(await peerResolves(lab, '203.0.113.7')).toBe(true);

    child.send('remove');
    expect(await child.next()).toMatchObject({ ok: true });
    expect(await snapshot(lab.gw)).toEqual(before);
  });

  it('answers ARP on the WAN for a static public address the gateway does not own', async () => {
    const lab = await createLab();
    const before = await snapshot(lab.gw);
    expect(await peerResolves(lab, '203.0.113.9')).toBe(false);
    const { child } = await serve(lab.gw, config({ publicIp: ip4('203.0.113.9'), publicIpOwned: false }));
    expect(await peerResolves(lab, '203.0.113.9')).toBe(true);
    expect(await peerResolves(lab, '203.0.113.1')).toBe(true);
    child.send('remove');
    expect(await child.next()).toMatchObject({ ok: true });
    expect(await snapshot(lab.gw)).toEqual(before);
  });

  it('does not act on a record left by an earlier namespace with the same inode', async () => {
    const lab = await createLab();
    const before = await snapshot(lab.gw);
    const file = join(stateDir, `${await netnsInodeOf(lab.gw)}-tun0.json`);
    // A dead process, a different WAN link and a change that must not be "restored" here.
    const stale: AppliedRouting = {
      version: 1,
      runId: 'stale',
      pid: 2 ** 22 + 1,
      pidStartTime: '1',
      netnsInode: Number(await netnsInodeOf(lab.gw)),
      stateFile: file,
      wan: { ifindex: 99, address: '02:00:00:00:00:99' },
      config: config(),
      steps: [{ kind: 'sysctl', key: 'net/ipv4/ip_early_demux', old: '0', value: '1' }],
    };
    writeFileSync(file, JSON.stringify(stale));

    expect(await once(lab.gw, 'apply', config())).toMatchObject({ ok: false, code: 'ROUTING_CONFLICT' });
    const cleaned = await once(lab.gw, 'clean', { tun: 'tun0', table: 7301 });
    expect((cleaned['leftover'] as Leftover).crashed[0]).toMatchObject({ trusted: false });
    expect((cleaned['logs'] as string[]).join('\n')).toContain('earlier namespace with the same inode');
    expect(existsSync(file)).toBe(false);
    expect(await snapshot(lab.gw)).toEqual(before);
  });

  it('reads interface addresses and what the gateway owns', async () => {
    const lab = await createLab();
    await run(['ip', '-n', lab.gw, 'addr', 'add', '203.0.113.5/24', 'dev', 'wan0']);
    const res = await once(lab.gw, 'addr', { iface: 'wan0', addresses: [ip4('203.0.113.1'), ip4('203.0.113.5'), ip4('203.0.113.9'), ip4('127.0.0.9')] });
    expect(res).toEqual({ ok: true, primary: ip4('203.0.113.1'), owns: [true, true, false, true] });
    expect(await once(lab.gw, 'addr', { iface: 'nosuch0', addresses: [] })).toEqual({ ok: true, primary: null, owns: [] });
    expect(await once(lab.gw, 'addr', { iface: 'tun0', addresses: [] })).toEqual({ ok: true, primary: null, owns: [] });
  });
});
