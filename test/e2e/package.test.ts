/**
 * The package as a user gets it: `npm pack` (its prepack step builds the prebuilt addons), what the
 * tarball holds, and `npm install -g` of it into a fresh prefix with no compiler on PATH, then the
 * installed `tunnat --help` and, as root, the installed `tunnat lab --once`.
 */
import { execFile } from 'node:child_process';
import { chmodSync, closeSync, copyFileSync, existsSync, lstatSync, mkdirSync, mkdtempSync, openSync, readdirSync, readSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listNetns, randomId } from '../../src/lab/netns.js';
import { repoRoot } from '../../src/lab/router.js';
import { isRoot } from './harness.js';

const exec = promisify(execFile);

/** ELF e_machine values (elf.h) of the architectures a prebuild is shipped for. */
const ELF_MACHINE = { x64: 62, arm64: 183 } as const;
const ARCHES = Object.keys(ELF_MACHINE) as (keyof typeof ELF_MACHINE)[];
/** What the tools that compile would be called; each is shadowed on the install's PATH. */
const COMPILERS = ['g++', 'c++', 'cc', 'gcc', 'make', 'clang', 'clang++'];

/** The environment of a fresh shell: none of the npm_* variables of the `npm test` that may run us. */
function cleanEnv(path: string = process.env.PATH ?? ''): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!/^npm_/i.test(k)) env[k] = v;
  env.PATH = path;
  return env;
}

function elfMachine(file: string): { elf64: boolean; machine: number } {
  const head = Buffer.alloc(20);
  const fd = openSync(file, 'r');
  try {
    readSync(fd, head, 0, head.length, 0);
  } finally {
    closeSync(fd);
  }
  expect(head.subarray(0, 4).toString('latin1'), `${file} is not ELF`).toBe('\x7fELF');
  // EI_CLASS 2 is ELFCLASS64; EI_DATA 1 (little-endian) for both architectures, so e_machine reads LE.
  return { elf64: head[4] === 2 && head[5] === 1, machine: head.readUInt16LE(18) };
}

