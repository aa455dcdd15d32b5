import { describe, it, expect } from 'vitest';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

/**
 * The folders of src/ in layers, lowest first: a file may import from its own folder and from folders
 * in lower layers, never from a higher layer or from another folder of its own layer. This is the
 * order docs/architecture.md gives; the last test keeps the two in step.
 */
const LAYERS: readonly (readonly string[])[] = [
  ['util'],
  ['wire'],
  ['conntrack'],
  ['nat'],
  ['config'],
  ['tun', 'host'],
  ['dataplane'],
  ['metrics'],
  ['observe'],
  ['ha'],
  ['kernel', 'router'],
  ['lab'],
  ['cli'],
];

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const SRC = join(ROOT, 'src');

interface Import {
  file: string;
  from: string;
  to: string;
}

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    if (e.isDirectory()) return sourceFiles(p);
    return e.name.endsWith('.ts') ? [p] : [];
  });
}

const folderOf = (path: string): string => relative(SRC, path).split(sep)[0]!;

/** Every import between two folders of src/: static, type-only, re-exports and dynamic import(). */
function crossFolderImports(): Import[] {
  const out: Import[] = [];
  for (const file of sourceFiles(SRC)) {
    const info = ts.preProcessFile(readFileSync(file, 'utf8'), true, true);
    for (const { fileName } of info.importedFiles) {
      if (!fileName.startsWith('.')) continue;
      const target = resolve(dirname(file), fileName);
      const from = folderOf(file);
      const to = folderOf(target);
      if (from !== to) out.push({ file: relative(ROOT, file), from, to });
    }
  }
  return out;
}

const rank = new Map(LAYERS.flatMap((folders, i) => folders.map((f) => [f, i] as const)));

describe('layers of src/', () => {
  const imports = crossFolderImports();

  it('sees the imports it checks', () => {
    // A parser that found nothing would pass every rule below.
    expect(imports.length).toBeGreaterThan(50);
    expect(imports).toContainEqual({ file: join('src', 'nat', 'policy.ts'), from: 'nat', to: 'wire' });
  });

  it('places every folder of src/ in a layer', () => {
    const folders = readdirSync(SRC, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name);
    expect(folders.filter((f) => !rank.has(f)), 'folders missing from LAYERS (and from docs/architecture.md)').toEqual([]);
  });

  it('imports only from lower layers', () => {
    const wrong = imports
      .filter((i) => !(rank.get(i.to)! < rank.get(i.from)!))
      .map((i) => `${i.file}: ${i.from} may not import ${i.to}`);
    expect(wrong).toEqual([]);
  });

  it('has no import cycle between folders', () => {
    const edges = new Map<string, Set<string>>();
    for (const i of imports) {
      if (!edges.has(i.from)) edges.set(i.from, new Set());
      edges.get(i.from)!.add(i.to);
    }
    const cycles: string[] = [];
    const done = new Set<string>();
    const path: string[] = [];
    const visit = (f: string): void => {
      const at = path.indexOf(f);
      if (at >= 0) {
        cycles.push([...path.slice(at), f].join(' → '));
        return;
      }
      if (done.has(f)) return;
      path.push(f);
      for (const next of edges.get(f) ?? []) visit(next);
      path.pop();
      done.add(f);
    };
    for (const f of edges.keys()) visit(f);
    expect(cycles).toEqual([]);
  });

  it('is the order docs/architecture.md gives', () => {
    const doc = readFileSync(join(ROOT, 'docs', 'architecture.md'), 'utf8');
    const written = LAYERS.map((folders) => folders.map((f) => `\`${f}\``).join(' and ')).join(' < ');
    expect(doc).toContain(written);
  });
});
