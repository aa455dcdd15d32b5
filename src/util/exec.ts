import { execFile, spawnSync } from 'node:child_process';

/** A command that exited non-zero (or could not start), with what it printed. */
export class CommandError extends Error {
  readonly code = 'COMMAND_FAILED';
  constructor(
    readonly argv: readonly string[],
    readonly exitCode: number | null,
    readonly stdout: string,
    readonly stderr: string,
  ) {
    super(`${argv.join(' ')} failed (exit ${exitCode ?? 'none'}): ${stderr.trim() || stdout.trim()}`);
    this.name = 'CommandError';
  }
}

export interface RunOptions {
  /** Run inside this network namespace (via `ip netns exec`). */
  netns?: string;
  /** Text for the command's standard input. */
  input?: string;
  /** Kill after this many milliseconds (default 30 s). */
  timeoutMs?: number;
  /** Return the result instead of throwing when the command fails. */
  allowFail?: boolean;
}

export interface RunResult {
  exitCode: number | null;
  stdout: string;
  stderr: string;
}

function argvFor(argv: readonly string[], netns: string | undefined): string[] {
  return netns ? ['ip', 'netns', 'exec', netns, ...argv] : [...argv];
}

/** Run a command without a shell and collect its output. Throws CommandError on failure unless allowFail. */
export function run(argv: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const full = argvFor(argv, opts.netns);
  return new Promise((resolve, reject) => {
    const child = execFile(
      full[0]!,
      full.slice(1),
      { timeout: opts.timeoutMs ?? 30_000, maxBuffer: 64 * 1024 * 1024, encoding: 'utf8' },
      (err, stdout, stderr) => {
        const exitCode = err ? (typeof err.code === 'number' ? err.code : null) : 0;
        const result = { exitCode, stdout, stderr };
        if (err && !opts.allowFail) reject(new CommandError(full, exitCode, stdout, stderr || err.message));
        else resolve(result);
      },
    );
    if (opts.input !== undefined) child.stdin?.end(opts.input);
  });
}

/** Synchronous variant, for exit handlers where the event loop no longer runs. */
export function runSync(argv: readonly string[], opts: RunOptions = {}): RunResult {
  const full = argvFor(argv, opts.netns);
  const r = spawnSync(full[0]!, full.slice(1), {
    encoding: 'utf8',
    timeout: opts.timeoutMs ?? 30_000,
    input: opts.input,
  });
  const result = { exitCode: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? (r.error?.message ?? '') };
  if ((r.status !== 0 || r.error) && !opts.allowFail) {
    throw new CommandError(full, r.status, result.stdout, result.stderr || String(r.error));
  }
  return result;
}
