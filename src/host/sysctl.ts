import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';

/**
 * Sysctls of the calling process's network namespace, read and written through /proc/sys (which
 * resolves net.* against the opener's namespace, so no netns option is needed or possible).
 *
 * Keys are paths relative to /proc/sys ("net/ipv4/conf/eth0.100/rp_filter") rather than the
 * dotted form, because interface names may contain dots.
 */

const ROOT = '/proc/sys/';

/** Interface names as the kernel accepts them: 1–15 bytes, no '/', no whitespace, not "." or "..". */
export function isValidIfname(name: string): boolean {
  return /^[^\s/:]{1,15}$/.test(name) && name !== '.' && name !== '..';
}

/** The key of a per-interface IPv4 conf sysctl, e.g. conf('tun0', 'rp_filter'). */
export function confKey(dev: string, name: string): string {
  if (dev !== 'all' && dev !== 'default' && !isValidIfname(dev)) {
    throw new Error(`invalid interface name for a sysctl key: ${JSON.stringify(dev)}`);
  }
  return `net/ipv4/conf/${dev}/${name}`;
}

/** The key of a per-interface ARP neighbour parameter, e.g. neighKey('wan0', 'proxy_delay'). */
export function neighKey(dev: string, name: string): string {
  if (!isValidIfname(dev)) throw new Error(`invalid interface name for a sysctl key: ${JSON.stringify(dev)}`);
  return `net/ipv4/neigh/${dev}/${name}`;
}

/** Dotted form for messages ("net.ipv4.conf.tun0.rp_filter"); interface dots become '/' as sysctl(8) writes them. */
export function dotted(key: string): string {
  return key
    .split('/')
    .map((part) => part.replace(/\./g, '/'))
    .join('.');
}

export function sysctlExists(key: string): boolean {
  return existsSync(ROOT + key);
}

/** The current value, whitespace-trimmed at the ends (multi-value sysctls keep their inner tab). */
export function readSysctl(key: string): string {
  try {
    return readFileSync(ROOT + key, 'utf8').trim();
  } catch (err) {
    throw new Error(`cannot read sysctl ${dotted(key)}: ${(err as Error).message}`, { cause: err });
  }
}

export function writeSysctl(key: string, value: string): void {
  try {
    writeFileSync(ROOT + key, value);
  } catch (err) {
    throw new Error(`cannot set sysctl ${dotted(key)}=${value}: ${(err as Error).message}`, { cause: err });
  }
}

/** Values compare equal when they hold the same numbers: "32768\t60999" equals "32768 60999". */
export function sameSysctlValue(a: string, b: string): boolean {
  return a.trim().split(/\s+/).join(' ') === b.trim().split(/\s+/).join(' ');
}

/** Interfaces that have an IPv4 conf directory (without the pseudo-entries "all" and "default"). */
export function ipv4ConfDevices(): string[] {
  return readdirSync(ROOT + 'net/ipv4/conf').filter((d) => d !== 'all' && d !== 'default');
}

/** The sysctls as the journal reads and writes them; tests give it a map instead of /proc/sys. */
export interface SysctlStore {
  exists(key: string): boolean;
  read(key: string): string;
  write(key: string, value: string): void;
  /** Interfaces with an IPv4 conf directory (for ip_forward's side effects). */
  devices(): string[];
}

export const procSysctls: SysctlStore = {
  exists: sysctlExists,
  read: readSysctl,
  write: writeSysctl,
  devices: ipv4ConfDevices,
};

export const IP_FORWARD = 'net/ipv4/ip_forward';

/**
 * The sysctls the kernel rewrites when net.ipv4.ip_forward is written (net/ipv4/devinet.c,
 * inet_forward_change): every interface's forwarding, the default for new ones, and
 * all.accept_redirects (set to the opposite of forwarding).
 */
export function ipForwardSideEffects(store: SysctlStore): string[] {
  return [confKey('all', 'accept_redirects'), confKey('default', 'forwarding'), ...store.devices().map((d) => confKey(d, 'forwarding'))];
}

/** ip_forward and the per-interface forwarding switches: what lets the gateway route between its links at all. */
export function isForwardingKey(key: string): boolean {
  return key === IP_FORWARD || /^net\/ipv4\/conf\/[^/]+\/forwarding$/.test(key);
}
