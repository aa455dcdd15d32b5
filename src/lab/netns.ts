/**
 * Typed helpers over `ip netns` for the lab: namespaces, veth pairs, bridges, addresses, routes,
 * sysctls and long-running children, plus a Cleanup registry that undoes all of it.
 *
 * Safety rule: nothing here touches the root namespace's network. Every `ip link add` runs inside a
 * namespace we created (a veth's peer is born directly in its target namespace), and sysctls are
 * written only through `ip netns exec`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { run, runSync, type RunOptions, type RunResult } from '../util/exec.js';

/** Linux IFNAMSIZ is 16 including the terminating NUL. */
export const MAX_IFNAME = 15;

// ---------------------------------------------------------------------------------------------
// Names

const ID_ALPHABET = 'abcdefghijklmnopqrstuvwxyz0123456789';

/** A short random id (lowercase letters and digits) that makes this run's names unique. */
export function randomId(length = 6, bytes: (n: number) => Uint8Array = randomBytes): string {
  const raw = bytes(length);
  let out = '';
  for (let i = 0; i < length; i++) out += ID_ALPHABET[raw[i]! % ID_ALPHABET.length];
  return out;
}

/** Throws unless `name` is usable as a Linux interface name. */
export function checkIfName(name: string): string {
  if (name.length === 0 || name.length > MAX_IFNAME) {
    throw new RangeError(`interface name "${name}" must be 1..${MAX_IFNAME} characters (IFNAMSIZ)`);
  }
  if (!/^[A-Za-z0-9_.-]+$/.test(name) || name === '.' || name === '..') {
    throw new RangeError(`interface name "${name}" may contain only letters, digits, "_", "." and "-"`);
  }
  return name;
}

/** Throws unless `name` is a namespace name we are willing to create and delete. */
export function checkNetnsName(name: string): string {
  // The name becomes a file under /run/netns; keep it to a safe, short alphabet.
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(name)) {
    throw new RangeError(`namespace name "${name}" must be 1..64 of [A-Za-z0-9_.-], not starting with a symbol`);
  }
  return name;
}

/** Namespace name for one role in one lab run: `tn<id>-<role>` (e.g. "tnab12cd-gw"). */
export function netnsName(id: string, role: string, prefix = 'tn'): string {
  return checkNetnsName(`${prefix}${id}-${role}`);
}

// ---------------------------------------------------------------------------------------------
// Cleanup

/** One undo step. `sync` must work without the event loop (exit handlers); `async` is preferred otherwise. */
export interface UndoStep {
  label: string;
  sync: () => void;
  async?: () => Promise<void>;
}

const liveRegistries = new Set<Cleanup>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // 'exit' also fires after an uncaught exception or rejection, so this covers crashes too.
  process.on('exit', () => {
    for (const c of [...liveRegistries].reverse()) c.runSync();
  });
}

export interface SignalTrap {
  /**
   * Resolves with the signal's name when SIGINT or SIGTERM arrives while this is pending; the
   * caller then cleans up itself. Without a pending wait, a signal runs the cleanup and exits.
   */
  wait(): Promise<NodeJS.Signals>;
  /** Remove the signal handlers. */
  release(): void;
}


/**
 * Everything a lab created, undone in reverse order. Steps run once: after `run()` the registry is
 * empty and can be reused. Registered with a process 'exit' hook while it holds steps, so normal
 * exit and crashes undo too (through the synchronous path).
 */
export class Cleanup {
  private steps: UndoStep[] = [];
  private running: Promise<void> | null = null;

  constructor(private readonly log: (line: string) => void = () => {}) {
    installExitHook();
  }

  get size(): number {
    return this.steps.length;
  }

  /** Labels of pending steps, oldest first. */
  labels(): string[] {
    return this.steps.map((s) => s.label);
  }

  /** Register an undo step; the returned function forgets it (when it was undone some other way). */
  defer(step: UndoStep): () => void {
    this.steps.push(step);
    liveRegistries.add(this);
    return () => {
      const i = this.steps.indexOf(step);
      if (i >= 0) this.steps.splice(i, 1);
      if (this.steps.length === 0) liveRegistries.delete(this);
    };
  }

  /** A position to roll back to: see `rollback`. */
  mark(): number {
    return this.steps.length;
  }

