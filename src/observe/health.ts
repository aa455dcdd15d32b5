import { DropReason, type Translator } from '../nat/translator.js';
import type { Logger } from '../util/log.js';

/**
 * Lifecycle log lines for the conditions an operator must hear about without watching a dashboard:
 * the flow table filling up, new flows dropped because it is full or the public ports ran out. Checked
 * every few seconds from the counters (never from the packet path); while a condition lasts it is
 * repeated at most once a minute, and its end is logged once.
 */
const CHECK_MS = 5000;
const REPEAT_MS = 60_000;
const FULL_FRACTION = 0.9;

interface Condition {
  active: boolean;
  lastLog: number;
  lastCount: number;
}

export class HealthWatch {
  private readonly timer: NodeJS.Timeout;
  private readonly conds = {
    tableFull: { active: false, lastLog: -Infinity, lastCount: 0 } as Condition,
    portsExhausted: { active: false, lastLog: -Infinity, lastCount: 0 } as Condition,
    nearlyFull: { active: false, lastLog: -Infinity, lastCount: 0 } as Condition,
  };

  constructor(
    private readonly nat: Translator,
    private readonly log: Logger,
    intervalMs = CHECK_MS,
  ) {
    this.conds.tableFull.lastCount = nat.stats.drops[DropReason.TABLE_FULL] ?? 0;
    this.conds.portsExhausted.lastCount = nat.stats.drops[DropReason.PORTS_EXHAUSTED] ?? 0;
    this.timer = setInterval(() => this.check(Date.now()), intervalMs);
    this.timer.unref();
  }

  private drops(c: Condition, count: number, now: number, warn: (n: number) => void, clear: () => void): void {
    const n = count - c.lastCount;
    c.lastCount = count;
    if (n > 0) {
      if (!c.active || now - c.lastLog >= REPEAT_MS) {
        warn(n);
        c.lastLog = now;
      }
      c.active = true;
    } else if (c.active) {
      c.active = false;
      clear();
    }
  }

  check(now: number): void {
    const s = this.nat.stats;
    const t = this.nat.flows;
    this.drops(
      this.conds.tableFull,
      s.drops[DropReason.TABLE_FULL] ?? 0,
      now,
      (n) => this.log.warn('flow table full: new connections are being dropped (raise --max-flows or shorten timeouts)', { dropped: n, flows: t.size, max: t.capacity }),
      () => this.log.info('flow table no longer full', { flows: t.size, max: t.capacity }),
    );
    this.drops(
      this.conds.portsExhausted,
      s.drops[DropReason.PORTS_EXHAUSTED] ?? 0,
      now,
      (n) => this.log.warn('public ports exhausted: new mappings are being refused (widen --ports)', { dropped: n }),
      () => this.log.info('public ports available again'),
    );
    const full = t.size >= FULL_FRACTION * t.capacity;
    const c = this.conds.nearlyFull;
    if (full && !c.active) this.log.warn('flow table above 90% of --max-flows', { flows: t.size, max: t.capacity });
    if (!full && c.active) this.log.info('flow table back below 90% of --max-flows', { flows: t.size, max: t.capacity });
    c.active = full;
  }

  stop(): void {
    clearInterval(this.timer);
  }
}
