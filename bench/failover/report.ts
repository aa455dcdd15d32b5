import type { FailoverResult } from '../../src/lab/ha-pair.js';

/**
 * bench:failover's figures: one row per scenario and failure, summarized from the runs, and the goals of
 * issue 15 judged on them (pure: the docs test recomputes the published table from the report file).
 */

export interface Row {
  scenario: string;
  engine: string;
  sync: string;
  failure: string;
  results: FailoverResult[];
  /** Why the scenario stopped before this row's runs were all done. */
  error?: string;
}

export const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n === 0 ? NaN : n % 2 ? s[(n - 1) / 2]! : (s[n / 2 - 1]! + s[n / 2]!) / 2;
};

export function summarize(r: Row) {
  const outages = r.results.map((x) => x.outageMs);
  return {
    scenario: r.scenario,
    engine: r.engine,
    sync: r.sync,
    failure: r.failure,
    runs: r.results.length,
    outageMedianMs: median(outages),
    outageWorstMs: Math.max(...outages),
    tcpGapMedianMs: median(r.results.map((x) => x.tcpGapMs)),
    connectionsKept: r.results.filter((x) => x.connectionsKept).length,
    idleKept: r.results.reduce((n, x) => n + x.report.idle.ok, 0),
    idleTotal: r.results.reduce((n, x) => n + x.report.idle.count, 0),
    udpOneMapping: r.results.filter((x) => x.udpSources.length === 1).length,
    error: r.error ?? null,
  };
}

export type Summary = ReturnType<typeof summarize>;

/** The goals of issue 15 for the tunnat pair with sync: outage median ≤ 1 s, worst ≤ 2 s, every connection, one mapping. */
export function verdict(s: Summary): string {
  if (s.engine !== 'tunnat' || s.sync === 'none') return '';
  const timed = s.failure.startsWith('kill') || s.failure.startsWith('gateway gone');
  const misses: string[] = [];
  if (s.error !== null) misses.push(`stopped after ${s.runs} run(s): ${s.error}`);
  if (timed && s.outageMedianMs > 1000) misses.push('median > 1 s');
  if (timed && s.outageWorstMs > 2000) misses.push('worst > 2 s');
  if (s.connectionsKept !== s.runs) misses.push(`${s.runs - s.connectionsKept} run(s) lost a connection`);
  if (s.udpOneMapping !== s.runs) misses.push(`${s.runs - s.udpOneMapping} run(s) changed the UDP mapping`);
  return misses.length === 0 ? 'met' : `missed: ${misses.join(', ')}`;
}

const ms = (v: number): string => (Number.isFinite(v) ? `${Math.round(v)} ms` : '–');

export function table(sums: Summary[]): string[] {
  const lines = [
    '| engine | state sync | failure | runs | outage median | outage worst | TCP gap median | runs with every connection kept | idle connections kept | runs with one UDP mapping | goal |',
    '| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |',
  ];
  for (const s of sums) {
    lines.push(
      `| ${s.engine} | ${s.sync} | ${s.failure}${s.error !== null ? ` (stopped: ${s.error})` : ''} | ${s.runs} | ${ms(s.outageMedianMs)} | ${ms(s.outageWorstMs)} | ${ms(s.tcpGapMedianMs)} | ` +
        `${s.connectionsKept}/${s.runs} | ${s.idleKept}/${s.idleTotal} | ${s.udpOneMapping}/${s.runs} | ${verdict(s)} |`,
    );
  }
  return lines;
}

