import { describe, expect, it } from 'vitest';
import { resolveConfig } from '../../src/config/resolve.js';
import { commandText, formatPlan, iptablesRemoval, planKernelNat, TIMEOUT_SYSCTLS, type KernelPlan } from '../../src/kernel/plan.js';
import { TIMEOUT_NAMES } from '../../src/conntrack/timeouts.js';

const base = { internal: '192.168.1.0/24', external: 'wan0' };

function sysctlsOf(plan: KernelPlan): Record<string, string> {
  const out: Record<string, string> = {};
  for (const s of plan.steps) if (s.action.kind === 'sysctl') for (const x of s.action.settings) out[x.key] = x.value;
  return out;
}

describe('planKernelNat, nftables', () => {
  it('masquerade: one table, a nat postrouting chain and a forward chain dropping INVALID', () => {
    const plan = planKernelNat(resolveConfig(base), 'nft');
    expect(plan.ruleset).toBe(
      [
        'create table ip tunnat',
        'table ip tunnat {',
        '\tchain postrouting {',
        '\t\ttype nat hook postrouting priority srcnat; policy accept;',
        '\t\tip saddr 192.168.1.0/24 oifname "wan0" counter masquerade',
        '\t}',
        '',
        '\tchain forward {',
        '\t\ttype filter hook forward priority filter; policy accept;',
        '\t\tip saddr 192.168.1.0/24 oifname "wan0" ct state invalid counter drop',
        '\t}',
        '}',
        '',
      ].join('\n'),
    );
    expect(plan.rulesetCmd).toEqual(['nft', '-f', '-']);
    expect(plan.removalCmd).toEqual(['nft', 'delete', 'table', 'ip', 'tunnat']);
    expect(plan.nat).toEqual({ kind: 'masquerade', address: null, ports: null });
  });

  it('static SNAT with a port range: TCP/UDP confined to the range, everything else plain', () => {
    const plan = planKernelNat(
      resolveConfig({ ...base, internal: '192.168.1.0/24,192.168.2.0/24', publicIp: '203.0.113.50', ports: '30000-60000' }),
      'nft',
      { publicIpOwned: true },
    );
    const rules = plan.ruleset.split('\n').filter((l) => /snat|drop/.test(l)).map((l) => l.trim());
    expect(rules).toEqual([
      'meta l4proto { tcp, udp } ip saddr { 192.168.1.0/24, 192.168.2.0/24 } oifname "wan0" counter snat to 203.0.113.50:30000-60000',
      'ip saddr { 192.168.1.0/24, 192.168.2.0/24 } oifname "wan0" counter snat to 203.0.113.50',
      'ip saddr { 192.168.1.0/24, 192.168.2.0/24 } oifname "wan0" ct state invalid counter drop',
    ]);
    expect(plan.steps.some((s) => s.action.kind === 'address')).toBe(false);
  });

  it('a SNAT address the gateway lacks: taken on the WAN when on-link, a note otherwise', () => {
    const cfg = resolveConfig({ ...base, publicIp: '203.0.113.50' });
    const onLink = planKernelNat(cfg, 'nft', { publicIpOwned: false, publicIpOnLink: true });
    const addr = onLink.steps.find((s) => s.action.kind === 'address');
    expect(addr?.cmd).toEqual(['ip', 'addr', 'add', '203.0.113.50/32', 'dev', 'wan0']);
    // Before forwarding is switched on.
    expect(onLink.steps.indexOf(addr!)).toBeLessThan(onLink.steps.length - 1);

    const routed = planKernelNat(cfg, 'nft', { publicIpOwned: false, publicIpOnLink: false });
    expect(routed.steps.some((s) => s.action.kind === 'address')).toBe(false);
    expect(routed.notes.join('\n')).toMatch(/upstream router must route it/);
  });
});