describe('the npm package', () => {
  const root = repoRoot();
  let tmp: string;
  let tarball: string;
  let entries: string[];
  let prefix: string;
  let installed: string;
  let compilerLog: string;
  let installPath: string;
  let installOutput: string;

  beforeAll(async () => {
    tmp = mkdtempSync(join(tmpdir(), 'tunnat-pkg-'));

    // Pack from a copy of the checkout as a fresh clone has it (git's tracked and not-ignored files),
    // so that prepack and prepare write prebuilds and dist/ there, not under the tests running beside
    // this one; node_modules (the prebuild tools) is the checkout's.
    const src = join(tmp, 'src');
    const listed = (await exec('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: root, maxBuffer: 16 << 20 })).stdout;
    for (const rel of listed.split('\0')) {
      if (rel === '' || rel === 'node_modules' || rel.startsWith('node_modules/')) continue;
      const from = join(root, rel);
      if (!existsSync(from) || !lstatSync(from).isFile()) continue;
      mkdirSync(dirname(join(src, rel)), { recursive: true });
      copyFileSync(from, join(src, rel));
    }
    symlinkSync(join(root, 'node_modules'), join(src, 'node_modules'));
    const out = join(tmp, 'out');
    mkdirSync(out);
    await exec('npm', ['pack', '--pack-destination', out, '--no-audit', '--no-fund'], { cwd: src, env: cleanEnv(), maxBuffer: 64 << 20, timeout: 240_000 });
    const tgz = readdirSync(out).filter((f) => f.endsWith('.tgz'));
    expect(tgz).toHaveLength(1);
    tarball = join(out, tgz[0]!);
    entries = (await exec('tar', ['-tzf', tarball])).stdout
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => l.replace(/^package\//, ''));

    // Every compiler name first on PATH is a stub that logs its call and fails: an install that tried
    // to compile fails, and says so in the log.
    const stubs = join(tmp, 'no-compiler');
    mkdirSync(stubs);
    compilerLog = join(tmp, 'compiler-calls.log');
    for (const name of COMPILERS) {
      const stub = join(stubs, name);
      writeFileSync(stub, `#!/bin/sh\necho "${name} $*" >> '${compilerLog}'\nexit 127\n`);
      chmodSync(stub, 0o755);
    }
    installPath = `${stubs}:${process.env.PATH ?? ''}`;
    prefix = join(tmp, 'prefix');
    // --prefer-offline: the dependencies come from the cache `npm ci` filled when it can.
    const r = await exec(
      'npm',
      ['install', '-g', '--prefix', prefix, '--prefer-offline', '--foreground-scripts', '--no-audit', '--no-fund', tarball],
      { cwd: tmp, env: cleanEnv(installPath), maxBuffer: 64 << 20, timeout: 180_000 },
    );
    installOutput = r.stdout + r.stderr;
    installed = join(prefix, 'lib', 'node_modules', 'tunnat');
  }, 420_000);

  afterAll(() => {
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  it('ships the compiled code, the native sources, both prebuilds and the docs, and nothing else', () => {
    const needed = ['package.json', 'README.md', 'dist/src/cli/main.js', 'dist/src/lab/demo.js', 'native/binding.gyp', 'native/tun.cc'];
    expect(entries).toEqual(expect.arrayContaining(needed));
    for (const arch of ARCHES) {
      expect(entries.filter((e) => e.startsWith(`native/prebuilds/linux-${arch}/`) && e.endsWith('.node'))).toHaveLength(1);
    }
    const kinds = /^(package\.json|README\.md|docs\/[^/]+\.md|dist\/src\/.+\.js|native\/(binding\.gyp|tun\.cc)|native\/prebuilds\/linux-(x64|arm64)\/[^/]+\.node)$/;
    expect(entries.filter((e) => !kinds.test(e))).toEqual([]);
    // What the operator found in the unfiltered package.
    expect(entries.filter((e) => /(^|\/)(test|bench|\.ci|fixtures)\/|tsconfig|\.map$|\.ts$/.test(e))).toEqual([]);
  });

  it('installs with no compiler on PATH: the prebuild is used, nothing is built', () => {
    expect(existsSync(compilerLog), existsSync(compilerLog) ? `compilers were called:\n${installOutput}` : '').toBe(false);
    expect(existsSync(join(installed, 'native', 'build'))).toBe(false);
    expect(existsSync(join(installed, 'build'))).toBe(false);
    for (const arch of ARCHES) {
      const dir = join(installed, 'native', 'prebuilds', `linux-${arch}`);
      for (const f of readdirSync(dir)) expect(elfMachine(join(dir, f)), `${arch}: ${f}`).toEqual({ elf64: true, machine: ELF_MACHINE[arch] });
    }
  });

  it.runIf(process.arch === 'x64' || process.arch === 'arm64')('loads the prebuild for this architecture through the installed loader', async () => {
    const loader = join(installed, 'dist', 'src', 'tun', 'native.js');
    const { stdout } = await exec(
      process.execPath,
      ['--input-type=module', '-e', `const m = await import(${JSON.stringify(loader)}); console.log(JSON.stringify([m.addonPath(), typeof m.loadAddon().open]));`],
      { env: cleanEnv(installPath) },
    );
    expect(JSON.parse(stdout)).toEqual([join(installed, 'native', 'prebuilds', `linux-${process.arch}`, 'node.node'), 'function']);
  });

  it('runs `tunnat --help` from the prefix', async () => {
    const { stdout } = await exec(join(prefix, 'bin', 'tunnat'), ['--help'], { env: cleanEnv(installPath), timeout: 30_000 });
    expect(stdout).toMatch(/^Usage:/m);
    expect(stdout).toContain('tunnat lab');
  });

  // Needs root: the lab builds network namespaces and the router opens a TUN in one. CI runs as root.
  it.skipIf(!isRoot)('runs the lab demo (`tunnat lab --once`) from the prefix (needs root)', async () => {
    const id = randomId();
    // A timeout sends SIGTERM, on which the lab removes its namespaces before exiting. A failure
    // (exit 1) rejects with the lab's output in the error.
    const r = await exec(join(prefix, 'bin', 'tunnat'), ['lab', '--once', '--id', id], { env: cleanEnv(installPath), timeout: 120_000, maxBuffer: 16 << 20 });
    const out = r.stdout + r.stderr;
    expect(out).toMatch(/All \d+ checks passed/);
    expect(out).toContain(join(installed, 'dist', 'src', 'cli', 'main.js'));
    expect((await listNetns()).filter((n) => n.includes(id))).toEqual([]);
  }, 150_000);
});
