import { cmdText, failure, isGone, runTool } from '../host/commands.js';
import { drive, quiet, undoCtx, undoJournal, type Log } from '../host/journal.js';
import { isPlainLocalRule, linkInfo, listProxyNeighbours, listRoutes, listRules, routeDelArgs, ruleDelArgs } from '../host/ip-json.js';
import { deleteStateFile, isProcessAlive, netnsInode, readStateFile, stateFilesOfNetns } from '../host/state-file.js';
import { isValidIfname } from '../host/sysctl.js';
import { parseAppliedRouting, PROTO, ROUTE_PROTOCOL, RoutingError, type AppliedRouting, type RoutingConfig } from './routing-record.js';

/**
 * What a crashed or killed tunnat leaves in a namespace, and cleaning it: state files whose process
 * is gone (undone from their journal) and rules, routes and proxy entries that carry tunnat's
 * marker or sit in its tables. Also the refusal to start over them.
 */

/** A rule, route or proxy neighbour entry of tunnat's (or in its tables) that exists right now. */
export interface FoundItem {
  kind: 'rule' | 'route' | 'proxy-neigh';
  /** The command that removes it. */
  del: string[];
  /** Carries ROUTE_PROTOCOL; unmarked items in tables T/T+1 belong to someone else. */
  marked: boolean;
  /** A marked `lookup local` rule: removed only once another local rule exists. */
  localRule: boolean;
}

/** A state file of this namespace whose process is gone. */
export interface CrashedRun {
  file: string;
  /** Null when the file could not be parsed. */
  state: AppliedRouting | null;
  /** Whether the record describes this namespace (and not an earlier one with the same inode). */
  trusted: boolean;
  reason: string;
}

export interface Leftover {
  netnsInode: number;
  tun: string;
  table: number;
  crashed: CrashedRun[];
  found: FoundItem[];
  /** The pref-0 `lookup local` rule is missing and no unmarked local rule replaces it. */
  localRuleMissing: boolean;
  /**
   * Some items in tables T/T+1 do not carry tunnat's marker: someone else configured them.
   * cleanLeftovers removes them too, so clean automatically only when this is false.
   */
  foreign: boolean;
}

/** Everything tunnat marks, anywhere, plus everything in tables T and T+1. */
async function scanNamespace(table: number): Promise<FoundItem[]> {
  const ours = new Set([String(table), String(table + 1)]);
  const found: FoundItem[] = [];
  for (const r of await listRules()) {
    const marked = r.protocol === PROTO;
    if (marked || (r.table !== undefined && ours.has(r.table))) {
      found.push({ kind: 'rule', del: ['ip', 'rule', 'del', ...ruleDelArgs(r)], marked, localRule: marked && isPlainLocalRule(r) });
    }
  }
  for (const r of await listRoutes()) {
    const marked = r.protocol === PROTO;
    if (marked || (r.table !== undefined && ours.has(r.table))) {
      found.push({ kind: 'route', del: ['ip', 'route', 'del', ...routeDelArgs(r)], marked, localRule: false });
    }
  }
  for (const n of await listProxyNeighbours()) {
    if (n.protocol === PROTO && n.dev !== undefined) {
      found.push({ kind: 'proxy-neigh', del: ['ip', 'neigh', 'del', 'proxy', n.dst, 'dev', n.dev], marked: true, localRule: false });
    }
  }
  return found;
}

function cleanupHint(tun: string, cmds: string[]): string {
  return `Run \`tunnat down --tun ${tun}\` to remove them${cmds.length > 0 ? `, or by hand:\n  ${cmds.join('\n  ')}` : ''}`;
}

