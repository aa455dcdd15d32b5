import { cmdText, failure, hostRunner, isGone, type Cmd, type RunResult, type Runner } from './commands.js';
import { linkFromJson, parseJsonArray, TABLE_LOCAL } from './ip-json.js';
import { deleteStateFile, writeStateFile } from './state-file.js';
import { dotted, IP_FORWARD, ipForwardSideEffects, isForwardingKey, procSysctls, sameSysctlValue, type SysctlStore } from './sysctl.js';

/**
 * The journal of every change tunnat makes on the host, for both engines (the userspace one's
 * routing and the kernel one's netfilter set-up), and the one way of undoing it.
 *
 * - A step is written to the state file BEFORE its change is made, so a crash at any instant
 *   leaves a record of everything that may exist. A change that fails is struck out again.
 * - Undo runs in reverse. Each undone step is struck and the file saved at once, so a crash during
 *   removal also leaves an exact record; a step whose undo fails stays listed and the rest goes on.
 *   A thing already gone (its device vanished, someone deleted it) counts as undone.
 * - Forwarding switches (ip_forward, conf.<dev>.forwarding) always stay at the END of the record:
 *   they are made last on the way in, and reverse order turns them off first on the way out. While
 *   forwarding is off the gateway routes nothing, so every instant in which the rules that divert
 *   LAN traffic into tunnat (or the NAT rules) are missing fails closed. Steps added later (a moved
 *   public address, a TUN kept for restart) go in before them.
 * - The undo plans are generators of commands, so the async driver and the synchronous one (a
 *   process 'exit' handler, where the event loop no longer runs) share every decision, and a test
 *   can drive them with a fake runner and a fake sysctl store.
 *
 * The sysctl restore rule: on undo, a sysctl goes back to its old value only while it still holds
 * the value tunnat wrote. If someone changed it since, theirs is the newer intent: it is left as it
 * is, and the log says so. Writing ip_forward makes the kernel rewrite every interface's forwarding
 * and all.accept_redirects; those side effects follow the same rule: each goes back to its old value
 * if it still holds what tunnat's write made of it, and one someone changed since is written back
 * to their value after ip_forward is restored (the kernel's rewrite would otherwise clobber it).
 */

export type Log = (msg: string) => void;
export const quiet: Log = () => {};

export interface SysctlStep {
  kind: 'sysctl';
  /** Path under /proc/sys. */
  key: string;
  old: string;
  value: string;
  /**
   * Sysctls the kernel rewrote as a consequence (ip_forward resets every interface's forwarding):
   * their value before, and (`set`) the value tunnat's write left them with.
   */
  sideEffects?: { key: string; old: string; set?: string }[];
}

/** One journalled change, with what is needed to undo it. */
export type HostStep =
  | SysctlStep
  | { kind: 'link'; dev: string; wasUp: boolean; oldMtu: number; mtu?: number }
  /** Arguments of `ip route add`, reused for `ip route del`. */
  | { kind: 'route'; args: string[] }
  /** Arguments of `ip rule add`, reused for `ip rule del`; `inbound` marks a rule that names the public address. */
  | { kind: 'rule'; args: string[]; inbound?: boolean }
  /** The pref-0 `lookup local` rule was deleted (a later-preference copy was added before). */
  | { kind: 'local-rule-moved' }
  | { kind: 'proxy-neigh'; address: string; dev: string }
  /** The TUN was made persistent for a restart; undone by deleting the device. */
  | { kind: 'tun-persist'; dev: string }
  /** `ip addr add <address>/32 dev <dev>`. */
  | { kind: 'address'; address: string; dev: string }
  /**
   * The kernel engine's NAT ruleset (tunnat's nft table, or its iptables chains and jumps). Its undo
   * belongs to the kernel engine, which hands it to the journal as UndoCtx.undoNetfilter.
   */
  | {
      kind: 'netfilter';
      backend: 'nft' | 'iptables';
      /** LAN prefixes, whose translated conntrack entries are forgotten with the rules. */
      internal: string[];
      /** iptables-nft: built-in tables and chains that existed before (see kernel/remove.ts). */
      iptablesNftBefore: { tables: string[]; chains: string[] } | null;
    };

/** What the journal needs of a record: where it is saved, and the steps. */
export interface JournalRecord {
  stateFile: string;
  steps: HostStep[];
}

export function saveRecord(record: JournalRecord): void {
  writeStateFile(record.stateFile, record);
}

function isForwarding(step: HostStep): boolean {
  return step.kind === 'sysctl' && isForwardingKey(step.key);
}