describe('planKernelNat, iptables', () => {
  it('chains of its own, jumped to from the built-ins, in iptables-restore --noflush form', () => {
    const plan = planKernelNat(resolveConfig(base), 'iptables');
    expect(plan.ruleset).toBe(
      [
        '*nat',
        ':TUNNAT-POSTROUTING - [0:0]',
        '-A TUNNAT-POSTROUTING -s 192.168.1.0/24 -o wan0 -j MASQUERADE',
        '-A POSTROUTING -j TUNNAT-POSTROUTING',
        'COMMIT',
        '*filter',
        ':TUNNAT-FORWARD - [0:0]',
        '-A TUNNAT-FORWARD -s 192.168.1.0/24 -o wan0 -m conntrack --ctstate INVALID -j DROP',
        '-I FORWARD 1 -j TUNNAT-FORWARD',
        'COMMIT',
        '',
      ].join('\n'),
    );
    expect(plan.rulesetCmd).toEqual(['iptables-restore', '-w', '5', '--noflush']);
    expect(plan.removal).toBe(
      [
        '*nat',
        '-D POSTROUTING -j TUNNAT-POSTROUTING',
        '-F TUNNAT-POSTROUTING',
        '-X TUNNAT-POSTROUTING',
        'COMMIT',
        '*filter',
        '-D FORWARD -j TUNNAT-FORWARD',
        '-F TUNNAT-FORWARD',
        '-X TUNNAT-FORWARD',
        'COMMIT',
        '',
      ].join('\n'),
    );
  });

  it('rules are written as iptables-save prints them back (what verification compares)', () => {
    const plan = planKernelNat(resolveConfig({ ...base, publicIp: '203.0.113.50', ports: '30000-60000' }), 'iptables', { publicIpOwned: true });
    expect(plan.iptablesRules[0]!.rules).toEqual([
      '-A TUNNAT-POSTROUTING -s 192.168.1.0/24 -o wan0 -p tcp -j SNAT --to-source 203.0.113.50:30000-60000',
      '-A TUNNAT-POSTROUTING -s 192.168.1.0/24 -o wan0 -p udp -j SNAT --to-source 203.0.113.50:30000-60000',
      '-A TUNNAT-POSTROUTING -s 192.168.1.0/24 -o wan0 -j SNAT --to-source 203.0.113.50',
    ]);
    expect(plan.iptablesRules[1]!.jump).toBe('-A FORWARD -j TUNNAT-FORWARD');
  });

  it('removal deletes only what exists: every jump found, the chain if present', () => {
    expect(
      iptablesRemoval([
        { table: 'nat', chain: 'TUNNAT-POSTROUTING', from: 'POSTROUTING', jumps: 2, exists: true },
        { table: 'filter', chain: 'TUNNAT-FORWARD', from: 'FORWARD', jumps: 0, exists: false },
      ]),
    ).toBe('*nat\n-D POSTROUTING -j TUNNAT-POSTROUTING\n-D POSTROUTING -j TUNNAT-POSTROUTING\n-F TUNNAT-POSTROUTING\n-X TUNNAT-POSTROUTING\nCOMMIT\n');
    expect(iptablesRemoval([{ table: 'nat', chain: 'TUNNAT-POSTROUTING', from: 'POSTROUTING', jumps: 0, exists: false }])).toBe('');
  });
});