  /** Undo only the steps registered after `mark` (a failed build undoes its own work, not its caller's). */
  async rollback(mark: number): Promise<void> {
    const later = this.steps.splice(mark);
    const sub = new Cleanup(this.log);
    for (const step of later) sub.defer(step);
    if (this.steps.length === 0) liveRegistries.delete(this);
    await sub.run();
  }

  /** Undo everything, newest first. Failures are logged and do not stop the remaining steps. */
  run(): Promise<void> {
    if (this.running) return this.running;
    this.running = (async () => {
      const errors: string[] = [];
      for (let step = this.steps.pop(); step; step = this.steps.pop()) {
        try {
          if (step.async) await step.async();
          else step.sync();
        } catch (err) {
          errors.push(`${step.label}: ${(err as Error).message}`);
        }
      }
      liveRegistries.delete(this);
      for (const e of errors) this.log(`cleanup: ${e}`);
    })().finally(() => {
      this.running = null;
    });
    return this.running;
  }

  /** Synchronous undo for exit handlers. */
  runSync(): void {
    for (let step = this.steps.pop(); step; step = this.steps.pop()) {
      try {
        step.sync();
      } catch (err) {
        this.log(`cleanup: ${step.label}: ${(err as Error).message}`);
      }
    }
    liveRegistries.delete(this);
  }

