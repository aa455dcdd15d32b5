import { describe, it, expect } from 'vitest';
import { writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { resolveConfig } from '../../src/config/resolve.js';
import { parseIpv4 } from '../../src/wire/addr.js';

const base = { internal: '192.168.0.0/16', external: 'wan0' };
const ip = (s: string): number => parseIpv4(s)!;

describe('config: public address pool and static SNAT entries', () => {
  it('takes a single address, a list and a range, the first being publicIp', () => {
    expect(resolveConfig({ ...base, publicIp: '203.0.113.10' })).toMatchObject({ publicIp: ip('203.0.113.10'), publicPool: [ip('203.0.113.10')], snat: [] });
    const list = resolveConfig({ ...base, publicIp: '203.0.113.10,203.0.113.20' });
    expect(list.publicPool).toEqual([ip('203.0.113.10'), ip('203.0.113.20')]);
    const range = resolveConfig({ ...base, publicIp: '203.0.113.10-203.0.113.12' });
    expect(range.publicIp).toBe(ip('203.0.113.10'));
    expect(range.publicPool).toEqual([ip('203.0.113.10'), ip('203.0.113.11'), ip('203.0.113.12')]);
    expect(resolveConfig(base)).toMatchObject({ publicIp: null, publicPool: [], snat: [] });
  });

  it('reads the pool and the entries from the config file, flags winning', () => {
    const dir = mkdtempSync(join(tmpdir(), 'tunnat-pool-cfg-'));
    try {
      const file = join(dir, 'c.json');
      writeFileSync(file, JSON.stringify({ ...base, publicIp: ['203.0.113.10-203.0.113.11', '198.51.100.7'], snat: ['192.168.2.0/24=198.51.100.7'] }));
      const c = resolveConfig({ config: file });
      expect(c.publicPool).toEqual([ip('203.0.113.10'), ip('203.0.113.11'), ip('198.51.100.7')]);
      expect(c.snat).toEqual([{ network: ip('192.168.2.0'), prefixLength: 24, address: ip('198.51.100.7') }]);
      expect(resolveConfig({ config: file, snat: ['192.168.3.0/24=203.0.113.11'] }).snat[0]!.address).toBe(ip('203.0.113.11'));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses what it cannot mean, naming the setting', () => {
    const bad: [Record<string, unknown>, RegExp][] = [
      [{ publicIp: '203.0.113.12-203.0.113.10' }, /not a range/],
      [{ publicIp: '203.0.113.1,nope' }, /not an IPv4 address/],
      [{ publicIp: '203.0.113.1,203.0.113.1' }, /named twice/],
      [{ publicIp: '10.0.0.0-10.0.1.0' }, /at most 64/],
      [{ publicIp: '203.0.113.1,192.168.4.4' }, /inside --internal/],
      [{ publicIp: '203.0.113.1', snat: ['192.168.2.0/24=203.0.113.9'] }, /not one of --public-ip/],
      [{ snat: ['192.168.2.0/24=203.0.113.9'] }, /need --public-ip/],
      [{ publicIp: '203.0.113.1', snat: ['192.168.2.1/24=203.0.113.1'] }, /host bits/],
      [{ publicIp: '203.0.113.1', snat: ['192.168.2.0/24'] }, /PREFIX=ADDR/],
      [{ publicIp: '203.0.113.1', snat: ['192.168.2.0/24=203.0.113.1', '192.168.2.0/24=203.0.113.1'] }, /given twice/],
      [{ publicIp: '203.0.113.1,203.0.113.2', forward: 'tcp:203.0.113.9:80=192.168.1.2' }, /203\.0\.113\.9 is not one of --public-ip/],
      [{ publicIp: '203.0.113.1,203.0.113.2', forward: ['tcp:80=192.168.1.2', 'tcp:203.0.113.1:80=192.168.1.3'] }, /two forwards for tcp:80/],
    ];
    for (const [over, why] of bad) expect(() => resolveConfig({ ...base, ...over }), JSON.stringify(over)).toThrow(why);
  });

  it('a forward may name a pool address; naming the first is the same as naming none', () => {
    const c = resolveConfig({ ...base, publicIp: '203.0.113.1,203.0.113.2', forward: ['tcp:203.0.113.2:80=192.168.1.2', 'udp:203.0.113.1:53=192.168.1.3'] });
    expect(c.forwards.map((f) => f.publicAddress)).toEqual([ip('203.0.113.2'), 0]);
  });

  it('--masquerade: the primary WAN address by default, every one with all (userspace only, never with --public-ip)', () => {
    expect(resolveConfig(base).masquerade).toBe('primary');
    expect(resolveConfig({ ...base, masquerade: 'all' })).toMatchObject({ masquerade: 'all', publicIp: null, publicPool: [] });
    expect(() => resolveConfig({ ...base, masquerade: 'every' })).toThrow(/primary or all/);
    expect(() => resolveConfig({ ...base, masquerade: 'all', publicIp: '203.0.113.1' })).toThrow(/cannot be combined with --public-ip/);
    expect(() => resolveConfig({ ...base, masquerade: 'all', engine: 'kernel' })).toThrow(/userspace engine/);
  });
});
