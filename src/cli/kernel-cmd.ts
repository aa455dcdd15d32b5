import { configFlags } from './router-flags.js';
import { verbHelp } from './flags.js';
import { KERNEL_VERB } from './verbs.js';
import { parseArgs } from 'node:util';
import { ConfigError, type RouterConfig } from '../config/config.js';
import { resolveConfig } from '../config/resolve.js';
import { createLogger } from '../util/log.js';
import {
  applyKernelNat,
  chooseBackend,
  findOwnObjects,
  KernelNatError,
  probeEnv,
  readKernelState,
  removeKernelNat,
  removeKernelNatVerbose,
  removeOwnObjectsWithoutRecord,
  verifyKernelNat,
  type AppliedKernel,
} from '../kernel/apply.js';
import { preflight } from '../host/preflight.js';
import { formatPlan, planKernelNat, sysctlName, NFT_FAMILY, NFT_TABLE, type KernelBackend, type KernelPlan, type KernelPlanOptions } from '../kernel/plan.js';
import { kernelHaFiles, KernelHaError, writeKernelHaFiles } from '../kernel/ha.js';
import { KeepalivedConfError } from '../ha/keepalived.js';
import { formatHaFiles, haNextSteps, resolveKernelHa, splitHaFlags } from './kernel-ha.js';

/**
 * `tunnat kernel plan|apply|remove`: the kernel engine without a running process.
 * - plan: print the commands, each with a one-line reason (needs no root; changes nothing).
 * - apply: make the set-up and leave it (until `kernel remove` or a reboot), then say how to
 *   keep it across reboots.
 * - remove: undo it from its record (or, with no record, delete only tunnat's own table/chains).
 * Exit codes as `tunnat run`: 0 done, 1 failed, 2 bad usage or configuration.
 */

class UsageError extends Error {}

interface KernelFlags {
  /** The router flags as resolveConfig takes them. */
  flags: Record<string, unknown>;
  /** --ha and the --ha-* flags, as given. */
  ha: ReturnType<typeof splitHaFlags>['ha'];
  help: boolean;
}

