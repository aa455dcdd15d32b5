#!/usr/bin/env node
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { ConfigError, resolveConfig, describeConfig } from './config.js';
import { createLogger } from '../util/log.js';
import { formatFlow, type FlowRecord } from '../conntrack/listing.js';
import { httpGet } from './client.js';

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
             [--max-flows-per-host N] [--no-icmp-errors] [--engine userspace|kernel|auto]
  tunnat conntrack [--http HOST:PORT|unix:PATH] [--json]
  tunnat lab [--once] [--http-port PORT]
  tunnat down [--tun NAME] [--table N]
  tunnat help

run        translate the traffic of --internal behind --external (masquerade on its primary
           address, or static SNAT to --public-ip); serves /metrics and /conntrack on --http
           (default 127.0.0.1:9100). Stops cleanly on Ctrl-C / SIGTERM, removing its routing.
conntrack  list the running router's flows, like \`conntrack -L\`
down       remove the routing set-up a killed tunnat left behind (a running one cleans up itself)
lab        build a namespace lab (LAN hosts, gateway, internet host), run tunnat in it, show real
           traffic being translated; --once runs the demo, cleans up and exits (0 if all worked)
`;

class UsageError extends Error {}

const RUN_OPTIONS = {
  internal: { type: 'string' },
  external: { type: 'string' },
  'public-ip': { type: 'string' },
  tun: { type: 'string' },
  ports: { type: 'string' },
  'gateway-ports': { type: 'string' },
  http: { type: 'string' },
  'http-socket': { type: 'string' },
  config: { type: 'string' },
  'max-flows': { type: 'string' },
  table: { type: 'string' },
  batch: { type: 'string' },
  'log-level': { type: 'string' },
  'dry-run': { type: 'boolean' },
  engine: { type: 'string' },
  backend: { type: 'string' },
  filtering: { type: 'string' },
  forward: { type: 'string', multiple: true },
  'allow-egress': { type: 'string' },
  'egress-reject': { type: 'boolean' },
  'max-flows-per-host': { type: 'string' },
  'no-icmp-errors': { type: 'boolean' },
} satisfies ParseArgsConfig['options'];

function parse<T extends NonNullable<ParseArgsConfig['options']>>(args: string[], options: T) {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: false }).values;
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

function camel(flag: string): string {
  return flag.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}

async function cmdRun(args: string[]): Promise<number> {
  const values = parse(args, RUN_OPTIONS) as Record<string, unknown>;
  const flags: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(values)) {
    if (k === 'dry-run') continue;
    if (k === 'no-icmp-errors') flags.icmpErrors = !v;
    else flags[camel(k)] = v;
  }
  const cfg = resolveConfig(flags);
  if (values['dry-run']) {
    process.stdout.write(JSON.stringify(describeConfig(cfg), null, 2) + '\n');
    return 0;
  }
  const log = createLogger(cfg.logLevel);
  const { startRouter, StartupError } = await import('../dataplane/router.js');
  let router;
  try {
    router = await startRouter(cfg, log);
  } catch (err) {
    if (err instanceof StartupError || (err as { code?: string }).code) {
      log.error((err as Error).message, { code: (err as { code?: string }).code });
      return 1;
    }
    throw err;
  }
  const onSignal = (sig: string) => void router.stop(sig);
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  process.on('uncaughtException', (err) => {
    log.error('unexpected error; stopping', { error: err.stack ?? String(err) });
    void router.stop('crash').finally(() => process.exit(1));
  });
  await router.done;
  return 0;
}

async function cmdConntrack(args: string[]): Promise<number> {
  const v = parse(args, { http: { type: 'string' }, json: { type: 'boolean' } });
  const flows = JSON.parse(await httpGet(v.http ?? '127.0.0.1:9100', '/conntrack')) as FlowRecord[];
  if (v.json) process.stdout.write(JSON.stringify(flows, null, 2) + '\n');
  else {
    for (const f of flows) process.stdout.write(formatFlow(f) + '\n');
    process.stderr.write(`tunnat: ${flows.length} flow entries listed\n`);
  }
  return 0;
}

async function cmdLab(args: string[]): Promise<number> {
  const v = parse(args, { once: { type: 'boolean' }, 'http-port': { type: 'string' } });
  const httpPort = v['http-port'] !== undefined ? Number(v['http-port']) : 9100;
  if (!Number.isInteger(httpPort) || httpPort < 1 || httpPort > 65535) throw new ConfigError('http-port', 'expected a port number');
  const { runLab } = await import('../lab/demo.js');
  const ok = await runLab({ once: v.once ?? false, engine: 'userspace', httpPort, log: (m: string) => process.stdout.write(m + '\n') });
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
      case 'lab':
        return await cmdLab(rest);
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
