import { afterAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { conntrackdConf, haNotifyScript, KernelHaError, writeKernelHaFiles, type ConntrackdOptions } from '../../src/kernel/ha.js';
import { planKernelNat } from '../../src/kernel/plan.js';
import { KernelNatError } from '../../src/kernel/errors.js';
import { resolveConfig } from '../../src/config/resolve.js';
import { confBlock as block } from '../ha/helpers.js';

const base: ConntrackdOptions = {
  node: 0,
  syncIf: 'sync0',
  syncLocal: '192.168.255.1',
  syncPeer: '192.168.255.2',
  socketPath: '/run/tunnat-test/ctl',
  lockFile: '/run/tunnat-test/lock',
  ignore: ['192.168.1.1', '203.0.113.1'],
};

const tmp: string[] = [];
function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'tunnat-ha-test-'));
  tmp.push(d);
  return d;
}
afterAll(() => {
  for (const d of tmp) rmSync(d, { recursive: true, force: true });
});

describe('conntrackdConf', () => {
  it('FTFW over unicast UDP on the sync link, the external cache kept, the sync link and VIPs ignored', () => {
    const c = conntrackdConf(base);
    const sync = block(c, 'Sync');
    expect(block(sync, 'Mode FTFW')).toContain('DisableExternalCache Off');
    const udp = block(sync, 'UDP');
    expect(udp).toMatch(/IPv4_address 192\.168\.255\.1\n/);
    expect(udp).toContain('IPv4_Destination_Address 192.168.255.2');
    expect(udp).toContain('Port 3780');
    expect(udp).toContain('Interface sync0');
    expect(udp).toContain('Checksum on');
    expect(c).not.toMatch(/Multicast|Mode (NOTRACK|ALARM)/);

    const general = block(c, 'General');
    expect(general).toContain('Systemd off');
    expect(general).toContain('LockFile /run/tunnat-test/lock');
    expect(block(general, 'UNIX')).toContain('Path /run/tunnat-test/ctl');
    expect(general).toMatch(/NetlinkBufferSize \d+\n/);
    expect(general).toMatch(/NetlinkBufferSizeMaxGrowth \d+\n/);
    expect(general).toContain('NetlinkOverrunResync on');
    expect(general).toContain('LogFile off');
    expect(general).toContain('Syslog on');
    const filter = block(general, 'Filter From Userspace');
    expect(block(filter, 'Protocol Accept').match(/\b(TCP|UDP|ICMP)\b/g)).toEqual(['TCP', 'UDP', 'ICMP']);
    const ignored = [...block(filter, 'Address Ignore').matchAll(/IPv4_address (\S+)/g)].map((m) => m[1]);
    expect(ignored).toEqual(['127.0.0.1', '192.168.255.1', '192.168.255.2', '192.168.1.1', '203.0.113.1']);
    // conntrackd's parser stops at an unbalanced brace.
    expect(c.split('{').length).toBe(c.split('}').length);
  });

  it('takes a port, a log file, cache sizes, and prefixes to ignore', () => {
    const c = conntrackdConf({ ...base, node: 1, syncPort: 3799, logFile: '/var/log/tunnat-conntrackd.log', hashSize: 1024, limit: 4096, ignore: ['198.51.100.0/24'] });
    expect(c).toContain('node 1 of');
    expect(c).toContain('Port 3799');
    expect(c).toContain('LogFile /var/log/tunnat-conntrackd.log');
    expect(c).toContain('Syslog off');
    expect(c).toContain('HashSize 1024');
    expect(c).toContain('HashLimit 4096');
    expect(c).toContain('IPv4_address 198.51.100.0/24');
  });

  it.each([
    [{ node: 2 as 0 }, 'node', /0 or 1/],
    [{ syncIf: 'a very long interface' }, 'syncIf', /interface name/],
    [{ syncLocal: '192.168.255.256' }, 'syncLocal', /IPv4/],
    [{ syncPeer: '192.168.255.1' }, 'syncPeer', /same address/],
    [{ syncPort: 0 }, 'syncPort', /1\.\.65535/],
    [{ socketPath: 'run/ctl' }, 'socketPath', /absolute/],
    [{ socketPath: '/var/run/conntrackd.ctl' }, 'socketPath', /default/],
    [{ lockFile: '/var/lock/conntrack.lock' }, 'lockFile', /default/],
    [{ lockFile: '/run/tunnat-test/ctl' }, 'lockFile', /same file/],
    [{ socketPath: `/run/${'x'.repeat(120)}` }, 'socketPath', /unix socket/],
    [{ logFile: '/var/log/a b' }, 'logFile', /absolute file path/],
    [{ ignore: ['203.0.113.1/33'] }, 'ignore', /IPv4 address/],
    [{ hashSize: 0 }, 'hashSize', /integer/],
  ] as [Partial<ConntrackdOptions>, string, RegExp][])('refuses %o', (change, field, why) => {
    let caught: unknown;
    try {
      conntrackdConf({ ...base, ...change });
    } catch (e) {
      caught = e;
    }
    expect(caught).toBeInstanceOf(KernelHaError);
    expect((caught as KernelHaError).field).toBe(field);
    expect((caught as Error).message).toMatch(why);
  });
});

