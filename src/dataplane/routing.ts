import { randomBytes } from 'node:crypto';
import { failure, hostRunner, mustRun } from '../host/commands.js';
import { drive, driveSync, Journal, quiet, undoCtx, undoJournal, undoStep, type Log } from '../host/journal.js';
import { linkInfo } from '../host/ip-json.js';
import { netnsInode, processStartTime, readStateFile, stateFilePath, writeStateFile } from '../host/state-file.js';
import { procSysctls } from '../host/sysctl.js';
import { ipToString } from '../wire/addr.js';
import { refuseConflicts, type Leftover } from './leftovers.js';
import { addAddressSteps, addProxyNeighbour, applySteps, planLocalRule, stepAddress, validateConfig } from './routing-recipe.js';
import { cidrText, parseAppliedRouting, RoutingError, type AppliedRouting, type RoutingConfig, type RoutingStep } from './routing-record.js';

export { gatewayOwnsAddress, interfacePrimaryIpv4 } from '../host/ip-json.js';
export { cleanLeftovers, detectLeftovers, type CrashedRun, type FoundItem, type Leftover } from './leftovers.js';
export * from './routing-record.js';

/**
 * The gateway set-up that steers LAN traffic into tunnat's TUN and the public address's traffic
 * back through it (docs/operations.md, "What it changes on the system"), applied on start and removed on exit: its life cycle
 * (apply, remove, follow a new public address, keep for a restart, adopt). The recipe itself is in
 * routing-recipe.ts, leftovers of a crashed run in leftovers.ts.
 *
 * Every change is journalled in a state file before it is made (src/host/journal.ts), so that a
 * crash at any point leaves an exact list of what to undo; everything tunnat adds to the routing
 * tables also carries ROUTE_PROTOCOL, so leftovers are found even without that file.
 */

function undoFailed(state: AppliedRouting, errors: string[]): RoutingError {
  return new RoutingError(
    'ROUTING_FAILED',
    `could not undo all of tunnat's routing for ${state.config.tun}:\n  ${errors.join('\n  ')}\n` +
      `what remains is listed in ${state.stateFile}; fix the cause and run \`tunnat down --tun ${state.config.tun}\``,
  );
}

/**
 * Set up the gateway's routing for tunnat (see the module comment and docs/operations.md). Refuses with
 * ALREADY_RUNNING when a live tunnat owns this namespace and ROUTING_CONFLICT over leftovers or
 * someone else's rules in tables T/T+1. On failure everything applied so far is undone.
 */
export async function applyRouting(cfg: RoutingConfig, log: Log = quiet): Promise<AppliedRouting> {
  validateConfig(cfg);
  const inode = netnsInode();
  await refuseConflicts(cfg, inode);

  const tunLink = await linkInfo(cfg.tun);
  if (tunLink === null) throw new RoutingError('ROUTING_INVALID', `TUN interface ${cfg.tun} does not exist`);
  const wanLink = await linkInfo(cfg.externalIface);
  if (wanLink === null) throw new RoutingError('ROUTING_INVALID', `WAN interface ${cfg.externalIface} does not exist`);
  const moveLocal = await planLocalRule(cfg);

  const state: AppliedRouting = {
    version: 1,
    runId: randomBytes(8).toString('hex'),
    pid: process.pid,
    pidStartTime: processStartTime(process.pid),
    netnsInode: inode,
    stateFile: stateFilePath(inode, cfg.tun),
    wan: { ifindex: wanLink.ifindex, address: wanLink.address },
    config: structuredClone(cfg),
    steps: [],
  };
  const j = new Journal(state);
  try {
    j.save();
  } catch (err) {
    throw new RoutingError('ROUTING_FAILED', `cannot write the state file ${state.stateFile}: ${(err as Error).message}`, { cause: err });
  }
  try {
    await applySteps(j, cfg, tunLink, moveLocal, log);
  } catch (err) {
    const ctx = undoCtx(log);
    await drive(undoJournal(state, ctx));
    const undone = ctx.errors.length === 0 ? 'everything applied before it was undone' : `undoing failed too:\n  ${ctx.errors.join('\n  ')}`;
    throw new RoutingError('ROUTING_FAILED', `setting up routing for ${cfg.tun} failed: ${(err as Error).message}; ${undone}`, { cause: err });
  }
  log(`routing for ${cfg.tun} in place (state file ${state.stateFile})`);
  return structuredClone(state);
}

