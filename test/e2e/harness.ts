/**
 * Helpers for namespace e2e tests: labs (the project's own and the independent plain-lab.sh),
 * the router started with given flags, commands in lab namespaces, WAN-side capture, and
 * snapshots of a namespace's routing state to prove the router left nothing behind.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { run, runSync, type RunOptions, type RunResult } from '../../src/util/exec.js';
import { startCapture, type Capture } from '../../src/lab/capture.js';
import type { FlowJson } from '../../src/lab/flows.js';
import { randomId } from '../../src/lab/netns.js';
import { Cleanup } from '../../src/lab/cleanup.js';
import { defaultCliPath, socketPathFor, startRouter, type LabEngine, type RouterHandle } from '../../src/lab/router.js';
import { buildLab, type Lab, type LabOptions } from '../../src/lab/topology.js';

export { Cleanup, randomId };
export type { Capture, FlowJson, Lab, RouterHandle };

/** Namespace tests need root (ip netns, veth, tcpdump); CI runs as root. */
export const isRoot = process.getuid?.() === 0;

const here = dirname(fileURLToPath(import.meta.url));
export const PLAIN_LAB_SCRIPT = join(here, 'plain-lab.sh');

/** Run a command inside a namespace. */
export function inNs(netns: string, argv: readonly string[], opts: Omit<RunOptions, 'netns'> = {}): Promise<RunResult> {
  return run(argv, { ...opts, netns });
}

/** Build the project's standard lab with a fresh id, undone by `cleanup`. */
export function buildTestLab(cleanup: Cleanup, opts: Omit<LabOptions, 'cleanup'> = {}): Promise<Lab> {
  return buildLab({ ...opts, cleanup });
}

export interface PlainLab {
  id: string;
  gw: string;
  inet: string;
  hosts: string[];
  /** Gateway LAN/WAN facts as plain-lab.sh builds them. */
  lanSubnet: '192.168.1.0/24';
  wanDev: 'wan0';
  wanAddress: '203.0.113.1';
  inetAddress: '203.0.113.2';
  inetDev: 'eth0';
  down(): Promise<void>;
}

/** `plain-lab.sh up <id>`; `down` is registered on `cleanup` (also for exit handlers). */
export async function plainLabUp(cleanup: Cleanup, hosts = 2, id: string = randomId(6)): Promise<PlainLab> {
  const downSync = (): void => {
    runSync(['bash', PLAIN_LAB_SCRIPT, 'down', id], { allowFail: true });
  };
  const forget = cleanup.defer({
    label: `plain-lab.sh down ${id}`,
    sync: downSync,
    async: async () => {
      await run(['bash', PLAIN_LAB_SCRIPT, 'down', id], { allowFail: true });
    },
  });
  const r = await run(['bash', PLAIN_LAB_SCRIPT, 'up', id, String(hosts)]);
  const vars = new Map(
    r.stdout
      .trim()
      .split('\n')
      .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)] as const),
  );
  return {
    id,
    gw: vars.get('GW') ?? '',
    inet: vars.get('INET') ?? '',
    hosts: (vars.get('HOSTS') ?? '').split(' ').filter((h) => h.length > 0),
    lanSubnet: '192.168.1.0/24',
    wanDev: 'wan0',
    wanAddress: '203.0.113.1',
    inetAddress: '203.0.113.2',
    inetDev: 'eth0',
    down: async () => {
      forget();
      await run(['bash', PLAIN_LAB_SCRIPT, 'down', id], { allowFail: true });
    },
  };
}

export interface TestRouter extends RouterHandle {
  /** GET /conntrack through the unix socket (or `conntrack -L` for the kernel stand-in). */
  conntrack(): Promise<FlowJson[]>;
}

export interface TestRouterOptions {
  gwNetns: string;
  id: string;
  cleanup: Cleanup;
  internal?: string;
  external?: string;
  engine?: LabEngine;
  /** JSON written to a file passed as --config. */
  config?: unknown;
  /** More flags for `tunnat run`. */
  args?: string[];
  readyTimeoutMs?: number;
}

/** Start `tunnat run` (or the kernel stand-in) in the gateway namespace and wait for it to answer. */
export async function startTestRouter(o: TestRouterOptions): Promise<TestRouter> {
  const engine = o.engine ?? 'userspace';
  if (engine === 'userspace' && !existsSync(defaultCliPath())) {
    throw new Error(`${defaultCliPath()} is missing: build first (npm run build, or npm test which builds)`);
  }
  // TUNNAT_TEST_WORKERS=N runs every userspace router of the suite with --workers N (unless a test sets it).
  const workers = process.env.TUNNAT_TEST_WORKERS;
  const args = [...(o.args ?? [])];
  if (engine === 'userspace' && workers && !args.includes('--workers')) args.push('--workers', workers);
  const h = await startRouter({
    engine,
    netns: o.gwNetns,
    internal: o.internal ?? '192.168.1.0/24',
    external: o.external ?? 'wan0',
    id: o.id,
    cleanup: o.cleanup,
    socketPath: socketPathFor(o.id),
    ...(o.config !== undefined ? { config: o.config } : {}),
    ...(args.length > 0 ? { extraArgs: args } : {}),
    ...(o.readyTimeoutMs ? { readyTimeoutMs: o.readyTimeoutMs } : {}),
  });
  return { ...h, conntrack: () => h.flows() };
}

