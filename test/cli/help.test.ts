import { describe, it, expect } from 'vitest';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { flagText, synopsis, verbHelp, type Verb } from '../../src/cli/flags.js';
import { RUN_VERB, VERBS } from '../../src/cli/verbs.js';
import { defaultCliPath, repoRoot } from '../../src/lab/router.js';

/**
 * The one flag definition, the parser, `--help` and README's flag table agree: every verb answers
 * --help with its usage (exit 0), its parser takes every flag the help names and nothing else, and
 * README lists exactly the flags of `tunnat run`.
 */
const cli = defaultCliPath();

function tunnat(...args: string[]): { code: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 30_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** How the verb is typed: `kernel plan|apply|remove` is reached as `kernel plan`. */
const words = (v: Verb): string[] => v.name.split(' ').map((w) => w.split('|')[0]!);

/** The first cell of each row of README's table of `tunnat run` flags, as written. */
function readmeFlags(): string[] {
  const text = readFileSync(join(repoRoot(), 'README.md'), 'utf8');
  const start = text.indexOf('| flag | meaning | default |');
  expect(start).toBeGreaterThan(0);
  const rows = text.slice(start).split('\n\n')[0]!.split('\n').slice(2);
  return rows.map((row) => {
    const cell = /^\| `([^`]+)` \|/.exec(row);
    expect(cell, row).not.toBeNull();
    return cell![1]!.replace(/\\\|/g, '|');
  });
}

describe('help, parser and README agree', () => {
  it("README's flag table lists exactly the flags of `tunnat run`, as the help writes them", () => {
    const defined = Object.entries(RUN_VERB.flags)
      .filter(([name]) => name !== 'help')
      .map(([name, f]) => flagText(name, f));
    expect([...readmeFlags()].sort()).toEqual([...defined].sort());
  });

  it.each(VERBS.map((v) => [v.name, v] as const))('`tunnat %s --help` prints its usage with every flag and exits 0', (_name, v) => {
    for (const h of ['--help', '-h']) {
      const r = tunnat(...words(v), h);
      expect(r.code, r.err).toBe(0);
      expect(r.out).toBe(verbHelp(v) + '\n');
    }
    const help = verbHelp(v);
    for (const [name, f] of Object.entries(v.flags)) {
      expect(help).toContain(flagText(name, f));
      if (name !== 'help') expect(synopsis(v)).toContain(flagText(name, f));
    }
  });

  it.each(VERBS.map((v) => [v.name, v] as const))('`tunnat %s` parses every flag its help names, and refuses others', (_name, v) => {
    const all = Object.entries(v.flags)
      .filter(([name]) => name !== 'help')
      .flatMap(([name, f]) => (f.type === 'string' ? [`--${name}`, 'x'] : [`--${name}`]));
    const r = tunnat(...words(v), ...all, '--help');
    expect(r.code, r.err).toBe(0);
    expect(r.out).toBe(verbHelp(v) + '\n');
    const bad = tunnat(...words(v), '--no-such-flag');
    expect(bad.code).toBe(2);
    expect(bad.err).toMatch(/Unknown option '--no-such-flag'/);
  });

  it('`tunnat help` shows every verb with all its flags', () => {
    const r = tunnat('help');
    expect(r.code).toBe(0);
    for (const v of VERBS) expect(r.out).toContain(synopsis(v).replace(/^/gm, '  '));
  });
});
