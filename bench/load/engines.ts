/**
 * The load benchmark's lab and the engines it compares, all inside namespaces made here:
 *
 * ```
 *  h0 (192.168.1.10 + extra addresses) ── br-lan ─┐
 *                                                 gw ── wan0 203.0.113.1 ─── inet 203.0.113.2
 *  s0 (192.168.2.100 + extra) ── tap0 ── slirp4netns process in gw ─┘  (its sockets use wan0)
 * ```
 *
 * - userspace: `tunnat run` in gw (the product).
 * - kernel: `tunnat run --engine kernel` in gw when the CLI really drives the kernel there (the
 *   product path), otherwise the lab's iptables MASQUERADE stand-in; which one ran is recorded.
 * - slirp4netns: the userspace NAT most people would otherwise use. It is a process in gw that
 *   owns a TAP device in its own guest namespace s0 and re-sends the guest's traffic from ordinary
 *   sockets, so the translated packets leave through the same wan0 as the others'.
 * - route: plain forwarding with no NAT (the internet host gets a route back to the LAN); only
 *   the latency measurement uses it, as the floor under every engine's RTT.
 * - tun-floor: the same route back, but every packet both ways passes through a TUN device whose
 *   reader (bench/floor/tun-floor.c) writes it back unchanged, with tunnat's offloads: the limit of
 *   any design that reads a TUN, measured for throughput and latency (not flows: it keeps none).
 *
 * Every run gets a freshly started engine; after a kernel run the gateway's ruleset is flushed and
 * its conntrack table emptied, so no engine inherits state (or netfilter hooks) from another.
 */
import { DEFAULTS } from '../../src/config/config.js';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { run, runSync } from '../../src/util/exec.js';
import { addAddress, createNetns, netnsName } from '../../src/lab/netns.js';
import { Cleanup } from '../../src/lab/cleanup.js';
import { spawnIn, type NsProcess } from '../../src/lab/process.js';
import { defaultCliPath, startRouter, type RouterHandle } from '../../src/lab/router.js';
import { buildLab, GW_WAN_ADDRESS, INET_ADDRESS, LAN_SUBNET, type Lab } from '../../src/lab/topology.js';
import { startServices } from '../../src/lab/services.js';
import { udpEcho } from '../../src/lab/probes.js';
import { parseConntrackCount, parseSlabinfo, parseVmRss, sumMetric, type SlabLine } from './parse.js';

export const ENGINES = ['userspace', 'kernel', 'slirp4netns'] as const;
export type EngineName = (typeof ENGINES)[number];
/** Engines plus the no-NAT baselines: plain routing, and routing through a TUN that translates nothing. */
export type RunnerName = EngineName | 'route' | 'tun-floor';

export type KernelChoice = 'auto' | 'tunnat' | 'manual';
export type KernelVariant = 'tunnat-kernel' | 'kernel-manual';

export const KERNEL_VARIANT_TEXT: Record<KernelVariant, string> = {
  'tunnat-kernel': '`tunnat run --engine kernel` (netfilter NAT set up by tunnat)',
  'kernel-manual': 'iptables MASQUERADE set by hand (the lab stand-in, src/lab/router.ts)',
};

export const SLIRP_CIDR = '192.168.2.0/24';
export const SLIRP_GUEST = '192.168.2.100';
/** What rootless Podman and Docker give slirp4netns (their documented throughput setting). */
export const SLIRP_MTU = 65520;
export const UDP_ECHO_PORT = 7;

/** Where a workload's traffic starts: a namespace and the source addresses it may use (first = primary). */
export interface ClientSide {
  netns: string;
  addresses: string[];
}

export interface BenchLab {
  lab: Lab;
  cleanup: Cleanup;
  inetAddress: string;
  publicAddress: string;
  /** The LAN host behind the gateway (userspace, kernel and route). */
  lan: ClientSide;
  /** slirp4netns's guest namespace, when slirp4netns is among the engines. */
  slirpNetns: string | null;
  slirpAddresses: string[];
  cliPath: string;
  log: (line: string) => void;
  /** Things seen while running that the report should mention (a set: each once). */
  notes: Set<string>;
}

export interface BenchLabOptions {
  /** Source addresses per client (the first is the host's own). */
  addresses: number;
  withSlirp: boolean;
  cleanup: Cleanup;
  log: (line: string) => void;
  cliPath?: string;
}

