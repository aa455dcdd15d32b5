import { chmodSync, mkdirSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { keepalivedConf, type KeepalivedOptions } from '../ha/keepalived.js';
import { parseCidr, parseIpv4 } from '../wire/addr.js';

/**
 * A standby pair for the kernel engine. With the kernel translating, the flow state lives in the
 * kernel's conntrack table, so the pair is two daemons of the netfilter and VRRP world rather than
 * anything of tunnat's:
 *
 * - keepalived moves the LAN gateway address and the public address (src/ha/keepalived.ts);
 * - conntrackd copies the active gateway's conntrack entries, NAT bindings included, to the standby
 *   over a dedicated link (FTFW: acknowledged and retransmitted, so a lost datagram is not a lost flow).
 *   The standby keeps them in conntrackd's "external cache", outside its kernel, and writes them into
 *   its kernel only when keepalived makes it the master (the notify script below runs `conntrackd -c`).
 *
 * Why SNAT to the public address and never MASQUERADE: the kernel deletes the conntrack entries
 * masqueraded through an interface when that interface loses its address or goes down (a backup that
 * gives up the VIP would flush exactly the entries that were just handed to it, and a master that
 * takes the VIP would have no interface address to masquerade to until keepalived adds it). SNAT
 * names the address in the rule, so the entries do not depend on who holds it at the moment.
 *
 * Security: conntrackd's sync protocol has no authentication. Anyone who can send UDP to the sync
 * port can plant entries in the standby's external cache, and `-c` commits them into the kernel on
 * takeover (a forged entry is an open pinhole). The sync link must be a dedicated link between the
 * two gateways (a cable or a VLAN no one else reaches), never the LAN or the WAN.
 */

export const CONNTRACKD_DEFAULT_PORT = 3780;
/** Paths a distribution's own conntrackd uses; a second daemon sharing them would take its lock or socket. */
const CONNTRACKD_DEFAULT_PATHS = ['/var/run/conntrackd.ctl', '/run/conntrackd.ctl', '/var/lock/conntrack.lock', '/run/lock/conntrack.lock'];
/** sun_path is 108 bytes, the terminating NUL included. */
const MAX_SOCKET_PATH = 107;

export class KernelHaError extends Error {
  readonly code = 'BAD_HA_CONFIG';
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(`${field}: ${message}`);
    this.name = 'KernelHaError';
  }
}

export interface ConntrackdOptions {
  /** Which gateway of the pair (0 or 1); only named in the file's header, the two files differ by addresses. */
  node: 0 | 1;
  /** The dedicated sync link's interface. */
  syncIf: string;
  /** This gateway's address on the sync link. */
  syncLocal: string;
  /** The other gateway's address on the sync link. */
  syncPeer: string;
  /** UDP port of the sync messages, the same on both (default 3780). */
  syncPort?: number;
  /** conntrackd's control socket (`conntrackd -C FILE -c` reaches the daemon through it). */
  socketPath: string;
  /** conntrackd's lock file: a second daemon with the same one refuses to start. */
  lockFile: string;
  /** A log file; null or absent: no file, syslog instead. */
  logFile?: string | null;
  /**
   * The gateway's own addresses and prefixes (the LAN and public VIPs, both gateways' interface
   * addresses): flows from or to them are the gateway's own (VRRP aside, an SSH session, a DNS query)
   * and mean nothing on the other gateway. Loopback and the two sync addresses are added here.
   */
  ignore: string[];
  /** Buckets of conntrackd's caches (default 32768). */
  hashSize?: number;
  /** Entries conntrackd's caches may hold (default 524288: twice tunnat's default --max-flows, see HashLimit in conntrackd.conf(5)). */
  limit?: number;
}

const IFNAME = /^[A-Za-z0-9_.:-]{1,15}$/;
/** What conntrackd's configuration lexer takes as a path, and what is safe in a shell script and keepalived's quotes. */
const SAFE_PATH = /^\/[A-Za-z0-9._/+-]*$/;

function checkPath(field: string, p: string): void {
  if (!SAFE_PATH.test(p) || p.includes('//') || p.endsWith('/')) {
    throw new KernelHaError(field, `${JSON.stringify(p)} must be an absolute file path of letters, digits and . _ - + /`);
  }
}

function checkAddress(field: string, a: string): number {
  const n = parseIpv4(a);
  if (n === null) throw new KernelHaError(field, `${JSON.stringify(a)} is not an IPv4 address`);
  return n;
}

