import { mkdirSync, readFileSync, readdirSync, renameSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';

/**
 * tunnat's record of what it changed in a namespace, kept under /run so that it outlives a crash
 * but not a reboot (which takes the namespace's rules and routes with it anyway).
 *
 * `ip netns exec` shares /run between namespaces, so files are keyed by the namespace's inode.
 * The kernel reuses those inode numbers as soon as a namespace is freed, so a file may describe an
 * earlier namespace that happened to get the same number; readers must check that before trusting
 * it (see detectLeftovers in src/dataplane/leftovers.ts).
 */

/** Overridable so that a test can look without touching the real directory; tunnat itself uses the default. */
export const STATE_DIR = process.env['TUNNAT_STATE_DIR'] ?? '/run/tunnat';

/** The inode of the calling process's network namespace. */
export function netnsInode(): number {
  return statSync('/proc/self/ns/net').ino;
}

export function stateFilePath(inode: number, tun: string): string {
  return join(STATE_DIR, `${inode}-${tun}.json`);
}

/** Every state file of one namespace (any TUN name), as paths. */
export function stateFilesOfNetns(inode: number): string[] {
  let names: string[];
  try {
    names = readdirSync(STATE_DIR);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const prefix = `${inode}-`;
  return names.filter((n) => n.startsWith(prefix) && n.endsWith('.json')).map((n) => join(STATE_DIR, n));
}

/**
 * Replace the file atomically (write a sibling, then rename) so that a crash mid-write leaves
 * either the old record or the new one, never half of one.
 */
export function writeStateFile(path: string, data: unknown): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o755 });
  // One fixed sibling name: a crash between write and rename leaves a file that the next write
  // or deleteStateFile replaces, instead of one more per crash.
  const tmp = `${path}.tmp`;
  writeFileSync(tmp, JSON.stringify(data, null, 2) + '\n', { mode: 0o644 });
  renameSync(tmp, path);
}

/** The parsed file, null when it does not exist; throws when it exists but is not JSON. */
export function readStateFile(path: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
  return JSON.parse(text) as unknown;
}

export function deleteStateFile(path: string): void {
  for (const p of [path, `${path}.tmp`]) {
    try {
      unlinkSync(p);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
}

/**
 * The start time of a process (field 22 of /proc/PID/stat, in clock ticks since boot), or null
 * when no such process exists. Together with the pid it names one process even after pid reuse.
 */
export function processStartTime(pid: number): string | null {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // The command name (field 2) may contain spaces and parentheses; fields after the last ')' are plain.
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return rest[19] ?? null;
}

/** True when the process that wrote a record (pid + start time) still runs. A zombie (exited, not yet
 * reaped by its parent) has finished everything it will ever do: it counts as gone. */
export function isProcessAlive(pid: number, startTime: string | null): boolean {
  const now = processStartTime(pid);
  if (now === null) return false;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
    if (state === 'Z' || state === 'X') return false;
  } catch {
    return false;
  }
  return startTime === null || now === startTime;
}