/** 192.168.x.(base+i): the client's extra source addresses. */
export function clientAddresses(primary: string, count: number): string[] {
  const m = /^(\d+\.\d+\.\d+)\.(\d+)$/.exec(primary);
  if (!m) throw new RangeError(`not an IPv4 address: ${primary}`);
  const out = [primary];
  for (let i = 1; i < count; i++) out.push(`${m[1]}.${120 + i}`);
  return out;
}

export async function buildBenchLab(opts: BenchLabOptions): Promise<BenchLab> {
  const lab = await buildLab({ prefix: 'tnlb', lanHosts: 1, cleanup: opts.cleanup, log: opts.log });
  const h0 = lab.lanHosts[0]!;
  const lan: ClientSide = { netns: h0.netns, addresses: clientAddresses(h0.address, opts.addresses) };
  for (const a of lan.addresses.slice(1)) await addAddress(h0.netns, h0.dev, `${a}/24`);

  let slirpNetns: string | null = null;
  if (opts.withSlirp) {
    slirpNetns = netnsName(lab.id, 's0', 'tnlb');
    await createNetns(slirpNetns, opts.cleanup);
    // slirp4netns answers the guest's pings from ICMP datagram ("ping") sockets in its own
    // namespace, which the kernel only allows to the groups in this range.
    await run(['sysctl', '-q', '-w', 'net.ipv4.ping_group_range=0 2147483647'], { netns: lab.gw.netns });
  }
  // The UDP echo answers the per-run probe that checks the engine translates at all.
  await startServices({ netns: lab.inet.netns, addresses: [INET_ADDRESS], httpPort: 80, udpPort: UDP_ECHO_PORT, cleanup: opts.cleanup });
  return {
    lab,
    cleanup: opts.cleanup,
    inetAddress: INET_ADDRESS,
    publicAddress: GW_WAN_ADDRESS,
    lan,
    slirpNetns,
    slirpAddresses: clientAddresses(SLIRP_GUEST, opts.addresses),
    cliPath: opts.cliPath ?? defaultCliPath(),
    log: opts.log,
    notes: new Set(),
  };
}

export interface MemoryReading {
  /** RSS of the process that holds the flows (userspace engines), bytes. */
  rss: number | null;
  /** The kernel's nf_conntrack slab (machine-wide: other namespaces' entries are in it too). */
  slab: SlabLine | null;
}

export interface EngineSession {
  runner: RunnerName;
  client: ClientSide;
  /** The source address the internet host must see: the NAT's public address, or the client's own without NAT. */
  expectedSource: string;
  /** Without NAT the servers see whichever client address a connection used: these are all right then. */
  allowedSources?: string[];
  /** The process whose memory holds the flows (tunnat, slirp4netns); null when the kernel holds them. */
  pid: number | null;
  /** The engine's own count of flows (tunnat_flows, `conntrack -C`); null when it has none. */
  flowCount(): Promise<number | null>;
  /** How many flows its table can hold at once (tunnat_flows_max, nf_conntrack_max); null when unbounded or unknown. */
  flowCapacity(): Promise<number | null>;
  /** What to do when the capacity is too small for a --flows run (said in the refusal). */
  capacityHint?: string;
  memory(): Promise<MemoryReading>;
  stop(): Promise<void>;
}

export function readRss(pid: number): number {
  return parseVmRss(readFileSync(`/proc/${pid}/status`, 'utf8'));
}

export function readConntrackSlab(): SlabLine | null {
  try {
    return parseSlabinfo(readFileSync('/proc/slabinfo', 'utf8'), 'nf_conntrack');
  } catch {
    return null;
  }
}

async function conntrackCount(netns: string): Promise<number> {
  return parseConntrackCount((await run(['conntrack', '-C'], { netns })).stdout);
}

/** Empty the gateway's netfilter state after a kernel run; returns what was left in the ruleset. */
async function resetGatewayNetfilter(bl: BenchLab): Promise<string> {
  const ns = bl.lab.gw.netns;
  const ruleset = (await run(['nft', 'list', 'ruleset'], { netns: ns, allowFail: true })).stdout.trim();
  // An empty nat table (what `iptables -t nat -D` leaves) keeps conntrack hooked in: the next
  // userspace run would then pay for kernel connection tracking on both of its passes.
  await run(['nft', 'flush', 'ruleset'], { netns: ns, allowFail: true });
  await run(['conntrack', '-F'], { netns: ns, allowFail: true });
  return ruleset;
}

