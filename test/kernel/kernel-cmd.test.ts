import { afterEach, describe, expect, it, vi } from 'vitest';
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
