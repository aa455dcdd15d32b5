import { describe, it, expect } from 'vitest';
import { writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir, availableParallelism } from 'node:os';
import { join } from 'node:path';
import { ConfigError } from '../../src/config/config.js';
import { resolveConfig } from '../../src/config/resolve.js';
import { parseProcNet } from '../../src/nat/local-ports.js';

const base = { internal: '192.168.1.0/24', external: 'wan0' };

describe('config', () => {
  it('applies the documented defaults', () => {
    const c = resolveConfig(base);
    expect(c).toMatchObject({
      tun: 'tunnat0',
      publicIp: null,
      ports: [1024, 65535],
      http: { host: '127.0.0.1', port: 9100 },
      table: 7301,
      busyPoll: 50,
      workers: Math.min(64, availableParallelism()),
    });
    expect(resolveConfig({ ...base, busyPoll: '0' }).busyPoll).toBe(0);
    expect(resolveConfig({ ...base, workers: '4' }).workers).toBe(4);
    expect(resolveConfig({ ...base, workers: 'auto' }).workers).toBe(Math.min(64, availableParallelism()));
    expect(() => resolveConfig({ ...base, workers: '0' })).toThrow(/workers/);
    expect(c.internal).toHaveLength(1);
    expect(c.timeouts.udp).toBe(300);
  });

  it('switches the FTP ALG on per port: off by default, ftp means port 21, repeatable, from flags or the file', () => {
    expect(resolveConfig(base).algFtp).toEqual([]);
    expect(resolveConfig({ ...base, alg: 'ftp' }).algFtp).toEqual([21]);
    expect(resolveConfig({ ...base, alg: ['ftp', 'ftp:2121', 'FTP:21'] }).algFtp).toEqual([21, 2121]);
  });

  it('takes the file first and flags over it, naming bad fields', () => {
    const dir = mkdtempSync(join(tmpdir(), 'tunnat-cfg-'));
    const file = join(dir, 'c.json');
    writeFileSync(file, JSON.stringify({ ...base, tun: 'tn9', timeouts: { udp: 3 }, ports: '30000-40000' }));
    const c = resolveConfig({ config: file, tun: 'tn1' });
    expect(c.tun).toBe('tn1');
    expect(c.timeouts.udp).toBe(3);
    expect(c.ports).toEqual([30000, 40000]);

    writeFileSync(file, JSON.stringify({ ...base, tunn: 'x' }));
    expect(() => resolveConfig({ config: file })).toThrow(/tunn: unknown setting/);
    writeFileSync(file, '{ not json');
    expect(() => resolveConfig({ config: file })).toThrow(/not valid JSON/);
    expect(() => resolveConfig({ config: join(dir, 'missing.json') })).toThrow(/cannot read/);
    rmSync(dir, { recursive: true, force: true });
  });

  it.each([
    [{ ...base, internal: '192.168.1.0' }, 'internal'],
    [{ ...base, internal: '0.0.0.0/0' }, 'internal'],
    [{ internal: '192.168.1.0/24' }, 'external'],
    [{ ...base, external: 'a very long interface name' }, 'external'],
    [{ ...base, publicIp: '203.0.113.300' }, 'publicIp'],
    [{ ...base, publicIp: '192.168.1.5' }, 'publicIp'],
    [{ ...base, ports: '2000-1000' }, 'ports'],
    [{ ...base, http: 'localhost' }, 'http'],
    [{ ...base, maxFlows: '0' }, 'maxFlows'],
    [{ ...base, timeouts: { tcpEstablished: 'long' } }, 'timeouts.tcpEstablished'],
    [{ ...base, gatewayPorts: '1-65535' }, 'gatewayPorts'],
    [{ ...base, busyPoll: '-5' }, 'busyPoll'],
    [{ ...base, busyPoll: '20000' }, 'busyPoll'],
    [{ ...base, workers: '0' }, 'workers'],
    [{ ...base, workers: '65' }, 'workers'],
    [{ ...base, alg: 'sip' }, 'alg'],
    [{ ...base, alg: ['ftp:0'] }, 'alg'],
    [{ ...base, alg: 'ftp:70000' }, 'alg'],
  ])('rejects %j naming %s', (flags, field) => {
    try {
      resolveConfig(flags);
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      expect((err as ConfigError).field).toBe(field);
    }
  });
});

describe('local ports', () => {
  it('reads listening TCP and bound UDP sockets for the public or any address', () => {
    const text = [
      '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode',
      '   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1',
      '   1: 017100CB:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2', // 203.0.113.1:8080
      '   2: 0100007F:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3', // loopback only
      '   3: 017100CB:4E20 027100CB:0050 01 00000000:00000000 00:00000000 00000000     0        0 4', // established
    ].join('\n');
    expect([...parseProcNet(text, 0xcb007101, true)].sort((a, b) => a - b)).toEqual([22, 8080]);
    expect([...parseProcNet(text, 0xcb007101, false)].sort((a, b) => a - b)).toEqual([22, 8080, 20000]);
  });
});

describe('a gateway pair (--ha-…)', () => {
  const pair = { ...base, publicIp: '203.0.113.1', haNode: '1', haSync: '192.168.255.2:7400', haPeer: '192.168.255.1:7400', haKey: '/etc/tunnat/ha.key' };
  it('resolves the node, the sync endpoints and the key file', () => {
    const c = resolveConfig(pair);
    expect(c.haNode).toBe(1);
    expect(c.haSync).toEqual({ address: 0xc0a8ff02, port: 7400 });
    expect(c.haPeer).toEqual({ address: 0xc0a8ff01, port: 7400 });
    expect(c.haKey).toBe('/etc/tunnat/ha.key');
    expect(resolveConfig({ ...base, publicIp: '203.0.113.1', haNode: '0' })).toMatchObject({ haNode: 0, haPeer: null, haSync: null });
    expect(resolveConfig(base)).toMatchObject({ haNode: null, haPeer: null });
  });

  it.each([
    [{ haNode: '2' }, /haNode.*0 or 1/],
    [{ publicIp: undefined }, /one public address/],
    [{ publicIp: '203.0.113.1,203.0.113.5' }, /one address/],
    [{ engine: 'kernel' }, /keepalived and conntrackd/],
    [{ haKey: undefined }, /--ha-key/],
    [{ haSync: undefined }, /--ha-sync/],
    [{ haPeer: 'gw-b:7400' }, /IPv4 address/],
    [{ haPeer: '192.168.255.2:7400' }, /own --ha-sync/],
    [{ haNode: undefined }, /needs --ha-node/],
  ] as [Record<string, unknown>, RegExp][])('refuses %o', (change, why) => {
    expect(() => resolveConfig({ ...pair, ...change })).toThrow(ConfigError);
    expect(() => resolveConfig({ ...pair, ...change })).toThrow(why);
  });
});