/**
 * The notify script against a fake conntrackd that appends its arguments to a file: it answers `-s`
 * only while `running` exists, and fails the request named by a `fail-<flag>` file. A fake logger
 * stands in for syslog.
 */
describe('haNotifyScript', () => {
  const dir = tempDir();
  const calls = join(dir, 'calls');
  const syslog = join(dir, 'syslog');
  const fake = join(dir, 'conntrackd');
  writeFileSync(
    fake,
    `#!/bin/sh
shift 2   # -C CONF
printf '%s\\n' "$*" >> ${calls}
[ "$1" = -s ] && [ ! -e ${dir}/running ] && { echo "can't connect: is conntrackd running?" >&2; exit 1; }
[ -e ${dir}/fail$1 ] && { echo "request $1 refused" >&2; exit 1; }
exit 0
`,
  );
  writeFileSync(join(dir, 'logger'), `#!/bin/sh\necho "$*" >> ${syslog}\n`);
  chmodSync(fake, 0o755);
  chmodSync(join(dir, 'logger'), 0o755);
  const script = join(dir, 'notify');
  writeFileSync(script, haNotifyScript({ conntrackd: fake, conf: '/etc/tunnat/ha/conntrackd.conf' }), { mode: 0o755 });

  function notify(state: string, opts: { running?: boolean; fail?: string } = {}): { code: number | null; calls: string[]; err: string; syslog: string } {
    for (const f of [calls, syslog, join(dir, 'running'), join(dir, 'fail-c')]) rmSync(f, { force: true });
    if (opts.running !== false) writeFileSync(join(dir, 'running'), '');
    if (opts.fail) writeFileSync(join(dir, `fail${opts.fail}`), '');
    // sh: /bin/sh (dash on Debian), as keepalived runs it.
    const r = spawnSync('sh', [script, state], { encoding: 'utf8', env: { ...process.env, PATH: `${dir}:${process.env.PATH ?? ''}` } });
    const read = (f: string): string => (existsSync(f) ? readFileSync(f, 'utf8') : '');
    return { code: r.status, calls: read(calls).split('\n').filter(Boolean), err: r.stderr, syslog: read(syslog) };
  }

  it('is valid POSIX sh', () => {
    expect(spawnSync('sh', ['-n', script]).status).toBe(0);
  });

  it('master: commit the external cache, flush, resync with the kernel, bulk-send, each step logged', () => {
    const r = notify('master');
    expect(r.code, r.err).toBe(0);
    expect(r.calls).toEqual(['-s', '-c', '-f', '-R', '-B']);
    expect(r.err.match(/: done$/gm)).toHaveLength(4);
    expect(r.err).toContain('master: commit the external cache into the kernel (conntrackd -c): done');
    expect(r.syslog).toContain('-t tunnat-ha -- master: send a bulk update to the peer (conntrackd -B): done');
  });

  it('backup: shorten the old entries\' timers, then ask the master for a resync', () => {
    const r = notify('backup');
    expect(r.code, r.err).toBe(0);
    expect(r.calls).toEqual(['-s', '-t', '-n']);
  });

  it('fault: shorten the timers only', () => {
    const r = notify('fault');
    expect(r.code, r.err).toBe(0);
    expect(r.calls).toEqual(['-s', '-t']);
  });

  it('without a running conntrackd: says so and exits 0, requesting nothing', () => {
    for (const state of ['master', 'backup', 'fault']) {
      const r = notify(state, { running: false });
      expect(r.code).toBe(0);
      expect(r.calls).toEqual(['-s']);
      expect(r.err).toMatch(new RegExp(`${state}: conntrackd is not running .*start it with ${fake} -C /etc/tunnat/ha/conntrackd.conf -d`));
      expect(r.syslog).toContain('conntrackd is not running');
    }
  });

  it('a failed step is logged with its status and output, the rest still run, and the script exits 1', () => {
    const r = notify('master', { fail: '-c' });
    expect(r.code).toBe(1);
    expect(r.calls).toEqual(['-s', '-c', '-f', '-R', '-B']);
    expect(r.err).toContain('master: commit the external cache into the kernel (conntrackd -c) failed with status 1: request -c refused');
  });

  it('refuses an unknown state without calling conntrackd', () => {
    const r = notify('primary');
    expect(r.code).toBe(2);
    expect(r.calls).toEqual([]);
    expect(r.err).toMatch(/usage: .* master\|backup\|fault/);
  });

  it('refuses paths that are not plain absolute paths', () => {
    expect(() => haNotifyScript({ conntrackd: 'conntrackd', conf: '/etc/c.conf' })).toThrow(KernelHaError);
    expect(() => haNotifyScript({ conntrackd: '/usr/sbin/conntrackd', conf: "/etc/x'; rm -rf /'" })).toThrow(KernelHaError);
  });
});

