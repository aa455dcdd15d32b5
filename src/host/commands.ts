import { accessSync, constants as fsConstants } from 'node:fs';
import { join } from 'node:path';
import { run, runSync, type RunResult } from '../util/exec.js';

/**
 * The one way tunnat runs the tools that change the host (ip, nft, iptables-restore, conntrack),
 * and the one way it words their failures. Commands are plain data so that the undo plans can be
 * written as generators of commands and driven by any runner (the real one, or a fake in tests).
 */

export type { RunResult };

/** A command to run: its argv and, for tools that read a script, its standard input. */
export interface Cmd {
  argv: readonly string[];
  input?: string;
}

/** Runs commands for a driver; never throws for a non-zero exit (the caller reads exitCode). */
export interface Runner {
  run(cmd: Cmd): Promise<RunResult>;
  runSync(cmd: Cmd): RunResult;
}

// Non-root shells often lack the sbin directories, where all of these tools live.
const EXTRA_PATH = ['/usr/local/sbin', '/usr/sbin', '/sbin'];
const binCache = new Map<string, string | null>();

/** The absolute path of a tool, or null when it is not installed. */
export function findBinary(name: string): string | null {
  const cached = binCache.get(name);
  if (cached !== undefined) return cached;
  const dirs = [...(process.env['PATH'] ?? '').split(':').filter((d) => d !== ''), ...EXTRA_PATH];
  let found: string | null = null;
  for (const d of dirs) {
    try {
      accessSync(join(d, name), fsConstants.X_OK);
      found = join(d, name);
      break;
    } catch {
      // not here
    }
  }
  binCache.set(name, found);
  return found;
}

/** The argv with its tool resolved to an absolute path (when found). */
function resolved(argv: readonly string[]): string[] {
  const [tool, ...rest] = argv;
  return [findBinary(tool!) ?? tool!, ...rest];
}

function options(cmd: Cmd): { allowFail: true; input?: string } {
  return cmd.input !== undefined ? { allowFail: true, input: cmd.input } : { allowFail: true };
}

/** The runner of production: the real tools, found on PATH or in the sbin directories. */
export const hostRunner: Runner = {
  run: (cmd) => run(resolved(cmd.argv), options(cmd)),
  runSync: (cmd) => runSync(resolved(cmd.argv), options(cmd)),
};

/** Run a command through the host runner; the result, whatever the exit code. */
export function runTool(argv: readonly string[], input?: string): Promise<RunResult> {
  return hostRunner.run(input !== undefined ? { argv, input } : { argv });
}

export function cmdText(argv: readonly string[]): string {
  return argv.join(' ');
}

/** What a tool said, without the warnings iptables-nft prefixes to everything. */
export function output(r: RunResult): string {
  return (r.stderr.trim() || r.stdout.trim()).split('\n').filter((l) => !/^# Warning:/.test(l)).join('\n');
}

/** "<command> failed (exit N): <what it said>". */
export function failure(argv: readonly string[], r: RunResult): string {
  return `${cmdText(argv)} failed (exit ${r.exitCode ?? 'none'}): ${output(r) || 'no output'}`;
}

/** The tool said the thing to delete is not there (or its device is gone, taking it along). */
export function isGone(stderr: string): boolean {
  return /No such file or directory|No such process|Cannot find device|does not exist|Cannot assign requested address/i.test(stderr);
}

/** Run a command that must succeed; the error names the command and what the tool said. */
export async function mustRun(argv: readonly string[], input?: string): Promise<RunResult> {
  const r = await runTool(argv, input);
  if (r.exitCode !== 0) throw new Error(failure(argv, r));
  return r;
}