/** Capture on a WAN-side interface (start before the traffic; stop, then read). */
export function captureOn(netns: string, dev: string, cleanup: Cleanup, filter?: string[]): Promise<Capture> {
  return startCapture(netns, dev, { cleanup, ...(filter ? { filter } : {}) });
}

/** A file of `bytes` random bytes in a fresh temporary directory, with its sha256. */
export async function randomFile(cleanup: Cleanup, bytes: number, name = 'blob.bin'): Promise<{ dir: string; name: string; sha256: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'tunnat-e2e-'));
  cleanup.defer({ label: `remove ${dir}`, sync: () => rmSync(dir, { recursive: true, force: true }) });
  const hash = createHash('sha256');
  const out = createWriteStream(join(dir, name));
  const chunk = 1 << 20;
  for (let left = bytes; left > 0; left -= chunk) {
    const b = randomBytes(Math.min(chunk, left));
    hash.update(b);
    if (!out.write(b)) await new Promise<void>((r) => out.once('drain', () => r()));
  }
  await new Promise<void>((resolve, reject) => out.end((err?: Error | null) => (err ? reject(err) : resolve())));
  return { dir, name, sha256: hash.digest('hex') };
}

/** Sysctls a NAT router may touch; compared before and after it runs. */
const SYSCTL_PATTERN = /^net\.ipv4\.(ip_forward|ip_early_demux|tcp_early_demux|udp_early_demux|ip_local_reserved_ports|ip_local_port_range|conf\.)|^net\.ipv6\.conf\.all\.forwarding/;

export interface NetnsSnapshot {
  rules: string;
  rules6: string;
  routes: string;
  links: string[];
  tunDevices: string[];
  sysctls: string[];
}

/** The routing state of a namespace: policy rules, IPv4 routes of all tables, links, TUN devices, sysctls. */
export async function snapshotNetns(netns: string): Promise<NetnsSnapshot> {
  const [rules, rules6, routes, links, sysctl] = await Promise.all([
    inNs(netns, ['ip', '-4', 'rule', 'show']),
    inNs(netns, ['ip', '-6', 'rule', 'show'], { allowFail: true }),
    inNs(netns, ['ip', '-4', 'route', 'show', 'table', 'all']),
    inNs(netns, ['ip', '-d', '-o', 'link', 'show']),
    inNs(netns, ['sysctl', '-a'], { allowFail: true }),
  ]);
  const linkLines = links.stdout.split('\n').filter((l) => l.trim() !== '');
  const nameOf = (l: string): string => (l.split(':')[1] ?? '').trim().replace(/@.*$/, '');
  return {
    rules: rules.stdout,
    rules6: rules6.stdout,
    routes: routes.stdout
      .split('\n')
      .filter((l) => l.trim() !== '')
      .sort()
      .join('\n'),
    links: linkLines.map(nameOf).sort(),
    tunDevices: linkLines.filter((l) => /\btun type (tun|tap)\b/.test(l)).map(nameOf),
    sysctls: sysctl.stdout
      .split('\n')
      .filter((l) => SYSCTL_PATTERN.test(l))
      .sort(),
  };
}

/** Poll `probe` every `intervalMs` until it returns true or `timeoutMs` passes; returns the elapsed ms or throws. */
export async function waitUntil(what: string, probe: () => Promise<boolean>, timeoutMs: number, intervalMs = 200): Promise<number> {
  const start = Date.now();
  for (;;) {
    if (await probe()) return Date.now() - start;
    if (Date.now() - start > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** Rules of the kernel's NAT in a namespace: `iptables -t nat -S` appends and nft NAT statements/hooks. */
export async function kernelNatRules(netns: string): Promise<{ iptables: string[]; nft: string[] }> {
  // nft first: listing with iptables-nft may itself create empty built-in chains.
  const nft = await inNs(netns, ['nft', 'list', 'ruleset'], { allowFail: true });
  const ipt = await inNs(netns, ['iptables', '-t', 'nat', '-S'], { allowFail: true });
  return {
    iptables: ipt.stdout.split('\n').filter((l) => l.startsWith('-A ')),
    nft: nft.stdout.split('\n').filter((l) => /\b(masquerade|snat|dnat|redirect)\b|type nat hook/.test(l)),
  };
}
