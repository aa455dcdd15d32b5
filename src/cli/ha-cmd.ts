import { httpRequest } from './client.js';
import { keepalivedConf, KeepalivedConfError } from '../ha/keepalived.js';
import type { HaStatus } from '../ha/controller.js';
import { DEFAULT_TARGET, intOption, parseOptions, processIo, runCommand, CliUsageError, type CliIo } from '../observe/cli.js';
import { HELP_FLAG, verbHelp, type Verb } from './flags.js';

/**
 * `tunnat ha status|check|keepalived-conf`: a gateway of a pair (`tunnat run --ha-node`, docs/ha.md).
 * status and check ask the running router's GET /ha; keepalived-conf prints keepalived's configuration
 * for one gateway of the pair (src/ha/keepalived.ts).
 */
export const HA_VERB = {
  name: 'ha status|check|keepalived-conf',
  brief: 'a gateway pair: its role and sync, the health check keepalived runs, keepalived\'s configuration',
  summary:
    'A gateway of a pair (`tunnat run --ha-node`, docs/ha.md).\n' +
    'status           role, peer, flows replicated, sync lag, last full resync (from GET /ha)\n' +
    'check            exit 0 while the router and every data-plane worker answer, 1 otherwise (keepalived\'s vrrp_script)\n' +
    'keepalived-conf  print keepalived\'s configuration for this gateway: the LAN and WAN addresses in one sync group,\n' +
    '                 no preemption, tracking the TUN (tunnat alive) and `tunnat ha check` (tunnat not stuck)',
  flags: {
    http: { type: 'string', arg: 'HOST:PORT|unix:PATH', about: `status, check: the router to ask (default ${DEFAULT_TARGET})` },
    json: { type: 'boolean', about: 'status: the whole answer as JSON' },
    name: { type: 'string', arg: 'NAME', about: "keepalived-conf: this gateway's name in keepalived's log (router_id)" },
    'lan-if': { type: 'string', arg: 'IFACE', about: 'keepalived-conf: the LAN interface' },
    'wan-if': { type: 'string', arg: 'IFACE', about: 'keepalived-conf: the WAN interface (tunnat run --external)' },
    'lan-vip': { type: 'string', arg: 'ADDR/PREFIX', about: "keepalived-conf: the LAN hosts' gateway address the pair shares" },
    'wan-vip': { type: 'string', arg: 'ADDR/PREFIX', about: 'keepalived-conf: the public address the pair shares (tunnat run --public-ip)' },
    tun: { type: 'string', arg: 'NAME', about: "keepalived-conf: tunnat's TUN, whose carrier says tunnat is alive (default tunnat0)" },
    vrid: { type: 'string', arg: 'N', about: 'keepalived-conf: VRRP id of the LAN address; the WAN address takes N+1 (default 51)' },
    priority: { type: 'string', arg: 'N', about: 'keepalived-conf: 1-254; the higher one starts as MASTER when both start together (default 100)' },
    'advert-ms': { type: 'string', arg: 'MS', about: 'keepalived-conf: VRRP advertisement interval, a multiple of 10 (default 100)' },
    check: { type: 'string', arg: 'COMMAND', about: 'keepalived-conf: the health check (default: this tunnat\'s `ha check --http …`); "none" for none' },
    preempt: { type: 'boolean', about: 'keepalived-conf: take the addresses back when this gateway returns (default: never)' },
    help: HELP_FLAG,
  },
} as const satisfies Verb;

/** GET /ha: the status and the HTTP code (200 healthy, 503 a data plane that does not answer). */
async function getHa(target: string, timeoutMs: number): Promise<{ code: number; status: HaStatus | null; error?: string }> {
  let r;
  try {
    r = await httpRequest(target, '/ha', timeoutMs);
  } catch (err) {
    const msg = (err as Error).message;
    if (msg.startsWith('--http:')) throw new CliUsageError(msg);
    return { code: 0, status: null, error: msg };
  }
  if (r.status === 404) return { code: 404, status: null, error: 'the router at this address is not a gateway of a pair (no --ha-node)' };
  try {
    return { code: r.status, status: JSON.parse(r.body) as HaStatus };
  } catch {
    return { code: r.status, status: null, error: `unreadable answer: ${r.body.slice(0, 200)}` };
  }
}

const ago = (ms: number | null): string => (ms === null ? 'never' : ms < 2000 ? `${ms} ms ago` : `${(ms / 1000).toFixed(1)} s ago`);

