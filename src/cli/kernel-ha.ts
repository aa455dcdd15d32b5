import { ConfigError, type RouterConfig } from '../config/config.js';
import { HA_NEEDS_SNAT } from '../kernel/plan.js';
import { kernelHaFiles, type KernelHaFiles, type KernelHaFilesOptions } from '../kernel/ha.js';
import { ipToString, parseCidr, parseIpv4 } from '../wire/addr.js';
import { KERNEL_HA_FLAGS } from './verbs.js';

/**
 * `tunnat kernel plan|apply --ha DIR …`: the --ha flags of the kernel verb, turned into the options of
 * src/kernel/ha.ts. One command per gateway sets up its NAT for the pair and writes the daemons' files.
 */

/** Where this pair's conntrackd listens and locks: /run exists at boot, and these are not the defaults a distribution's conntrackd uses. */
export const HA_SOCKET = '/run/tunnat-conntrackd.ctl';
export const HA_LOCK = '/run/tunnat-conntrackd.lock';

export interface KernelHaSetup {
  dir: string;
  options: KernelHaFilesOptions;
}

type HaFlagName = keyof typeof KERNEL_HA_FLAGS;

/** Split the --ha flags (as parseArgs gives them) from the router flags. */
export function splitHaFlags(values: Record<string, unknown>): { ha: Partial<Record<HaFlagName, string>>; rest: Record<string, unknown> } {
  const ha: Partial<Record<HaFlagName, string>> = {};
  const rest: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(values)) {
    if (k in KERNEL_HA_FLAGS) ha[k as HaFlagName] = v as string;
    else rest[k] = v;
  }
  return { ha, rest };
}

function int(flag: string, v: string | undefined, dflt: number, min: number, max: number): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!/^\d+$/.test(v) || n < min || n > max) throw new ConfigError(flag, `expected an integer in ${min}..${max}, got ${JSON.stringify(v)}`);
  return n;
}

/** The pair's settings from the flags; null without --ha. Bad or missing flags are ConfigErrors (exit 2). */
export function resolveKernelHa(ha: Partial<Record<HaFlagName, string>>, cfg: RouterConfig): KernelHaSetup | null {
  const given = Object.keys(ha).filter((k) => k !== 'ha');
  if (ha.ha === undefined) {
    if (given.length > 0) throw new ConfigError(given[0]!, 'takes effect only with --ha DIR (one gateway of a standby pair)');
    return null;
  }
  if (cfg.publicIp === null) throw new ConfigError('ha', HA_NEEDS_SNAT);
  const need = (f: HaFlagName): string => {
    const v = ha[f];
    if (v === undefined) throw new ConfigError(f, `required with --ha (--${f} ${KERNEL_HA_FLAGS[f].arg})`);
    return v;
  };
  const nodeText = need('ha-node');
  if (nodeText !== '0' && nodeText !== '1') throw new ConfigError('ha-node', `expected 0 or 1, got ${JSON.stringify(nodeText)}`);
  const node = nodeText === '0' ? 0 : 1;
  const publicIp = ipToString(cfg.publicIp);
  const wanVip = ha['ha-wan-vip'] ?? `${publicIp}/32`;
  const wanCidr = parseCidr(wanVip);
  if (!wanCidr) throw new ConfigError('ha-wan-vip', `expected ADDRESS/PREFIX, got ${JSON.stringify(wanVip)}`);
  if (wanVip.slice(0, wanVip.indexOf('/')) !== publicIp) {
    throw new ConfigError('ha-wan-vip', `${wanVip} is not --public-ip ${publicIp}: the pair translates to the address keepalived moves`);
  }
  const lanVip = need('ha-lan-vip');
  if (!parseCidr(lanVip)) throw new ConfigError('ha-lan-vip', `expected ADDRESS/PREFIX, e.g. 192.168.1.1/24, got ${JSON.stringify(lanVip)}`);
  const syncLocal = need('ha-sync-local');
  const syncPeer = need('ha-sync-peer');
  for (const [f, v] of [['ha-sync-local', syncLocal], ['ha-sync-peer', syncPeer]] as const) {
    if (parseIpv4(v) === null) throw new ConfigError(f, `expected an IPv4 address, got ${JSON.stringify(v)}`);
  }
  if (syncLocal === syncPeer) throw new ConfigError('ha-sync-peer', `is --ha-sync-local ${syncLocal}: give the other gateway's address`);
  const dir = ha.ha;
  if (!dir.startsWith('/')) throw new ConfigError('ha', `expected an absolute directory (keepalived runs the notify script by its full path), got ${JSON.stringify(dir)}`);
  return {
    dir: dir.length > 1 ? dir.replace(/\/+$/, '') : dir,
    options: {
      conntrackd: {
        node,
        syncIf: need('ha-sync-if'),
        syncLocal,
        syncPeer,
        socketPath: HA_SOCKET,
        lockFile: HA_LOCK,
        logFile: null,
        // The gateway's own addresses that the flags name: the two VIPs (the sync addresses are added by conntrackdConf).
        ignore: [lanVip.slice(0, lanVip.indexOf('/')), publicIp],
        // conntrackd.conf(5): twice the kernel's table, since the caches keep dead entries for retransmission.
        limit: Math.min(2 * cfg.maxFlows, 1 << 26),
      },
      keepalived: {
        name: `tunnat-node${node}`,
        lanIf: need('ha-lan-if'),
        wanIf: cfg.external,
        lanVip,
        wanVip,
        vrid: int('ha-vrid', ha['ha-vrid'], 51, 1, 253),
        priority: int('ha-priority', ha['ha-priority'], node === 0 ? 150 : 100, 1, 254),
      },
    },
  };
}

/** What `kernel plan --ha` prints after the NAT recipe: each file as apply would write it. */
export function formatHaFiles(setup: KernelHaSetup): string {
  const { paths, texts } = kernelHaFiles(setup.dir, setup.options);
  const out = [
    `# --ha: tunnat kernel apply writes these files into ${setup.dir} (plan writes nothing):`,
    '',
  ];
  const modes: Record<keyof KernelHaFiles, string> = { conntrackdConf: '0644', notifyScript: '0755', keepalivedConf: '0644' };
  for (const k of ['conntrackdConf', 'notifyScript', 'keepalivedConf'] as const) {
    out.push(`# ==> ${paths[k]} (mode ${modes[k]}) <==`, texts[k].replace(/\n$/, ''), '');
  }
  out.push(haNextSteps(paths));
  return out.join('\n');
}

/** How to start the pair's daemons once the files exist. */
export function haNextSteps(paths: KernelHaFiles): string {
  return [
    '# Then, on this gateway (the other one the same way, with its own --ha-node and its sync addresses swapped):',
    `#   conntrackd -C ${paths.conntrackdConf} -d`,
    `#   keepalived -f ${paths.keepalivedConf}     (or point keepalived.service at it)`,
    `# keepalived runs ${paths.notifyScript} master|backup|fault on each transition; it and its directories must`,
    '# stay root\'s and not writable by others (enable_script_security). The sync link must be dedicated to the',
    '# two gateways: conntrackd\'s sync messages carry no authentication.',
    '',
  ].join('\n');
}