  /**
   * Handle SIGINT/SIGTERM: a first signal resolves a pending `wait()` or else cleans up and exits
   * with 128+signal; a second signal cleans up synchronously and exits at once.
   */
  trapSignals(): SignalTrap {
    let waiter: ((sig: NodeJS.Signals) => void) | null = null;
    let seen = 0;
    const onSignal = (sig: NodeJS.Signals): void => {
      seen++;
      const code = 128 + signalNumber(sig);
      if (seen > 1) {
        this.runSync();
        process.exit(code);
      }
      if (waiter) {
        const w = waiter;
        waiter = null;
        w(sig);
        return;
      }
      this.log(`${sig}: cleaning up`);
      void this.run().finally(() => process.exit(code));
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    return {
      wait: () =>
        new Promise<NodeJS.Signals>((resolve) => {
          waiter = resolve;
        }),
      release: () => {
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
      },
    };
  }
}

// ---------------------------------------------------------------------------------------------
// Namespaces and links

/** Run a command inside a namespace. */
export function execIn(netns: string, argv: readonly string[], opts: Omit<RunOptions, 'netns'> = {}): Promise<RunResult> {
  return run(argv, { ...opts, netns });
}

/** Create a namespace with loopback up and IPv6 off (keeps captures free of ND/MLD noise); undone by the registry. */
export async function createNetns(name: string, cleanup: Cleanup, opts: { ipv6?: boolean } = {}): Promise<string> {
  checkNetnsName(name);
  await run(['ip', 'netns', 'add', name]);
  cleanup.defer({
    label: `ip netns del ${name}`,
    sync: () => {
      killNetnsProcessesSync(name);
      runSync(['ip', 'netns', 'del', name], { allowFail: true });
    },
    async: async () => {
      await killNetnsProcesses(name);
      await run(['ip', 'netns', 'del', name], { allowFail: true });
    },
  });
  await run(['ip', 'link', 'set', 'lo', 'up'], { netns: name });
  if (!opts.ipv6) {
    // "default" first so interfaces created later are born without IPv6.
    await setSysctl(name, 'net.ipv6.conf.default.disable_ipv6', '1');
    await setSysctl(name, 'net.ipv6.conf.all.disable_ipv6', '1');
  }
  return name;
}

/** Pids of processes whose network namespace is `name` (what `ip netns pids` reports). */
export async function netnsPids(name: string): Promise<number[]> {
  const r = await run(['ip', 'netns', 'pids', name], { allowFail: true });
  return parsePids(r.stdout);
}

function parsePids(text: string): number[] {
  return text
    .split(/\s+/)
    .filter((s) => /^\d+$/.test(s))
    .map(Number);
}

/**
 * Kill what still lives in a namespace before deleting it: `ip netns del` only removes the name,
 * and a process left inside would keep the namespace (and its interfaces) alive, unreachable.
 */
async function killNetnsProcesses(name: string): Promise<void> {
  for (const pid of await netnsPids(name)) {
    if (pid === process.pid) continue;
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

function killNetnsProcessesSync(name: string): void {
  const r = runSync(['ip', 'netns', 'pids', name], { allowFail: true });
  for (const pid of parsePids(r.stdout)) {
    if (pid === process.pid) continue;
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

/** Namespaces that currently exist (names only). */
export async function listNetns(): Promise<string[]> {
  const r = await run(['ip', 'netns', 'list'], { allowFail: true });
  return r.stdout
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0] ?? '')
    .filter((n) => n.length > 0);
}

export interface VethEnd {
  netns: string;
  name: string;
}

/**
 * A veth pair between two namespaces. It is created inside `a.netns` with its peer born in
 * `b.netns`, so it never exists in the root namespace; it dies with either namespace.
 */
export async function addVeth(a: VethEnd, b: VethEnd, opts: { mtu?: number } = {}): Promise<void> {
  checkIfName(a.name);
  checkIfName(b.name);
  const mtu = opts.mtu !== undefined ? ['mtu', String(opts.mtu)] : [];
  await run(['ip', 'link', 'add', a.name, ...mtu, 'type', 'veth', 'peer', 'name', b.name, ...mtu, 'netns', b.netns], {
    netns: a.netns,
  });
}

/** A bridge inside a namespace; STP off and no forward delay, so ports forward as soon as they are up. */
export async function addBridge(netns: string, name: string): Promise<void> {
  checkIfName(name);
  await run(['ip', 'link', 'add', name, 'type', 'bridge', 'stp_state', '0', 'forward_delay', '0'], { netns });
}

/** Make `port` a port of `bridge` (both in `netns`). */
export async function setMaster(netns: string, port: string, bridge: string): Promise<void> {
  await run(['ip', 'link', 'set', port, 'master', bridge], { netns });
}

/** Add an address (CIDR, e.g. "192.168.1.1/24") to an interface. */
export async function addAddress(netns: string, dev: string, cidr: string): Promise<void> {
  await run(['ip', 'addr', 'add', cidr, 'dev', dev], { netns });
}

export async function linkUp(netns: string, dev: string): Promise<void> {
  await run(['ip', 'link', 'set', dev, 'up'], { netns });
}

export async function setMtu(netns: string, dev: string, mtu: number): Promise<void> {
  await run(['ip', 'link', 'set', dev, 'mtu', String(mtu)], { netns });
}

/** `ip route add <dest> [via <via>] [dev <dev>]` inside a namespace; dest may be "default". */
export async function addRoute(netns: string, dest: string, opts: { via?: string; dev?: string; table?: string | number }): Promise<void> {
  const argv = ['ip', 'route', 'add', dest];
  if (opts.via) argv.push('via', opts.via);
  if (opts.dev) argv.push('dev', opts.dev);
  if (opts.table !== undefined) argv.push('table', String(opts.table));
  await run(argv, { netns });
}

/** Write a sysctl inside one of our namespaces (never the root namespace: netns is mandatory). */
export async function setSysctl(netns: string, key: string, value: string): Promise<void> {
  if (!netns) throw new Error('setSysctl needs a namespace: the root namespace is off limits');
  await run(['sysctl', '-q', '-w', `${key}=${value}`], { netns });
}

/** Read a sysctl inside a namespace. */
export async function getSysctl(netns: string, key: string): Promise<string> {
  const r = await run(['sysctl', '-n', key], { netns });
  return r.stdout.trim();
}

// ---------------------------------------------------------------------------------------------
// Long-running children

export interface NsProcessOptions {
  /** Prefix for log lines (defaults to the program name). */
  label?: string;
  /** Called with each line the child prints (stdout and stderr). */
  onLine?: (line: string) => void;
  /** Keep at most this many characters of output (default 1 MiB). */
  maxOutput?: number;
  /** Registry that stops the child on cleanup. */
  cleanup?: Cleanup;
  /** Extra environment variables. */
  env?: NodeJS.ProcessEnv;
}

/** Is `pid` running (not exited, not a zombie waiting to be reaped)? */
export function isAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 3, after the parenthesised command name, is the state letter.
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

/** Block the thread for `ms` milliseconds (exit handlers only: the event loop is gone there). */
export function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** A child process running in a namespace, in its own process group so that kill reaches its children. */
export class NsProcess {
  readonly child: ChildProcess;
  readonly pid: number;
  /** Resolves with the exit code (or 128+signal) once the child has exited. */
  readonly exited: Promise<number>;
  private out = '';
  private exitCode: number | null = null;
  private readonly lineWaiters = new Set<(line: string) => void>();
  private readonly forget: (() => void) | null;

  constructor(
    readonly netns: string | null,
    readonly argv: readonly string[],
    opts: NsProcessOptions = {},
  ) {
    const full = netns ? ['ip', 'netns', 'exec', netns, ...argv] : [...argv];
    this.child = spawn(full[0]!, full.slice(1), {
      // Own process group: Ctrl-C at a terminal goes to us only, and we stop children in order.
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: opts.env ? { ...process.env, ...opts.env } : process.env,
    });
    if (this.child.pid === undefined) throw new Error(`could not start ${full.join(' ')}`);
    this.pid = this.child.pid;
    const max = opts.maxOutput ?? 1 << 20;
    const onChunk = (() => {
      let partial = '';
      return (chunk: Buffer): void => {
        const text = chunk.toString('utf8');
        this.out += text;
        if (this.out.length > max) this.out = this.out.slice(this.out.length - max);
        partial += text;
        const lines = partial.split('\n');
        partial = lines.pop() ?? '';
        for (const line of lines) {
          opts.onLine?.(line);
          for (const w of this.lineWaiters) w(line);
        }
      };
    })();
    this.child.stdout?.on('data', onChunk);
    this.child.stderr?.on('data', onChunk);
    this.exited = new Promise((resolve) => {
      this.child.on('exit', (code, signal) => {
        this.exitCode = code ?? 128 + (signal ? signalNumber(signal) : 0);
        resolve(this.exitCode);
      });
      this.child.on('error', (err) => {
        this.out += `\n[spawn error] ${err.message}\n`;
        this.exitCode = 127;
        resolve(127);
      });
    });
    this.forget = opts.cleanup
      ? opts.cleanup.defer({
          label: `stop ${opts.label ?? argv[0]} (pid ${this.pid})`,
          sync: () => this.stopSync(),
          async: async () => {
            await this.stop();
          },
        })
      : null;
    void this.exited.then(() => this.forget?.());
  }

  /** Everything the child printed so far (stdout and stderr interleaved). */
  output(): string {
    return this.out;
  }

  /** Exit code once exited, else null. */
  get code(): number | null {
    return this.exitCode;
  }

  /** Wait for a printed line matching `re`; rejects if the child exits first or on timeout. */
  waitForLine(re: RegExp, timeoutMs = 10_000): Promise<string> {
    const existing = this.out.split('\n').find((l) => re.test(l));
    if (existing !== undefined) return Promise.resolve(existing);
    return new Promise((resolve, reject) => {
      const done = (): void => {
        clearTimeout(timer);
        this.lineWaiters.delete(onLine);
      };
      const onLine = (line: string): void => {
        if (re.test(line)) {
          done();
          resolve(line);
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${re} from ${this.argv.join(' ')}; output:\n${this.out}`));
      }, timeoutMs);
      this.lineWaiters.add(onLine);
      void this.exited.then((code) => {
        if (!this.lineWaiters.has(onLine)) return;
        done();
        reject(new Error(`${this.argv.join(' ')} exited (${code}) before printing ${re}; output:\n${this.out}`));
      });
    });
  }

  /** Send `signal` to the process group, wait up to `graceMs`, then SIGKILL. Resolves with the exit code. */
  async stop(signal: NodeJS.Signals = 'SIGTERM', graceMs = 5_000): Promise<number> {
    if (this.exitCode !== null) return this.exitCode;
    this.signal(signal);
    const timer = setTimeout(() => this.signal('SIGKILL'), graceMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Synchronous stop for exit handlers: signal, poll /proc, then SIGKILL. */
  stopSync(signal: NodeJS.Signals = 'SIGTERM', graceMs = 3_000): void {
    if (this.exitCode !== null || !isAlive(this.pid)) return;
    this.signal(signal);
    const deadline = Date.now() + graceMs;
    while (isAlive(this.pid) && Date.now() < deadline) sleepSync(20);
    if (isAlive(this.pid)) this.signal('SIGKILL');
  }

  /** Signal the whole process group once (a second SIGTERM may mean "hurry" to the child). */
  signal(signal: NodeJS.Signals): void {
    try {
      process.kill(-this.pid, signal);
    } catch {
      try {
        process.kill(this.pid, signal);
      } catch {
        // already gone
      }
    }
  }
}

function signalNumber(sig: NodeJS.Signals): number {
  return (osConstants.signals as Record<string, number>)[sig] ?? 0;
}

/** Start a long-running command inside a namespace (see NsProcess). */
export function spawnIn(netns: string, argv: readonly string[], opts: NsProcessOptions = {}): NsProcess {
  return new NsProcess(netns, argv, opts);
}
