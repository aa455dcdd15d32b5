import { readFileSync } from 'node:fs';
import type { RouterConfig } from '../config/config.js';
import { findBinary, output, runTool, type RunResult } from '../host/commands.js';
import { listIpv4Addresses } from '../host/ip-json.js';
import { inCidr, ipToString, parseCidr } from '../wire/addr.js';
import { KernelNatError, NOTHING_CHANGED } from './errors.js';
import {
  hasNftTable,
  iptablesConflicts,
  iptablesOwnObjects,
  nftConflicts,
  parseIptablesSave,
  parseNftJson,
  type Conflict,
} from './inspect.js';
import { IPT_OWN_CHAINS, NFT_FAMILY, NFT_TABLE, type KernelBackend, type KernelPlan, type PlanEnv } from './plan.js';

/**
 * What the kernel engine needs to know of the host before it changes anything: which tools are
 * installed and which backend to use, the addresses the plan depends on, what the firewall holds
 * now (tunnat's own objects, rules that would compete with its NAT), and the tools' errors in
 * words that say what to do.
 */

// ---------------------------------------------------------------------------------------------
// Binaries

/** Where a tool comes from, for the message when it is missing. */
export const PACKAGE_HINTS: Record<string, string> = {
  nft: 'the nftables package (Debian/Ubuntu: apt install nftables; RHEL: dnf install nftables)',
  'iptables-restore': 'the iptables package (Debian/Ubuntu: apt install iptables; RHEL: dnf install iptables-nft)',
  'iptables-save': 'the iptables package (Debian/Ubuntu: apt install iptables; RHEL: dnf install iptables-nft)',
  'iptables-legacy-save': 'the iptables package',
  conntrack: 'the conntrack tool (Debian/Ubuntu: apt install conntrack; RHEL: dnf install conntrack-tools)',
  ip: 'iproute2',
};

// Non-root shells often lack the sbin directories, where all of these live.

export function requireBinary(name: string): string {
  const p = findBinary(name);
  if (!p) throw new KernelNatError('NO_BINARY', `\`${name}\` is not installed: install ${PACKAGE_HINTS[name] ?? name}. ${NOTHING_CHANGED}`);
  return p;
}


// ---------------------------------------------------------------------------------------------
// Backend choice and host facts

export interface BackendChoice {
  backend: KernelBackend;
  /** Why this one, for the log and the plan's header. */
  reason: string;
  /** Which kernel interface `iptables` drives; null for nft. */
  iptablesVariant: 'nf_tables' | 'legacy' | null;
}

export async function iptablesVariant(): Promise<'nf_tables' | 'legacy'> {
  const r = await runTool(['iptables-save', '--version']);
  return /nf_tables/.test(r.stdout + r.stderr) ? 'nf_tables' : 'legacy';
}

/**
 * `auto`: nft when the binary exists and the kernel speaks nf_tables, else iptables. A permission
 * error still counts as working (plan runs without root; apply reports the permission itself).
 */
export async function chooseBackend(pref: 'auto' | KernelBackend): Promise<BackendChoice> {
  if (pref === 'nft') {
    requireBinary('nft');
    return { backend: 'nft', reason: '--backend nft', iptablesVariant: null };
  }
  if (pref === 'iptables') {
    requireBinary('iptables-restore');
    requireBinary('iptables-save');
    return { backend: 'iptables', reason: '--backend iptables', iptablesVariant: await iptablesVariant() };
  }
  let nftProblem = '`nft` is not installed';
  if (findBinary('nft')) {
    const r = await runTool(['nft', 'list', 'tables']);
    if (r.exitCode === 0 || /Operation not permitted/.test(r.stderr)) {
      return { backend: 'nft', reason: 'auto: nft is installed and the kernel has nf_tables', iptablesVariant: null };
    }
    nftProblem = `\`nft list tables\` failed: ${output(r)}`;
  }
  if (findBinary('iptables-restore') && findBinary('iptables-save')) {
    return { backend: 'iptables', reason: `auto: ${nftProblem}, so iptables`, iptablesVariant: await iptablesVariant() };
  }
  throw new KernelNatError(
    'NO_BINARY',
    `neither nft nor iptables can be used (${nftProblem}; iptables-restore is not installed): install ${PACKAGE_HINTS['nft']} or ${PACKAGE_HINTS['iptables-restore']}. ${NOTHING_CHANGED}`,
  );
}



