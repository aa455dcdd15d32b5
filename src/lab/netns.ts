/**
 * Typed helpers over `ip netns` for the lab: names, namespaces, veth pairs, bridges, addresses,
 * routes and sysctls. What they create is undone by a Cleanup (cleanup.ts); long-running children
 * in a namespace are in process.ts.
 *
 * Safety rule: nothing here touches the root namespace's network. Every `ip link add` runs inside a
 * namespace we created (a veth's peer is born directly in its target namespace), and sysctls are
 * written only through `ip netns exec`.
 */
import { randomBytes } from 'node:crypto';
import { run, runSync, type RunOptions, type RunResult } from '../util/exec.js';
import type { Cleanup } from './cleanup.js';

/** Linux IFNAMSIZ is 16 including the terminating NUL. */
export const MAX_IFNAME = 15;

// ---------------------------------------------------------------------------------------------
// Names

const ID_ALPHABET = 'abcdefghijklmnopqrstuvwxyz0123456789';

/** A short random id (lowercase letters and digits) that makes this run's names unique. */
export function randomId(length = 6, bytes: (n: number) => Uint8Array = randomBytes): string {
  const raw = bytes(length);
  let out = '';
  for (let i = 0; i < length; i++) out += ID_ALPHABET[raw[i]! % ID_ALPHABET.length];
  return out;
}

/** Throws unless `name` is usable as a Linux interface name. */
export function checkIfName(name: string): string {
  if (name.length === 0 || name.length > MAX_IFNAME) {
    throw new RangeError(`interface name "${name}" must be 1..${MAX_IFNAME} characters (IFNAMSIZ)`);
  }
  if (!/^[A-Za-z0-9_.-]+$/.test(name) || name === '.' || name === '..') {
    throw new RangeError(`interface name "${name}" may contain only letters, digits, "_", "." and "-"`);
  }
  return name;
}

/** Throws unless `name` is a namespace name we are willing to create and delete. */
export function checkNetnsName(name: string): string {
  // The name becomes a file under /run/netns; keep it to a safe, short alphabet.
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(name)) {
    throw new RangeError(`namespace name "${name}" must be 1..64 of [A-Za-z0-9_.-], not starting with a symbol`);
  }
  return name;
}

/** Namespace name for one role in one lab run: `tn<id>-<role>` (e.g. "tnab12cd-gw"). */
export function netnsName(id: string, role: string, prefix = 'tn'): string {
  return checkNetnsName(`${prefix}${id}-${role}`);
}

// ---------------------------------------------------------------------------------------------
// Namespaces and links

/** Run a command inside a namespace. */
export function execIn(netns: string, argv: readonly string[], opts: Omit<RunOptions, 'netns'> = {}): Promise<RunResult> {
  return run(argv, { ...opts, netns });
}

/** Create a namespace with loopback up and IPv6 off (keeps captures free of ND/MLD noise); undone by the registry. */
export async function createNetns(name: string, cleanup: Cleanup, opts: { ipv6?: boolean } = {}): Promise<string> {
  checkNetnsName(name);
  await run(['ip', 'netns', 'add', name]);
  cleanup.defer({
    label: `ip netns del ${name}`,
    sync: () => {
      killNetnsProcessesSync(name);
      runSync(['ip', 'netns', 'del', name], { allowFail: true });
    },
    async: async () => {
      await killNetnsProcesses(name);
      await run(['ip', 'netns', 'del', name], { allowFail: true });
    },
  });
  await run(['ip', 'link', 'set', 'lo', 'up'], { netns: name });
  if (!opts.ipv6) {
    // "default" first so interfaces created later are born without IPv6.
    await setSysctl(name, 'net.ipv6.conf.default.disable_ipv6', '1');
    await setSysctl(name, 'net.ipv6.conf.all.disable_ipv6', '1');
  }
  return name;
}

/** Pids of processes whose network namespace is `name` (what `ip netns pids` reports). */
export async function netnsPids(name: string): Promise<number[]> {
  const r = await run(['ip', 'netns', 'pids', name], { allowFail: true });
  return parsePids(r.stdout);
}

