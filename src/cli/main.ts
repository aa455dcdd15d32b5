#!/usr/bin/env node
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { ConfigError, type RouterConfig } from '../config/config.js';
import { resolveConfig, describeConfig } from '../config/resolve.js';
import { ROUTER_OPTIONS, configFlags } from './router-flags.js';
import { createLogger, type Logger } from '../util/log.js';
import { cmdConntrack, CONNTRACK_USAGE } from './conntrack-cmd.js';
import { cmdStats, STATS_USAGE } from './stats-cmd.js';
import { cmdTrace, TRACE_USAGE } from './trace-cmd.js';

/**
 * The `tunnat` command. Exit codes: 0 success, 1 runtime failure, 2 bad usage or configuration.
 */
const USAGE = `tunnat — a userspace NAT router on a TUN device

Usage:
  tunnat run --internal CIDR[,CIDR…] --external IFACE [--public-ip ADDR] [--tun NAME]
             [--ports LO-HI] [--http HOST:PORT|off] [--http-socket PATH] [--config FILE]
             [--max-flows N] [--gateway-ports LO-HI] [--table N] [--log-level LEVEL] [--dry-run]
             [--filtering endpoint|address|address-port] [--forward tcp|udp:PORT=ADDR[:PORT]]…
             [--allow-egress tcp:80,udp:53,icmp,tcp:443@CIDR…] [--egress-reject]
             [--max-flows-per-host N] [--no-icmp-errors] [--no-offload] [--engine userspace|kernel|auto]
             [--pcap FILE] [--state FILE] [--user NAME]
  ${CONNTRACK_USAGE}
  ${STATS_USAGE}
  ${TRACE_USAGE}
  tunnat lab [--once] [--http-port PORT] [--id ID]
  tunnat kernel plan|apply|remove [run's flags] [--backend auto|nft|iptables]
  tunnat down [--tun NAME] [--table N]
  tunnat help

run        translate the traffic of --internal behind --external (masquerade on its primary
           address, or static SNAT to --public-ip); serves the live page (/), /metrics and
           /conntrack on --http (default 127.0.0.1:9100); --pcap FILE records every packet before
           and after translation (pcapng; userspace engine only). Stops cleanly on Ctrl-C / SIGTERM,
           removing its routing.
conntrack  list the running router's flows, like \`conntrack -L\`; --events follows them like \`conntrack -E\`
stats      the running router's counters, like \`conntrack -S\`
trace      explain packets live, before and after translation (the flow, the port chosen, the fields
           and checksums rewritten); rate-bounded; userspace engine only (the kernel shows tunnat no packet)
kernel     the kernel's own NAT for the same flags: plan prints the recipe (ip_forward, MASQUERADE or
           SNAT, conntrack sizing) with what each command is for; apply/remove make it persistent
down       remove the routing set-up a killed tunnat left behind (a running one cleans up itself)
lab        build a namespace lab (LAN hosts, gateway, internet host), run tunnat in it, show real
           traffic being translated; --once runs the demo, cleans up and exits (0 if all worked)
`;

class UsageError extends Error {}

const RUN_OPTIONS = { ...ROUTER_OPTIONS, 'dry-run': { type: 'boolean' } } satisfies ParseArgsConfig['options'];

function parse<T extends NonNullable<ParseArgsConfig['options']>>(args: string[], options: T) {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: false }).values;
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

/**
 * Start the engine the config asks for. `auto` is userspace, falling back to the kernel's NAT when no
 * TUN can be opened (no /dev/net/tun, no privilege), with a log line saying so.
 */
async function startEngine(cfg: RouterConfig, log: Logger): Promise<{ stop(reason?: string): Promise<void>; done: Promise<void> }> {
  if (cfg.engine === 'kernel') {
    // The kernel translates: there is no packet-parsing process to put behind --user.
    if (cfg.user !== null) log.warn('--user applies to the userspace data plane; the kernel engine runs no packet path of its own');
    return (await import('../kernel/engine.js')).startKernelEngine(cfg, log);
  }
  const { startRouter } = await import('../router/router.js');
  try {
    if (cfg.user !== null) {
      const { startPrivsep, lookupUser } = await import('../router/privsep.js');
      const user = lookupUser(cfg.user);
      if (!user) throw new ConfigError('user', `no such user ${JSON.stringify(cfg.user)} in /etc/passwd`);
      return await startPrivsep(cfg, log, user);
    }
    return await startRouter(cfg, log);
  } catch (err) {
    const kernel = await import('../kernel/engine.js');
    if (cfg.engine !== 'auto' || !kernel.shouldFallBackToKernel(err)) throw err;
    log.warn('no TUN can be opened; falling back to the kernel engine', { reason: (err as Error).message });
    return kernel.startKernelEngine(cfg, log);
  }
}

