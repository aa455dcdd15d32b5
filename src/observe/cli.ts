import { parseArgs, type ParseArgsConfig } from 'node:util';
import { FilterError } from './filter.js';

/**
 * What the observability commands (`tunnat conntrack`, `stats`, `trace`) share: option parsing that
 * turns every mistake into a usage error (exit 2, before any connection is tried), the default
 * endpoint, and writing to stdout/stderr through an injectable pair (tests capture it).
 */
export const DEFAULT_TARGET = '127.0.0.1:9100';

export class CliUsageError extends Error {}

export interface CliIo {
  out(line: string): void;
  err(line: string): void;
}

export const processIo: CliIo = {
  out: (l) => process.stdout.write(l + '\n'),
  err: (l) => process.stderr.write(l + '\n'),
};

export function parseOptions<T extends NonNullable<ParseArgsConfig['options']>>(args: string[], options: T, positionals = false) {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: positionals });
  } catch (err) {
    throw new CliUsageError((err as Error).message);
  }
}

/** A positive integer option, or undefined when absent. */
export function intOption(name: string, v: string | undefined, max: number): number | undefined {
  if (v === undefined) return undefined;
  const n = /^\d+$/.test(v) ? Number(v) : NaN;
  if (!(n >= 1 && n <= max)) throw new CliUsageError(`--${name}: expected an integer in 1..${max}, got ${JSON.stringify(v)}`);
  return n;
}

/**
 * Run a command body: usage and filter errors exit 2, a router that cannot be reached (or any other
 * failure) exits 1, each with one clear line on stderr.
 */
export async function runCommand(io: CliIo, body: () => Promise<number>): Promise<number> {
  try {
    return await body();
  } catch (err) {
    if (err instanceof CliUsageError || err instanceof FilterError) {
      io.err(`tunnat: ${err.message}`);
      io.err('(see `tunnat help`)');
      return 2;
    }
    io.err(`tunnat: ${(err as Error).message}`);
    return 1;
  }
}

/** Resolve when SIGINT or SIGTERM arrives (the handlers are removed again by the returned function). */
export function untilSignal(): { promise: Promise<void>; release: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  const on = () => resolve();
  process.once('SIGINT', on);
  process.once('SIGTERM', on);
  return {
    promise,
    release: () => {
      process.off('SIGINT', on);
      process.off('SIGTERM', on);
    },
  };
}
