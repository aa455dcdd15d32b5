/**
 * Long-running children of the lab (routers, servers, tcpdump, traffic generators), each in a
 * namespace and in its own process group, stopped by the Cleanup registry they are given.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { signalNumber, type Cleanup } from './cleanup.js';

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

/** Start a long-running command inside a namespace (see NsProcess). */
export function spawnIn(netns: string, argv: readonly string[], opts: NsProcessOptions = {}): NsProcess {
  return new NsProcess(netns, argv, opts);
}
