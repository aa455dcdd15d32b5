import { findBinary, output } from '../host/commands.js';
import { drive, driveSync, saveRecord, undoCtx, undoJournal, type HostStep, type Log, type Undo, type UndoCtx } from '../host/journal.js';
import type { Logger } from '../util/log.js';
import { KernelNatError } from './errors.js';
import { hasNftTable, iptablesOwnObjects, nftChainsOf, parseIptablesSave, parseNftJson } from './inspect.js';
import { IPT_OWN_CHAINS, NFT_FAMILY, NFT_TABLE, iptablesRemoval } from './plan.js';
import type { AppliedKernel } from './record.js';

/**
 * Removing the kernel engine's set-up: the journal (src/host/journal.ts) undoes the record in
 * reverse (forwarding off first, then the other sysctls, the address, and last the ruleset), and
 * this module supplies the undo of the ruleset step. Written as generators of commands, like the
 * rest of the journal, so the async path and the synchronous one (a process 'exit' handler) share
 * every decision.
 */

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
  for (const c of IPT_OWN_CHAINS) {
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

/**
 * The journal's undo of the ruleset step: tunnat's table or chains, the empty built-ins iptables-nft
 * made for them, and the NAT bindings of flows already open.
 */
export function* undoNetfilter(step: Extract<HostStep, { kind: 'netfilter' }>, ctx: UndoCtx): Undo<boolean> {
  const before = ctx.errors.length;
  yield* removeOwnObjectsG(ctx.errors, ctx.log);
  if (step.iptablesNftBefore) yield* removeIptablesNftResidueG(step.iptablesNftBefore, ctx.errors, ctx.log);
  if (ctx.errors.length !== before) return false;
  // NAT bindings live in the conntrack entries, not the rules: without this the kernel would go
  // on translating the flows already open until they time out.
  if (findBinary('conntrack')) {
    for (const prefix of step.internal) {
      const r = yield { argv: ['conntrack', '-D', '--src-nat', '-s', prefix] };
      const n = /(\d+) flow entries have been deleted/.exec(r.stderr + r.stdout);
      if (n && n[1] !== '0') ctx.log(`conntrack -D --src-nat -s ${prefix}: ${n[1]} translated flows forgotten`);
    }
  }
  return true;
}

function removalCtx(log: Log): UndoCtx {
  return undoCtx(log, { undoNetfilter });
}

function startRemoval(applied: AppliedKernel): void {
  applied.phase = 'removing';
  saveRecord(applied);
}

function removalError(applied: AppliedKernel, errors: string[]): KernelNatError {
  return new KernelNatError(
    'REMOVE_FAILED',
    `removing tunnat's kernel NAT failed:\n  ${errors.join('\n  ')}\nThe record ${applied.stateFile} is kept; \`tunnat kernel remove\` retries.`,
  );
}

/** Undo everything recorded: sysctls restored, addresses deleted, tunnat's table/chains deleted. */
export async function removeKernelNat(applied: AppliedKernel, log?: Logger): Promise<void> {
  startRemoval(applied);
  const ctx = removalCtx((m) => log?.debug(m));
  await drive(undoJournal(applied, ctx));
  if (ctx.errors.length) throw removalError(applied, ctx.errors);
}

/** The same, synchronously, for process 'exit' handlers. */
export function removeKernelNatSync(applied: AppliedKernel, log?: Logger): void {
  startRemoval(applied);
  const ctx = removalCtx((m) => log?.debug(m));
  driveSync(undoJournal(applied, ctx));
  if (ctx.errors.length) throw removalError(applied, ctx.errors);
}

/**
 * `tunnat kernel remove` without a record (lost /run, or rules someone recreated): delete only
 * tunnat's own table and chains. Returns what was removed, in words.
 */
export async function removeOwnObjectsWithoutRecord(): Promise<string[]> {
  const done: string[] = [];
  const errors: string[] = [];
  await drive(removeOwnObjectsG(errors, (m) => done.push(m)));
  if (errors.length) throw new KernelNatError('REMOVE_FAILED', `removing tunnat's table and chains failed:\n  ${errors.join('\n  ')}`);
  return done;
}

/** Commands a removal ran, for `tunnat kernel remove` to print. */
export async function removeKernelNatVerbose(applied: AppliedKernel): Promise<string[]> {
  const done: string[] = [];
  startRemoval(applied);
  const ctx = removalCtx((m) => done.push(m));
  await drive(undoJournal(applied, ctx));
  if (ctx.errors.length) throw removalError(applied, ctx.errors);
  return done;
}
