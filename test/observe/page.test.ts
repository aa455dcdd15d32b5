import { describe, it, expect } from 'vitest';
import { CHART_AXES_JS } from '../../src/observe/page-axes.js';
import { LIVE_PAGE } from '../../src/observe/page.js';

interface Axes {
  rateAxis(max: number, lines: number): { top: number; labels: string[] };
  clockLabel(sec: number): string;
  timeAxis(end: number, span: number, step: number): { t: number; label: string }[];
}

// The very text the page runs, evaluated as the browser would.
const axes = new Function(`${CHART_AXES_JS}; return { rateAxis: rateAxis, clockLabel: clockLabel, timeAxis: timeAxis };`)() as Axes;

describe("the live page's chart axes", () => {
  it('reads 0 1 2 3 4 B/s on an idle chart (its first second), never a repeated label', () => {
    expect(axes.rateAxis(0, 4)).toEqual({ top: 4, labels: ['0 B/s', '1 B/s', '2 B/s', '3 B/s', '4 B/s'] });
    expect(axes.rateAxis(1, 4).labels).toEqual(['0 B/s', '1 B/s', '2 B/s', '3 B/s', '4 B/s']);
    expect(axes.rateAxis(1500, 4).labels).toEqual(['0.0 kB/s', '0.5 kB/s', '1.0 kB/s', '1.5 kB/s', '2.0 kB/s']);
    expect(axes.rateAxis(3.2e6, 4).labels).toEqual(['0 MB/s', '1 MB/s', '2 MB/s', '3 MB/s', '4 MB/s']);
    expect(axes.rateAxis(130e6, 4).labels).toEqual(['0 MB/s', '50 MB/s', '100 MB/s', '150 MB/s', '200 MB/s']);
  });

  it('always covers the highest value with distinct, rising labels and no more than 2.5 times the room needed', () => {
    for (let i = 0; i < 2000; i++) {
      const max = i < 1000 ? i / 10 : Math.exp(i / 60);
      const { top, labels } = axes.rateAxis(max, 4);
      expect(top).toBeGreaterThanOrEqual(max);
      if (max > 4) expect(top / max).toBeLessThanOrEqual(2.5 + 1e-9);
      expect(new Set(labels).size, `${max}: ${labels.join(', ')}`).toBe(5);
      const unit = labels[0]!.split(' ')[1];
      expect(labels.every((l) => l.endsWith(` ${unit}`))).toBe(true);
      const values = labels.map((l) => Number(l.split(' ')[0]));
      for (let g = 1; g < values.length; g++) expect(values[g]).toBeGreaterThan(values[g - 1]!);
    }
  });

  it('labels the time axis with wall-clock times every step seconds inside the window', () => {
    const end = Date.UTC(2024, 0, 1, 12, 0, 7) / 1000;
    const ticks = axes.timeAxis(end, 120, 30);
    expect(ticks.map((t) => t.t - end)).toEqual([-97, -67, -37, -7]);
    for (const t of ticks) {
      expect(t.t % 30).toBe(0);
      expect(t.label).toBe(axes.clockLabel(t.t));
      expect(t.label).toMatch(/^\d\d:\d\d:\d\d$/);
    }
    const d = new Date(end * 1000);
    expect(axes.clockLabel(end)).toBe([d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, '0')).join(':'));
  });

  it('is part of the page', () => {
    expect(LIVE_PAGE).toContain(CHART_AXES_JS);
    expect(LIVE_PAGE).toContain('rateAxis(max, GRID_LINES)');
    expect(LIVE_PAGE).toContain('timeAxis(end, WINDOW, TIME_STEP)');
  });
});
