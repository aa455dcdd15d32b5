/**
 * A small structured logger: one line per lifecycle event (never per packet), "time level message
 * key=value…" on stderr, or JSON lines with TUNNAT_LOG_FORMAT=json.
 */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  level: LogLevel;
}

export function createLogger(level: LogLevel = 'info', sink: (line: string) => void = (l) => process.stderr.write(l + '\n')): Logger {
  const json = process.env['TUNNAT_LOG_FORMAT'] === 'json';
  const logger: Logger = {
    level,
    debug: (m, f) => emit('debug', m, f),
    info: (m, f) => emit('info', m, f),
    warn: (m, f) => emit('warn', m, f),
    error: (m, f) => emit('error', m, f),
  };
  function emit(lvl: LogLevel, msg: string, fields: Record<string, unknown> = {}): void {
    if (ORDER[lvl] < ORDER[logger.level]) return;
    const time = new Date().toISOString();
    if (json) {
      sink(JSON.stringify({ time, level: lvl, msg, ...fields }));
      return;
    }
    const kv = Object.entries(fields)
      .map(([k, v]) => `${k}=${typeof v === 'string' && !/\s/.test(v) ? v : JSON.stringify(v)}`)
      .join(' ');
    sink(`${time} ${lvl.padEnd(5)} ${msg}${kv ? ' ' + kv : ''}`);
  }
  return logger;
}