async function cmdRun(args: string[]): Promise<number> {
  const values = parse(args, RUN_OPTIONS) as Record<string, unknown>;
  const { 'dry-run': dryRun, ...rest } = values;
  const flags = configFlags(rest);
  const cfg = resolveConfig(flags);
  if (dryRun) {
    process.stdout.write(JSON.stringify(describeConfig(cfg), null, 2) + '\n');
    return 0;
  }
  const log = createLogger(cfg.logLevel);
  let router: { stop(reason?: string, opts?: { keepForRestart?: boolean }): Promise<void>; done: Promise<void>; reload?: (c: RouterConfig) => string[] };
  try {
    router = await startEngine(cfg, log);
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    if ((err as { code?: string }).code) {
      log.error((err as Error).message, { code: (err as { code?: string }).code });
      return 1;
    }
    throw err;
  }
  // SIGTERM with --state is a restart: flows saved, gateway left failed closed. SIGINT (Ctrl-C) always
  // removes everything.
  process.once('SIGINT', () => void router.stop('SIGINT'));
  // SIGHUP re-reads --config (flags still win) and applies what can change without dropping flows.
  process.on('SIGHUP', () => {
    try {
      const next = resolveConfig(flags);
      if ('reload' in router && typeof router.reload === 'function') router.reload(next);
      else log.warn('this engine does not reload; restart it to apply the new configuration');
    } catch (err) {
      log.error('configuration not reloaded; the running one stays', { error: (err as Error).message });
    }
  });
  process.once('SIGTERM', () => void router.stop('SIGTERM', { keepForRestart: cfg.stateFile !== null }));
  process.on('uncaughtException', (err) => {
    log.error('unexpected error; stopping', { error: err.stack ?? String(err) });
    void router.stop('crash').finally(() => process.exit(1));
  });
  await router.done;
  // Everything is undone (or kept for a restart); whatever handle is still open (a lingering HTTP client,
  // a log stream) must not keep a stopped router's process alive.
  setTimeout(() => process.exit(process.exitCode ?? 0), 500).unref();
  return 0;
}

async function cmdLab(args: string[]): Promise<number> {
  const v = parse(args, { once: { type: 'boolean' }, 'http-port': { type: 'string' }, id: { type: 'string' } });
  if (v.id !== undefined && !/^[a-z0-9]{1,12}$/.test(v.id)) throw new ConfigError('id', 'expected 1-12 lowercase letters or digits (namespaces are named tn<ID>-gw, tn<ID>-h0, …)');
  const httpPort = v['http-port'] !== undefined ? Number(v['http-port']) : 9100;
  if (!Number.isInteger(httpPort) || httpPort < 1 || httpPort > 65535) throw new ConfigError('http-port', 'expected a port number');
  const { runLab } = await import('../lab/demo.js');
  const out = (m: string) => process.stdout.write(m + '\n');
  const ok = await runLab({
    once: v.once ?? false,
    engine: 'userspace',
    httpPort,
    log: out,
    ...(v.id !== undefined ? { id: v.id } : {}),
    onServing: (url: string) => {
      const at = url.replace(/^http:\/\//, '');
      out(`Live page: ${url}/   Follow it here: tunnat trace --http ${at}   tunnat conntrack --events --http ${at}`);
    },
  });
  return ok ? 0 : 1;
}

async function cmdDown(args: string[]): Promise<number> {
  const v = parse(args, { tun: { type: 'string' }, table: { type: 'string' } });
  const tun = v.tun ?? 'tunnat0';
  const table = v.table !== undefined ? Number(v.table) : 7301;
  if (!Number.isInteger(table) || table < 1) throw new ConfigError('table', `expected a table number, got ${v.table}`);
  const { detectLeftovers, cleanLeftovers } = await import('../dataplane/routing.js');
  const leftover = await detectLeftovers(tun, table);
  if (!leftover) {
    process.stdout.write(`tunnat: nothing of tunnat (tun ${tun}, tables ${table}/${table + 1}) is set up here\n`);
    return 0;
  }
  await cleanLeftovers(leftover, (m: string) => process.stdout.write(m + '\n'));
  process.stdout.write('tunnat: removed\n');
  return 0;
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  try {
    switch (cmd) {
      case 'run':
        return await cmdRun(rest);
      case 'conntrack':
        return await cmdConntrack(rest);
      case 'stats':
        return await cmdStats(rest);
      case 'trace':
        return await cmdTrace(rest);
      case 'lab':
        return await cmdLab(rest);
      case 'kernel':
        return await (await import('./kernel-cmd.js')).cmdKernel(rest);
      case 'down':
        return await cmdDown(rest);
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        process.stdout.write(USAGE);
        return cmd === undefined ? 2 : 0;
      default:
        throw new UsageError(`unknown command ${JSON.stringify(cmd)}`);
    }
  } catch (err) {
    if (err instanceof UsageError || err instanceof ConfigError) {
      process.stderr.write(`tunnat: ${err.message}\n(see \`tunnat help\`)\n`);
      return 2;
    }
    process.stderr.write(`tunnat: ${(err as Error).message}\n`);
    return 1;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`tunnat: ${(err as Error).stack ?? String(err)}\n`);
    process.exitCode = 1;
  },
);
