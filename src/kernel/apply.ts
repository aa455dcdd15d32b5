import { randomBytes } from 'node:crypto';
import { output, runTool } from '../host/commands.js';
import { Journal } from '../host/journal.js';
import { deleteStateFile, netnsInode, processStartTime } from '../host/state-file.js';
import { readSysctl, sameSysctlValue, sysctlExists } from '../host/sysctl.js';
import type { Logger } from '../util/log.js';
import { KernelNatError, NOTHING_CHANGED } from './errors.js';
import {
  classifyToolError,
  describeOwn,
  findConflicts,
  findOwnObjects,
  iptablesNftSnapshot,
  iptablesTables,
  iptablesVariant,
  legacyTableNames,
  requireBinary,
} from './firewall.js';
import { iptablesCounters, nftOwnCounters, parseNftJson, verifyIptables, verifyNftTable } from './inspect.js';
import { IPT_CHAINS, NFT_FAMILY, NFT_TABLE, SYSCTL_CT_MAX, sysctlName, type KernelPlan } from './plan.js';
import { createExclusive, kernelStatePath, readKernelState, type AppliedKernel, type ExistingRecord } from './record.js';
import { removeKernelNat } from './remove.js';

export { KernelNatError, type KernelNatErrorCode } from './errors.js';
export { chooseBackend, findOwnObjects, iptablesVariant, PACKAGE_HINTS, probeEnv, type BackendChoice, type OwnObjects } from './firewall.js';
export { kernelStatePath, readKernelState, type AppliedKernel, type ExistingRecord } from './record.js';
export { removeKernelNat, removeKernelNatSync, removeKernelNatVerbose, removeOwnObjectsWithoutRecord } from './remove.js';

/**
 * Applying a kernel NAT plan and verifying it. Every change is journalled in the engine's record
 * (record.ts, src/host/journal.ts) before it is made, so a crash at any point leaves an exact list
 * of what to undo (remove.ts). The order fails closed: the NAT rules first, forwarding last (the
 * plan puts ip_forward last, and the journal keeps it at the end so that removal turns it off first).
 */

export interface ApplyOptions {
  /** True for `tunnat kernel apply`: no process owns the set-up; `tunnat kernel remove` undoes it. */
  persistent?: boolean;
  /**
   * What to do with the record of an owner that died without cleaning up (SIGKILL, power cut of a
   * container): 'clean' undoes it from its record and carries on; 'refuse' stops with the command.
   */
  onStale?: 'clean' | 'refuse';
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
    version: 2,
    kind: 'tunnat-kernel-nat',
    runId: randomBytes(8).toString('hex'),
    owner: opts.persistent ? null : { pid: process.pid, startTime: processStartTime(process.pid) },
    netnsInode: inode,
    stateFile: file,
    createdAt: new Date().toISOString(),
    iptablesVariant: variant,
    plan,
    phase: 'applying',
    steps: [],
    warnings: [],
  };
  if (!createExclusive(applied)) {
    const now = readKernelState(file);
    const who = now?.state.owner ? `pid ${now.state.owner.pid}` : 'another tunnat';
    throw new KernelNatError('ALREADY_RUNNING', `${who} is applying kernel NAT in this namespace right now (${file}). ${NOTHING_CHANGED}`);
  }

  const j = new Journal(applied);
  try {
    await preflight(plan);
    const iptablesNftBefore = variant === 'nf_tables' ? await iptablesNftSnapshot() : null;
    if (variant === 'legacy') {
      const have = legacyTableNames();
      const missing = plan.iptablesRules.map((c) => c.table).filter((t) => !have.includes(t));
      if (missing.length) {
        applied.warnings.push(
          `iptables-legacy tables ${missing.join(', ')} are created in this namespace now and cannot be unloaded again: after removal, iptables-save will list them empty`,
        );
      }
    }

    // An nft transaction is all or nothing, so a failed one leaves nothing to undo (and a table
    // that appeared meanwhile is not ours). iptables commits table by table: nat may be in.
    await j.step({ kind: 'netfilter', backend: plan.backend, internal: plan.internal, iptablesNftBefore }, async () => {
      const r = await runTool(plan.rulesetCmd, plan.ruleset);
      if (r.exitCode !== 0) throw classifyToolError(plan.backend, r);
    }, { keepOnFailure: plan.backend === 'iptables' });
    log.debug('ruleset applied', { backend: plan.backend });

    for (const step of plan.steps) {
      const a = step.action;
      if (a.kind === 'address') {
        await j.step({ kind: 'address', address: a.address, dev: a.dev }, async () => {
          const ar = await runTool(['ip', 'addr', 'add', `${a.address}/32`, 'dev', a.dev]);
          if (ar.exitCode !== 0) throw new KernelNatError('APPLY_FAILED', `ip addr add ${a.address}/32 dev ${a.dev} failed: ${output(ar)}`);
        });
      } else if (a.kind === 'sysctl') {
        for (const s of a.settings) {
          if (s.optional && !sysctlExists(s.key)) {
            applied.warnings.push(`sysctl ${sysctlName(s.key)} does not exist (its protocol tracker is not in this kernel): not set`);
            continue;
          }
          await applySysctl(j, applied, s.key, s.value, log);
        }
      }
    }
    applied.phase = 'applied';
    j.save();
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

async function applySysctl(j: Journal, applied: AppliedKernel, key: string, value: string, log: Logger): Promise<void> {
  if (!sysctlExists(key)) {
    throw new KernelNatError(
      'NO_KERNEL_NAT',
      `sysctl ${sysctlName(key)} does not exist: the kernel has no connection tracking loaded (modprobe nf_conntrack, or CONFIG_NF_CONNTRACK)`,
    );
  }
  const old = readSysctl(key);
  try {
    await j.sysctl(key, value);
  } catch (err) {
    if (key === SYSCTL_CT_MAX && isReadOnlyError(err)) {
      // The table size is global; a namespace other than the host's initial one may only read it.
      const w = `${sysctlName(key)} is ${old} and cannot be changed from this network namespace (it is global: set it on the host); --max-flows ${value} not applied`;
      applied.warnings.push(w);
      j.save();
      return;
    }
    throw new KernelNatError('APPLY_FAILED', (err as Error).message, { cause: err });
  }
  if (!sameSysctlValue(old, value)) log.debug(`sysctl ${sysctlName(key)}=${value}`, { old });
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
  for (const s of applied.steps) {
    if (s.kind !== 'sysctl') continue;
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
