import { describe, it, expect } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { repoRoot } from '../src/lab/router.js';

const read = (f: string) => readFileSync(join(repoRoot(), f), 'utf8');

describe('memory per flow', () => {
  it('docs/operations.md gives one figure, the one docs/benchmarks.md measured at 1 M flows', () => {
    const measured = /memory per flow at 1 M flows \| [^|]+ \| (\d+) B of process RSS per flow/.exec(read('docs/benchmarks.md'));
    expect(measured).not.toBeNull();
    const ops = read('docs/operations.md').replace(/\s+/g, ' ');
    const figures = [...ops.matchAll(/(\d+) (?:bytes|B) (?:a|per) flow/g)].map((m) => m[1]);
    expect(figures.length).toBeGreaterThanOrEqual(2);
    expect(new Set(figures)).toEqual(new Set([measured![1]]));
  });
});