export function formatHaStatus(s: HaStatus): string[] {
  const lines = [
    `role         ${s.role} (node ${s.node}; ${s.role === 'active' ? 'holds' : 'does not hold'} ${s.publicIp} on ${s.external}; ${s.roleChanges} role change(s), last ${ago(s.lastRoleChangeMsAgo)})`,
    `flows        ${s.flows}`,
    `data plane   ${s.healthy ? 'answers' : 'DOES NOT ANSWER'}`,
  ];
  const y = s.sync;
  if (y === null) {
    lines.push('sync         off (no --ha-peer): a failover keeps no connection');
    return lines;
  }
  const p = y.peer;
  lines.push(
    `peer         ${p.session === null ? 'never heard' : `${p.alive ? 'up' : 'DOWN'}, ${p.role ?? '?'} node ${p.node ?? '?'}, ${p.flows ?? '?'} flows, heard ${ago(p.lastHeardMsAgo)}`}`,
    `lag          ${y.lag.unacked} message(s) unacknowledged, oldest ${y.lag.oldestMs} ms, ${y.lag.waitingBytes} bytes waiting`,
    `resync       ${s.role === 'active' ? `sent ${y.stats.resyncsSent}, last started ${ago(y.resync.lastStartedMsAgo)}${y.resync.inProgress ? ' (in progress)' : ''}` : `applied ${y.stats.resyncsApplied}, last ${ago(y.resync.lastAppliedMsAgo)}`}`,
    `records      sent ${y.stats.recordsSent}; applied ${s.applied.upserts + s.applied.removes}, failed ${s.applied.failed}, swept ${s.applied.swept}`,
    `messages     sent ${y.stats.sent}, received ${y.stats.received}, resent ${y.stats.retransmits}; rejected: bad MAC ${y.stats.badMac}, stale ${y.stats.stale}, malformed ${y.stats.malformed}`,
  );
  return lines;
}

export function cmdHa(args: string[], io: CliIo = processIo): Promise<number> {
  return runCommand(io, async () => {
    const [sub, ...rest] = args;
    const { values: v } = parseOptions(rest, HA_VERB.flags);
    if (v.help || sub === '--help' || sub === '-h') {
      io.out(verbHelp(HA_VERB));
      return 0;
    }
    const target = v.http ?? DEFAULT_TARGET;
    if (sub === 'status') {
      const r = await getHa(target, 3000);
      if (r.status === null) throw new Error(r.error ?? `GET /ha answered ${r.code}`);
      if (v.json) io.out(JSON.stringify(r.status, null, 2));
      else for (const l of formatHaStatus(r.status)) io.out(l);
      return 0;
    }
    if (sub === 'check') {
      // keepalived runs this every second: one short line, and a verdict in the exit code.
      const r = await getHa(target, 1500);
      if (r.code === 200 && r.status) {
        io.out(`ok: ${r.status.role}, ${r.status.flows} flows`);
        return 0;
      }
      io.err(`tunnat ha check: ${r.error ?? (r.status && !r.status.healthy ? 'a data-plane worker does not answer' : `GET /ha answered ${r.code}`)}`);
      return 1;
    }
    if (sub === 'keepalived-conf') {
      const need = (k: 'name' | 'lan-if' | 'wan-if' | 'lan-vip' | 'wan-vip'): string => {
        const x = v[k];
        if (x === undefined) throw new CliUsageError(`keepalived-conf needs --${k}`);
        return x;
      };
      const self = `${process.execPath} ${process.argv[1] ?? 'tunnat'} ha check --http ${target}`;
      const check = v.check === 'none' ? null : (v.check ?? self);
      try {
        io.out(
          keepalivedConf({
            name: need('name'),
            lanIf: need('lan-if'),
            wanIf: need('wan-if'),
            lanVip: need('lan-vip'),
            wanVip: need('wan-vip'),
            vrid: intOption('vrid', v.vrid, 254) ?? 51,
            priority: intOption('priority', v.priority, 254) ?? 100,
            advertMs: intOption('advert-ms', v['advert-ms'], 40950) ?? 100,
            trackInterface: v.tun ?? 'tunnat0',
            checkScript: check,
            preempt: v.preempt === true,
          }).trimEnd(),
        );
      } catch (err) {
        if (err instanceof KeepalivedConfError) throw new CliUsageError(err.message);
        throw err;
      }
      return 0;
    }
    throw new CliUsageError(sub === undefined ? 'tunnat ha needs status, check or keepalived-conf' : `unknown: tunnat ha ${sub} (status, check or keepalived-conf)`);
  });
}