/** The host facts the plan needs (whether --external exists is src/host/preflight.ts's check). */
export async function probeEnv(cfg: RouterConfig): Promise<PlanEnv> {
  const links = await listIpv4Addresses();
  const ext = links.find((l) => l.ifname === cfg.external);
  if (cfg.publicIp === null) return {};
  const pub = cfg.publicIp;
  const publicIpOwned = links.some((l) => l.addrs.some((a) => a.local === pub));
  const publicIpOnLink = (ext?.addrs ?? []).some((a) => {
    const c = parseCidr(`${ipToString(a.local)}/${a.prefixlen}`);
    return c !== null && a.prefixlen < 32 && inCidr(pub, c);
  });
  return { publicIpOwned, publicIpOnLink };
}

// ---------------------------------------------------------------------------------------------
// Reading the firewall

export async function nftRuleset(): Promise<ReturnType<typeof parseNftJson> | null> {
  if (!findBinary('nft')) return null;
  const r = await runTool(['nft', '-j', 'list', 'ruleset']);
  if (r.exitCode !== 0) {
    if (/Operation not permitted/.test(r.stderr)) {
      throw new KernelNatError('PERMISSION', `nft: ${output(r)}: kernel NAT needs root (CAP_NET_ADMIN). ${NOTHING_CHANGED}`);
    }
    return null;
  }
  return parseNftJson(r.stdout);
}

export async function iptablesTables(tool: 'iptables-save' | 'iptables-legacy-save' = 'iptables-save', counters = false): Promise<{ text: string; tables: ReturnType<typeof parseIptablesSave> } | null> {
  if (!findBinary(tool)) return null;
  const r = await runTool([tool, ...(counters ? ['-c'] : [])]);
  if (r.exitCode !== 0) {
    if (/Permission denied|Operation not permitted/.test(r.stderr)) {
      throw new KernelNatError('PERMISSION', `${tool}: ${output(r)}: kernel NAT needs root (CAP_NET_ADMIN). ${NOTHING_CHANGED}`);
    }
    throw new KernelNatError('APPLY_FAILED', `${tool} failed: ${output(r)}`);
  }
  return { text: r.stdout, tables: parseIptablesSave(r.stdout) };
}

/** Which iptables-legacy tables this namespace has instantiated (reading this does not create any). */
export function legacyTableNames(): string[] {
  try {
    return readFileSync('/proc/net/ip_tables_names', 'utf8').split('\n').filter((l) => l.trim() !== '');
  } catch {
    // No ip_tables in this kernel: no legacy tables either.
    return [];
  }
}

export interface OwnObjects {
  nftTable: boolean;
  iptables: { table: string; chain: string; from: string; exists: boolean; jumps: number }[];
  any: boolean;
}

/** tunnat's own objects that exist right now (both backends' kinds). */
export async function findOwnObjects(): Promise<OwnObjects> {
  const rs = await nftRuleset();
  const nftTable = rs ? hasNftTable(rs, NFT_FAMILY, NFT_TABLE) : false;
  const ipt = findBinary('iptables-save') ? await iptablesTables() : null;
  const iptables = ipt ? iptablesOwnObjects(ipt.tables) : [];
  return { nftTable, iptables, any: nftTable || iptables.some((o) => o.exists || o.jumps > 0) };
}

