import { describe, it, expect } from 'vitest';
import { createLogger, prettyLine } from '../../src/util/log.js';

describe('structured logging (pino)', () => {
  it('writes one JSON line per event with the level name, message and fields, above the set level', () => {
    const lines: string[] = [];
    const log = createLogger('info', (l) => lines.push(l));
    log.debug('not shown');
    log.info('tunnat running', { tun: 'tunnat0', flows: 3 });
    log.level = 'warn';
    log.info('not shown either');
    log.error('cannot write', { file: '/x' });
    expect(log.level).toBe('warn');
    expect(lines).toHaveLength(2);
    const first = JSON.parse(lines[0]!) as Record<string, unknown>;
    expect(first).toMatchObject({ level: 'info', msg: 'tunnat running', tun: 'tunnat0', flows: 3, pid: process.pid });
    expect(Number.isNaN(Date.parse(String(first['time'])))).toBe(false);
    expect(JSON.parse(lines[1]!)).toMatchObject({ level: 'error', msg: 'cannot write', file: '/x' });
  });

  it('prints "time level message key=value" in the pretty format', () => {
    const lines: string[] = [];
    const log = createLogger('debug', (l) => lines.push(l), 'pretty');
    log.warn('flow table full', { dropped: 5, reason: 'two words' });
    expect(lines[0]).toMatch(/^\d{4}-\d\d-\d\dT\S+ warn  flow table full dropped=5 reason="two words"$/);
    expect(prettyLine('not json')).toBe('not json');
  });
});