export interface StartOptions {
  kernelVariant: KernelVariant;
  /** Extra \`tunnat run\` flags for the userspace engine. */
  tunnatArgs?: readonly string[];
  /** The flows measurement's size: tunnat's table is made big enough for it (unless --tunnat-args sets --max-flows). */
  flows?: number;
}

/** tunnat's default --max-flows, and the headroom a --flows run gets above its own flows (probes, warm-up). */
const TUNNAT_DEFAULT_MAX_FLOWS = 262_144;
const FLOW_HEADROOM = 1.1;

/** `--max-flows` for a run that opens `flows` flows, or nothing when the default holds them or the user chose. */
export function maxFlowsArgs(flows: number | undefined, userArgs: readonly string[]): string[] {
  if (flows === undefined || userArgs.includes('--max-flows')) return [];
  const want = Math.ceil(flows * FLOW_HEADROOM);
  return want > TUNNAT_DEFAULT_MAX_FLOWS ? ['--max-flows', String(want)] : [];
}

/**
 * The TUN floor reads as many queues as tunnat has workers (its --workers, else tunnat's default), so the
 * two columns compare the same TUN path.
 */
export function floorQueues(userArgs: readonly string[]): number {
  const i = userArgs.indexOf('--workers');
  const n = i >= 0 && userArgs[i + 1] !== 'auto' ? Number(userArgs[i + 1]) : DEFAULTS.workers;
  return Number.isInteger(n) && n >= 1 ? n : 1;
}

export async function startRunner(bl: BenchLab, runner: RunnerName, opts: StartOptions): Promise<EngineSession> {
  switch (runner) {
    case 'userspace':
      return startTunnat(bl, 'userspace', [...(opts.tunnatArgs ?? []), ...maxFlowsArgs(opts.flows, opts.tunnatArgs ?? [])]);
    case 'kernel':
      return opts.kernelVariant === 'tunnat-kernel' ? startTunnat(bl, 'kernel', maxFlowsArgs(opts.flows, [])) : startKernelManual(bl);
    case 'slirp4netns':
      return startSlirp(bl);
    case 'route':
      return startRoute(bl);
    case 'tun-floor':
      return startTunFloor(bl, floorQueues(opts.tunnatArgs ?? []));
  }
}

async function routerFor(bl: BenchLab, engine: 'userspace' | 'kernel' | 'kernel-manual', extra: readonly string[] = []): Promise<RouterHandle> {
  return startRouter({
    engine: engine === 'kernel-manual' ? 'kernel-manual' : 'userspace',
    netns: bl.lab.gw.netns,
    internal: LAN_SUBNET,
    external: bl.lab.gw.wanDev,
    id: bl.lab.id,
    cleanup: bl.cleanup,
    cliPath: bl.cliPath,
    ...(engine === 'kernel' ? { extraArgs: ['--engine', 'kernel', ...extra] } : extra.length > 0 ? { extraArgs: extra } : {}),
  });
}

async function startTunnat(bl: BenchLab, engine: 'userspace' | 'kernel', extra: readonly string[] = []): Promise<EngineSession> {
  const router = await routerFor(bl, engine, extra);
  const pid = router.process?.pid ?? null;
  if (engine === 'kernel') {
    return kernelSession(bl, async () => {
      await router.stop();
      const left = await resetGatewayNetfilter(bl);
      if (left !== '') bl.notes.add(`tunnat's kernel engine left rules behind in the gateway after stopping (the benchmark flushed them): ${left.replace(/\s+/g, ' ').slice(0, 300)}`);
    });
  }
  return {
    runner: 'userspace',
    client: bl.lan,
    expectedSource: bl.publicAddress,
    pid,
    flowCount: async () => sumMetric(await router.metrics(), 'tunnat_flows'),
    flowCapacity: async () => sumMetric(await router.metrics(), 'tunnat_flows_max'),
    memory: async () => ({ rss: pid === null ? null : readRss(pid), slab: null }),
    stop: async () => {
      const code = await router.stop();
      if (code !== 0) bl.notes.add(`tunnat run exited with code ${code} when stopped: ${router.output().trim().split('\n').slice(-1)[0] ?? ''}`);
    },
  };
}

async function startKernelManual(bl: BenchLab): Promise<EngineSession> {
  const router = await routerFor(bl, 'kernel-manual');
  return kernelSession(bl, async () => {
    await router.stop();
    await resetGatewayNetfilter(bl);
  });
}