/** Refuse to start over another instance or a leftover (see detectLeftovers for cleaning). */
export async function refuseConflicts(cfg: RoutingConfig, inode: number): Promise<void> {
  for (const file of stateFilesOfNetns(inode)) {
    let state: AppliedRouting | null = null;
    try {
      state = parseAppliedRouting(readStateFile(file));
    } catch {
      // An unreadable record is still a leftover; fall through to the conflict below.
    }
    if (state && isProcessAlive(state.pid, state.pidStartTime)) {
      throw new RoutingError(
        'ALREADY_RUNNING',
        `tunnat (pid ${state.pid}, TUN ${state.config.tun}) already routes this network namespace (state file ${file}); ` +
          'only one instance per namespace is supported, since both would move the local rule and save each other\'s sysctls',
      );
    }
    throw new RoutingError(
      'ROUTING_CONFLICT',
      `${file} records a tunnat${state ? ` (pid ${state.pid}, TUN ${state.config.tun})` : ''} that exited without undoing its routing. ` +
        `Run \`tunnat down --tun ${state?.config.tun ?? cfg.tun}\` (detectLeftovers + cleanLeftovers) to undo it first.`,
    );
  }
  const found = await scanNamespace(cfg.table);
  if (found.length > 0) {
    const cmds = found.map((f) => cmdText(f.del));
    throw new RoutingError(
      'ROUTING_CONFLICT',
      `rules, routes or proxy entries of tunnat (protocol ${ROUTE_PROTOCOL}) or in tables ${cfg.table}/${cfg.table + 1} already exist ` +
        `and no tunnat state file explains them. ${cleanupHint(cfg.tun, cmds)}`,
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Leftovers of a crashed run

/**
 * What a crashed tunnat left in this namespace: state files whose process is gone and rules,
 * routes and proxy entries that carry tunnat's marker or sit in tables T/T+1. Null when there is
 * nothing. Throws ALREADY_RUNNING when a live tunnat owns the namespace (its routing is no leftover).
 */
export async function detectLeftovers(tun: string, table: number): Promise<Leftover | null> {
  if (!isValidIfname(tun)) throw new RoutingError('ROUTING_INVALID', `invalid TUN interface name ${JSON.stringify(tun)}`);
  const inode = netnsInode();
  const found = await scanNamespace(table);
  const anyMarkedRule = found.some((f) => f.kind === 'rule' && f.marked);
  const crashed: CrashedRun[] = [];
  for (const file of stateFilesOfNetns(inode)) {
    let state: AppliedRouting | null = null;
    try {
      state = parseAppliedRouting(readStateFile(file));
    } catch {
      state = null;
    }
    if (state === null) {
      crashed.push({ file, state: null, trusted: false, reason: 'the file is not a tunnat state record' });
      continue;
    }
    if (isProcessAlive(state.pid, state.pidStartTime)) {
      throw new RoutingError('ALREADY_RUNNING', `tunnat (pid ${state.pid}, TUN ${state.config.tun}) is running in this namespace (state file ${file})`);
    }
    const wanNow = await linkInfo(state.config.externalIface);
    const sameWan = wanNow !== null && wanNow.ifindex === state.wan.ifindex && wanNow.address === state.wan.address;
    if (state.netnsInode === inode && (sameWan || anyMarkedRule)) {
      crashed.push({ file, state, trusted: true, reason: `pid ${state.pid} exited without undoing its routing` });
    } else {
      crashed.push({
        file,
        state,
        trusted: false,
        reason:
          `the record (pid ${state.pid}) seems to belong to an earlier namespace with the same inode: ` +
          `its WAN link ${state.config.externalIface} differs and no tunnat rule is present`,
      });
    }
  }
  const rules = await listRules();
  const unmarkedLocal = rules.some((r) => isPlainLocalRule(r) && r.protocol !== PROTO);
  const localRuleMissing = !unmarkedLocal;
  if (crashed.length === 0 && found.length === 0) return null;
  return { netnsInode: inode, tun, table, crashed, found, localRuleMissing, foreign: found.some((f) => !f.marked) };
}

/**
 * Remove what detectLeftovers found, logging each removal: trusted records are undone step by
 * step (sysctls restored to their saved values), then whatever is still marked or in tables
 * T/T+1 is deleted. Without a trusted record the old sysctl values are unknown; they are left
 * as they are and the log says so.
 */
export async function cleanLeftovers(l: Leftover, log: Log = quiet): Promise<void> {
  const errors: string[] = [];
  let restoredSysctls = false;
  for (const c of l.crashed) {
    if (c.trusted && c.state) {
      log(`undoing the routing of crashed tunnat pid ${c.state.pid} (TUN ${c.state.config.tun}) from ${c.file}`);
      const ctx = undoCtx((m) => log(`  ${m}`));
      await drive(undoJournal(c.state, ctx));
      errors.push(...ctx.errors);
      restoredSysctls = true;
    } else {
      log(`removing ${c.file} without acting on it: ${c.reason}`);
      deleteStateFile(c.file);
    }
  }

  const remaining = await scanNamespace(l.table);
  if (remaining.length > 0) {
    const rules = await listRules();
    const unmarkedLocal = rules.some((r) => isPlainLocalRule(r) && r.protocol !== PROTO);
    if (!unmarkedLocal && remaining.some((f) => f.localRule)) {
      const argv = ['ip', 'rule', 'add', 'pref', '0', 'lookup', 'local'];
      const r = await runTool(argv);
      if (r.exitCode !== 0) errors.push(failure(argv, r));
      else log(cmdText(argv));
    }
    // Marked local rules last: by then the pref-0 rule is back.
    const ordered = [...remaining.filter((f) => !f.localRule), ...remaining.filter((f) => f.localRule)];
    for (const f of ordered) {
      const r = await runTool(f.del);
      if (r.exitCode === 0) log(cmdText(f.del));
      else if (!isGone(r.stderr)) errors.push(failure(f.del, r));
    }
    if (!restoredSysctls) {
      log(
        'no state file recorded the sysctls tunnat changed; left as they are: net.ipv4.ip_forward, net.ipv4.conf.all.rp_filter, ' +
          'net.ipv4.ip_early_demux, net.ipv4.ip_local_port_range and per-interface forwarding/proxy_delay',
      );
    }
  }
  if (errors.length > 0) {
    throw new RoutingError('ROUTING_FAILED', `could not remove all leftovers of tunnat in this namespace:\n  ${errors.join('\n  ')}`);
  }
}
