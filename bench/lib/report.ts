/** The human-readable table and the JSON file of a benchmark report. */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Measurement } from './harness.js';
import { countLabel, GOAL_IMPL, structureLabel, type Report } from './run.js';

/** Nanoseconds with three significant digits or more, always in ns (the column says so). */
export function formatNs(ns: number): string {
  if (ns >= 1000) return Math.round(ns).toLocaleString('en-US');
  return ns >= 100 ? ns.toFixed(0) : ns >= 10 ? ns.toFixed(1) : ns.toFixed(2);
}

export function formatRate(perSec: number): string {
  if (perSec >= 1e9) return `${(perSec / 1e9).toFixed(2)} G`;
  if (perSec >= 1e6) return `${(perSec / 1e6).toFixed(2)} M`;
  if (perSec >= 1e3) return `${(perSec / 1e3).toFixed(1)} K`;
  return perSec.toFixed(0);
}

function table(header: string[], rows: string[][], rightAligned: ReadonlySet<number>): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string =>
    cells.map((c, i) => (rightAligned.has(i) ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

function goalCell(m: Measurement): string {
  if (m.goalNs === undefined) return '';
  return `≤ ${m.goalNs} ns ${m.goalMet ? 'met' : 'MISSED'}`;
}

export function formatReport(r: Report): string {
  const out: string[] = [];
  const mc = r.machine;
  out.push(`tunnat microbenchmarks (${r.config.mode}) — ${r.date}`);
  out.push(`${mc.cpuModel} × ${mc.cpuCount}, node ${mc.node} (V8 ${mc.v8}), ${mc.platform} ${mc.arch}, ` +
    `load average ${mc.loadAverageStart.toFixed(2)} → ${mc.loadAverageEnd.toFixed(2)}`);
  out.push(`JIT: ${mc.jitFlags === '' ? "V8's defaults" : `${mc.jitFlags} (the data plane's, src/util/jit.ts)`}`);
  out.push(`median of ${r.config.timing.runs} runs of ≥ ${r.config.timing.minRunMs} ms after ≥ ${r.config.timing.warmupMs} ms warm-up; ` +
    `spread = (slowest − fastest run) / median; every run verified`);
  out.push('');
  out.push(table(
    ['group', 'benchmark', 'size', 'ns/op', 'ops/s', 'spread', 'goal'],
    r.results.map((m) => [
      m.group, m.name, m.sizeLabel, formatNs(m.medianNs), formatRate(m.opsPerSec),
      `${(((m.maxNs - m.minNs) / m.medianNs) * 100).toFixed(0)}%`, goalCell(m),
    ]),
    new Set([3, 4, 5]),
  ));

  const noted = r.results.filter((m) => m.notes);
  if (noted.length > 0) {
    out.push('');
    for (const m of noted) out.push(`${m.name} (${m.sizeLabel}): ${m.notes}`);
  }

  if (r.lookupScaling.length > 0) {
    out.push('');
    out.push('Lookup cost, largest table against smallest:');
    out.push(table(
      ['structure', 'lookup', 'ratio', 'goal'],
      r.lookupScaling.map((s) => [
        s.structure, s.kind, `${countLabel(s.largeFlows)}/${countLabel(s.smallFlows)} = ${s.ratio.toFixed(2)}×`,
        s.goal === undefined ? (s.structure === structureLabel(GOAL_IMPL) && s.kind === 'hit' ? '(goal ≤ 1.5× is for 1M/1K)' : '')
          : `≤ ${s.goal}× ${s.goalMet ? 'met' : 'MISSED'}`,
      ]),
      new Set<number>(),
    ));
  }

  const latency = r.results.filter((m) => m.group === 'latency');
  if (latency.length > 0 && r.lookupScaling.length > 0) {
    out.push(`For scale, one dependent random read costs ${latency.map((m) => `${formatNs(m.medianNs)} ns in ${m.sizeLabel}`).join(', ')}: ` +
      'a lookup in a table far larger than the caches pays at least one.');
  }

  if (r.memory.length > 0) {
    out.push('');
    out.push('Memory per flow (both directions indexed):');
    out.push(table(
      ['structure', 'flows', 'declared B/flow', 'measured B/flow'],
      r.memory.map((m) => [
        m.structure, countLabel(m.flows),
        m.declaredBytesPerFlow === undefined ? '' : m.declaredBytesPerFlow.toFixed(1),
        m.measuredBytesPerFlow === null ? 'n/a (no gc)' : m.measuredBytesPerFlow.toFixed(1),
      ]),
      new Set([1, 2, 3]),
    ));
  }

  out.push('');
  if (r.failures.length === 0) {
    out.push(`All ${r.results.length} benchmarks verified their results (${r.durationSeconds} s).`);
  } else {
    out.push(`FAILED: ${r.failures.length} benchmark(s) gave a wrong answer or could not run:`);
    for (const f of r.failures) out.push(`  [${f.suite}${f.case ? ` / ${f.case}` : ''}] ${f.message}`);
  }
  return out.join('\n');
}

export function writeReport(path: string, r: Report): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, `${JSON.stringify(r, null, 2)}\n`);
}