// ---------------------------------------------------------------------------------------------
// Remove

/**
 * The record to undo: the state file, which reflects partial removals and address updates. When
 * it is gone (removed already) or belongs to a later run at the same path, there is nothing to do:
 * undoing the caller's copy again could overwrite sysctls someone changed since.
 */
function stateToUndo(applied: AppliedRouting): AppliedRouting | null {
  let onDisk: AppliedRouting | null = null;
  try {
    onDisk = parseAppliedRouting(readStateFile(applied.stateFile));
  } catch {
    onDisk = null;
  }
  return onDisk !== null && onDisk.runId === applied.runId ? onDisk : null;
}

/**
 * Undo everything the state file lists, in reverse, tolerating things already gone (a vanished
 * TUN takes its routes and sysctls along). Idempotent: once the state file is gone this does
 * nothing. On failure the file keeps what could not be undone, and the error says so.
 */
export async function removeRouting(applied: AppliedRouting, log: Log = quiet): Promise<void> {
  const state = stateToUndo(applied);
  if (state === null) return;
  const ctx = undoCtx(log);
  await drive(undoJournal(state, ctx));
  if (ctx.errors.length > 0) throw undoFailed(state, ctx.errors);
  log(`routing for ${state.config.tun} removed`);
}

/** removeRouting for process 'exit' handlers, where the event loop no longer runs. */
export function removeRoutingSync(applied: AppliedRouting): void {
  const state = stateToUndo(applied);
  if (state === null) return;
  const ctx = undoCtx(quiet);
  driveSync(undoJournal(state, ctx));
  if (ctx.errors.length > 0) throw undoFailed(state, ctx.errors);
}

// ---------------------------------------------------------------------------------------------
// Masquerade: follow a changed WAN address

/** Masquerade's single address changed: followAddresses with the same pool (none for masquerade). */
export async function updatePublicIp(applied: AppliedRouting, newIp: number, log: Log = quiet): Promise<AppliedRouting> {
  const extras = (applied.config.extraPublicIps ?? []).filter((a) => a !== newIp);
  return followAddresses(applied, newIp, extras, log);
}

/**
 * Route the public addresses `primary` and `extras` through tunnat, and no others: the rules and proxy
 * ARP entries of a new address are added before those of an address that went are removed, so no packet
 * for an address that stays is mis-delivered in between; an address that stays keeps its rules (the
 * primary's marked as such), and the outbound route's source hint follows the primary.
 */
