import { afterEach, describe, expect, it, vi } from 'vitest';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { resolveConfig } from '../../src/config/resolve.js';
import { cmdKernel, persistenceInstructions } from '../../src/cli/kernel-cmd.js';
import { planKernelNat } from '../../src/kernel/plan.js';

/** Run `tunnat kernel …` in-process, capturing what it prints. `plan` changes nothing and needs no root. */
async function kernel(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const o = vi.spyOn(process.stdout, 'write').mockImplementation((c: string | Uint8Array) => ((out += String(c)), true));
  const e = vi.spyOn(process.stderr, 'write').mockImplementation((c: string | Uint8Array) => ((err += String(c)), true));
  try {
    const code = await cmdKernel(args);
    return { code, out, err };
  } finally {
    o.mockRestore();
    e.mockRestore();
  }
}

afterEach(() => vi.restoreAllMocks());

describe('tunnat kernel plan', () => {
  it('prints the recipe for the flags, numbered, with the undo', async () => {
    const r = await kernel('plan', '--internal', '192.168.1.0/24', '--external', 'wan0', '--backend', 'iptables', '--max-flows', '5000');
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/^# tunnat kernel NAT plan — backend iptables/);
    expect(r.out).toContain('# 1. NAT rules in chains of tunnat\'s own');
    expect(r.out).toContain('-A TUNNAT-POSTROUTING -s 192.168.1.0/24 -o wan0 -j MASQUERADE');
    expect(r.out).toContain('sysctl -w net.netfilter.nf_conntrack_max=5000');
    expect(r.out).toContain('sysctl -w net.netfilter.nf_conntrack_generic_timeout=600');
    expect(r.out).toContain('net.netfilter.nf_conntrack_sctp_timeout_established=7440');
    expect(r.out).toMatch(/# 9\. make the host a router[^\n]*\nsysctl -w net\.ipv4\.ip_forward=1/);
    expect(r.out).toContain('-X TUNNAT-FORWARD');
  });

  it('camel-cases flags into the config: --public-ip means SNAT', async () => {
    const r = await kernel('plan', '--internal', '192.168.1.0/24', '--external', 'wan0', '--public-ip', '198.51.100.7', '--backend', 'nft');
    expect(r.code, r.err).toBe(0);
    expect(r.out).toContain('counter snat to 198.51.100.7');
  });

  it('bad usage and bad configuration exit 2 with the field named', async () => {
    expect((await kernel('plan', '--external', 'wan0')).err).toMatch(/internal: required/);
    expect((await kernel('plan', '--external', 'wan0')).code).toBe(2);
    expect((await kernel('plan', '--internal', '192.168.1.0/24', '--external', 'wan0', '--backend', 'pf')).code).toBe(2);
    expect((await kernel('plan', '--bogus')).code).toBe(2);
    const unknown = await kernel('frobnicate');
    expect(unknown.code).toBe(2);
    expect(unknown.err).toMatch(/unknown kernel command "frobnicate"/);
    expect((await kernel()).code).toBe(2);
    expect((await kernel('help')).out).toContain('tunnat kernel plan');
  });
});

describe('persistenceInstructions', () => {
  const cfg = resolveConfig({ internal: '192.168.1.0/24', external: 'wan0' });
  it('nft: sysctl.d lines for every setting, the conntrack module, and the nftables include', () => {
    const text = persistenceInstructions(planKernelNat(cfg, 'nft'), null);
    expect(text).toContain('net.ipv4.ip_forward = 1');
    expect(text).toContain('net.netfilter.nf_conntrack_udp_timeout_stream = 300');
    expect(text).toContain('/etc/modules-load.d/tunnat.conf');
    expect(text).toContain('nft list table ip tunnat > /etc/nftables-tunnat.nft');
    expect(text).toContain('/etc/sysconfig/nftables.conf');
  });
  it('iptables: netfilter-persistent on Debian/Ubuntu, iptables-services on RHEL', () => {
    const text = persistenceInstructions(planKernelNat(cfg, 'iptables'), null);
    expect(text).toContain('netfilter-persistent save');
    expect(text).toContain('service iptables save');
  });
});

describe('tunnat kernel plan --ha', () => {
  const nat = ['--internal', '192.168.1.0/24', '--external', 'wan0', '--backend', 'nft'];
  const pair = ['--ha-node', '1', '--ha-lan-if', 'lan0', '--ha-lan-vip', '192.168.1.1/24', '--ha-sync-if', 'sync0', '--ha-sync-local', '192.168.255.2', '--ha-sync-peer', '192.168.255.1'];

  it('prints the NAT recipe and the three files, and writes nothing', async () => {
    const parent = mkdtempSync(join(tmpdir(), 'tunnat-ha-plan-'));
    const dir = join(parent, 'ha');
    try {
      const r = await kernel('plan', ...nat, '--public-ip', '203.0.113.1', '--ha', dir, ...pair);
      expect(r.code, r.err).toBe(0);
      expect(r.out).toMatch(/^# tunnat kernel NAT plan — .*node 1 of a standby pair/);
      expect(r.out).toContain('snat to 203.0.113.1');
      expect(r.out).not.toMatch(/^ip addr add/m);
      expect(r.out).toContain(`# ==> ${dir}/conntrackd.conf (mode 0644) <==`);
      expect(r.out).toContain('IPv4_Destination_Address 192.168.255.1');
      expect(r.out).toContain('Path /run/tunnat-conntrackd.ctl');
      expect(r.out).toContain(`# ==> ${dir}/tunnat-ha-notify (mode 0755) <==`);
      expect(r.out).toContain(`# ==> ${dir}/keepalived.conf (mode 0644) <==`);
      expect(r.out).toContain('203.0.113.1/32 dev wan0');
      expect(r.out).toMatch(/priority 100\n/);
      expect(existsSync(dir)).toBe(false);
    } finally {
      rmSync(parent, { recursive: true, force: true });
    }
  });

  it('refuses a pair without --public-ip (masquerade), and --ha-* without --ha, as bad usage', async () => {
    const masq = await kernel('plan', ...nat, '--ha', '/etc/tunnat/ha', ...pair);
    expect(masq.code).toBe(2);
    expect(masq.err).toMatch(/ha: a standby pair \(--ha\) needs --public-ip .*MASQUERADE deletes/);
    const stray = await kernel('plan', ...nat, '--public-ip', '203.0.113.1', ...pair);
    expect(stray.code).toBe(2);
    expect(stray.err).toMatch(/ha-node: takes effect only with --ha DIR/);
  });

  it.each([
    [['--ha-node', '2'], /ha-node: expected 0 or 1/],
    [['--ha-wan-vip', '203.0.113.9/24'], /ha-wan-vip: .*is not --public-ip/],
    [['--ha-sync-peer', '192.168.255.2'], /ha-sync-peer: is --ha-sync-local/],
    [['--ha-vrid', '254'], /ha-vrid: expected an integer in 1\.\.253/],
    [['--ha-lan-if', 'wan0'], /LAN and WAN interfaces are the same/],
  ])('refuses %o with exit 2', async (change, why) => {
    const r = await kernel('plan', ...nat, '--public-ip', '203.0.113.1', '--ha', '/etc/tunnat/ha', ...pair, ...change);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(why);
  });

  it('names a missing --ha-* flag', async () => {
    const r = await kernel('plan', ...nat, '--public-ip', '203.0.113.1', '--ha', '/etc/tunnat/ha', '--ha-node', '0');
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/ha-lan-vip: required with --ha/);
  });
});