/** A run whose flows the gateway's kernel holds: counted by conntrack, their memory in its slab. */
function kernelSession(bl: BenchLab, stop: () => Promise<void>): EngineSession {
  return {
    runner: 'kernel',
    client: bl.lan,
    expectedSource: bl.publicAddress,
    pid: null,
    flowCount: () => conntrackCount(bl.lab.gw.netns),
    flowCapacity: async () => Number((await run(['cat', '/proc/sys/net/netfilter/nf_conntrack_max'], { netns: bl.lab.gw.netns })).stdout.trim()),
    // The benchmark changes nothing outside its namespaces, and only the host's first namespace may set it.
    capacityHint: 'nf_conntrack_max is machine-wide and read-only inside a namespace; raise it on the host (sysctl -w net.netfilter.nf_conntrack_max=N) to measure the kernel at this size',
    memory: async () => ({ rss: null, slab: readConntrackSlab() }),
    stop,
  };
}

async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function startSlirp(bl: BenchLab): Promise<EngineSession> {
  const guest = bl.slirpNetns;
  if (guest === null) throw new Error('the lab was built without a slirp4netns guest namespace');
  const argv = [
    'slirp4netns', '--configure', `--mtu=${SLIRP_MTU}`, '--disable-host-loopback', '--disable-dns',
    `--cidr=${SLIRP_CIDR}`, '--netns-type=path', `/run/netns/${guest}`, 'tap0',
  ];
  const proc: NsProcess = spawnIn(bl.lab.gw.netns, argv, { label: 'slirp4netns', cleanup: bl.cleanup });
  try {
    // --configure ends with the default route through slirp's gateway (192.168.2.2).
    await waitFor(
      'slirp4netns to configure tap0',
      async () => {
        if (proc.code !== null) throw new Error(`slirp4netns exited with ${proc.code}: ${proc.output().slice(-1000)}`);
        const r = await run(['ip', '-4', 'route', 'show', 'default'], { netns: guest, allowFail: true });
        return r.stdout.includes('tap0');
      },
      10_000,
    );
    for (const a of bl.slirpAddresses.slice(1)) await addAddress(guest, 'tap0', `${a}/24`);
  } catch (err) {
    await proc.stop();
    throw err;
  }
  return {
    runner: 'slirp4netns',
    client: { netns: guest, addresses: bl.slirpAddresses },
    expectedSource: bl.publicAddress,
    pid: proc.pid,
    flowCount: async () => null,
    flowCapacity: async () => null,
    memory: async () => ({ rss: readRss(proc.pid), slab: null }),
    // The TAP device goes with the process (slirp4netns does not make it persistent).
    stop: async () => {
      await proc.stop();
    },
  };
}

async function startRoute(bl: BenchLab): Promise<EngineSession> {
  const gw = bl.lab.gw.netns;
  const inet = bl.lab.inet.netns;
  const oldForward = (await run(['sysctl', '-n', 'net.ipv4.ip_forward'], { netns: gw })).stdout.trim();
  const routeBack = ['ip', 'route', 'add', LAN_SUBNET, 'via', bl.publicAddress];
  let active = true;
  const undo = async (): Promise<void> => {
    if (!active) return;
    active = false;
    forget();
    await run(['ip', 'route', 'del', LAN_SUBNET, 'via', bl.publicAddress], { netns: inet, allowFail: true });
    await run(['sysctl', '-q', '-w', `net.ipv4.ip_forward=${oldForward}`], { netns: gw, allowFail: true });
  };
  const forget = bl.cleanup.defer({
    label: 'remove the no-NAT route',
    sync: () => {
      active = false;
      runSync(['ip', 'route', 'del', LAN_SUBNET, 'via', bl.publicAddress], { netns: inet, allowFail: true });
      runSync(['sysctl', '-q', '-w', `net.ipv4.ip_forward=${oldForward}`], { netns: gw, allowFail: true });
    },
    async: undo,
  });
  await run(['sysctl', '-q', '-w', 'net.ipv4.ip_forward=1'], { netns: gw });
  await run(routeBack, { netns: inet });
  return {
    runner: 'route',
    client: bl.lan,
    expectedSource: bl.lan.addresses[0]!,
    pid: null,
    flowCount: async () => null,
    flowCapacity: async () => null,
    memory: async () => ({ rss: null, slab: null }),
    stop: undo,
  };
}

