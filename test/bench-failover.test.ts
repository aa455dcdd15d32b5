import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { median, summarize, table, verdict, type Row } from '../bench/failover/report.js';
import type { FailoverResult } from '../src/lab/ha-pair.js';
import { repoRoot } from '../src/lab/router.js';

function run(outageMs: number, kept = true, sources = 1): FailoverResult {
  return {
    kind: 'kill', from: 0, to: 1, outageMs, tcpGapMs: outageMs + 50,
    udpSources: Array.from({ length: sources }, (_, i) => `203.0.113.1:${4000 + i}`),
    connectionsKept: kept,
    report: {
      udp: { sent: 100, received: 90, maxGapMs: outageMs, sourcePort: 41000 },
      active: { sent: 10, echoed: 10, outOfOrder: 0, maxGapMs: outageMs + 50, error: null },
      idle: { count: 4, ok: kept ? 4 : 1, failed: kept ? 0 : 3, errors: [] },
      gaps: { udp: [], tcp: [] },
    },
  };
}

const row = (results: FailoverResult[], over: Partial<Row> = {}): Row => ({
  scenario: 'tunnat', engine: 'tunnat', sync: 'tunnat sync', failure: 'kill -9 of the active tunnat', results, ...over,
});

describe('bench:failover figures', () => {
  it('median, worst, connections and mappings per row; the goals judged on them', () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 2, 3])).toBe(2.5);
    const good = summarize(row([run(100), run(300), run(900)]));
    expect(good).toMatchObject({ runs: 3, outageMedianMs: 300, outageWorstMs: 900, connectionsKept: 3, idleKept: 12, idleTotal: 12, udpOneMapping: 3 });
    expect(verdict(good)).toBe('met');
    expect(verdict(summarize(row([run(1100), run(1200), run(100)])))).toBe('missed: median > 1 s');
    expect(verdict(summarize(row([run(100), run(2100), run(100)])))).toBe('missed: worst > 2 s');
    expect(verdict(summarize(row([run(100, false), run(100, true, 2)])))).toBe('missed: 1 run(s) lost a connection, 1 run(s) changed the UDP mapping');
    // The comparisons carry no goal.
    expect(verdict(summarize(row([run(5000, false)], { engine: 'kernel', sync: 'conntrackd' })))).toBe('');
    expect(verdict(summarize(row([run(5000, false)], { sync: 'none' })))).toBe('');
  });

  it("docs/ha.md's measured table is the one its report file gives", () => {
    const docs = readFileSync(join(repoRoot(), 'docs', 'ha.md'), 'utf8');
    const section = /<!-- bench:failover begin[^>]*-->([\s\S]*?)<!-- bench:failover end -->/.exec(docs);
    expect(section).not.toBeNull();
    const file = /report `(bench\/results\/failover-[^`]+\.json)`/.exec(section![1]!);
    expect(file, 'the section names its report').not.toBeNull();
    const report = JSON.parse(readFileSync(join(repoRoot(), file![1]!), 'utf8')) as { rows: Row[] };
    const lines = table(report.rows.map(summarize));
    for (const l of lines) expect(section![1]).toContain(l);
    expect(lines.length).toBeGreaterThan(2);
  });
});