function parsePids(text: string): number[] {
  return text
    .split(/\s+/)
    .filter((s) => /^\d+$/.test(s))
    .map(Number);
}

/**
 * Kill what still lives in a namespace before deleting it: `ip netns del` only removes the name,
 * and a process left inside would keep the namespace (and its interfaces) alive, unreachable.
 */
async function killNetnsProcesses(name: string): Promise<void> {
  for (const pid of await netnsPids(name)) {
    if (pid === process.pid) continue;
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

function killNetnsProcessesSync(name: string): void {
  const r = runSync(['ip', 'netns', 'pids', name], { allowFail: true });
  for (const pid of parsePids(r.stdout)) {
    if (pid === process.pid) continue;
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

/** Namespaces that currently exist (names only). */
export async function listNetns(): Promise<string[]> {
  const r = await run(['ip', 'netns', 'list'], { allowFail: true });
  return r.stdout
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0] ?? '')
    .filter((n) => n.length > 0);
}

export interface VethEnd {
  netns: string;
  name: string;
}

/**
 * A veth pair between two namespaces. It is created inside `a.netns` with its peer born in
 * `b.netns`, so it never exists in the root namespace; it dies with either namespace.
 */
export async function addVeth(a: VethEnd, b: VethEnd, opts: { mtu?: number } = {}): Promise<void> {
  checkIfName(a.name);
  checkIfName(b.name);
  const mtu = opts.mtu !== undefined ? ['mtu', String(opts.mtu)] : [];
  await run(['ip', 'link', 'add', a.name, ...mtu, 'type', 'veth', 'peer', 'name', b.name, ...mtu, 'netns', b.netns], {
    netns: a.netns,
  });
}

/** A bridge inside a namespace; STP off and no forward delay, so ports forward as soon as they are up. */
export async function addBridge(netns: string, name: string): Promise<void> {
  checkIfName(name);
  await run(['ip', 'link', 'add', name, 'type', 'bridge', 'stp_state', '0', 'forward_delay', '0'], { netns });
}

/** Make `port` a port of `bridge` (both in `netns`). */
export async function setMaster(netns: string, port: string, bridge: string): Promise<void> {
  await run(['ip', 'link', 'set', port, 'master', bridge], { netns });
}

/** Add an address (CIDR, e.g. "192.168.1.1/24") to an interface. */
export async function addAddress(netns: string, dev: string, cidr: string): Promise<void> {
  await run(['ip', 'addr', 'add', cidr, 'dev', dev], { netns });
}

export async function linkUp(netns: string, dev: string): Promise<void> {
  await run(['ip', 'link', 'set', dev, 'up'], { netns });
}

export async function setMtu(netns: string, dev: string, mtu: number): Promise<void> {
  await run(['ip', 'link', 'set', dev, 'mtu', String(mtu)], { netns });
}

/** `ip route add <dest> [via <via>] [dev <dev>]` inside a namespace; dest may be "default". */
export async function addRoute(netns: string, dest: string, opts: { via?: string; dev?: string; table?: string | number }): Promise<void> {
  const argv = ['ip', 'route', 'add', dest];
  if (opts.via) argv.push('via', opts.via);
  if (opts.dev) argv.push('dev', opts.dev);
  if (opts.table !== undefined) argv.push('table', String(opts.table));
  await run(argv, { netns });
}

/** Write a sysctl inside one of our namespaces (never the root namespace: netns is mandatory). */
export async function setSysctl(netns: string, key: string, value: string): Promise<void> {
  if (!netns) throw new Error('setSysctl needs a namespace: the root namespace is off limits');
  await run(['sysctl', '-q', '-w', `${key}=${value}`], { netns });
}

/** Read a sysctl inside a namespace. */
export async function getSysctl(netns: string, key: string): Promise<string> {
  const r = await run(['sysctl', '-n', key], { netns });
  return r.stdout.trim();
}