export async function followAddresses(applied: AppliedRouting, primary: number, extras: readonly number[], log: Log = quiet): Promise<AppliedRouting> {
  for (const a of [primary, ...extras]) {
    if (!Number.isInteger(a) || a < 0 || a > 0xffffffff) throw new RoutingError('ROUTING_INVALID', `invalid public address ${a}`);
  }
  let state: AppliedRouting | null = null;
  try {
    state = parseAppliedRouting(readStateFile(applied.stateFile));
  } catch {
    state = null;
  }
  if (state === null || state.runId !== applied.runId) {
    throw new RoutingError('ROUTING_FAILED', `no routing of this run to update (state file ${applied.stateFile} is gone or belongs to another run)`);
  }
  const want = [primary, ...extras.filter((a) => a !== primary)];
  const oldPrimary = state.config.publicIp;
  const routed = new Set<number>();
  for (const st of state.steps) {
    const a = stepAddress(st);
    if (a !== null) routed.add(a);
  }
  const j = new Journal(state);
  const pub = ipToString(primary);
  try {
    for (const a of want) if (!routed.has(a)) await addAddressSteps(j, state.config, a, a === primary, log);
    // Which address is the primary is recorded on its rules (restarts and `tunnat down` read it).
    for (const st of state.steps) {
      if (st.kind !== 'rule' || stepAddress(st) === null) continue;
      if (stepAddress(st) === primary) st.inbound = true;
      else delete st.inbound;
    }
    j.save();
    // The outbound route's source hint was the old primary (see applySteps): it moves with it.
    const old = ipToString(oldPrimary);
    for (const st of primary === oldPrimary ? [] : state.steps) {
      if (st.kind !== 'route') continue;
      const at = st.args.indexOf('src');
      if (at < 0 || st.args[at + 1] !== old) continue;
      let args = st.args.map((a, i) => (i === at + 1 ? pub : a));
      try {
        await mustRun(['ip', 'route', 'replace', ...args]);
      } catch {
        // Not (yet) an address of the gateway: the kernel picks the source itself, as without a hint.
        args = st.args.filter((_, i) => i !== at && i !== at + 1);
        await mustRun(['ip', 'route', 'replace', ...args]);
      }
      st.args = args;
      j.save();
      log(`ip route replace ${args.join(' ')}`);
    }
  } catch (err) {
    throw new RoutingError('ROUTING_FAILED', `could not route the public addresses ${want.map(ipToString).join(', ')}: ${(err as Error).message}`, { cause: err });
  }

  const ctx = undoCtx(log);
  const stale = state.steps.filter((st) => {
    const a = stepAddress(st);
    return a !== null && !want.includes(a);
  });
  for (const step of stale.reverse()) {
    if (await drive(undoStep(step, ctx))) state.steps.splice(state.steps.indexOf(step), 1);
  }
  state.config = { ...state.config, publicIp: primary, ...(want.length > 1 || state.config.extraPublicIps ? { extraPublicIps: want.slice(1) } : {}) };
  j.save();
  if (ctx.errors.length > 0) {
    throw new RoutingError('ROUTING_FAILED', `${pub} is routed, but entries of addresses that went remain:\n  ${ctx.errors.join('\n  ')}`);
  }
  return structuredClone(state);
}

/**
 * A gateway of a pair gained (`on`) or lost the public address: answer ARP for it on the WAN, or stop. The
 * entry is journalled like every other change, so a killed run's is found and removed. No change when it
 * is already as asked.
 */
export async function setProxyArp(applied: AppliedRouting, on: boolean, log: Log = quiet): Promise<AppliedRouting> {
  const state = stateToUndo(applied);
  if (state === null) {
    throw new RoutingError('ROUTING_FAILED', `no routing of this run to update (state file ${applied.stateFile} is gone or belongs to another run)`);
  }
  const addr = ipToString(state.config.publicIp);
  const dev = state.config.externalIface;
  const held = state.steps.filter((st) => st.kind === 'proxy-neigh' && st.address === addr && st.dev === dev);
  if (on && held.length === 0) {
    await addProxyNeighbour(new Journal(state), addr, dev, log);
  } else if (!on && held.length > 0) {
    const ctx = undoCtx(log);
    for (const st of held) if (await drive(undoStep(st, ctx))) state.steps.splice(state.steps.indexOf(st), 1);
    new Journal(state).save();
    if (ctx.errors.length > 0) throw new RoutingError('ROUTING_FAILED', `could not stop answering ARP for ${addr}: ${ctx.errors.join('; ')}`);
  }
  return structuredClone(state);
}

// ---------------------------------------------------------------------------------------------
// Restart without loss

/**
 * Record that the TUN has been made persistent (the caller does the ioctl), take the link down, and leave
 * the rules in place: LAN traffic meets the fail-closed route, the gateway's own traffic the local and
 * main tables. The gateway stays failed closed until `adoptRouting` (the next `tunnat run
 * --state`) or `tunnat down` (cleanLeftovers deletes the device).
 */
