/**
 * Structured logging with pino: one line per lifecycle event (start, stop, address change, a client of
 * the trace attaching, the table filling up), never one per packet.
 *
 * Lines are pino's JSON on stderr. TUNNAT_LOG_FORMAT=pretty prints "time level message key=value…"
 * instead (the default when stderr is a terminal); TUNNAT_LOG_FORMAT=json forces JSON.
 */
import { pino, type DestinationStream } from 'pino';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export const LOG_LEVELS: readonly LogLevel[] = ['debug', 'info', 'warn', 'error'];

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  level: LogLevel;
}

export type LogFormat = 'json' | 'pretty';

function defaultFormat(): LogFormat {
  const env = process.env['TUNNAT_LOG_FORMAT'];
  if (env === 'json' || env === 'pretty') return env;
  return process.stderr.isTTY ? 'pretty' : 'json';
}

/** pino's JSON line as "time level message key=value…" (lifecycle lines only, so parsing it is cheap). */
export function prettyLine(json: string): string {
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(json) as Record<string, unknown>;
  } catch {
    return json.trimEnd();
  }
  const { time, level, msg, pid: _pid, ...fields } = o;
  const kv = Object.entries(fields)
    .map(([k, v]) => `${k}=${typeof v === 'string' && v !== '' && !/\s/.test(v) ? v : JSON.stringify(v)}`)
    .join(' ');
  return `${String(time)} ${String(level).padEnd(5)} ${String(msg)}${kv ? ' ' + kv : ''}`;
}

/**
 * A logger at `level`. `sink` receives each finished line (tests); without it lines go to stderr,
 * written synchronously so the last lines before an exit are never lost.
 */
export function createLogger(
  level: LogLevel = 'info',
  sink?: (line: string) => void,
  format: LogFormat = sink ? 'json' : defaultFormat(),
): Logger {
  const out = sink ?? ((l: string) => process.stderr.write(l + '\n'));
  const stream: DestinationStream =
    format === 'json' && !sink
      ? pino.destination({ fd: 2, sync: true })
      : { write: (s: string) => out(format === 'pretty' ? prettyLine(s) : s.trimEnd()) };
  const p = pino(
    {
      level,
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      // Level names rather than pino's numbers: the lines are read by people and by `jq .level`.
      formatters: { level: (label: string) => ({ level: label }) },
    },
    stream,
  );
  const emit = (lvl: LogLevel) => (msg: string, fields?: Record<string, unknown>) => {
    if (fields) p[lvl](fields, msg);
    else p[lvl](msg);
  };
  return {
    get level(): LogLevel {
      return p.level as LogLevel;
    },
    set level(l: LogLevel) {
      p.level = l;
    },
    debug: emit('debug'),
    info: emit('info'),
    warn: emit('warn'),
    error: emit('error'),
  };
}
