/**
 * Smoke test of `npm run bench:compare` (bench/compare.ts, built into dist/ by pretest): one case, two
 * rounds, one process, this checkout against itself. No timing is asserted, only that the comparison
 * runs, reports the case it was asked for with a sane ratio and a verdict, and refuses bad usage.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';

const run = promisify(execFile);
const ROOT = resolve(import.meta.dirname, '..');
const COMPARE = join(ROOT, 'dist', 'bench', 'compare.js');
const tmp = mkdtempSync(join(tmpdir(), 'tunnat-compare-test-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

interface Row { key: string; beforeNs: number; afterNs: number; ratio: number; ratiosPerProcess: number[]; judged: boolean; ok: boolean }

describe('bench/compare', () => {
  it('compares the case it is asked for and writes the report', async () => {
    const json = join(tmp, 'cmp.json');
    // Exit 1 means "regressed": possible by noise even for the same code, so either code is accepted,
    // and it must agree with the verdict in the report.
    const res = await run('node', [COMPARE, '--before', ROOT, '--after', ROOT, '--match', 'udp outbound · 1 flow',
      '--procs', '1', '--rounds', '2', '--json', json], { timeout: 120_000 })
      .then((r) => ({ code: 0, stdout: r.stdout }), (e: { code: number; stdout: string }) => ({ code: e.code, stdout: e.stdout }));
    const stdout = res.stdout;
    expect(stdout).toContain('--max-inlined-bytecode-size-cumulative=');
    const report = JSON.parse(readFileSync(json, 'utf8')) as { schema: string; rows: Row[]; jitFlags: string };
    expect(report.schema).toBe('tunnat-bench-compare/1');
    expect(report.jitFlags).toMatch(/^--max-inlined-bytecode-size-cumulative=\d+$/);
    expect(report.rows.map((r) => r.key)).toEqual(['translate · established udp outbound · 1 flow']);
    const row = report.rows[0]!;
    expect(row.beforeNs).toBeGreaterThan(0);
    expect(row.afterNs).toBeGreaterThan(0);
    expect(row.ratiosPerProcess).toHaveLength(1);
    expect(row.ratio).toBeGreaterThan(0.2);
    expect(row.ratio).toBeLessThan(5);
    expect(row.judged).toBe(true);
    expect(row.ok).toBe(row.ratio <= 1.05);
    expect(res.code).toBe(row.ok ? 0 : 1);
  }, 150_000);

  it('exits 2 when --match leaves no case to compare, rather than reporting no regression', async () => {
    const err = await run('node', [COMPARE, '--before', ROOT, '--match', 'no such case', '--procs', '1', '--rounds', '1'], { timeout: 120_000 })
      .then(() => null, (e: { code: number; stderr: string }) => e);
    expect(err?.code).toBe(2);
    expect(err?.stderr).toContain('no case matches --match no such case');
  }, 150_000);

  it('refuses to run without --before, with exit 2', async () => {
    const err = await run('node', [COMPARE]).then(() => null, (e: { code: number; stderr: string }) => e);
    expect(err?.code).toBe(2);
    expect(err?.stderr).toContain('--before is required');
  });
});