/** The TUN floor's device, routing table and rule priorities in the gateway (its own, apart from tunnat's). */
const FLOOR_TUN = 'tnfloor0';
const FLOOR_TABLE = '7400';
const FLOOR_PREF = ['100', '101'];
let floorBinary: Promise<string> | null = null;

/** Compile bench/floor/tun-floor.c once per benchmark, into a temporary directory. */
function buildTunFloor(cleanup: Cleanup): Promise<string> {
  floorBinary ??= (async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tunnat-floor-'));
    cleanup.defer({ label: `remove ${dir}`, sync: () => rmSync(dir, { recursive: true, force: true }) });
    const src = fileURLToPath(new URL('../../../bench/floor/tun-floor.c', import.meta.url));
    const out = join(dir, 'tun-floor');
    const r = await run(['cc', '-O2', '-pthread', '-o', out, src], { allowFail: true });
    if (r.exitCode !== 0) throw new Error(`cannot build the TUN floor (cc): ${r.stderr.trim()}`);
    return out;
  })();
  return floorBinary;
}

async function startTunFloor(bl: BenchLab, queues: number): Promise<EngineSession> {
  const gw = bl.lab.gw.netns;
  const inet = bl.lab.inet.netns;
  const bin = await buildTunFloor(bl.cleanup);
  const proc: NsProcess = spawnIn(gw, [bin, FLOOR_TUN, String(queues)], { label: 'tun-floor', cleanup: bl.cleanup });
  await proc.waitForLine(/^ready$/, 10_000);
  const oldForward = (await run(['sysctl', '-n', 'net.ipv4.ip_forward'], { netns: gw })).stdout.trim();
  const rules = [
    // LAN traffic into the TUN, and the internet's replies to the LAN too; what the floor writes back
    // comes in on the TUN, matches neither rule, and is routed by the main table.
    ['pref', FLOOR_PREF[0]!, 'iif', bl.lab.gw.lanBridge, 'from', LAN_SUBNET, 'lookup', FLOOR_TABLE],
    ['pref', FLOOR_PREF[1]!, 'iif', bl.lab.gw.wanDev, 'to', LAN_SUBNET, 'lookup', FLOOR_TABLE],
  ];
  let active = true;
  const undoSync = (): void => {
    active = false;
    for (const r of rules) runSync(['ip', 'rule', 'del', ...r], { netns: gw, allowFail: true });
    runSync(['ip', 'route', 'del', LAN_SUBNET, 'via', bl.publicAddress], { netns: inet, allowFail: true });
    runSync(['sysctl', '-q', '-w', `net.ipv4.ip_forward=${oldForward}`], { netns: gw, allowFail: true });
  };
  const forget = bl.cleanup.defer({ label: "remove the TUN floor's routing", sync: undoSync });
  const undo = async (): Promise<void> => {
    if (!active) return;
    forget();
    // Forwarding off first, then the reader (the device and its route go with it), then the rules.
    await run(['sysctl', '-q', '-w', `net.ipv4.ip_forward=${oldForward}`], { netns: gw, allowFail: true });
    await proc.stop();
    undoSync();
  };
  try {
    for (const key of ['all', FLOOR_TUN]) await run(['sysctl', '-q', '-w', `net.ipv4.conf.${key}.rp_filter=0`], { netns: gw });
    await run(['ip', 'link', 'set', 'dev', FLOOR_TUN, 'up'], { netns: gw });
    await run(['ip', 'route', 'add', 'default', 'dev', FLOOR_TUN, 'table', FLOOR_TABLE], { netns: gw });
    for (const r of rules) await run(['ip', 'rule', 'add', ...r], { netns: gw });
    await run(['ip', 'route', 'add', LAN_SUBNET, 'via', bl.publicAddress], { netns: inet });
    await run(['sysctl', '-q', '-w', 'net.ipv4.ip_forward=1'], { netns: gw });
  } catch (err) {
    await undo();
    throw err;
  }
  return {
    runner: 'tun-floor',
    client: bl.lan,
    expectedSource: bl.lan.addresses[0]!,
    allowedSources: [...bl.lan.addresses],
    pid: proc.pid,
    flowCount: async () => null,
    flowCapacity: async () => null,
    memory: async () => ({ rss: null, slab: null }),
    stop: undo,
  };
}

/**
 * One UDP request through the engine, answered by the internet host with the source it saw: the
 * run is refused unless that is the expected (translated) address. Also warms the path up.
 */
