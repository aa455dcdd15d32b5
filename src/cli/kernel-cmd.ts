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
import { formatPlan, planKernelNat, sysctlName, NFT_FAMILY, NFT_TABLE, type KernelBackend, type KernelPlan } from '../kernel/plan.js';

/**
 * `tunnat kernel plan|apply|remove`: the kernel engine without a running process.
 * - plan: print the commands, each with a one-line reason (needs no root; changes nothing).
 * - apply: make the set-up and leave it (until `kernel remove` or a reboot), then say how to
 *   keep it across reboots.
 * - remove: undo it from its record (or, with no record, delete only tunnat's own table/chains).
 * Exit codes as `tunnat run`: 0 done, 1 failed, 2 bad usage or configuration.
 */

class UsageError extends Error {}

function parseFlags(args: string[]): Record<string, unknown> {
  let values: Record<string, unknown>;
  try {
    values = parseArgs({ args, options: KERNEL_VERB.flags, strict: true, allowPositionals: false }).values as Record<string, unknown>;
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const { help, ...rest } = values;
  return { ...configFlags(rest), ...(help !== undefined ? { help } : {}) };
}

function backendFlag(flags: Record<string, unknown>): 'auto' | KernelBackend {
  const b = flags['backend'] ?? 'auto';
  if (b !== 'auto' && b !== 'nft' && b !== 'iptables') throw new ConfigError('backend', `expected auto|nft|iptables, got ${JSON.stringify(b)}`);
  return b;
}

const out = (s: string): void => void process.stdout.write(s);
const err = (s: string): void => void process.stderr.write(s);

async function planFor(cfg: RouterConfig, forApply: boolean): Promise<{ plan: KernelPlan; reason: string }> {
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
  return { plan: planKernelNat(cfg, backend, env ?? {}), reason };
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

async function cmdPlan(flags: Record<string, unknown>): Promise<number> {
  const cfg = resolveConfig(flags);
  const { plan, reason } = await planFor(cfg, false);
  out(formatPlan(plan, `tunnat kernel NAT plan — backend ${plan.backend} (${reason})`));
  return 0;
}

async function cmdApply(flags: Record<string, unknown>): Promise<number> {
  const cfg = resolveConfig(flags);
  const log = createLogger(cfg.logLevel);
  const { plan } = await planFor(cfg, true);
  const applied = await applyKernelNat(plan, log, { persistent: true, onStale: 'clean' });
  const v = await verifyKernelNat(applied);
  if (!v.ok) {
    await removeKernelNat(applied, log);
    throw new KernelNatError('VERIFY_FAILED', `the kernel does not hold what tunnat applied (removed again):\n  ${v.problems.join('\n  ')}`);
  }
  out(`tunnat: kernel NAT applied with ${plan.backend}: ${plan.internal.join(', ')} → ${plan.external} (${plan.nat.kind}${plan.nat.address ? ` to ${plan.nat.address}` : ''}).\n`);
  out(`It stays until \`tunnat kernel remove\` or a reboot; the record is ${applied.stateFile}.\n`);
  for (const w of applied.warnings) out(`note: ${w}\n`);
  out('\n' + persistenceInstructions(plan, applied));
  return 0;
}

async function cmdRemove(flags: Record<string, unknown>): Promise<number> {
  backendFlag(flags);
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
    if (flags['help']) {
      out(verbHelp(KERNEL_VERB) + '\n');
      return 0;
    }
    delete flags['help'];
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
    if (e instanceof UsageError || e instanceof ConfigError) {
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
