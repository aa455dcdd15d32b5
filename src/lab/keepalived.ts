/**
 * keepalived inside a lab namespace, for the gateway-pair tests: one process per gateway, in the
 * foreground, logging to its stdout, with every file it writes in a private directory.
 *
 * Why each flag:
 * - `-n -l -D`: no fork into the background, log lines on the console in detail, so the handle reads
 *   state changes as they happen and the process stays our child (its group is ours to signal).
 * - `-G`: not to syslog; the host's journal is not the lab's business.
 * - `-P`: the VRRP subsystem only; there is no virtual server to check, so no checker or BFD child.
 * - `-p -r -c -b`: pid files in the private directory. keepalived refuses to start while the default
 *   ones (/run/keepalived.pid, …) name a live keepalived, so two gateways of one lab, or two labs on one
 *   machine, need their own.
 *
 * keepalived forks a VRRP child that does the real work. Both run in the process group NsProcess gives
 * the parent, and stopping signals the group; the child's pid file is read as well, so that a child
 * left behind by a parent that died first is killed too.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Cleanup } from './cleanup.js';
import { execIn } from './netns.js';
import { isAlive, sleepSync, spawnIn, type NsProcess } from './process.js';

export type KeepalivedState = 'MASTER' | 'BACKUP' | 'FAULT' | 'INIT' | 'unknown';

export interface KeepalivedRunOptions {
  netns: string;
  /** The whole configuration file (see keepalivedConf in src/ha/keepalived.ts). */
  conf: string;
  /** Names the instance in log lines and its directory (letters, digits, '-', '_'). */
  label: string;
  /** Registry that stops keepalived (and its child) and removes its directory. */
  cleanup: Cleanup;
  /** Progress lines. */
  log?: (line: string) => void;
  /** Every line keepalived prints. */
  onLine?: (line: string) => void;
}

export interface KeepalivedHandle {
  /** The parent keepalived process. */
  pid: number;
  /** The private directory: keepalived.conf and the pid files. */
  dir: string;
  /** Resolves with the exit code (or 128+signal) once the parent has exited. */
  exited: Promise<number>;
  /** Everything keepalived printed so far. */
  output(): string;
  /** Wait for a printed line matching `re` (rejects on timeout or exit). */
  waitForLine(re: RegExp, timeoutMs?: number): Promise<string>;
  /**
   * The state every VRRP instance is in, from the last "Entering … STATE" line of each; 'unknown'
   * before the first or while the instances disagree (a sync group keeps them together, briefly apart).
   */
  state(): KeepalivedState;
  /** Each instance's last reported state, by instance name. */
  instanceStates(): Record<string, KeepalivedState>;
  /** Poll until state() is `want`; rejects with the output on timeout. Resolves with the time it took. */
  waitForState(want: KeepalivedState, timeoutMs?: number): Promise<number>;
  /** Pids of keepalived's processes that are still alive (parent and VRRP child). */
  livePids(): number[];
  /** SIGTERM (keepalived removes its addresses and exits), then wait; SIGKILL after 5 s. */
  stop(): Promise<number>;
  /** SIGKILL the parent and its child at once (a crash: the addresses stay where they were). */
  kill(): Promise<number>;
}

// "(tunnat_lan) Entering MASTER STATE", "(tunnat_wan) Entering BACKUP STATE (init)", "… FAULT STATE".
const ENTERING = /\(([^)\s]+)\) Entering (MASTER|BACKUP|FAULT|INIT) STATE/i;

/** Instance states from keepalived's log text (pure; exported for tests). */
export function parseInstanceStates(text: string): Record<string, KeepalivedState> {
  const states: Record<string, KeepalivedState> = {};
  for (const line of text.split('\n')) {
    const m = ENTERING.exec(line);
    if (m) states[m[1]!] = m[2]!.toUpperCase() as KeepalivedState;
  }
  return states;
}

/** The state all instances share, or 'unknown' (pure). */
export function commonState(states: Record<string, KeepalivedState>): KeepalivedState {
  const values = new Set(Object.values(states));
  return values.size === 1 ? [...values][0]! : 'unknown';
}

/** The argv that runs keepalived in the foreground with its files in `dir` (pure). */
export function keepalivedArgv(dir: string): string[] {
  return [
    'keepalived',
    '-n', '-l', '-D', '-G', '-P',
    '-f', join(dir, 'keepalived.conf'),
    '-p', join(dir, 'keepalived.pid'),
    '-r', join(dir, 'vrrp.pid'),
    '-c', join(dir, 'checkers.pid'),
    '-b', join(dir, 'bfd.pid'),
  ];
}

