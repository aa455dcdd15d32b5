import { randomBytes } from 'node:crypto';
import { accessSync, closeSync, constants as fsConstants, mkdirSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { RouterConfig } from '../config/config.js';
import {
  STATE_DIR,
  deleteStateFile,
  isProcessAlive,
  netnsInode,
  processStartTime,
  readStateFile,
  writeStateFile,
} from '../dataplane/state-file.js';
import { confKey, ipv4ConfDevices, readSysctl, sameSysctlValue, sysctlExists, writeSysctl } from '../dataplane/sysctl.js';
import { run, runSync, type RunResult } from '../util/exec.js';
import type { Logger } from '../util/log.js';
import { inCidr, ipToString, parseCidr, parseIpv4 } from '../wire/addr.js';
import {
  hasNftTable,
  iptablesConflicts,
  iptablesCounters,
  iptablesOwnObjects,
  nftChainsOf,
  nftConflicts,
  nftOwnCounters,
  parseIptablesSave,
  parseNftJson,
  verifyIptables,
  verifyNftTable,
  type Conflict,
} from './inspect.js';
import {
  IPT_CHAINS,
  NFT_FAMILY,
  NFT_TABLE,
  SYSCTL_CT_MAX,
  SYSCTL_IP_FORWARD,
  iptablesRemoval,
  sysctlName,
  type KernelBackend,
  type KernelPlan,
  type PlanEnv,
} from './plan.js';

/**
 * Applying a kernel NAT plan, verifying it, and removing exactly what was added.
 *
 * The record of what changed (a JSON state file under /run/tunnat, keyed by the network
 * namespace's inode) is written before each change, so a crash at any point leaves an exact list
 * of what to undo. The file is created exclusively: it is also the lock that keeps a second
 * instance in the same namespace from applying over the first.
 */

export type KernelNatErrorCode =
  | 'NO_BINARY'
  | 'NO_KERNEL_NAT'
  | 'NO_EXTERNAL'
  | 'PERMISSION'
  | 'CONFLICT'
  | 'LEFTOVER'
  | 'ALREADY_RUNNING'
  | 'APPLY_FAILED'
  | 'VERIFY_FAILED'
  | 'REMOVE_FAILED';

export class KernelNatError extends Error {
  constructor(
    readonly code: KernelNatErrorCode,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = 'KernelNatError';
  }
}

const NOTHING_CHANGED = 'Nothing was changed.';

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
const EXTRA_PATH = ['/usr/local/sbin', '/usr/sbin', '/sbin'];
const binCache = new Map<string, string | null>();

/** The absolute path of a tool, or null when it is not installed. */
export function findBinary(name: string): string | null {
  const cached = binCache.get(name);
  if (cached !== undefined) return cached;
  const dirs = [...(process.env['PATH'] ?? '').split(':').filter((d) => d !== ''), ...EXTRA_PATH];
  let found: string | null = null;
  for (const d of dirs) {
    try {
      accessSync(join(d, name), fsConstants.X_OK);
      found = join(d, name);
      break;
    } catch {
      // not here
    }
  }
  binCache.set(name, found);
  return found;
}

function requireBinary(name: string): string {
  const p = findBinary(name);
  if (!p) throw new KernelNatError('NO_BINARY', `\`${name}\` is not installed: install ${PACKAGE_HINTS[name] ?? name}. ${NOTHING_CHANGED}`);
  return p;
}

/** A command with its tool resolved to an absolute path (when found). */
function resolve(argv: readonly string[]): string[] {
  const [tool, ...rest] = argv;
  return [findBinary(tool!) ?? tool!, ...rest];
}

function runTool(argv: readonly string[], input?: string): Promise<RunResult> {
  return run(resolve(argv), { allowFail: true, ...(input !== undefined ? { input } : {}) });
}

function runToolSync(argv: readonly string[], input?: string): RunResult {
  return runSync(resolve(argv), { allowFail: true, ...(input !== undefined ? { input } : {}) });
}

function output(r: RunResult): string {
  return (r.stderr.trim() || r.stdout.trim()).split('\n').filter((l) => !/^# Warning:/.test(l)).join('\n');
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

interface AddrInfo {
  ifname: string;
  addrs: { local: number; prefixlen: number }[];
}

async function listIpv4Addresses(): Promise<AddrInfo[]> {
  const r = await runTool(['ip', '-j', '-4', 'addr', 'show']);
  if (r.exitCode !== 0) throw new Error(`ip -j -4 addr show failed: ${output(r)}`);
  const rows = JSON.parse(r.stdout || '[]') as { ifname?: string; addr_info?: { local?: string; prefixlen?: number }[] }[];
  return rows.map((row) => ({
    ifname: row.ifname ?? '',
    addrs: (row.addr_info ?? []).flatMap((a) => {
      const local = typeof a.local === 'string' ? parseIpv4(a.local) : null;
      return local !== null && typeof a.prefixlen === 'number' ? [{ local, prefixlen: a.prefixlen }] : [];
    }),
  }));
}

/** The host facts the plan needs; also checks that --external exists. */
export async function probeEnv(cfg: RouterConfig): Promise<PlanEnv & { externalExists: boolean }> {
  const links = await listIpv4Addresses();
  const ext = links.find((l) => l.ifname === cfg.external);
  const externalExists = ext !== undefined || (await runTool(['ip', 'link', 'show', 'dev', cfg.external])).exitCode === 0;
  if (cfg.publicIp === null) return { externalExists };
  const pub = cfg.publicIp;
  const publicIpOwned = links.some((l) => l.addrs.some((a) => a.local === pub));
  const publicIpOnLink = (ext?.addrs ?? []).some((a) => {
    const c = parseCidr(`${ipToString(a.local)}/${a.prefixlen}`);
    return c !== null && a.prefixlen < 32 && inCidr(pub, c);
  });
  return { externalExists, publicIpOwned, publicIpOnLink };
}

// ---------------------------------------------------------------------------------------------
// The record

export interface SysctlChange {
  /** Path under /proc/sys. */
  key: string;
  old: string;
  value: string;
  /** Sysctls the kernel rewrites along with this one (ip_forward resets every interface's forwarding). */
  sideEffects?: { key: string; old: string }[];
}

export interface AppliedKernel {
  version: 1;
  kind: 'tunnat-kernel-nat';
  /** Random; tells this run's record from a later one at the same path. */
  runId: string;
  /** The process that removes it on exit; null for `tunnat kernel apply` (persistent until `kernel remove`). */
  owner: { pid: number; startTime: string | null } | null;
  netnsInode: number;
  stateFile: string;
  createdAt: string;
  iptablesVariant: 'nf_tables' | 'legacy' | null;
  plan: KernelPlan;
  phase: 'applying' | 'applied' | 'removing';
  /** 'pending' is written before the tool runs: after a crash the rules may or may not be there. */
  ruleset: 'none' | 'pending' | 'applied';
  /** In the order made; undone in reverse. */
  sysctls: SysctlChange[];
  addresses: { address: string; dev: string }[];
  /**
   * iptables-nft creates the built-in chains (and their tables) on first use and never deletes
   * them; what existed before lets removal delete the ones it caused, so `nft list ruleset` and
   * `iptables-save` read as before. Entries are "nat" (tables) and "nat POSTROUTING" (chains).
   */
  iptablesNftBefore: { tables: string[]; chains: string[] } | null;
  warnings: string[];
}

/** tunnat's kernel-engine record for a namespace. Not "<inode>-*.json": those are the userspace engine's. */
export function kernelStatePath(inode: number = netnsInode()): string {
  return join(STATE_DIR, `kernel-${inode}.json`);
}

function isAppliedKernel(v: unknown): v is AppliedKernel {
  const o = v as Partial<AppliedKernel> | null;
  return typeof o === 'object' && o !== null && o.kind === 'tunnat-kernel-nat' && o.version === 1 && typeof o.plan === 'object' && Array.isArray(o.sysctls);
}

export interface ExistingRecord {
  file: string;
  state: AppliedKernel;
  /** The owner process still runs. */
  alive: boolean;
}

/** The record of this namespace, if any; throws LEFTOVER when a file is there but unreadable. */
export function readKernelState(file: string = kernelStatePath()): ExistingRecord | null {
  let data: unknown;
  try {
    data = readStateFile(file);
  } catch (err) {
    throw new KernelNatError('LEFTOVER', `${file} is not a readable tunnat record (${(err as Error).message}); delete it once you have checked the firewall`);
  }
  if (data === null) return null;
  if (!isAppliedKernel(data)) throw new KernelNatError('LEFTOVER', `${file} is not a tunnat kernel-NAT record; delete it once you have checked the firewall`);
  const alive = data.owner !== null && isProcessAlive(data.owner.pid, data.owner.startTime);
  return { file, state: data, alive };
}

function save(a: AppliedKernel): void {
  writeStateFile(a.stateFile, a);
}

/** Create the record only if none exists: the lock against a second instance. */
function createExclusive(a: AppliedKernel): boolean {
  let fd: number;
  try {
    mkdirSync(STATE_DIR, { recursive: true, mode: 0o755 });
    fd = openSync(a.stateFile, 'wx', 0o644);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') return false;
    if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') {
      throw new KernelNatError('PERMISSION', `cannot write tunnat's record under ${STATE_DIR} (${code}): kernel NAT needs root (CAP_NET_ADMIN). ${NOTHING_CHANGED}`);
    }
    throw err;
  }
  try {
    writeSync(fd, JSON.stringify(a, null, 2) + '\n');
  } finally {
    closeSync(fd);
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Reading the firewall

async function nftRuleset(): Promise<ReturnType<typeof parseNftJson> | null> {
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

async function iptablesTables(tool: 'iptables-save' | 'iptables-legacy-save' = 'iptables-save', counters = false): Promise<{ text: string; tables: ReturnType<typeof parseIptablesSave> } | null> {
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
function legacyTableNames(): string[] {
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

function describeOwn(o: OwnObjects): string {
  const parts: string[] = [];
  if (o.nftTable) parts.push(`nft table ${NFT_FAMILY} ${NFT_TABLE}`);
  for (const c of o.iptables) {
    if (c.exists) parts.push(`iptables chain ${c.chain} (table ${c.table})`);
    else if (c.jumps) parts.push(`iptables jump ${c.from} -j ${c.chain} (table ${c.table})`);
  }
  return parts.join(', ');
}

async function findConflicts(plan: KernelPlan): Promise<Conflict[]> {
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

async function iptablesNftSnapshot(): Promise<{ tables: string[]; chains: string[] } | null> {
  const rs = await nftRuleset();
  if (!rs) return null;
  const names = IPT_CHAINS.map((c) => c.table);
  return {
    tables: rs.tables.filter((t) => t.family === 'ip' && names.includes(t.name as 'nat' | 'filter')).map((t) => t.name),
    chains: rs.chains.filter((c) => c.family === 'ip' && names.includes(c.table as 'nat' | 'filter')).map((c) => `${c.table} ${c.name}`),
  };
}

// ---------------------------------------------------------------------------------------------
// Errors from the tools, in words that say what to do

function classifyToolError(backend: KernelBackend, r: RunResult): KernelNatError {
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

// ---------------------------------------------------------------------------------------------
// Apply

export interface ApplyOptions {
  /** True for `tunnat kernel apply`: no process owns the set-up; `tunnat kernel remove` undoes it. */
  persistent?: boolean;
  /**
   * What to do with the record of an owner that died without cleaning up (SIGKILL, power cut of a
   * container): 'clean' undoes it from its record and carries on; 'refuse' stops with the command.
   */
  onStale?: 'clean' | 'refuse';
}

function sysctlSideEffects(key: string): string[] {
  if (key !== SYSCTL_IP_FORWARD) return [];
  // devinet.c, inet_forward_change: writing ip_forward rewrites these too.
  return [confKey('all', 'accept_redirects'), confKey('default', 'forwarding'), ...ipv4ConfDevices().map((d) => confKey(d, 'forwarding'))];
}

function isReadOnlyError(err: unknown): boolean {
  const code = ((err as Error).cause as NodeJS.ErrnoException | undefined)?.code;
  return code === 'EACCES' || code === 'EPERM' || code === 'EINVAL' || code === 'EROFS';
}

/**
 * Apply the plan: check (binaries, leftovers, a live owner, conflicting rules, kernel support) with
 * nothing changed yet, then the ruleset, then the sysctls, each recorded before it is made. Any
 * failure undoes what was done and rethrows, leaving the firewall as it was found.
 */
export async function applyKernelNat(plan: KernelPlan, log: Logger, opts: ApplyOptions = {}): Promise<AppliedKernel> {
  const tool = plan.backend === 'nft' ? 'nft' : 'iptables-restore';
  requireBinary(tool);
  if (plan.backend === 'iptables') requireBinary('iptables-save');
  const variant = plan.backend === 'iptables' ? await iptablesVariant() : null;

  const inode = netnsInode();
  const file = kernelStatePath(inode);
  const existing = readKernelState(file);
  if (existing) await handleExisting(existing, log, opts.onStale ?? 'refuse');

  const applied: AppliedKernel = {
    version: 1,
    kind: 'tunnat-kernel-nat',
    runId: randomBytes(8).toString('hex'),
    owner: opts.persistent ? null : { pid: process.pid, startTime: processStartTime(process.pid) },
    netnsInode: inode,
    stateFile: file,
    createdAt: new Date().toISOString(),
    iptablesVariant: variant,
    plan,
    phase: 'applying',
    ruleset: 'none',
    sysctls: [],
    addresses: [],
    iptablesNftBefore: null,
    warnings: [],
  };
  if (!createExclusive(applied)) {
    const now = readKernelState(file);
    const who = now?.state.owner ? `pid ${now.state.owner.pid}` : 'another tunnat';
    throw new KernelNatError('ALREADY_RUNNING', `${who} is applying kernel NAT in this namespace right now (${file}). ${NOTHING_CHANGED}`);
  }

  try {
    await preflight(plan);
    if (variant === 'nf_tables') applied.iptablesNftBefore = await iptablesNftSnapshot();
    if (variant === 'legacy') {
      const have = legacyTableNames();
      const missing = IPT_CHAINS.map((c) => c.table).filter((t) => !have.includes(t));
      if (missing.length) {
        applied.warnings.push(
          `iptables-legacy tables ${missing.join(', ')} are created in this namespace now and cannot be unloaded again: after removal, iptables-save will list them empty`,
        );
      }
    }

    applied.ruleset = 'pending';
    save(applied);
    const r = await runTool(plan.rulesetCmd, plan.ruleset);
    if (r.exitCode !== 0) {
      // An nft transaction is all or nothing, so nothing of it is there to undo (and a table that
      // appeared meanwhile is not ours). iptables commits table by table: nat may be in.
      if (plan.backend === 'nft') applied.ruleset = 'none';
      throw classifyToolError(plan.backend, r);
    }
    applied.ruleset = 'applied';
    save(applied);
    log.debug('ruleset applied', { backend: plan.backend });

    for (const step of plan.steps) {
      const a = step.action;
      if (a.kind === 'address') {
        applied.addresses.push({ address: a.address, dev: a.dev });
        save(applied);
        const ar = await runTool(['ip', 'addr', 'add', `${a.address}/32`, 'dev', a.dev]);
        if (ar.exitCode !== 0) {
          applied.addresses.pop();
          save(applied);
          throw new KernelNatError('APPLY_FAILED', `ip addr add ${a.address}/32 dev ${a.dev} failed: ${output(ar)}`);
        }
      } else if (a.kind === 'sysctl') {
        for (const s of a.settings) applySysctl(applied, s.key, s.value, log);
      }
    }
    applied.phase = 'applied';
    save(applied);
  } catch (err) {
    try {
      await removeKernelNat(applied, log);
    } catch (undoErr) {
      log.error('undoing a failed apply failed too; `tunnat kernel remove` retries from the record', {
        error: (undoErr as Error).message,
        stateFile: file,
      });
    }
    throw err;
  }
  for (const w of applied.warnings) log.warn(w);
  return applied;
}

function applySysctl(applied: AppliedKernel, key: string, value: string, log: Logger): void {
  if (!sysctlExists(key)) {
    throw new KernelNatError(
      'NO_KERNEL_NAT',
      `sysctl ${sysctlName(key)} does not exist: the kernel has no connection tracking loaded (modprobe nf_conntrack, or CONFIG_NF_CONNTRACK)`,
    );
  }
  const old = readSysctl(key);
  if (sameSysctlValue(old, value)) return;
  const sideEffects = sysctlSideEffects(key)
    .filter(sysctlExists)
    .map((k) => ({ key: k, old: readSysctl(k) }));
  const change: SysctlChange = { key, old, value, ...(sideEffects.length ? { sideEffects } : {}) };
  applied.sysctls.push(change);
  save(applied);
  try {
    writeSysctl(key, value);
  } catch (err) {
    applied.sysctls.pop();
    if (key === SYSCTL_CT_MAX && isReadOnlyError(err)) {
      // The table size is global; a namespace other than the host's initial one may only read it.
      const w = `${sysctlName(key)} is ${old} and cannot be changed from this network namespace (it is global: set it on the host); --max-flows ${value} not applied`;
      applied.warnings.push(w);
      save(applied);
      return;
    }
    save(applied);
    throw new KernelNatError('APPLY_FAILED', (err as Error).message, { cause: err });
  }
  log.debug(`sysctl ${sysctlName(key)}=${value}`, { old });
}

async function handleExisting(existing: ExistingRecord, log: Logger, onStale: 'clean' | 'refuse'): Promise<void> {
  const s = existing.state;
  if (existing.alive && s.owner) {
    throw new KernelNatError(
      'ALREADY_RUNNING',
      `tunnat (pid ${s.owner.pid}, ${s.plan.internal.join(',')} → ${s.plan.external}, backend ${s.plan.backend}) already runs kernel NAT in this network namespace; ` +
        `stop it first (one instance per namespace). ${NOTHING_CHANGED}`,
    );
  }
  if (s.owner === null) {
    throw new KernelNatError(
      'LEFTOVER',
      `a persistent kernel NAT set-up from \`tunnat kernel apply\` (${s.createdAt}, ${s.plan.internal.join(',')} → ${s.plan.external}) is in place; ` +
        `remove it with \`tunnat kernel remove\` first. ${NOTHING_CHANGED}`,
    );
  }
  const own = await findOwnObjects();
  if (!own.any) {
    // No table or chain of ours: the record outlived its rules (or describes an earlier namespace
    // that had the same inode). Its sysctls were restored before the rules went, or never changed.
    log.info('forgetting a record whose rules are gone', { stateFile: existing.file, pid: s.owner.pid });
    deleteStateFile(existing.file);
    return;
  }
  if (onStale === 'refuse') {
    throw new KernelNatError(
      'LEFTOVER',
      `tunnat (pid ${s.owner.pid}) exited without removing its kernel NAT (${describeOwn(own)}); remove it with \`tunnat kernel remove\`. ${NOTHING_CHANGED}`,
    );
  }
  log.warn('an earlier tunnat exited without removing its kernel NAT; removing it from its record', {
    pid: s.owner.pid,
    stateFile: existing.file,
    objects: describeOwn(own),
  });
  await removeKernelNat(s, log);
}

async function preflight(plan: KernelPlan): Promise<void> {
  const own = await findOwnObjects();
  if (own.any) {
    throw new KernelNatError(
      'LEFTOVER',
      `tunnat's ${describeOwn(own)}: already present, but no running tunnat owns them ` +
        '(no record under /run/tunnat). Remove them with `tunnat kernel remove` (it deletes only tunnat\'s own table and chains; ' +
        `with no record, sysctls are left as they are). ${NOTHING_CHANGED}`,
    );
  }
  const conflicts = await findConflicts(plan);
  if (conflicts.length) {
    const list = conflicts.map((c) => `  - ${c.where} (${c.what}; see \`${c.show}\`)`).join('\n');
    throw new KernelNatError(
      'CONFLICT',
      `an existing rule already source-NATs traffic from ${plan.internal.join(', ')} leaving ${plan.external}:\n${list}\n` +
        'Netfilter translates a flow once, in the first NAT rule that matches, so tunnat\'s rules would compete with it. ' +
        `Remove that rule (or use another --external/--internal). ${NOTHING_CHANGED}`,
    );
  }
  if (plan.backend === 'nft') {
    // nft -c sends the transaction to the kernel and aborts it: kernel support is tested with no change.
    const r = await runTool(['nft', '-c', '-f', '-'], plan.ruleset);
    if (r.exitCode !== 0) throw classifyToolError('nft', r);
  }
}

// ---------------------------------------------------------------------------------------------
// Verify

export interface VerifyResult {
  ok: boolean;
  problems: string[];
}

/** Read the rules back from the kernel and compare them with the plan. */
export async function verifyKernelNat(applied: AppliedKernel): Promise<VerifyResult> {
  const plan = applied.plan;
  let problems: string[];
  if (plan.backend === 'nft') {
    const r = await runTool(['nft', '-j', 'list', 'table', NFT_FAMILY, NFT_TABLE]);
    problems = r.exitCode === 0 ? verifyNftTable(plan, parseNftJson(r.stdout)) : [`nft list table ${NFT_FAMILY} ${NFT_TABLE}: ${output(r)}`];
  } else {
    const ipt = await iptablesTables();
    problems = ipt ? verifyIptables(plan, ipt.tables) : ['iptables-save is not installed'];
  }
  for (const s of applied.sysctls) {
    if (sysctlExists(s.key) && !sameSysctlValue(readSysctl(s.key), s.value)) problems.push(`sysctl ${sysctlName(s.key)} is ${readSysctl(s.key)}, expected ${s.value}`);
  }
  return { ok: problems.length === 0, problems };
}

/** Packets through tunnat's NAT rules (= flows translated) and its invalid-drop rules. */
export async function readRuleCounters(applied: AppliedKernel): Promise<{ natPackets: number; invalidDrops: number }> {
  if (applied.plan.backend === 'nft') {
    const r = await runTool(['nft', '-j', 'list', 'table', NFT_FAMILY, NFT_TABLE]);
    return r.exitCode === 0 ? nftOwnCounters(parseNftJson(r.stdout)) : { natPackets: 0, invalidDrops: 0 };
  }
  const ipt = await iptablesTables('iptables-save', true);
  if (!ipt) return { natPackets: 0, invalidDrops: 0 };
  const [natChain, filterChain] = IPT_CHAINS;
  const sum = (chain: string) => iptablesCounters(ipt.text, chain).reduce((a, c) => a + c.packets, 0);
  return { natPackets: sum(natChain.chain), invalidDrops: sum(filterChain.chain) };
}

// ---------------------------------------------------------------------------------------------
// Remove: written once as a generator of commands so that the async path and the synchronous one
// (a process 'exit' handler, where the event loop no longer runs) share every decision.

interface Cmd {
  argv: string[];
  input?: string;
}
type Undo<T> = Generator<Cmd, T, RunResult>;

function* iptablesSaveG(): Undo<ReturnType<typeof parseIptablesSave> | null> {
  if (!findBinary('iptables-save')) return null;
  const r = yield { argv: ['iptables-save'] };
  return r.exitCode === 0 ? parseIptablesSave(r.stdout) : null;
}

function* nftRulesetG(): Undo<ReturnType<typeof parseNftJson> | null> {
  if (!findBinary('nft')) return null;
  const r = yield { argv: ['nft', '-j', 'list', 'ruleset'] };
  if (r.exitCode !== 0) return null;
  try {
    return parseNftJson(r.stdout);
  } catch {
    return null;
  }
}

/** Delete tunnat's nft table and iptables jumps/chains, whichever exist. */
function* removeOwnObjectsG(errors: string[], say: (m: string) => void): Undo<void> {
  const rs = yield* nftRulesetG();
  if (rs && hasNftTable(rs, NFT_FAMILY, NFT_TABLE)) {
    const r = yield { argv: ['nft', 'delete', 'table', NFT_FAMILY, NFT_TABLE] };
    if (r.exitCode === 0) say(`nft delete table ${NFT_FAMILY} ${NFT_TABLE}`);
    else errors.push(`nft delete table ${NFT_FAMILY} ${NFT_TABLE}: ${output(r)}`);
  }
  const tables = yield* iptablesSaveG();
  if (tables) {
    const script = iptablesRemoval(iptablesOwnObjects(tables));
    if (script) {
      const r = yield { argv: ['iptables-restore', '-w', '5', '--noflush'], input: script };
      if (r.exitCode === 0) say(`iptables-restore --noflush: ${script.trim().split('\n').filter((l) => l.startsWith('-')).join('; ')}`);
      else errors.push(`iptables-restore (removing tunnat's chains) failed: ${output(r)}`);
    }
  }
}

/** Delete the empty built-in chains and tables that iptables-nft created for tunnat's jumps. */
function* removeIptablesNftResidueG(before: { tables: string[]; chains: string[] }, errors: string[], say: (m: string) => void): Undo<void> {
  const rs = yield* nftRulesetG();
  if (!rs) return;
  for (const c of IPT_CHAINS) {
    if (!hasNftTable(rs, 'ip', c.table)) continue;
    const chains = nftChainsOf(rs, 'ip', c.table);
    const idle = (x: { rules: number; policy: string | undefined; base: boolean }) => x.rules === 0 && x.base && (x.policy ?? 'accept') === 'accept';
    const otherObjects = rs.otherObjects.some((o) => o.family === 'ip' && o.table === c.table);
    let argv: string[] | null = null;
    if (!before.tables.includes(c.table) && !otherObjects && chains.every(idle)) {
      argv = ['nft', 'delete', 'table', 'ip', c.table];
    } else if (!before.chains.includes(`${c.table} ${c.from}`)) {
      const mine = chains.find((x) => x.name === c.from);
      if (mine && idle(mine)) argv = ['nft', 'delete', 'chain', 'ip', c.table, c.from];
    }
    if (!argv) continue;
    const r = yield { argv };
    if (r.exitCode === 0) say(`${argv.join(' ')} (created by iptables-nft for tunnat's jump, empty again)`);
    else errors.push(`${argv.join(' ')}: ${output(r)}`);
  }
}

function restoreSysctls(applied: AppliedKernel, errors: string[], say: (m: string) => void): void {
  for (const s of [...applied.sysctls].reverse()) {
    try {
      if (sysctlExists(s.key)) {
        const now = readSysctl(s.key);
        if (sameSysctlValue(now, s.value)) {
          writeSysctl(s.key, s.old);
          say(`sysctl ${sysctlName(s.key)}=${s.old}`);
          for (const e of s.sideEffects ?? []) {
            if (sysctlExists(e.key) && !sameSysctlValue(readSysctl(e.key), e.old)) writeSysctl(e.key, e.old);
          }
        } else if (!sameSysctlValue(now, s.old)) {
          // Someone set it after tunnat did: theirs to keep.
          say(`sysctl ${sysctlName(s.key)} left at ${now} (changed by someone else since tunnat set ${s.value})`);
        }
      }
      applied.sysctls.splice(applied.sysctls.indexOf(s), 1);
      save(applied);
    } catch (err) {
      errors.push((err as Error).message);
    }
  }
}

function* removeG(applied: AppliedKernel, say: (m: string) => void): Undo<string[]> {
  const errors: string[] = [];
  applied.phase = 'removing';
  save(applied);
  // Forwarding off first (it was turned on last): from here on nothing is forwarded untranslated.
  restoreSysctls(applied, errors, say);
  for (const a of [...applied.addresses].reverse()) {
    const r = yield { argv: ['ip', 'addr', 'del', `${a.address}/32`, 'dev', a.dev] };
    if (r.exitCode === 0) say(`ip addr del ${a.address}/32 dev ${a.dev}`);
    else if (!/Cannot assign requested address|Cannot find device/.test(r.stderr)) {
      errors.push(`ip addr del ${a.address}/32 dev ${a.dev}: ${output(r)}`);
      continue;
    }
    applied.addresses.splice(applied.addresses.indexOf(a), 1);
    save(applied);
  }
  if (applied.ruleset !== 'none') {
    const before = errors.length;
    yield* removeOwnObjectsG(errors, say);
    if (applied.iptablesNftBefore) yield* removeIptablesNftResidueG(applied.iptablesNftBefore, errors, say);
    if (errors.length === before) {
      applied.ruleset = 'none';
      save(applied);
      // NAT bindings live in the conntrack entries, not the rules: without this the kernel would go
      // on translating the flows already open until they time out.
      if (findBinary('conntrack')) {
        for (const prefix of applied.plan.internal) {
          const r = yield { argv: ['conntrack', '-D', '--src-nat', '-s', prefix] };
          const n = /(\d+) flow entries have been deleted/.exec(r.stderr + r.stdout);
          if (n && n[1] !== '0') say(`conntrack -D --src-nat -s ${prefix}: ${n[1]} translated flows forgotten`);
        }
      }
    }
  }
  if (errors.length === 0) deleteStateFile(applied.stateFile);
  return errors;
}

function driveSync<T>(g: Undo<T>): T {
  let step = g.next();
  while (!step.done) step = g.next(runToolSync(step.value.argv, step.value.input));
  return step.value;
}

async function driveAsync<T>(g: Undo<T>): Promise<T> {
  let step = g.next();
  while (!step.done) step = g.next(await runTool(step.value.argv, step.value.input));
  return step.value;
}

function removalError(applied: AppliedKernel, errors: string[]): KernelNatError {
  return new KernelNatError(
    'REMOVE_FAILED',
    `removing tunnat's kernel NAT failed:\n  ${errors.join('\n  ')}\nThe record ${applied.stateFile} is kept; \`tunnat kernel remove\` retries.`,
  );
}

/** Undo everything recorded: sysctls restored, addresses deleted, tunnat's table/chains deleted. */
export async function removeKernelNat(applied: AppliedKernel, log?: Logger): Promise<void> {
  const errors = await driveAsync(removeG(applied, (m) => log?.debug(m)));
  if (errors.length) throw removalError(applied, errors);
}

/** The same, synchronously, for process 'exit' handlers. */
export function removeKernelNatSync(applied: AppliedKernel, log?: Logger): void {
  const errors = driveSync(removeG(applied, (m) => log?.debug(m)));
  if (errors.length) throw removalError(applied, errors);
}

/**
 * `tunnat kernel remove` without a record (lost /run, or rules someone recreated): delete only
 * tunnat's own table and chains. Returns what was removed, in words.
 */
export async function removeOwnObjectsWithoutRecord(): Promise<string[]> {
  const done: string[] = [];
  const errors: string[] = [];
  await driveAsync(removeOwnObjectsG(errors, (m) => done.push(m)));
  if (errors.length) throw new KernelNatError('REMOVE_FAILED', `removing tunnat's table and chains failed:\n  ${errors.join('\n  ')}`);
  return done;
}

/** Commands a removal ran, for `tunnat kernel remove` to print. */
export async function removeKernelNatVerbose(applied: AppliedKernel): Promise<string[]> {
  const done: string[] = [];
  const errors = await driveAsync(removeG(applied, (m) => done.push(m)));
  if (errors.length) throw removalError(applied, errors);
  return done;
}