export function keepForRestart(applied: AppliedRouting): void {
  const state = stateToUndo(applied);
  if (state === null) throw new RoutingError('ROUTING_FAILED', `no routing of this run to keep (state file ${applied.stateFile} is gone)`);
  // Undone (the device deleted) after forwarding is off, like everything else but forwarding.
  if (!state.steps.some((st) => st.kind === 'tun-persist')) new Journal(state).add({ kind: 'tun-persist', dev: state.config.tun });
  // Without a reader the TUN loses its carrier and its routes are ignored, but the kernel notices the
  // carrier only after up to a second (linkwatch), and until then they would swallow the gateway's own
  // traffic. Down, the link loses them at once; the adopting run brings it up and re-makes them, as after a kill.
  const argv = ['ip', 'link', 'set', 'dev', state.config.tun, 'down'];
  const r = hostRunner.runSync({ argv });
  if (r.exitCode !== 0) throw new RoutingError('ROUTING_FAILED', failure(argv, r));
}

/** Whether adoptRouting would take over this leftover (pure: nothing is changed or run). */
export function canAdoptRouting(cfg: RoutingConfig, l: Leftover): boolean {
  const trusted = l.crashed.filter((c) => c.trusted && c.state !== null);
  if (l.foreign || trusted.length !== 1) return false;
  const old = trusted[0]!.state!.config;
  return (
    old.tun === cfg.tun &&
    old.table === cfg.table &&
    old.externalIface === cfg.externalIface &&
    old.publicIpOwned === cfg.publicIpOwned &&
    (old.dynamicPool === true) === (cfg.dynamicPool === true) &&
    // A dynamic pool is whatever the WAN holds now: adoption re-routes the addresses that changed.
    (cfg.dynamicPool === true || JSON.stringify(old.extraPublicIps ?? []) === JSON.stringify(cfg.extraPublicIps ?? [])) &&
    old.gatewayPorts[0] === cfg.gatewayPorts[0] &&
    old.gatewayPorts[1] === cfg.gatewayPorts[1] &&
    JSON.stringify(old.internal.map(cidrText)) === JSON.stringify(cfg.internal.map(cidrText))
  );
}

/**
 * Take over the set-up a previous run left behind — kept for a restart (keepForRestart) or left by a
 * killed run — without removing a single rule, so no packet slips out untranslated in between (the
 * rules keep steering LAN traffic into the TUN or, while it is gone, into the fail-closed route).
 * Returns null when there is nothing to adopt: no trusted record, another TUN or table, or a different
 * LAN/WAN — the caller then cleans up and applies afresh. The caller must already hold the TUN open.
 */
export async function adoptRouting(cfg: RoutingConfig, l: Leftover, log: Log = quiet): Promise<AppliedRouting | null> {
  if (!canAdoptRouting(cfg, l)) return null;
  const old = l.crashed.find((c) => c.trusted && c.state !== null)!.state!;
  if ((await linkInfo(cfg.tun)) === null) return null;
  // A killed run's TUN vanished with its routes and per-device sysctls; a persistent one kept them.
  // Re-assert exactly those (idempotently) — the rules, which never went away, are not touched.
  const tunConf = `/conf/${cfg.tun}/`;
  for (const st of old.steps) {
    if (st.kind === 'sysctl' && st.key.includes(tunConf)) {
      procSysctls.write(st.key, st.value);
    } else if (st.kind === 'link' && st.dev === cfg.tun) {
      await mustRun(['ip', 'link', 'set', 'dev', cfg.tun, ...(st.mtu !== undefined ? ['mtu', String(st.mtu)] : []), 'up']);
    } else if (st.kind === 'route' && st.args.includes(cfg.tun)) {
      await mustRun(['ip', 'route', 'replace', ...st.args]);
    }
  }
  const state: AppliedRouting = {
    ...old,
    runId: randomBytes(8).toString('hex'),
    pid: process.pid,
    pidStartTime: processStartTime(process.pid),
    // Persistent again only if this run is stopped for a restart too.
    steps: old.steps.filter((st) => st.kind !== 'tun-persist'),
  };
  writeStateFile(state.stateFile, state);
  log(`adopted the routing of pid ${old.pid} for ${cfg.tun} (state file ${state.stateFile})`);
  let adopted = structuredClone(state);
  if (cfg.dynamicPool === true) adopted = await followAddresses(adopted, cfg.publicIp, cfg.extraPublicIps ?? [], log);
  else if (old.config.publicIp !== cfg.publicIp) adopted = await updatePublicIp(adopted, cfg.publicIp, log);
  return adopted;
}