function readPid(file: string): number | null {
  try {
    const n = Number(readFileSync(file, 'utf8').trim());
    return Number.isInteger(n) && n > 0 ? n : null;
  } catch {
    return null;
  }
}

/** Is `pid` a live keepalived (a pid from a stale file may since belong to someone else)? */
function isKeepalived(pid: number): boolean {
  if (!isAlive(pid)) return false;
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'keepalived';
  } catch {
    return false;
  }
}

/**
 * keepalived's own check of a configuration (`keepalived -t`), run inside `netns` because it looks the
 * interfaces up. Resolves with what it printed: empty when it has nothing to say. keepalived reads only
 * regular files, so the text goes through a temporary one.
 */
export async function checkKeepalivedConf(netns: string, conf: string): Promise<{ ok: boolean; output: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'tunnat-keepalived-check-'));
  try {
    const file = join(dir, 'keepalived.conf');
    writeFileSync(file, conf);
    const r = await execIn(netns, ['keepalived', '-t', '-l', '-f', file], { allowFail: true });
    return { ok: r.exitCode === 0, output: `${r.stdout}${r.stderr}`.trim() };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Start keepalived in `netns` with `conf`; stopped and its directory removed by `cleanup`. */
export function startKeepalived(opts: KeepalivedRunOptions): KeepalivedHandle {
  if (!/^[A-Za-z0-9_-]{1,32}$/.test(opts.label)) throw new RangeError(`label "${opts.label}" must be 1..32 of [A-Za-z0-9_-]`);
  const log = opts.log ?? (() => {});
  const dir = mkdtempSync(join(tmpdir(), `tunnat-keepalived-${opts.label}-`));
  const removeDir = (): void => rmSync(dir, { recursive: true, force: true });
  let proc: NsProcess;
  try {
    writeFileSync(join(dir, 'keepalived.conf'), opts.conf);
    proc = spawnIn(opts.netns, keepalivedArgv(dir), {
      label: `keepalived ${opts.label}`,
      ...(opts.onLine ? { onLine: opts.onLine } : {}),
    });
  } catch (err) {
    removeDir();
    throw err;
  }
  log(`keepalived ${opts.label}: pid ${proc.pid} in ${opts.netns}, files in ${dir}`);

  // The VRRP child's pid, remembered once seen: its file is removed when it exits normally.
  let childPid: number | null = null;
  const livePids = (): number[] => {
    childPid = readPid(join(dir, 'vrrp.pid')) ?? childPid;
    return [proc.pid, childPid].filter((p): p is number => p !== null && isKeepalived(p));
  };
  const killStragglers = (): void => {
    for (const pid of livePids()) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone meanwhile
      }
    }
  };
  // A child is "gone" only once it is no longer a live keepalived (a zombie counts as gone).
  const waitChildGone = async (ms: number): Promise<void> => {
    const deadline = Date.now() + ms;
    while (livePids().length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  };

  // Kept until the registry runs, after stop() and kill() too: the directory helps explain a failure.
  opts.cleanup.defer({
    label: `stop keepalived ${opts.label} (pid ${proc.pid})`,
    sync: () => {
      proc.stopSync();
      const deadline = Date.now() + 2_000;
      while (livePids().length > 0 && Date.now() < deadline) sleepSync(20);
      killStragglers();
      removeDir();
    },
    async: async () => {
      await proc.stop();
      await waitChildGone(2_000);
      killStragglers();
      removeDir();
    },
  });

  const states = (): Record<string, KeepalivedState> => parseInstanceStates(proc.output());
  const state = (): KeepalivedState => commonState(states());

  return {
    pid: proc.pid,
    dir,
    exited: proc.exited,
    output: () => proc.output(),
    waitForLine: (re, timeoutMs) => proc.waitForLine(re, timeoutMs),
    state,
    instanceStates: states,
    waitForState: async (want, timeoutMs = 10_000) => {
      const t0 = performance.now();
      while (state() !== want) {
        if (performance.now() - t0 > timeoutMs) {
          throw new Error(`keepalived ${opts.label} not ${want} after ${timeoutMs} ms (${JSON.stringify(states())}); output:\n${proc.output()}`);
        }
        if (proc.code !== null) throw new Error(`keepalived ${opts.label} exited (${proc.code}); output:\n${proc.output()}`);
        await new Promise((r) => setTimeout(r, 10));
      }
      return performance.now() - t0;
    },
    livePids,
    stop: async () => {
      livePids();
      const code = await proc.stop();
      await waitChildGone(2_000);
      killStragglers();
      return code;
    },
    kill: async () => {
      livePids();
      proc.signal('SIGKILL');
      killStragglers();
      const code = await proc.exited;
      await waitChildGone(2_000);
      return code;
    },
  };
}