function checkInt(field: string, v: number, min: number, max: number): number {
  if (!Number.isInteger(v) || v < min || v > max) throw new KernelHaError(field, `${v} must be an integer in ${min}..${max}`);
  return v;
}

function checkConntrackd(o: ConntrackdOptions): void {
  if (o.node !== 0 && o.node !== 1) throw new KernelHaError('node', `${String(o.node)} must be 0 or 1`);
  if (!IFNAME.test(o.syncIf)) throw new KernelHaError('syncIf', `${JSON.stringify(o.syncIf)} is not an interface name`);
  const local = checkAddress('syncLocal', o.syncLocal);
  const peer = checkAddress('syncPeer', o.syncPeer);
  if (local === peer) throw new KernelHaError('syncPeer', 'is the same address as syncLocal: it must be the other gateway');
  checkInt('syncPort', o.syncPort ?? CONNTRACKD_DEFAULT_PORT, 1, 65535);
  checkPath('socketPath', o.socketPath);
  checkPath('lockFile', o.lockFile);
  if (o.logFile !== undefined && o.logFile !== null) checkPath('logFile', o.logFile);
  if (o.socketPath.length > MAX_SOCKET_PATH) throw new KernelHaError('socketPath', `longer than a unix socket path may be (${MAX_SOCKET_PATH} bytes)`);
  for (const [field, p] of [['socketPath', o.socketPath], ['lockFile', o.lockFile]] as const) {
    if (CONNTRACKD_DEFAULT_PATHS.includes(p)) {
      throw new KernelHaError(field, `${p} is conntrackd's default, which a distribution's conntrackd service uses too: give this pair's daemon its own`);
    }
  }
  if (o.socketPath === o.lockFile) throw new KernelHaError('lockFile', 'is the same file as socketPath');
  for (const a of o.ignore) {
    if (parseIpv4(a) === null && parseCidr(a) === null) throw new KernelHaError('ignore', `${JSON.stringify(a)} is neither an IPv4 address nor ADDRESS/PREFIX`);
  }
  checkInt('hashSize', o.hashSize ?? 32768, 1, 1 << 24);
  checkInt('limit', o.limit ?? 524288, 1, 1 << 26);
}

/** The text of conntrackd.conf for one gateway of the pair (syntax of conntrack-tools 1.4, conntrackd.conf(5)). */
export function conntrackdConf(o: ConntrackdOptions): string {
  checkConntrackd(o);
  const ignore = [...new Set(['127.0.0.1', o.syncLocal, o.syncPeer, ...o.ignore])];
  return [
    `# conntrackd configuration for node ${o.node} of a tunnat kernel-engine pair (written by tunnat kernel apply --ha).`,
    '# Start it with: conntrackd -C <this file> -d   (keepalived runs the notify script next to it on each transition).',
    '# The sync protocol has no authentication: the sync link must be dedicated to the two gateways.',
    'Sync {',
    // FTFW acknowledges and resends; NOTRACK would lose an entry with any lost datagram, ALARM resends
    // everything periodically.
    '\tMode FTFW {',
    // Off: the standby keeps the other's entries outside its kernel until it becomes master (-c). On, they
    // would sit in the standby's kernel table, where they can clash with its own flows and time out there.
    '\t\tDisableExternalCache Off',
    '\t}',
    // Unicast UDP to the peer: no multicast group to join on the sync link, and nothing reaches a third host.
    '\tUDP {',
    `\t\tIPv4_address ${o.syncLocal}`,
    `\t\tIPv4_Destination_Address ${o.syncPeer}`,
    `\t\tPort ${o.syncPort ?? CONNTRACKD_DEFAULT_PORT}`,
    `\t\tInterface ${o.syncIf}`,
    '\t\tChecksum on',
    '\t}',
    '}',
    'General {',
    // tunnat writes no systemd unit of type notify; with it on, conntrackd waits for a watchdog that never comes.
    '\tSystemd off',
    `\tHashSize ${o.hashSize ?? 32768}`,
    `\tHashLimit ${o.limit ?? 524288}`,
    ...(o.logFile ? [`\tLogFile ${o.logFile}`, '\tSyslog off'] : ['\tLogFile off', '\tSyslog on']),
    // Paths of this pair's own: a distribution's conntrackd (or another pair in another namespace) uses the defaults.
    `\tLockFile ${o.lockFile}`,
    '\tUNIX {',
    `\t\tPath ${o.socketPath}`,
    '\t}',
    // Events come from the kernel over netlink; a burst (a SYN flood, a table flush) overruns the default
    // ~200 KiB buffer and events are lost. Start at 2 MiB, let conntrackd double it up to 8 MiB, and when
    // events are lost anyway resynchronise with the kernel table (after 30 s) instead of replicating less.
    '\tNetlinkBufferSize 2097152',
    '\tNetlinkBufferSizeMaxGrowth 8388608',
    '\tNetlinkOverrunResync on',
    // Filtered in conntrackd, not by a kernel socket filter: it works on any kernel, and the same rules
    // then apply to events and to the table dumps of a resync.
    '\tFilter From Userspace {',
    '\t\tProtocol Accept {',
    '\t\t\tTCP',
    '\t\t\tUDP',
    '\t\t\tICMP',
    '\t\t}',
    // conntrackd matches these against a flow's original source and its reply source: a forwarded LAN flow
    // (original source a LAN host, reply source a server) passes even though its reply goes to the public
    // VIP; the gateway's own connections, from or to these addresses, are left out.
    '\t\tAddress Ignore {',
    ...ignore.map((a) => `\t\t\tIPv4_address ${a}`),
    '\t\t}',
    '\t}',
    '}',
    '',
  ].join('\n');
}

function shQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/**
 * keepalived's notify script for the pair: keepalived runs it with `master`, `backup` or `fault` when the
 * sync group changes state. The steps are conntrackd's own primary-backup recipe (its documentation's
 * primary-backup.sh), each logged to syslog (keepalived throws a notify script's output away) and stderr.
 */
export function haNotifyScript(o: { conntrackd: string; conf: string }): string {
  checkPath('conntrackd', o.conntrackd);
  checkPath('conf', o.conf);
  return `#!/bin/sh
# keepalived notify script of a tunnat kernel-engine pair (written by tunnat kernel apply --ha):
#   notify_master "<this> master", notify_backup "<this> backup", notify_fault "<this> fault".
# It hands the kernel's connection tracking state over through conntrackd.
CONNTRACKD=${shQuote(o.conntrackd)}
CONF=${shQuote(o.conf)}
STATE=\${1:-}
FAILED=0

log() {
\techo "tunnat-ha: $*" >&2
\tif command -v logger >/dev/null 2>&1; then logger -t tunnat-ha -- "$*" || :; fi
}

# step WHAT FLAG: one conntrackd request through its socket; a failure is logged and the next step still runs.
step() {
\twhat=$1
\tshift
\tif out=$("$CONNTRACKD" -C "$CONF" "$@" 2>&1); then
\t\tlog "$STATE: $what (conntrackd $*): done"
\telse
\t\trc=$?
\t\tlog "$STATE: $what (conntrackd $*) failed with status $rc: $(printf '%s' "$out" | tr '\\n' ' ')"
\t\tFAILED=1
\tfi
}

case "$STATE" in
master | backup | fault) ;;
*)
\techo "usage: $0 master|backup|fault" >&2
\texit 2
\t;;
esac

# Exit 0 when the daemon is not there: keepalived would otherwise log a failed script on every transition,
# and there is nothing to hand over. Say so, since the pair then replicates nothing.
if ! "$CONNTRACKD" -C "$CONF" -s >/dev/null 2>&1; then
\tlog "$STATE: conntrackd is not running (no answer on the socket of $CONF): no flow state handed over; start it with $CONNTRACKD -C $CONF -d"
\texit 0
fi

case "$STATE" in
master)
\t# The other gateway's entries, kept outside the kernel until now, become this kernel's flows.
\tstep "commit the external cache into the kernel" -c
\t# Both caches start over: what is now in the kernel is this gateway's own state.
\tstep "flush the internal and external caches" -f
\tstep "resynchronise the internal cache with the kernel table" -R
\t# The peer (now backup) gets the whole table at once rather than entry by entry as flows change.
\tstep "send a bulk update to the peer" -B
\t;;
backup)
\t# Entries this gateway tracked as master would live on as zombies: expire them after PurgeTimeout.
\tstep "shorten the kernel timers of the entries this gateway had" -t
\t# Ask the master for its whole table, so that this gateway can take over again.
\tstep "request a resynchronisation from the peer" -n
\t;;
fault)
\tstep "shorten the kernel timers of the entries this gateway had" -t
\t;;
esac
exit $FAILED
`;
}

/** keepalived's settings that the kernel pair takes as given (the rest is fixed by writeKernelHaFiles). */
export type KernelKeepalivedOptions = Omit<KeepalivedOptions, 'notify' | 'trackInterface' | 'checkScript'>;

export interface KernelHaFilesOptions {
  conntrackd: ConntrackdOptions;
  keepalived: KernelKeepalivedOptions;
  /** conntrackd's binary (default /usr/sbin/conntrackd). */
  conntrackdBin?: string;
}

