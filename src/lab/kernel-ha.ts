/**
 * conntrackd in a lab namespace, for the kernel engine's standby pair (src/kernel/ha.ts). Every file the
 * daemon uses — its configuration, control socket, lock file and log — lives in a private temporary
 * directory, so two daemons of one test, or of tests running in parallel, never share a socket or a
 * lock, and none of them touches the paths a distribution's conntrackd service uses.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run, type RunResult } from '../util/exec.js';
import type { Cleanup } from './cleanup.js';
import { NsProcess } from './process.js';

/** The private paths a daemon's configuration must use. */
export interface ConntrackdFiles {
  dir: string;
  conf: string;
  socketPath: string;
  lockFile: string;
  logFile: string;
}

export interface StartConntrackdOptions {
  netns: string;
  /** The configuration, written for the private paths it is given (see conntrackdConf in src/kernel/ha.ts). */
  conf: (files: ConntrackdFiles) => string;
  /** Names the daemon in cleanup labels and errors. */
  label?: string;
  /** Stops the daemon and removes its directory on every exit path (a synchronous one at process exit too). */
  cleanup: Cleanup;
  /** conntrackd's binary (default: conntrackd from PATH). */
  bin?: string;
  /** How long to wait for the daemon to answer on its socket (default 10 s). */
  readyTimeoutMs?: number;
}

export interface ConntrackdHandle {
  pid: number;
  files: ConntrackdFiles;
  /** What the daemon printed (it logs to its console in the foreground). */
  output(): string;
  /** The log file's contents so far. */
  log(): string;
  /** SIGTERM, then SIGKILL after a grace period; resolves with the exit code. */
  stop(): Promise<number>;
  /** SIGKILL, as a crash: the lock file stays behind. */
  kill(): Promise<number>;
  /** `conntrackd -C <conf> ARGS` in the daemon's namespace (a client request: -s, -i, -e, -c, -n, …). */
  run(args: readonly string[]): Promise<RunResult>;
}

export async function startConntrackd(o: StartConntrackdOptions): Promise<ConntrackdHandle> {
  const label = o.label ?? `conntrackd in ${o.netns}`;
  const bin = o.bin ?? 'conntrackd';
  const dir = mkdtempSync(join(tmpdir(), 'tunnat-conntrackd-'));
  // Registered first, so it runs after the daemon's stop (the registry undoes newest first).
  o.cleanup.defer({ label: `remove ${dir} (${label})`, sync: () => rmSync(dir, { recursive: true, force: true }) });
  const files: ConntrackdFiles = {
    dir,
    conf: join(dir, 'conntrackd.conf'),
    socketPath: join(dir, 'ctl'),
    lockFile: join(dir, 'lock'),
    logFile: join(dir, 'log'),
  };
  const text = o.conf(files);
  for (const p of [files.socketPath, files.lockFile]) {
    // A configuration that ignored the paths it was given would share a socket or lock with another daemon.
    if (!text.includes(p)) throw new Error(`${label}: the configuration does not use its private ${p}`);
  }
  writeFileSync(files.conf, text, { mode: 0o600 });
  const client = (args: readonly string[]): Promise<RunResult> =>
    run([bin, '-C', files.conf, ...args], { netns: o.netns, allowFail: true, timeoutMs: 15_000 });

  // In the foreground (no -d), so the process we hold is the daemon itself and its group is ours to stop.
  const proc = new NsProcess(o.netns, [bin, '-C', files.conf], { label, cleanup: o.cleanup });
  const deadline = Date.now() + (o.readyTimeoutMs ?? 10_000);
  for (;;) {
    if (proc.code !== null) throw new Error(`${label} exited (${proc.code}) at start:\n${proc.output()}`);
    if ((await client(['-s'])).exitCode === 0) break;
    if (Date.now() > deadline) {
      await proc.stop();
      throw new Error(`${label} did not answer on ${files.socketPath} within ${o.readyTimeoutMs ?? 10_000} ms:\n${proc.output()}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    pid: proc.pid,
    files,
    output: () => proc.output(),
    log: () => {
      try {
        return readFileSync(files.logFile, 'utf8');
      } catch {
        return '';
      }
    },
    stop: () => proc.stop(),
    kill: () => proc.stop('SIGKILL', 0),
    run: client,
  };
}