describe('planKernelNat, sysctls', () => {
  it('rules first, forwarding last; conntrack sized and accounted', () => {
    const plan = planKernelNat(resolveConfig({ ...base, maxFlows: '1000' }), 'nft');
    expect(plan.steps[0]!.action.kind).toBe('ruleset');
    const last = plan.steps[plan.steps.length - 1]!;
    expect(last.cmd).toEqual(['sysctl', '-w', 'net.ipv4.ip_forward=1']);
    const s = sysctlsOf(plan);
    expect(s['net/netfilter/nf_conntrack_max']).toBe('1000');
    expect(s['net/netfilter/nf_conntrack_acct']).toBe('1');
  });

  it('every timeout maps to its nf_conntrack sysctl(s); UDP sets both the unreplied and the stream timeout', () => {
    const plan = planKernelNat(resolveConfig(base), 'nft');
    const s = sysctlsOf(plan);
    // The two per-port UDP query timers are tunnat's own: the kernel has no sysctl for them.
    const tunnatOnly = ['udpQueryUnanswered', 'udpQueryAnswered'];
    for (const name of TIMEOUT_NAMES) expect(TIMEOUT_SYSCTLS[name].length > 0).toBe(!tunnatOnly.includes(name));
    expect(s['net/netfilter/nf_conntrack_tcp_timeout_established']).toBe('7440');
    expect(s['net/netfilter/nf_conntrack_udp_timeout']).toBe('300');
    expect(s['net/netfilter/nf_conntrack_udp_timeout_stream']).toBe('300');
    expect(s['net/netfilter/nf_conntrack_icmp_timeout']).toBe('60');
    expect(s['net/netfilter/nf_conntrack_tcp_timeout_close']).toBe('10');
  });

  it('fractional timeouts are rounded up to whole seconds, and said so', () => {
    const cfg = resolveConfig(base);
    cfg.timeouts = { ...cfg.timeouts, udp: 2.5, icmp: 0.2 };
    const plan = planKernelNat(cfg, 'nft');
    const s = sysctlsOf(plan);
    expect(s['net/netfilter/nf_conntrack_udp_timeout']).toBe('3');
    expect(s['net/netfilter/nf_conntrack_icmp_timeout']).toBe('1');
    expect(plan.notes.join('\n')).toMatch(/whole seconds: udp, icmp rounded up/);
  });

  it('--forward is not silently ignored by the kernel engine', () => {
    const plan = planKernelNat(resolveConfig({ ...base, forward: 'tcp:8080=192.168.1.10:80' }), 'nft');
    expect(plan.notes.join('\n')).toMatch(/--forward: the kernel engine writes no DNAT rules/);
  });

  it('userspace-only flags are named as ignored', () => {
    const plan = planKernelNat(resolveConfig({ ...base, tun: 'tn9', batch: '8' }), 'nft');
    expect(plan.notes.join('\n')).toMatch(/--tun, --batch: userspace-engine settings/);
  });

  it('--alg ftp assigns the kernel\'s FTP helper to LAN control connections on those ports, in both backends', () => {
    const none = planKernelNat(resolveConfig(base), 'nft');
    expect(none.notes.join('\n')).not.toMatch(/--alg/);
    expect(none.ruleset).not.toMatch(/helper/);
    expect(planKernelNat(resolveConfig(base), 'iptables').iptablesRules.map((t) => t.table)).toEqual(['nat', 'filter']);
    const cfg = resolveConfig({ ...base, alg: ['ftp', 'ftp:2121'] });
    const nft = planKernelNat(cfg, 'nft');
    expect(nft.ruleset).toContain('ct helper ftp {\n\t\ttype "ftp" protocol tcp;');
    expect(nft.ruleset).toMatch(/type filter hook prerouting priority filter;[^}]*ip saddr 192\.168\.1\.0\/24 tcp dport \{ 21, 2121 \} counter ct helper set "ftp"/);
    expect(nft.notes.join('\n')).toMatch(/--alg ftp: control connections from the LAN to TCP 21, 2121 get the kernel's FTP helper/);
    const ipt = planKernelNat(cfg, 'iptables');
    const raw = ipt.iptablesRules.find((t) => t.table === 'raw')!;
    expect(raw.rules).toEqual([
      '-A TUNNAT-PREROUTING -s 192.168.1.0/24 -p tcp -m tcp --dport 21 -j CT --helper ftp',
      '-A TUNNAT-PREROUTING -s 192.168.1.0/24 -p tcp -m tcp --dport 2121 -j CT --helper ftp',
    ]);
    expect(ipt.ruleset).toContain('*raw\n:TUNNAT-PREROUTING - [0:0]');
    expect(ipt.ruleset).toContain('-A PREROUTING -j TUNNAT-PREROUTING');
    expect(ipt.removal).toContain('-X TUNNAT-PREROUTING');
  });
});

describe('formatPlan (the teaching view)', () => {
  it('numbers each step, gives its reason, and shows the ruleset as a heredoc', () => {
    const plan = planKernelNat(resolveConfig(base), 'nft');
    const text = formatPlan(plan);
    plan.steps.forEach((s, i) => expect(text).toContain(`# ${i + 1}. ${s.why}\n${commandText(s)}`));
    expect(text).toContain("nft -f - <<'EOF'\ncreate table ip tunnat\n");
    expect(text).toContain("# masquerade behind wan0's address for 192.168.1.0/24");
    expect(text).toContain('sysctl -w net.ipv4.ip_forward=1');
    expect(text).toContain('nft delete table ip tunnat');
  });

  it('long sysctl lists break one setting per line', () => {
    expect(commandText({ cmd: ['sysctl', '-w', 'a=1', 'b=2', 'c=3'] })).toBe('sysctl -w \\\n  a=1 \\\n  b=2 \\\n  c=3');
    expect(commandText({ cmd: ['ip', 'addr', 'add', '203.0.113.5/32', 'dev', 'wan0'] })).toBe('ip addr add 203.0.113.5/32 dev wan0');
  });
});
