/**
 * `tunnat lab --ha`: two gateways on one LAN and one WAN (ha-topology.ts), tunnat on both with the
 * flow-state sync and keepalived moving the shared addresses (ha-pair.ts). With traffic running — a UDP
 * stream, a TCP connection sending a line every 50 ms and 200 idle ones — it kills the active tunnat
 * with SIGKILL and prints what the LAN host saw: the outage in milliseconds, the connections that lived
 * through it, and the public port the remote saw before and after. With `once` it then cleans up;
 * otherwise it keeps the pair up until SIGINT/SIGTERM.
 */
import { Cleanup, type SignalTrap } from './cleanup.js';
import { formatCheck } from './demo.js';
import { buildHaLab } from './ha-topology.js';
import { failoverOnce, startPair } from './ha-pair.js';

export interface RunHaLabOptions {
  once?: boolean;
  id?: string;
  cliPath?: string;
  log?: (line: string) => void;
  trapSignals?: boolean;
  /** Idle TCP connections kept open through the failover (default 200). */
  idle?: number;
  until?: Promise<unknown>;
}

export async function runHaLab(opts: RunHaLabOptions = {}): Promise<boolean> {
  const log = opts.log ?? ((l: string) => console.log(l));
  const cleanup = new Cleanup(log);
  const trap: SignalTrap | null = opts.trapSignals === false ? null : cleanup.trapSignals();
  const results: boolean[] = [];
  const check = (label: string, ok: boolean, detail: string) => {
    results.push(ok);
    log(formatCheck({ label, ok, detail }));
  };
  const idle = opts.idle ?? 200;
  try {
    log('tunnat lab --ha — a gateway pair: tunnat on both, flow state synced, keepalived moving the addresses');
    log('');
    log('[1/4] Building the namespace lab (two gateways, a LAN switch, a WAN switch, a sync link)');
    const lab = await buildHaLab({ ...(opts.id ? { id: opts.id } : {}), cleanup, lanHosts: 1, log: (l) => log(`  ${l}`) });

    log('');
    log('[2/4] tunnat and keepalived on gateway A, then on B; A holds the addresses, B gets a full resync');
    const pair = await startPair({ lab, cleanup, log: (l) => log(`  ${l}`), ...(opts.cliPath ? { cliPath: opts.cliPath } : {}) });
    const [a, b] = [await pair.gateways[0].status(), await pair.gateways[1].status()];
    check('A active, B standby and synced', a.role === 'active' && b.role === 'standby' && (b.sync?.stats.resyncsApplied ?? 0) > 0,
      `A ${a.role}, B ${b.role} (${b.sync?.stats.resyncsApplied ?? 0} full resync applied)`);

    log('');
    log(`[3/4] Traffic from ${lab.lanHosts[0]!.address}: a UDP stream (every 10 ms), a TCP connection (a line every 50 ms) and ${idle} idle ones`);
    log(`[4/4] kill -9 of A's tunnat while they run; keepalived moves the addresses to B, which has every flow already`);
    const r = await failoverOnce(pair, lab, cleanup, 'kill', { idle, log: (l) => log(`  ${l}`) });
    check('B took over', r.to === 1, r.to === 1 ? 'B active, A back as its standby (restarted, resynced)' : `active now: ${r.to === null ? 'none' : lab.gateways[r.to].name}`);
    log(`  outage: ${r.outageMs} ms without UDP echoes, ${r.tcpGapMs} ms without TCP echoes`);
    check(`TCP connections that lived through it`, r.connectionsKept,
      `${r.report.idle.ok + (r.report.active.error === null ? 1 : 0)}/${idle + 1} (the busy one: ${r.report.active.echoed}/${r.report.active.sent} lines back, ${r.report.active.error ?? 'no reset'})`);
    check('the remote saw one UDP mapping', r.udpSources.length === 1, `from ${r.udpSources.join(' and ')}`);

    const ok = results.every(Boolean);
    log('');
    log(ok ? 'All checks passed.' : 'Some checks failed (see ✗ above).');
    if (!opts.once) {
      log('');
      log(`The pair stays up. Watch it: tunnat ha status --http unix:${pair.gateways[1].socketPath}  (B; A: ${pair.gateways[0].socketPath})`);
      log('Ctrl-C removes everything.');
      const waits: Promise<unknown>[] = [];
      if (trap) waits.push(trap.wait());
      if (opts.until) waits.push(opts.until);
      if (waits.length > 0) await Promise.race(waits);
    }
    return ok;
  } catch (err) {
    log(`lab failed: ${(err as Error).message}`);
    return false;
  } finally {
    await cleanup.run();
    trap?.release();
  }
}