describe('writeKernelHaFiles', () => {
  it('writes the three files, the script executable, keepalived pointing at both', () => {
    const dir = join(tempDir(), 'ha');
    const files = writeKernelHaFiles(dir, {
      conntrackd: base,
      keepalived: { name: 'gw-a', lanIf: 'lan0', wanIf: 'wan0', lanVip: '192.168.1.1/24', wanVip: '203.0.113.1/24', vrid: 51, priority: 150 },
    });
    expect(files.conntrackdConf).toBe(join(dir, 'conntrackd.conf'));
    expect(statSync(files.conntrackdConf).mode & 0o777).toBe(0o644);
    expect(statSync(files.notifyScript).mode & 0o777).toBe(0o755);
    expect(statSync(files.keepalivedConf).mode & 0o777).toBe(0o644);
    expect(statSync(dir).mode & 0o777).toBe(0o755);
    expect(readFileSync(files.conntrackdConf, 'utf8')).toBe(conntrackdConf(base));
    expect(readFileSync(files.notifyScript, 'utf8')).toContain(`CONF='${files.conntrackdConf}'`);
    const k = readFileSync(files.keepalivedConf, 'utf8');
    expect(k).toContain(`notify_master "${files.notifyScript} master"`);
    expect(k).toContain(`notify_backup "${files.notifyScript} backup"`);
    expect(k).toContain(`notify_fault "${files.notifyScript} fault"`);
    expect(k).toContain(`script "/usr/sbin/conntrackd -C ${files.conntrackdConf} -s"`);
    expect(k).not.toContain('track_interface');
    if (process.getuid?.() === 0) expect(files.warnings).toEqual([]);
    else expect(files.warnings.join('\n')).toMatch(/not owned by root/);
  });

  it('warns when keepalived would refuse the script: a directory on its way writable by others', () => {
    const open = join(tempDir(), 'open');
    mkdirSync(open);
    chmodSync(open, 0o777);
    const files = writeKernelHaFiles(join(open, 'ha'), {
      conntrackd: base,
      keepalived: { name: 'gw-a', lanIf: 'lan0', wanIf: 'wan0', lanVip: '192.168.1.1/24', wanVip: '203.0.113.1/32', vrid: 51, priority: 150 },
    });
    expect(files.warnings.join('\n')).toMatch(new RegExp(`enable_script_security.*${open} \\(owner uid \\d+, mode 777\\)`));
  });
});

describe('the kernel plan for a pair', () => {
  const snat = resolveConfig({ internal: '192.168.1.0/24', external: 'wan0', publicIp: '203.0.113.1' });

  it('never takes the public VIP itself, and says why', () => {
    const env = { publicIpOwned: false, publicIpOnLink: true };
    expect(planKernelNat(snat, 'nft', env).steps.some((s) => s.action.kind === 'address')).toBe(true);
    const ha = planKernelNat(snat, 'nft', env, { ha: true });
    expect(ha.steps.some((s) => s.action.kind === 'address')).toBe(false);
    expect(ha.ruleset).toContain('snat to 203.0.113.1');
    expect(ha.notes.join('\n')).toMatch(/keepalived adds it on the master.*no `ip addr add`/);
  });

  it('refuses masquerade and pools', () => {
    const masq = resolveConfig({ internal: '192.168.1.0/24', external: 'wan0' });
    expect(() => planKernelNat(masq, 'nft', {}, { ha: true })).toThrow(/MASQUERADE deletes/);
    const pool = resolveConfig({ internal: '192.168.1.0/24', external: 'wan0', publicIp: '203.0.113.1-203.0.113.2' });
    expect(() => planKernelNat(pool, 'nft', {}, { ha: true })).toThrow(KernelNatError);
  });
});
