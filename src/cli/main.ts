#!/usr/bin/env node
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { ConfigError, type RouterConfig } from '../config/config.js';
import { resolveConfig, describeConfig } from '../config/resolve.js';
import { configFlags } from './router-flags.js';
import { verbHelp, type Verb } from './flags.js';
import { DOWN_VERB, LAB_VERB, RUN_VERB, usage } from './verbs.js';
import { createLogger, type Logger } from '../util/log.js';
import { cmdConntrack } from './conntrack-cmd.js';
import { cmdStats } from './stats-cmd.js';
import { cmdTrace } from './trace-cmd.js';

/**
 * The `tunnat` command. Exit codes: 0 success, 1 runtime failure, 2 bad usage or configuration.
 */
class UsageError extends Error {}

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
    if (cfg.workers > 1) return await (await import('../router/workers.js')).startWorkerRouter(cfg, log);
    return await startRouter(cfg, log);
  } catch (err) {
    const kernel = await import('../kernel/engine.js');
    if (cfg.engine !== 'auto' || !kernel.shouldFallBackToKernel(err)) throw err;
    log.warn('no TUN can be opened; falling back to the kernel engine', { reason: (err as Error).message });
    return kernel.startKernelEngine(cfg, log);
  }
}

/** Print the verb's help when --help was given; true if it was. */
function helpAsked(verb: Verb, values: { help?: boolean }): boolean {
  if (values.help) process.stdout.write(verbHelp(verb) + '\n');
  return values.help === true;
}

async function cmdRun(args: string[]): Promise<number> {
  const values = parse(args, RUN_VERB.flags) as Record<string, unknown>;
  if (helpAsked(RUN_VERB, values)) return 0;
  const { 'dry-run': dryRun, help: _help, ...rest } = values;
  const flags = configFlags(rest);
  const cfg = resolveConfig(flags);
  if (dryRun) {
    // The checks a start makes before it changes anything; an interface missing here is only a warning,
    // since the file may be meant for another machine.
    const { preflight } = await import('../host/preflight.js');
    for (const w of await preflight(cfg, { forAnotherHost: true })) process.stderr.write(`tunnat: warning: ${w}\n`);
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
  const v = parse(args, LAB_VERB.flags);
  if (helpAsked(LAB_VERB, v)) return 0;
  if (v.id !== undefined && !/^[a-z0-9]{1,12}$/.test(v.id)) throw new ConfigError('id', 'expected 1-12 lowercase letters or digits (namespaces are named tn<ID>-gw, tn<ID>-h0, …)');
  const httpPort = v['http-port'] !== undefined ? Number(v['http-port']) : 9100;
  if (!Number.isInteger(httpPort) || httpPort < 1 || httpPort > 65535) throw new ConfigError('http-port', 'expected a port number');
  const out = (m: string) => process.stdout.write(m + '\n');
  if (v.ha) {
    const { runHaLab } = await import('../lab/ha-demo.js');
    return (await runHaLab({ once: v.once ?? false, log: out, ...(v.id !== undefined ? { id: v.id } : {}) })) ? 0 : 1;
  }
  const { runLab } = await import('../lab/demo.js');
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
  const v = parse(args, DOWN_VERB.flags);
  if (helpAsked(DOWN_VERB, v)) return 0;
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
      case 'ha':
        return await (await import('./ha-cmd.js')).cmdHa(rest);
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
        process.stdout.write(usage());
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
