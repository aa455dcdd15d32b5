import { parseCidr } from '../wire/addr.js';

/**
 * keepalived's configuration for one gateway of a pair (`tunnat ha keepalived-conf`). keepalived, not
 * tunnat, moves the addresses: one VRRP instance holds the LAN's gateway address, one the public address,
 * and a sync group makes them move together (a gateway holding only one of the two forwards nothing
 * useful). Both instances start as BACKUP with `nopreempt`, so a gateway that comes back never takes the
 * addresses from the one that took over: its flows would break a second time.
 *
 * What makes a gateway give the addresses up:
 * - `track_interface` on tunnat's TUN. A TUN has carrier only while a process has a queue of it open, so
 *   the moment tunnat exits or is killed, the kernel reports the link down, keepalived enters FAULT and
 *   sends an advertisement with priority 0, and the peer takes over within one skew time (tens of ms).
 * - a `vrrp_script` that asks tunnat whether its data plane answers (`tunnat ha check`), for a process
 *   that is alive but stuck: slower (`fall` × `interval`), but it catches what carrier cannot.
 * - losing the peer's advertisements (the other gateway, or its links, gone): after three intervals.
 */
export interface KeepalivedOptions {
  /** Names this gateway in keepalived's log (`router_id`). */
  name: string;
  lanIf: string;
  wanIf: string;
  /** The LAN hosts' gateway address, with its prefix length: `192.168.1.1/24`. */
  lanVip: string;
  /** The public address the pair translates to, with its prefix length: `203.0.113.1/24`. */
  wanVip: string;
  /** VRRP router id of the LAN instance; the WAN instance uses vrid + 1. 1..254. */
  vrid: number;
  /** 1..254; the higher one is MASTER when both start together. */
  priority: number;
  /** Advertisement interval in milliseconds (VRRPv3 allows centiseconds): 100 gives a takeover in about 0.35 s. */
  advertMs?: number;
  /** tunnat's TUN: its carrier is tunnat being alive. null: nothing tracked (the kernel engine). */
  trackInterface: string | null;
  /** The health check's command line, absolute path first; null: none. */
  checkScript: string | null;
  /** Seconds between health checks (default 1). */
  checkIntervalS?: number;
  /** Unicast advertisements instead of multicast (where the links do not carry 224.0.0.18). */
  unicast?: { lanSrc: string; lanPeer: string; wanSrc: string; wanPeer: string };
  /** Scripts keepalived runs on a transition of the pair (the kernel engine's conntrackd hand-over). */
  notify?: { master: string; backup: string; fault: string };
  /** Take the addresses back when this gateway is the better one (default false: no preemption). */
  preempt?: boolean;
}

export class KeepalivedConfError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'KeepalivedConfError';
  }
}

const IFNAME = /^[A-Za-z0-9_.:-]{1,15}$/;
const NAME = /^[A-Za-z0-9_.-]{1,64}$/;