export class Journal {
  constructor(
    readonly record: JournalRecord,
    private readonly sysctls: SysctlStore = procSysctls,
  ) {}

  save(): void {
    saveRecord(this.record);
  }

  /** Add a step to the record (before the trailing forwarding switches, unless it is one) and save. */
  add(step: HostStep): void {
    const steps = this.record.steps;
    let at = steps.length;
    if (!isForwarding(step)) while (at > 0 && isForwarding(steps[at - 1]!)) at--;
    steps.splice(at, 0, step);
    this.save();
  }

  /** Strike a step (a change that failed, or one undone) and save. */
  strike(step: HostStep): void {
    const i = this.record.steps.lastIndexOf(step);
    if (i >= 0) this.record.steps.splice(i, 1);
    this.save();
  }

  /**
   * Record the step, then make the change; a change that fails is struck again, unless it may have
   * taken effect in part (`keepOnFailure`: then undo finds out).
   */
  async step(step: HostStep, change: () => unknown, opts: { keepOnFailure?: boolean } = {}): Promise<void> {
    this.add(step);
    try {
      await change();
    } catch (err) {
      if (opts.keepOnFailure !== true) this.strike(step);
      throw err;
    }
  }

  /** Set a sysctl, journalled with its old value (nothing is recorded when it already holds `value`). */
  async sysctl(key: string, value: string): Promise<void> {
    const s = this.sysctls;
    const old = s.read(key);
    if (sameSysctlValue(old, value)) return;
    const sideEffects = key === IP_FORWARD ? ipForwardSideEffects(s).filter((k) => s.exists(k)).map((k) => ({ key: k, old: s.read(k) })) : [];
    const step: SysctlStep = { kind: 'sysctl', key, old, value, ...(sideEffects.length > 0 ? { sideEffects } : {}) };
    await this.step(step, () => s.write(key, value));
    if (sideEffects.length > 0) {
      // What the kernel made of them, so that undo can tell a later change by someone else.
      for (const e of step.sideEffects!) if (s.exists(e.key)) e.set = s.read(e.key);
      this.save();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Undo

export type Undo<T> = Generator<Cmd, T, RunResult>;

export interface UndoCtx {
  /** What could not be undone, in words; the steps concerned stay in the record. */
  errors: string[];
  log: Log;
  sysctls: SysctlStore;
  /** The kernel engine's undo of its ruleset (host/ knows the step, not the tools). */
  undoNetfilter?: (step: Extract<HostStep, { kind: 'netfilter' }>, ctx: UndoCtx) => Undo<boolean>;
}

export function undoCtx(log: Log = quiet, more: Partial<Omit<UndoCtx, 'errors' | 'log'>> = {}): UndoCtx {
  return { errors: [], log, sysctls: procSysctls, ...more };
}

const plain = (v: string): string => v.split(/\s+/).join(' ');

/** Put a sysctl back by the restore rule (see the module comment); true when nothing is left to do. */
export function restoreSysctl(step: SysctlStep, ctx: UndoCtx): boolean {
  const s = ctx.sysctls;
  try {
    // Per-interface sysctls vanish with their interface; nothing is left to restore.
    if (!s.exists(step.key)) return true;
    const now = s.read(step.key);
    if (!sameSysctlValue(now, step.value)) {
      if (!sameSysctlValue(now, step.old)) {
        ctx.log(`sysctl ${dotted(step.key)} left at ${plain(now)}: changed by someone else since tunnat set ${plain(step.value)}`);
      }
      return true;
    }
    // Read the side effects before the write below rewrites them: one that no longer holds what
    // tunnat's write made of it was changed by someone else, and gets their value back.
    const effects = (step.sideEffects ?? [])
      .filter((e) => s.exists(e.key))
      .map((e) => {
        const cur = s.read(e.key);
        const theirs = e.set !== undefined && !sameSysctlValue(cur, e.set);
        return { key: e.key, target: theirs ? cur : e.old, theirs };
      });
    s.write(step.key, step.old);
    ctx.log(`restored sysctl ${dotted(step.key)}=${plain(step.old)}`);
    for (const e of effects) {
      if (!sameSysctlValue(s.read(e.key), e.target)) s.write(e.key, e.target);
      if (e.theirs) ctx.log(`sysctl ${dotted(e.key)} kept at ${plain(e.target)}: changed by someone else since`);
    }
    return true;
  } catch (err) {
    ctx.errors.push((err as Error).message);
    return false;
  }
}

/** Run a deletion; an object already gone counts as deleted. */
export function* deleteUnlessGone(argv: string[], ctx: UndoCtx): Undo<boolean> {
  const r = yield { argv };
  if (r.exitCode === 0) ctx.log(cmdText(argv));
  else if (!isGone(r.stderr)) {
    ctx.errors.push(failure(argv, r));
    return false;
  }
  return true;
}

function* undoLink(step: Extract<HostStep, { kind: 'link' }>, ctx: UndoCtx): Undo<boolean> {
  const show = ['ip', '-j', 'link', 'show', 'dev', step.dev];
  const r = yield { argv: show };
  if (r.exitCode !== 0) {
    if (isGone(r.stderr)) return true;
    ctx.errors.push(failure(show, r));
    return false;
  }
  const now = linkFromJson(r.stdout);
  if (now === null) return true;
  const argv = ['ip', 'link', 'set', 'dev', step.dev];
  if (step.mtu !== undefined && now.mtu !== step.oldMtu) argv.push('mtu', String(step.oldMtu));
  if (!step.wasUp && now.up) argv.push('down');
  if (argv.length === 5) return true;
  const s = yield { argv };
  if (s.exitCode !== 0 && !isGone(s.stderr)) {
    ctx.errors.push(failure(argv, s));
    return false;
  }
  ctx.log(cmdText(argv));
  return true;
}

/**
 * Put the kernel's pref-0 local rule back before the later copy goes (undo runs in reverse), so
 * that local delivery never stops.
 */
function* undoLocalRuleMoved(ctx: UndoCtx): Undo<boolean> {
  const show = ['ip', '-N', '-j', 'rule', 'show', 'pref', '0'];
  const r = yield { argv: show };
  if (r.exitCode !== 0) {
    ctx.errors.push(failure(show, r));
    return false;
  }
  let present: boolean;
  try {
    present = parseJsonArray(r.stdout, 'ip rule show pref 0').some((o) => o['table'] === String(TABLE_LOCAL));
  } catch (err) {
    ctx.errors.push((err as Error).message);
    return false;
  }
  if (present) return true;
  const argv = ['ip', 'rule', 'add', 'pref', '0', 'lookup', 'local'];
  const a = yield { argv };
  if (a.exitCode !== 0 && !/File exists/.test(a.stderr)) {
    ctx.errors.push(failure(argv, a));
    return false;
  }
  ctx.log(cmdText(argv));
  return true;
}

/** Undo one step; true when it is undone (or was gone already). */
export function* undoStep(step: HostStep, ctx: UndoCtx): Undo<boolean> {
  switch (step.kind) {
    case 'sysctl':
      return restoreSysctl(step, ctx);
    case 'tun-persist':
      return yield* deleteUnlessGone(['ip', 'link', 'del', 'dev', step.dev], ctx);
    case 'link':
      return yield* undoLink(step, ctx);
    case 'route':
    case 'rule':
      return yield* deleteUnlessGone(['ip', step.kind, 'del', ...step.args], ctx);
    case 'local-rule-moved':
      return yield* undoLocalRuleMoved(ctx);
    case 'proxy-neigh':
      return yield* deleteUnlessGone(['ip', 'neigh', 'del', 'proxy', step.address, 'dev', step.dev], ctx);
    case 'address':
      return yield* deleteUnlessGone(['ip', 'addr', 'del', `${step.address}/32`, 'dev', step.dev], ctx);
    case 'netfilter':
      if (ctx.undoNetfilter) return yield* ctx.undoNetfilter(step, ctx);
      ctx.errors.push(`no undo for tunnat's ${step.backend} ruleset here: remove it with \`tunnat kernel remove\``);
      return false;
  }
}

/**
 * Undo the record in reverse, striking each step from the state file once it is undone. Steps
 * that fail stay listed; when none failed, the state file goes.
 */
export function* undoJournal(record: JournalRecord, ctx: UndoCtx): Undo<void> {
  for (let i = record.steps.length - 1; i >= 0; i--) {
    const done = yield* undoStep(record.steps[i]!, ctx);
    if (!done) continue;
    record.steps.splice(i, 1);
    try {
      saveRecord(record);
    } catch (err) {
      ctx.errors.push(`cannot update ${record.stateFile}: ${(err as Error).message}`);
    }
  }
  if (ctx.errors.length === 0) deleteStateFile(record.stateFile);
}

export async function drive<T>(gen: Undo<T>, runner: Runner = hostRunner): Promise<T> {
  let next = gen.next();
  while (!next.done) next = gen.next(await runner.run(next.value));
  return next.value;
}

export function driveSync<T>(gen: Undo<T>, runner: Runner = hostRunner): T {
  let next = gen.next();
  while (!next.done) next = gen.next(runner.runSync(next.value));
  return next.value;
}