export function describeOwn(o: OwnObjects): string {
  const parts: string[] = [];
  if (o.nftTable) parts.push(`nft table ${NFT_FAMILY} ${NFT_TABLE}`);
  for (const c of o.iptables) {
    if (c.exists) parts.push(`iptables chain ${c.chain} (table ${c.table})`);
    else if (c.jumps) parts.push(`iptables jump ${c.from} -j ${c.chain} (table ${c.table})`);
  }
  return parts.join(', ');
}

export async function findConflicts(plan: KernelPlan): Promise<Conflict[]> {
  const internal = plan.internal.map((s) => parseCidr(s)!);
  const out: Conflict[] = [];
  const rs = await nftRuleset();
  if (rs) out.push(...nftConflicts(rs, internal, plan.external));
  // iptables-nft rules are visible to nft above; iptables-legacy keeps its own tables.
  if (legacyTableNames().includes('nat') && findBinary('iptables-legacy-save')) {
    const legacy = await iptablesTables('iptables-legacy-save');
    if (legacy) out.push(...iptablesConflicts(legacy.tables, internal, plan.external, 'iptables-legacy'));
  }
  if (!rs && plan.backend === 'iptables') {
    const ipt = await iptablesTables();
    if (ipt) out.push(...iptablesConflicts(ipt.tables, internal, plan.external, 'iptables'));
  }
  return out;
}

export async function iptablesNftSnapshot(): Promise<{ tables: string[]; chains: string[] } | null> {
  const rs = await nftRuleset();
  if (!rs) return null;
  const names: string[] = IPT_OWN_CHAINS.map((c) => c.table);
  return {
    tables: rs.tables.filter((t) => t.family === 'ip' && names.includes(t.name)).map((t) => t.name),
    chains: rs.chains.filter((c) => c.family === 'ip' && names.includes(c.table)).map((c) => `${c.table} ${c.name}`),
  };
}

// ---------------------------------------------------------------------------------------------
// Errors from the tools, in words that say what to do

export function classifyToolError(backend: KernelBackend, r: RunResult): KernelNatError {
  const msg = output(r);
  if (/Operation not permitted|Permission denied|you must be root/i.test(msg)) {
    return new KernelNatError('PERMISSION', `${backend}: ${msg}: kernel NAT needs root (CAP_NET_ADMIN)`);
  }
  if (backend === 'nft') {
    if (/File exists/.test(msg)) {
      return new KernelNatError('ALREADY_RUNNING', `table ${NFT_FAMILY} ${NFT_TABLE} appeared while tunnat was applying its own: another instance is starting here`);
    }
    if (/(No such file or directory|Operation not supported|Protocol not supported)/.test(msg)) {
      return new KernelNatError(
        'NO_KERNEL_NAT',
        `the kernel refused tunnat's nftables NAT (${msg.split('\n')[0]}): it lacks nf_tables NAT support. ` +
          'Load the modules (modprobe nf_tables nft_chain_nat nft_nat nft_masq nft_ct) or use a kernel built with ' +
          'CONFIG_NF_TABLES, CONFIG_NFT_NAT, CONFIG_NFT_MASQ and CONFIG_NFT_CT; or try --backend iptables',
      );
    }
  } else {
    if (/Table does not exist|can't initialize iptables table|do you need to insmod|No chain\/target\/match|Couldn't load (target|match)|Extension .* revision 0 not supported/.test(msg)) {
      return new KernelNatError(
        'NO_KERNEL_NAT',
        `the kernel refused tunnat's iptables NAT (${msg.split('\n')[0]}): it lacks NAT support. ` +
          'Load the modules (iptables-nft: modprobe nft_chain_nat nft_compat xt_MASQUERADE xt_conntrack; ' +
          'iptables-legacy: modprobe iptable_nat xt_MASQUERADE xt_conntrack) or try --backend nft',
      );
    }
    if (/xtables lock/.test(msg)) return new KernelNatError('APPLY_FAILED', `another iptables command holds the xtables lock: ${msg}`);
  }
  return new KernelNatError('APPLY_FAILED', `${backend === 'nft' ? 'nft -f' : 'iptables-restore'} failed: ${msg}`);
}