function check(o: KeepalivedOptions): void {
  const bad = (m: string): never => {
    throw new KeepalivedConfError(m);
  };
  if (!NAME.test(o.name)) bad(`name ${JSON.stringify(o.name)}: use letters, digits, '.', '_' or '-'`);
  for (const [what, v] of [['LAN interface', o.lanIf], ['WAN interface', o.wanIf], ['tracked interface', o.trackInterface ?? 'x']] as const) {
    if (!IFNAME.test(v)) bad(`${what} ${JSON.stringify(v)} is not an interface name`);
  }
  if (o.lanIf === o.wanIf) bad('the LAN and WAN interfaces are the same');
  for (const [what, v] of [['LAN address', o.lanVip], ['public address', o.wanVip]] as const) {
    const c = parseCidr(v);
    if (!c || !v.includes('/')) bad(`${what} ${JSON.stringify(v)} must be ADDRESS/PREFIX, e.g. 192.168.1.1/24`);
  }
  if (!Number.isInteger(o.vrid) || o.vrid < 1 || o.vrid > 254) bad(`VRRP id ${o.vrid} must be 1..254 (the WAN instance takes id + 1)`);
  if (!Number.isInteger(o.priority) || o.priority < 1 || o.priority > 254) bad(`priority ${o.priority} must be 1..254`);
  const adv = o.advertMs ?? 100;
  if (!Number.isInteger(adv) || adv < 10 || adv > 40950 || adv % 10 !== 0) bad(`advertisement interval ${adv} ms must be a multiple of 10 from 10 to 40950`);
  const iv = o.checkIntervalS ?? 1;
  if (!Number.isInteger(iv) || iv < 1 || iv > 3600) bad(`health check interval ${iv} s must be 1..3600`);
  for (const s of [o.checkScript, o.notify?.master, o.notify?.backup, o.notify?.fault]) {
    if (s === undefined || s === null) continue;
    if (!s.startsWith('/') || /["\n\\]/.test(s)) bad(`script ${JSON.stringify(s)} must start with an absolute path and hold no quote, backslash or newline`);
  }
  if (o.unicast) {
    for (const a of Object.values(o.unicast)) if (!parseCidr(`${a}/32`)) bad(`unicast address ${JSON.stringify(a)} is not an IPv4 address`);
  }
}

function instance(o: KeepalivedOptions, side: 'lan' | 'wan'): string[] {
  const iface = side === 'lan' ? o.lanIf : o.wanIf;
  const vip = side === 'lan' ? o.lanVip : o.wanVip;
  const lines = [
    `vrrp_instance tunnat_${side} {`,
    '  state BACKUP',
    `  interface ${iface}`,
    `  virtual_router_id ${side === 'lan' ? o.vrid : o.vrid + 1}`,
    `  priority ${o.priority}`,
    `  advert_int ${((o.advertMs ?? 100) / 1000).toFixed(2)}`,
  ];
  if (!o.preempt) lines.push('  nopreempt');
  if (o.unicast) {
    const [src, peer] = side === 'lan' ? [o.unicast.lanSrc, o.unicast.lanPeer] : [o.unicast.wanSrc, o.unicast.wanPeer];
    lines.push(`  unicast_src_ip ${src}`, `  unicast_peer {`, `    ${peer}`, '  }');
  }
  lines.push('  virtual_ipaddress {', `    ${vip} dev ${iface}`, '  }');
  if (o.trackInterface) lines.push('  track_interface {', `    ${o.trackInterface}`, '  }');
  if (o.checkScript) lines.push('  track_script {', '    tunnat_alive', '  }');
  lines.push('}');
  return lines;
}

export function keepalivedConf(o: KeepalivedOptions): string {
  check(o);
  const out = [
    `# keepalived configuration for ${o.name}, one gateway of a tunnat pair, written by tunnat.`,
    '# Both instances move together (sync group); no preemption unless asked for; see docs/ha.md.',
    'global_defs {',
    `  router_id ${o.name}`,
    '  vrrp_version 3',
    // The TUN is created and removed with tunnat: keepalived must accept an interface that comes and goes.
    '  dynamic_interfaces',
    '  script_user root',
    '  enable_script_security',
    '}',
    '',
  ];
  if (o.checkScript) {
    out.push(
      'vrrp_script tunnat_alive {',
      `  script "${o.checkScript}"`,
      `  interval ${o.checkIntervalS ?? 1}`,
      `  timeout ${Math.max(1, o.checkIntervalS ?? 1)}`,
      '  fall 2',
      '  rise 2',
      '}',
      '',
    );
  }
  out.push('vrrp_sync_group tunnat {', '  group {', '    tunnat_lan', '    tunnat_wan', '  }');
  if (o.notify) {
    out.push(`  notify_master "${o.notify.master}"`, `  notify_backup "${o.notify.backup}"`, `  notify_fault "${o.notify.fault}"`);
  }
  out.push('}', '', ...instance(o, 'lan'), '', ...instance(o, 'wan'), '');
  return out.join('\n');
}
