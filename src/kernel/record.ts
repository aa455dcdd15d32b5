import { closeSync, mkdirSync, openSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { HostStep, SysctlStep } from '../host/journal.js';
import { STATE_DIR, isProcessAlive, netnsInode, readStateFile } from '../host/state-file.js';
import { KernelNatError, NOTHING_CHANGED } from './errors.js';
import type { KernelPlan } from './plan.js';

/**
 * The kernel engine's record (a JSON state file under /run/tunnat, keyed by the network namespace's
 * inode): its plan and the journal of what it changed (src/host/journal.ts). The file is created
 * exclusively: it is also the lock that keeps a second instance in the same namespace from
 * applying over the first.
 */

export interface AppliedKernel {
  version: 2;
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
  /** The journal: the ruleset, then addresses, then sysctls with forwarding last; undone in reverse. */
  steps: HostStep[];
  warnings: string[];
}

/** Version 1 kept the ruleset, addresses and sysctls in fields of their own, made in that order. */
interface AppliedKernelV1 extends Omit<AppliedKernel, 'version' | 'steps'> {
  version: 1;
  ruleset: 'none' | 'pending' | 'applied';
  sysctls: Omit<SysctlStep, 'kind'>[];
  addresses: { address: string; dev: string }[];
  iptablesNftBefore: { tables: string[]; chains: string[] } | null;
}

function fromVersion1(o: AppliedKernelV1): AppliedKernel {
  const { ruleset, sysctls, addresses, iptablesNftBefore, version: _, ...rest } = o;
  const steps: HostStep[] = [];
  if (ruleset !== 'none') steps.push({ kind: 'netfilter', backend: o.plan.backend, internal: o.plan.internal, iptablesNftBefore });
  for (const a of addresses) steps.push({ kind: 'address', ...a });
  for (const s of sysctls) steps.push({ kind: 'sysctl', ...s });
  return { ...rest, version: 2, steps };
}

/** tunnat's kernel-engine record for a namespace. Not "<inode>-*.json": those are the userspace engine's. */
export function kernelStatePath(inode: number = netnsInode()): string {
  return join(STATE_DIR, `kernel-${inode}.json`);
}

function asAppliedKernel(v: unknown): AppliedKernel | null {
  const o = v as Partial<AppliedKernel> | Partial<AppliedKernelV1> | null;
  if (typeof o !== 'object' || o === null || o.kind !== 'tunnat-kernel-nat' || typeof o.plan !== 'object') return null;
  if (o.version === 2 && Array.isArray(o.steps)) return o as AppliedKernel;
  if (o.version === 1 && Array.isArray(o.sysctls) && Array.isArray(o.addresses)) return fromVersion1(o as AppliedKernelV1);
  return null;
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
  const state = asAppliedKernel(data);
  if (state === null) throw new KernelNatError('LEFTOVER', `${file} is not a tunnat kernel-NAT record; delete it once you have checked the firewall`);
  const alive = state.owner !== null && isProcessAlive(state.owner.pid, state.owner.startTime);
  return { file, state, alive };
}

/** Create the record only if none exists: the lock against a second instance. */
export function createExclusive(a: AppliedKernel): boolean {
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