export async function probeTranslation(bl: BenchLab, s: Pick<EngineSession, 'runner' | 'client' | 'expectedSource'>): Promise<void> {
  let lastError = '';
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const seen = await udpEcho(s.client.netns, bl.inetAddress, UDP_ECHO_PORT, 'probe', { timeoutMs: 2000 });
      if (seen.address !== s.expectedSource) {
        throw new Error(`${s.runner}: the internet host saw ${seen.address}:${seen.port}, expected ${s.expectedSource}`);
      }
      return;
    } catch (err) {
      lastError = (err as Error).message;
      if (/expected/.test(lastError)) throw err;
    }
  }
  throw new Error(`${s.runner}: no UDP echo through the engine (${lastError})`);
}

export interface KernelDecision {
  variant: KernelVariant;
  /** Why this variant: what the probe of `tunnat run --engine kernel` found. */
  reason: string;
  /** The gateway's ruleset while tunnat's kernel engine ran (null for the stand-in). */
  ruleset: string | null;
}

/**
 * Whether `tunnat run --engine kernel` really hands the NAT to netfilter here: it must come up,
 * translate, create no TUN device and leave a masquerade rule in the gateway's ruleset.
 */
export async function probeKernelEngine(bl: BenchLab): Promise<{ ok: boolean; reason: string; ruleset: string | null }> {
  const gw = bl.lab.gw.netns;
  let router: RouterHandle | null = null;
  try {
    router = await routerFor(bl, 'kernel');
    const tun = await run(['ip', 'link', 'show', 'tunnat0'], { netns: gw, allowFail: true });
    if (tun.exitCode === 0) {
      return { ok: false, reason: '`tunnat run --engine kernel` opened the TUN device tunnat0: the CLI ran the userspace engine', ruleset: null };
    }
    const nft = (await run(['nft', 'list', 'ruleset'], { netns: gw, allowFail: true })).stdout;
    const ipt = (await run(['iptables-save', '-t', 'nat'], { netns: gw, allowFail: true })).stdout;
    if (!/masquerade|snat/i.test(nft + ipt)) {
      return { ok: false, reason: '`tunnat run --engine kernel` came up but no masquerade/snat rule is in the gateway', ruleset: null };
    }
    await probeTranslation(bl, { runner: 'kernel', client: bl.lan, expectedSource: bl.publicAddress });
    // The engine names its choice on its "tunnat running" line: "backend":"nft" (JSON log lines,
    // what it writes to a pipe) or backend=nft (the pretty format).
    const backend = /\bbackend(?:=|":")(\w+)/.exec(router.output())?.[1] ?? 'unknown';
    return {
      ok: true,
      reason: `\`tunnat run --engine kernel\` came up with the ${backend} backend, translated a probe and created no TUN device`,
      ruleset: nft.trim() || ipt.trim(),
    };
  } catch (err) {
    return { ok: false, reason: `\`tunnat run --engine kernel\` did not work here: ${(err as Error).message.split('\n')[0]}`, ruleset: null };
  } finally {
    if (router) await router.stop().catch(() => undefined);
    await resetGatewayNetfilter(bl);
  }
}

export async function decideKernelVariant(bl: BenchLab, choice: KernelChoice): Promise<KernelDecision> {
  if (choice === 'manual') return { variant: 'kernel-manual', reason: 'chosen with --kernel manual', ruleset: null };
  const probe = await probeKernelEngine(bl);
  if (probe.ok) return { variant: 'tunnat-kernel', reason: probe.reason, ruleset: probe.ruleset };
  if (choice === 'tunnat') throw new Error(`--kernel tunnat: ${probe.reason}`);
  return { variant: 'kernel-manual', reason: `${probe.reason}; fell back to the stand-in`, ruleset: null };
}

/** slirp4netns's version line, or null when it is not installed. */
export async function slirpVersion(): Promise<string | null> {
  const r = await run(['slirp4netns', '--version'], { allowFail: true });
  if (r.exitCode !== 0) return null;
  return r.stdout.split('\n')[0]?.trim() ?? null;
}

export async function toolVersion(argv: string[]): Promise<string | null> {
  const r = await run(argv, { allowFail: true });
  return r.exitCode === 0 ? (r.stdout.split('\n')[0]?.trim() ?? null) : null;
}

export function cliBuilt(path: string): boolean {
  return existsSync(path);
}
