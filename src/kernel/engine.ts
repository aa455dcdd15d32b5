import { ConfigError, MASQUERADE_ALL_USERSPACE, USERSPACE_ONLY, type RouterConfig } from '../config/config.js';
import { bindHttpListeners, closeListeners, startHttp } from '../observe/http.js';
import { preflight } from '../host/preflight.js';
import type { Logger } from '../util/log.js';
import { ipToString } from '../wire/addr.js';
import {
  applyKernelNat,
  chooseBackend,
  KernelNatError,
  probeEnv,
  readRuleCounters,
  removeKernelNat,
  removeKernelNatSync,
  verifyKernelNat,
  type AppliedKernel,
} from './apply.js';
import { createKernelRegistry, flowsFromInternal, listKernelFlowsSync } from './conntrack.js';
import { KernelObserver, KernelTable } from './observe.js';
import { planKernelNat, type KernelPlan } from './plan.js';

/**
 * `tunnat run --engine kernel`: the same flags, translated by the kernel's netfilter. Plan, apply,
 * verify, serve /metrics, /conntrack, the live page and flow events from the kernel's connection
 * table (observe.ts), and remove everything on stop — or, synchronously, on process exit if stop
 * never ran.
 *
 * A crashed (SIGKILLed) engine leaves its record under /run/tunnat; the next start undoes that
 * set-up from the record and carries on (logged as a warning). A set-up from `tunnat kernel apply`
 * is never removed implicitly: the engine refuses and names `tunnat kernel remove`.
 */
export interface RunningKernelEngine {
  readonly plan: KernelPlan;
  readonly applied: AppliedKernel;
  stop(reason?: string): Promise<void>;
  /** Resolves when the engine has stopped. */
  readonly done: Promise<void>;
}

const WATCH_INTERVAL_MS = 10_000;

export async function startKernelEngine(cfg: RouterConfig, log: Logger): Promise<RunningKernelEngine> {
  // resolveConfig refuses this for --engine kernel; here it is --engine auto falling back.
  if (cfg.pcap !== null) throw new ConfigError('pcap', `--pcap ${USERSPACE_ONLY}`);
  if (cfg.masquerade === 'all') throw new ConfigError('masquerade', `--masquerade all ${MASQUERADE_ALL_USERSPACE}`);
  await preflight(cfg);
  const choice = await chooseBackend(cfg.backend);
  const env = await probeEnv(cfg);
  const plan = planKernelNat(cfg, choice.backend, env);
  log.debug('kernel NAT plan', { backend: choice.backend, reason: choice.reason, steps: plan.steps.length });

  // Bound before the firewall is touched, so that a port in use ends the start with nothing to undo.
  const listeners = await bindHttpListeners({ tcp: cfg.http, unixPath: cfg.httpSocket });
  let applied: AppliedKernel;
  try {
    applied = await applyKernelNat(plan, log, { onStale: 'clean' });
  } catch (err) {
    await closeListeners(listeners);
    throw err;
  }
  let active = true;
  const onExit = (): void => {
    if (!active) return;
    active = false;
    try {
      removeKernelNatSync(applied);
    } catch {
      // Nothing more can be done while exiting; the record stays and the next start cleans it.
    }
  };
  process.on('exit', onExit);

  try {
    const v = await verifyKernelNat(applied);
    if (!v.ok) {
      throw new KernelNatError('VERIFY_FAILED', `the kernel does not hold what tunnat applied:\n  ${v.problems.join('\n  ')}`);
    }
  } catch (err) {
    active = false;
    process.off('exit', onExit);
    await closeListeners(listeners);
    await removeKernelNat(applied, log).catch((e: Error) => log.error('removing after a failed verification failed', { error: e.message }));
    throw err;
  }

  const ruleCounters = () => readRuleCounters(applied);
  const table = new KernelTable(cfg.internal);
  const registry = createKernelRegistry({ backend: choice.backend, internal: cfg.internal, ruleCounters, table });
  const observer = new KernelObserver(
    {
      table,
      internal: cfg.internal,
      ruleCounters,
      publicAddress: cfg.publicIp === null ? `${cfg.external}'s address (masquerade)` : ipToString(cfg.publicIp),
    },
    log,
  );
  const closeHttp = await startHttp(
    { registry, conntrack: () => flowsFromInternal(listKernelFlowsSync(), cfg.internal), handlers: observer.handlers() },
    { tcp: null, unixPath: null, handles: listeners },
  );

  log.info('tunnat running', {
    engine: 'kernel',
    backend: choice.backend,
    internal: plan.internal.join(','),
    external: cfg.external,
    mode: cfg.publicIp === null ? 'masquerade' : 'snat',
    ...(cfg.publicIp !== null ? { publicIp: ipToString(cfg.publicIp) } : {}),
    http: cfg.http ? `${cfg.http.host}:${cfg.http.port}` : 'off',
  });

  // The kernel does the work, so nothing else may keep the event loop alive (--http off): this
  // timer does, and checks on the way that nobody flushed tunnat's rules from under it.
  let lastProblems = '';
  let checking = false;
  const watch = setInterval(() => {
    if (checking || !active) return;
    checking = true;
    void verifyKernelNat(applied)
      .then((v) => {
        const now = v.problems.join('; ');
        if (now !== lastProblems) {
          if (now) log.error('the kernel no longer holds tunnat\'s NAT as applied (someone changed the firewall?)', { problems: now });
          else log.info('tunnat\'s NAT rules are back as applied');
        }
        lastProblems = now;
      })
      .catch((err: Error) => log.warn('could not read the rules back', { error: err.message }))
      .finally(() => (checking = false));
  }, WATCH_INTERVAL_MS);

  let resolveDone!: () => void;
  const done = new Promise<void>((r) => (resolveDone = r));
  let stopping: Promise<void> | null = null;
  const stop = (reason = 'stop'): Promise<void> => {
    if (stopping) return stopping;
    stopping = (async () => {
      log.info('tunnat stopping', { reason, engine: 'kernel' });
      clearInterval(watch);
      observer.close();
      await closeHttp().catch(() => {});
      if (active) {
        active = false;
        try {
          await removeKernelNat(applied, log);
        } catch (err) {
          log.error('removing the kernel NAT failed; `tunnat kernel remove` retries from the record', { error: (err as Error).message });
        }
      }
      process.off('exit', onExit);
      log.info('tunnat stopped');
      resolveDone();
    })();
    return stopping;
  };

  return { plan, applied, stop, done };
}

/**
 * For `--engine auto`: whether the userspace engine's start failure means "no TUN can be opened
 * here" (no /dev/net/tun, no tun driver, addon not built, or not allowed to open it), which the
 * kernel engine does not need.
 */
export function shouldFallBackToKernel(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return code === 'TUN_UNAVAILABLE' || code === 'TUN_PERMISSION';
}