export interface KernelHaFiles {
  conntrackdConf: string;
  notifyScript: string;
  keepalivedConf: string;
}

export const KERNEL_HA_FILE_NAMES = { conntrackdConf: 'conntrackd.conf', notifyScript: 'tunnat-ha-notify', keepalivedConf: 'keepalived.conf' } as const;

/** The three files' contents for `dir`, without writing anything (what `kernel plan --ha` prints). */
export function kernelHaFiles(dir: string, o: KernelHaFilesOptions): { paths: KernelHaFiles; texts: KernelHaFiles } {
  checkPath('dir', dir);
  const bin = o.conntrackdBin ?? '/usr/sbin/conntrackd';
  const paths: KernelHaFiles = {
    conntrackdConf: join(dir, KERNEL_HA_FILE_NAMES.conntrackdConf),
    notifyScript: join(dir, KERNEL_HA_FILE_NAMES.notifyScript),
    keepalivedConf: join(dir, KERNEL_HA_FILE_NAMES.keepalivedConf),
  };
  const texts: KernelHaFiles = {
    conntrackdConf: conntrackdConf(o.conntrackd),
    notifyScript: haNotifyScript({ conntrackd: bin, conf: paths.conntrackdConf }),
    keepalivedConf: keepalivedConf({
      ...o.keepalived,
      // Nothing of tunnat's runs to be tracked: the kernel translates.
      trackInterface: null,
      // `conntrackd -s` exits 0 while the daemon answers on its socket, 1 when it does not: a gateway whose
      // conntrackd died can neither receive the flows nor hand them over, so it should not be the one
      // holding the addresses (checked with conntrack-tools 1.4.7).
      checkScript: `${bin} -C ${paths.conntrackdConf} -s`,
      notify: { master: `${paths.notifyScript} master`, backup: `${paths.notifyScript} backup`, fault: `${paths.notifyScript} fault` },
    }),
  };
  return { paths, texts };
}

/**
 * Directories of `path` that a user other than root could write to. keepalived with
 * `enable_script_security` refuses to run a script when the script or a directory above it could be
 * replaced by someone else (who would then have keepalived run their script as root). Its rule, followed
 * here: not owned by root, or writable by others or by a group other than root's — a directory with the
 * sticky bit (/tmp) excepted, since there others cannot rename or delete what is not theirs.
 */
function unsafeDirs(path: string): string[] {
  const out: string[] = [];
  for (let d = dirname(path); ; d = dirname(d)) {
    try {
      const st = statSync(d);
      const writable = (st.mode & 0o002) !== 0 || (st.gid !== 0 && (st.mode & 0o020) !== 0);
      if (st.uid !== 0 || (writable && (st.mode & 0o1000) === 0)) out.push(`${d} (owner uid ${st.uid}, mode ${(st.mode & 0o7777).toString(8)})`);
    } catch {
      // not there (yet): nothing to judge
    }
    if (d === dirname(d)) break;
  }
  return out;
}

/**
 * Write conntrackd.conf, the notify script (mode 0755) and keepalived.conf into `dir` (created 0755 when
 * missing), owned by the caller. Returns their paths, and warnings about what keepalived's script
 * security will refuse (a directory on the way writable by others, files not owned by root).
 */
export function writeKernelHaFiles(dir: string, o: KernelHaFilesOptions): KernelHaFiles & { warnings: string[] } {
  const { paths, texts } = kernelHaFiles(dir, o);
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const write = (path: string, text: string, mode: number): void => {
    writeFileSync(path, text, { mode });
    // The mode of writeFileSync applies only to a new file (and through the umask): set it exactly.
    chmodSync(path, mode);
  };
  write(paths.conntrackdConf, texts.conntrackdConf, 0o644);
  write(paths.notifyScript, texts.notifyScript, 0o755);
  write(paths.keepalivedConf, texts.keepalivedConf, 0o644);
  const warnings: string[] = [];
  const unsafe = unsafeDirs(paths.notifyScript);
  if (unsafe.length > 0) {
    warnings.push(
      `keepalived (enable_script_security) will refuse to run ${paths.notifyScript}: writable by a user other than root, or not root's: ${unsafe.join(', ')}`,
    );
  }
  if (statSync(paths.notifyScript).uid !== 0) {
    warnings.push(`${paths.notifyScript} is not owned by root: keepalived (enable_script_security) runs only root's scripts as root`);
  }
  return { ...paths, warnings };
}
