import { describe, it, expect } from 'vitest';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { internalConflict, type ConnectedRoute } from '../../src/host/preflight.js';
import { unreadableFor } from '../../src/router/privsep.js';
import { parseCidr } from '../../src/wire/addr.js';

const cidr = (s: string) => parseCidr(s)!;
const route = (prefix: string, dev: string): ConnectedRoute => ({ prefix: cidr(prefix), dev });
const gateway = [route('192.168.1.0/24', 'lan0'), route('203.0.113.0/24', 'wan0'), route('10.9.0.0/24', 'mgmt0')];
const check = (internal: string[], routes = gateway) => internalConflict({ internal: internal.map(cidr), external: 'wan0', tun: 'tunnat0' }, routes);

describe('internalConflict: --internal against the connected subnets', () => {
  it('accepts LAN subnets inside --internal, and prefixes no interface is on', () => {
    expect(check(['192.168.1.0/24'])).toBeNull();
    expect(check(['192.168.0.0/16', '172.16.0.0/12'])).toBeNull();
  });

  it('refuses any overlap with the WAN subnet, either way round, naming both', () => {
    expect(check(['192.168.1.0/24', '203.0.113.128/25'])).toMatch(/^--internal 203\.0\.113\.128\/25 overlaps 203\.0\.113\.0\/24, the subnet of wan0 \(--external\)/);
    expect(check(['203.0.0.0/16'])).toMatch(/^--internal 203\.0\.0\.0\/16 overlaps 203\.0\.113\.0\/24, the subnet of wan0/);
    expect(check(['203.0.113.7/32'])).toMatch(/overlaps 203\.0\.113\.0\/24/);
  });

  it('refuses a prefix that covers only part of a subnet connected elsewhere', () => {
    expect(check(['192.168.1.0/25'])).toMatch(/^--internal 192\.168\.1\.0\/25 covers only part of 192\.168\.1\.0\/24, connected on lan0/);
    expect(check(['10.9.0.128/26'])).toMatch(/covers only part of 10\.9\.0\.0\/24, connected on mgmt0/);
  });

  it("ignores the TUN's own routes", () => {
    expect(check(['192.168.1.0/24'], [...gateway, route('192.168.0.0/16', 'tunnat0')])).toBeNull();
  });
});

describe('unreadableFor: can the --user read the data plane', () => {
  const user = { name: 'svc', uid: 64000, gid: 64000 };

  it('names the first directory the user cannot enter, then a file it cannot read', () => {
    const dir = mkdtempSync(join(tmpdir(), 'tunnat-perm-'));
    try {
      const sub = join(dir, 'pkg');
      mkdirSync(sub);
      const file = join(sub, 'child.js');
      writeFileSync(file, '');
      chmodSync(dir, 0o755);
      chmodSync(sub, 0o755);
      chmodSync(file, 0o644);
      expect(unreadableFor(file, user)).toBeNull();
      chmodSync(file, 0o600);
      expect(unreadableFor(file, user)).toMatch(/^svc may not read .*child\.js \(mode 0600 owned by uid \d+, gid \d+\)$/);
      chmodSync(dir, 0o700);
      expect(unreadableFor(file, user)).toBe(`svc may not enter ${dir} (mode 0700 owned by uid ${process.getuid!()}, gid ${process.getgid!()})`);
      // The owner's bits count for the owner.
      expect(unreadableFor(file, { name: 'me', uid: process.getuid!(), gid: process.getgid!() })).toBeNull();
    } finally {
      chmodSync(dir, 0o755);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
