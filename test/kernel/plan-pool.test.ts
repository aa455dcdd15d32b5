import { describe, expect, it } from 'vitest';
import { resolveConfig } from '../../src/config/resolve.js';
import { planKernelNat } from '../../src/kernel/plan.js';

const base = { internal: '192.168.1.0/24', external: 'wan0' };

describe('kernel engine: a public address pool', () => {
  it('becomes one persistent SNAT range (paired: the kernel hashes the source over it)', () => {
    const cfg = resolveConfig({ ...base, publicIp: '203.0.113.10-203.0.113.12' });
    expect(planKernelNat(cfg, 'nft', { publicIpOwned: true }).ruleset).toContain('snat to 203.0.113.10-203.0.113.12 persistent');
    const ipt = planKernelNat(cfg, 'iptables', { publicIpOwned: true });
    expect(ipt.iptablesRules[0]!.rules).toContain('-A TUNNAT-POSTROUTING -s 192.168.1.0/24 -o wan0 -j SNAT --to-source 203.0.113.10-203.0.113.12 --persistent'.replace('TUNNAT-POSTROUTING', ipt.iptablesRules[0]!.chain));
    // A list of consecutive addresses is the same range.
    expect(planKernelNat(resolveConfig({ ...base, publicIp: '203.0.113.10,203.0.113.11' }), 'nft').ruleset).toContain('snat to 203.0.113.10-203.0.113.11 persistent');
    // One address stays as it was: no range, no persistent.
    expect(planKernelNat(resolveConfig({ ...base, publicIp: '203.0.113.10' }), 'nft').ruleset).toMatch(/snat to 203\.0\.113\.10$/m);
  });

  it('refuses a list that is not one range, and static SNAT entries, saying why', () => {
    expect(() => planKernelNat(resolveConfig({ ...base, publicIp: '203.0.113.10,203.0.113.20' }), 'nft')).toThrow(/one range of consecutive addresses/);
    expect(() => planKernelNat(resolveConfig({ ...base, publicIp: '203.0.113.10-203.0.113.11', snat: ['192.168.1.0/25=203.0.113.11'] }), 'iptables'))
      .toThrow(/does not take --snat/);
  });
});
