import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { chmodSync, cpSync, mkdtempSync, rmSync, symlinkSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defaultCliPath, repoRoot } from '../../src/lab/router.js';
import { lookupUser } from '../../src/router/privsep.js';
import { run, runSync } from '../../src/util/exec.js';
import { Cleanup, inNs, isRoot, kernelNatRules, plainLabUp, snapshotNetns, type PlainLab } from './harness.js';

/**
 * A start that cannot do what was asked fails before it changes anything: an --http address in use
 * (exit 1, both engines), an --internal prefix overlapping the WAN's subnet (exit 2, both engines, also
 * --dry-run and `kernel plan`), an --external that does not exist (exit 2, named as missing), and --user
 * with tunnat's code where that user cannot read it (exit 1, one line, no stack trace). Each case
 * compares the gateway namespace's rules, routes, links, TUN devices, sysctls and kernel NAT rules with
 * what they were before.
 */
const cli = defaultCliPath();

describe.skipIf(!isRoot)('a start that cannot do what was asked changes nothing', () => {
  const cleanup = new Cleanup((l) => console.error(l));
  let lab: PlainLab;

  beforeAll(async () => {
    lab = await plainLabUp(cleanup, 1);
  }, 60_000);

  afterAll(async () => {
    await cleanup.run();
  }, 60_000);

  /** `tunnat ARGS` in the gateway; a start that wrongly succeeds runs until the timeout kills it. */
  const tunnat = (args: string[], path = cli) =>
    inNs(lab.gw, [process.execPath, path, ...args], { allowFail: true, timeoutMs: 20_000 });

  const state = async () => ({ ...(await snapshotNetns(lab.gw)), nat: await kernelNatRules(lab.gw) });

  /** Hold 127.0.0.1:PORT in the gateway namespace until the returned function is called. */
  async function occupy(port: number): Promise<() => void> {
    const holder = spawn('ip', ['netns', 'exec', lab.gw, process.execPath, '-e',
      `require('net').createServer().listen(${port}, '127.0.0.1', () => console.log('listening'))`], { stdio: ['ignore', 'pipe', 'inherit'] });
    const stop = () => void holder.kill('SIGKILL');
    const forget = cleanup.defer({ label: `stop the holder of port ${port}`, sync: stop });
    await new Promise<void>((resolve, reject) => {
      holder.stdout!.on('data', (d: Buffer) => d.toString().includes('listening') && resolve());
      holder.once('exit', (code) => reject(new Error(`the port holder exited (${code})`)));
    });
    return () => {
      forget();
      stop();
    };
  }

  it.each(['userspace', 'kernel'])('--engine %s with --http on a port in use: exit 1, says so, nothing changed', async (engine) => {
    const port = 20_000 + Math.floor(Math.random() * 10_000);
    const release = await occupy(port);
    try {
      const before = await state();
      const r = await tunnat(['run', '--internal', '192.168.1.0/24', '--external', 'wan0', '--engine', engine, '--http', `127.0.0.1:${port}`]);
      expect(r.exitCode, r.stderr).toBe(1);
      expect(r.stderr).toContain(`cannot listen on --http 127.0.0.1:${port}: the address is already in use`);
      expect(r.stderr).not.toContain('tunnat running');
      expect(await state()).toEqual(before);
    } finally {
      release();
    }
  }, 60_000);

  it.each([
    ['run', '--engine', 'userspace'],
    ['run', '--engine', 'kernel'],
    ['run', '--dry-run', ''],
    ['kernel', 'plan', ''],
    ['kernel', 'apply', ''],
  ])('--internal overlapping the WAN subnet: `%s %s %s` exits 2 naming both, nothing changed', async (...verb) => {
    const before = await state();
    if (verb[1] === 'apply') {
      // Should it wrongly succeed, `kernel apply` leaves a set-up and its record under /run/tunnat behind.
      const argv = ['ip', 'netns', 'exec', lab.gw, process.execPath, cli, 'kernel', 'remove'];
      cleanup.defer({ label: 'tunnat kernel remove', sync: () => void runSync(argv, { allowFail: true }), async: async () => void (await run(argv, { allowFail: true })) });
    }
    const r = await tunnat([...verb.filter((w) => w !== ''), '--internal', '192.168.1.0/24,203.0.113.128/25', '--external', 'wan0', '--http', 'off']);
    expect(r.exitCode, r.stderr).toBe(2);
    expect(r.stderr).toMatch(/--internal 203\.0\.113\.128\/25 overlaps 203\.0\.113\.0\/24, the subnet of wan0/);
    expect(r.stdout).toBe('');
    expect(await state()).toEqual(before);
  }, 60_000);

  it('--internal covering only part of a connected LAN subnet is refused too; the whole of it is accepted', async () => {
    const part = await tunnat(['run', '--dry-run', '--internal', '192.168.1.0/25', '--external', 'wan0']);
    expect(part.exitCode, part.stderr).toBe(2);
    expect(part.stderr).toMatch(/--internal 192\.168\.1\.0\/25 covers only part of 192\.168\.1\.0\/24, connected on lan0/);
    const whole = await tunnat(['run', '--dry-run', '--internal', '192.168.0.0/16', '--external', 'wan0']);
    expect(whole.exitCode, whole.stderr).toBe(0);
    expect(whole.stderr).toBe('');
  }, 60_000);

  it.each(['userspace', 'kernel'])('--engine %s with an --external that does not exist: exit 2, says it does not exist', async (engine) => {
    const before = await state();
    const r = await tunnat(['run', '--internal', '192.168.1.0/24', '--external', 'nosuch0', '--engine', engine, '--http', 'off']);
    expect(r.exitCode, r.stderr).toBe(2);
    expect(r.stderr).toContain('external: no interface "nosuch0" in this network namespace');
    expect(r.stderr).not.toMatch(/no IPv4 address/);
    expect(await state()).toEqual(before);
    // A dry run checks it too, but only warns: the file may be meant for another machine.
    const dry = await tunnat(['run', '--dry-run', '--internal', '192.168.1.0/24', '--external', 'nosuch0']);
    expect(dry.exitCode, dry.stderr).toBe(0);
    expect(dry.stderr).toBe('tunnat: warning: external: no interface "nosuch0" in this network namespace (`ip link` lists them); a start here would refuse it\n');
  }, 60_000);

  it('--user with the code in a directory that user cannot enter: exit 1, one line naming the directory, no stack trace', async () => {
    const nobody = lookupUser('nobody');
    expect(nobody).not.toBeNull();
    // A copy of the built package in a fresh 0700 directory of root's (as a checkout in /root would be).
    const dir = mkdtempSync(join(tmpdir(), 'tunnat-private-'));
    cleanup.defer({ label: `remove ${dir}`, sync: () => rmSync(dir, { recursive: true, force: true }) });
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    const root = repoRoot();
    const pkg = join(dir, 'tunnat');
    cpSync(join(root, 'dist', 'src'), join(pkg, 'dist', 'src'), { recursive: true });
    cpSync(join(root, 'package.json'), join(pkg, 'package.json'));
    symlinkSync(join(root, 'node_modules'), join(pkg, 'node_modules'));
    symlinkSync(join(root, 'native'), join(pkg, 'native'));
    chmodSync(pkg, 0o755);

    const before = await state();
    const r = await tunnat(['run', '--internal', '192.168.1.0/24', '--external', 'wan0', '--http', 'off', '--user', 'nobody'], join(pkg, 'dist', 'src', 'cli', 'main.js'));
    expect(r.exitCode, r.stderr).toBe(1);
    expect(r.stderr).toContain(`--user nobody cannot load the data plane (${join(pkg, 'dist', 'src', 'router', 'privsep-child.js')}): nobody may not enter ${dir} (mode 0700`);
    expect(r.stderr).not.toMatch(/^\s+at /m);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(await state()).toEqual(before);
  }, 60_000);
});