function parseFlags(args: string[]): KernelFlags {
  let values: Record<string, unknown>;
  try {
    values = parseArgs({ args, options: KERNEL_VERB.flags, strict: true, allowPositionals: false }).values as Record<string, unknown>;
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const { help, ...others } = values;
  const { ha, rest } = splitHaFlags(others);
  return { flags: configFlags(rest), ha, help: help === true };
}

function backendFlag(flags: Record<string, unknown>): 'auto' | KernelBackend {
  const b = flags['backend'] ?? 'auto';
  if (b !== 'auto' && b !== 'nft' && b !== 'iptables') throw new ConfigError('backend', `expected auto|nft|iptables, got ${JSON.stringify(b)}`);
  return b;
}

const out = (s: string): void => void process.stdout.write(s);
const err = (s: string): void => void process.stderr.write(s);

async function planFor(cfg: RouterConfig, forApply: boolean, opts: KernelPlanOptions = {}): Promise<{ plan: KernelPlan; reason: string }> {
  let backend: KernelBackend;
  let reason: string;
  try {
    const c = await chooseBackend(cfg.backend);
    backend = c.backend;
    reason = c.reason;
  } catch (e) {
    // The teaching view works on any machine; only apply needs the tools.
    if (forApply || !(e instanceof KernelNatError)) throw e;
    backend = cfg.backend === 'iptables' ? 'iptables' : 'nft';
    reason = `${e.message.split(':')[0]} (showing the ${backend} recipe anyway)`;
  }
  // What a start would refuse, plan refuses too; only a missing interface is a warning for plan, which
  // may be read on another machine than the gateway.
  for (const w of await preflight(cfg, { forAnotherHost: !forApply })) err(`tunnat: warning: ${w}\n`);
  let env: Awaited<ReturnType<typeof probeEnv>> | null = null;
  try {
    env = await probeEnv(cfg);
  } catch (e) {
    if (forApply) throw e;
  }
  return { plan: planKernelNat(cfg, backend, env ?? {}, opts), reason };
}

/** How to make an applied set-up survive a reboot, for this plan's backend. */
export function persistenceInstructions(plan: KernelPlan, applied: AppliedKernel | null): string {
  const sysctls = plan.steps.flatMap((s) => (s.action.kind === 'sysctl' ? s.action.settings : []));
  const skipped = new Set((applied?.warnings ?? []).flatMap((w) => sysctls.filter((s) => w.startsWith(sysctlName(s.key))).map((s) => s.key)));
  const lines = sysctls.filter((s) => !skipped.has(s.key)).map((s) => `      ${sysctlName(s.key)} = ${s.value}`);
  const text = [
    'To keep it across reboots (tunnat\'s record under /run does not survive one; docs/kernel.md has the details):',
    '',
    '  1. Sysctls, any distribution: put these lines in /etc/sysctl.d/90-tunnat.conf',
    ...lines,
    '     and "nf_conntrack" in /etc/modules-load.d/tunnat.conf, so the net.netfilter keys exist when',
    '     systemd-sysctl applies the file at boot.',
    '',
  ];
  if (plan.backend === 'nft') {
    text.push(
      `  2. Rules: nft list table ${NFT_FAMILY} ${NFT_TABLE} > /etc/nftables-tunnat.nft, then`,
      '     Debian/Ubuntu: add  include "/etc/nftables-tunnat.nft"  to /etc/nftables.conf; systemctl enable nftables',
      '     RHEL/Fedora:   add  include "/etc/nftables-tunnat.nft"  to /etc/sysconfig/nftables.conf; systemctl enable nftables',
      '     (with firewalld running, its chains also judge forwarded traffic: see docs/kernel.md)',
    );
  } else {
    text.push(
      '  2. Rules (this saves the whole current iptables ruleset, tunnat\'s chains included):',
      '     Debian/Ubuntu: apt install iptables-persistent; netfilter-persistent save   (→ /etc/iptables/rules.v4)',
      '     RHEL/Fedora:   dnf install iptables-services; systemctl enable iptables; service iptables save   (→ /etc/sysconfig/iptables)',
      '     (with firewalld running, its chains also judge forwarded traffic: see docs/kernel.md)',
    );
  }
  text.push(
    '',
    'After a reboot there is no record: `tunnat kernel remove` then deletes only tunnat\'s table/chains, and the',
    'sysctl.d and modules-load.d files are yours to delete.',
  );
  return text.join('\n') + '\n';
}

async function cmdPlan(k: KernelFlags): Promise<number> {
  const cfg = resolveConfig(k.flags);
  const ha = resolveKernelHa(k.ha, cfg);
  // The files first: a setting they refuse is bad usage, before any host is probed.
  const haText = ha ? formatHaFiles(ha) : '';
  const { plan, reason } = await planFor(cfg, false, { ha: ha !== null });
  const pair = ha ? `, node ${ha.options.conntrackd.node} of a standby pair` : '';
  out(formatPlan(plan, `tunnat kernel NAT plan — backend ${plan.backend} (${reason})${pair}`));
  if (ha) out('\n' + haText);
  return 0;
}

async function cmdApply(k: KernelFlags): Promise<number> {
  const cfg = resolveConfig(k.flags);
  const ha = resolveKernelHa(k.ha, cfg);
  if (ha) kernelHaFiles(ha.dir, ha.options); // refuses bad settings before anything is changed
  const log = createLogger(cfg.logLevel);
  const { plan } = await planFor(cfg, true, { ha: ha !== null });
  // The pair's files are written before the NAT is applied: a directory that cannot be written stops here
  // with nothing changed on the host.
  const files = ha ? writeKernelHaFiles(ha.dir, ha.options) : null;
  let applied: AppliedKernel;
  try {
    applied = await applyKernelNat(plan, log, { persistent: true, onStale: 'clean' });
  } catch (e) {
    if (files) err(`tunnat: the --ha files in ${ha!.dir} were written, but the kernel NAT was not applied:\n`);
    throw e;
  }
  const v = await verifyKernelNat(applied);
  if (!v.ok) {
    await removeKernelNat(applied, log);
    throw new KernelNatError('VERIFY_FAILED', `the kernel does not hold what tunnat applied (removed again):\n  ${v.problems.join('\n  ')}`);
  }
  out(`tunnat: kernel NAT applied with ${plan.backend}: ${plan.internal.join(', ')} → ${plan.external} (${plan.nat.kind}${plan.nat.address ? ` to ${plan.nat.address}` : ''}).\n`);
  out(`It stays until \`tunnat kernel remove\` or a reboot; the record is ${applied.stateFile}.\n`);
  for (const w of applied.warnings) out(`note: ${w}\n`);
  if (files) {
    out(`\ntunnat: wrote ${files.conntrackdConf}, ${files.notifyScript} and ${files.keepalivedConf}.\n`);
    for (const w of files.warnings) out(`warning: ${w}\n`);
    out(haNextSteps(files).replace(/^# ?/gm, ''));
  }
  out('\n' + persistenceInstructions(plan, applied));
  return 0;
}

async function cmdRemove(k: KernelFlags): Promise<number> {
  backendFlag(k.flags);
  const rec = readKernelState();
  if (rec) {
    if (rec.alive && rec.state.owner) {
      throw new KernelNatError(
        'ALREADY_RUNNING',
        `tunnat pid ${rec.state.owner.pid} runs this kernel NAT and removes it when it stops: stop that process (kill -TERM ${rec.state.owner.pid}) instead`,
      );
    }
    const done = await removeKernelNatVerbose(rec.state);
    for (const d of done) out(`${d}\n`);
    out(`tunnat: kernel NAT removed (record ${rec.file}).\n`);
    return 0;
  }
  const own = await findOwnObjects();
  if (!own.any) {
    out('tunnat: no kernel NAT of tunnat\'s in this network namespace; nothing to remove.\n');
    return 0;
  }
  const done = await removeOwnObjectsWithoutRecord();
  for (const d of done) out(`${d}\n`);
  out('tunnat: removed tunnat\'s table and chains. No record of the sysctls\' old values existed, so ip_forward and the conntrack settings are left as they are.\n');
  return 0;
}

export async function cmdKernel(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  try {
    if (sub === undefined || sub === 'help' || sub === '--help' || sub === '-h') {
      out(verbHelp(KERNEL_VERB) + '\n');
      return sub === undefined ? 2 : 0;
    }
    const flags = parseFlags(rest);
    if (flags.help) {
      out(verbHelp(KERNEL_VERB) + '\n');
      return 0;
    }
    switch (sub) {
      case 'plan':
        return await cmdPlan(flags);
      case 'apply':
        return await cmdApply(flags);
      case 'remove':
        return await cmdRemove(flags);
      default:
        throw new UsageError(`unknown kernel command ${JSON.stringify(sub)} (plan, apply or remove)`);
    }
  } catch (e) {
    if (e instanceof UsageError || e instanceof ConfigError || e instanceof KernelHaError || e instanceof KeepalivedConfError) {
      err(`tunnat: ${e.message}\n(see \`tunnat kernel help\`)\n`);
      return 2;
    }
    if (e instanceof KernelNatError) {
      err(`tunnat: ${e.message}\n`);
      return 1;
    }
    err(`tunnat: ${(e as Error).message}\n`);
    return 1;
  }
}
