import { describe, expect, it } from 'vitest';
import { resolveConfig } from '../../src/config/resolve.js';
import {
  iptablesConflicts,
  iptablesCounters,
  iptablesOwnObjects,
  nftChainsOf,
  nftConflicts,
  nftOwnCounters,
  parseIptablesSave,
  parseNftJson,
  verifyIptables,
  verifyNftTable,
} from '../../src/kernel/inspect.js';
import { planKernelNat } from '../../src/kernel/plan.js';
import { parseCidr } from '../../src/wire/addr.js';

// Recorded from nft 1.0.6 / iptables 1.8.9 (nf_tables) on Linux 6.18, in a throwaway namespace.
const META = '{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}';

/** tunnat's table for --internal 192.168.1.0/24,192.168.2.0/24 --public-ip 203.0.113.50 --ports 30000-60000. */
const OUR_SNAT_TABLE = `{"nftables": [${META}, {"table": {"family": "ip", "name": "tunnat", "handle": 1}}, {"chain": {"family": "ip", "table": "tunnat", "name": "postrouting", "handle": 1, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}, {"chain": {"family": "ip", "table": "tunnat", "name": "forward", "handle": 2, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}, {"rule": {"family": "ip", "table": "tunnat", "chain": "postrouting", "handle": 5, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": {"set": ["tcp", "udp"]}}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"set": [{"range": ["192.168.1.0", "192.168.2.255"]}]}}}, {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "wan0"}}, {"counter": {"packets": 7, "bytes": 420}}, {"snat": {"addr": "203.0.113.50", "port": {"range": [30000, 60000]}}}]}}, {"rule": {"family": "ip", "table": "tunnat", "chain": "postrouting", "handle": 7, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"set": [{"range": ["192.168.1.0", "192.168.2.255"]}]}}}, {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "wan0"}}, {"counter": {"packets": 2, "bytes": 168}}, {"snat": {"addr": "203.0.113.50"}}]}}, {"rule": {"family": "ip", "table": "tunnat", "chain": "forward", "handle": 9, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"set": [{"range": ["192.168.1.0", "192.168.2.255"]}]}}}, {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "wan0"}}, {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "invalid"}}, {"counter": {"packets": 3, "bytes": 120}}, {"drop": null}]}}]}`;

/** What iptables-nft made of `iptables -t nat -A POSTROUTING -s 192.168.1.0/24 -o lo -j MASQUERADE` (an xt target). */
const IPTABLES_NFT_MASQ = `{"nftables": [${META}, {"table": {"family": "ip", "name": "nat", "handle": 1}}, {"chain": {"family": "ip", "table": "nat", "name": "POSTROUTING", "handle": 3, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}, {"rule": {"family": "ip", "table": "nat", "chain": "POSTROUTING", "handle": 4, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "wan0"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "192.168.0.0", "len": 16}}}}, {"counter": {"packets": 0, "bytes": 0}}, {"xt": {"type": "target", "name": "MASQUERADE"}}]}}]}`;

function nativeNatRule(exprs: string): string {
  return `{"nftables": [${META}, {"table": {"family": "inet", "name": "mine", "handle": 2}}, {"chain": {"family": "inet", "table": "mine", "name": "post", "handle": 1, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}, {"rule": {"family": "inet", "table": "mine", "chain": "post", "handle": 2, "expr": [${exprs}]}}]}`;
}
const OIF = (name: string, op = '==') => `{"match": {"op": "${op}", "left": {"meta": {"key": "oifname"}}, "right": "${name}"}}`;
const SADDR = (addr: string, len: number) => `{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "${addr}", "len": ${len}}}}}`;
const MASQ = '{"masquerade": null}';

const LAN = [parseCidr('192.168.1.0/24')!];

describe('parseNftJson', () => {
  it('reads tables, chains with their hooks, and rules', () => {
    const rs = parseNftJson(OUR_SNAT_TABLE);
    expect(rs.tables).toEqual([{ family: 'ip', name: 'tunnat' }]);
    expect(rs.chains.map((c) => [c.name, c.type, c.hook, c.prio])).toEqual([
      ['postrouting', 'nat', 'postrouting', 100],
      ['forward', 'filter', 'forward', 0],
    ]);
    expect(rs.rules.map((r) => r.handle)).toEqual([5, 7, 9]);
    expect(nftChainsOf(rs, 'ip', 'tunnat')).toEqual([
      { name: 'postrouting', rules: 2, policy: 'accept', base: true },
      { name: 'forward', rules: 1, policy: 'accept', base: true },
    ]);
  });

  it('an empty listing is an empty ruleset; other text is an error', () => {
    expect(parseNftJson('').tables).toEqual([]);
    expect(() => parseNftJson('{"x": 1}')).toThrow(/not nft JSON/);
  });

  it('counts packets through our NAT rules and our drop rule', () => {
    expect(nftOwnCounters(parseNftJson(OUR_SNAT_TABLE))).toEqual({ natPackets: 9, invalidDrops: 3 });
  });
});

describe('verifyNftTable', () => {
  const cfg = resolveConfig({ internal: '192.168.1.0/24,192.168.2.0/24', external: 'wan0', publicIp: '203.0.113.50', ports: '30000-60000' });
  it('accepts the table nft read back (with its merged address set)', () => {
    expect(verifyNftTable(planKernelNat(cfg, 'nft', { publicIpOwned: true }), parseNftJson(OUR_SNAT_TABLE))).toEqual([]);
  });
  it('names what differs', () => {
    const other = planKernelNat({ ...cfg, external: 'wan1' }, 'nft', { publicIpOwned: true });
    expect(verifyNftTable(other, parseNftJson(OUR_SNAT_TABLE))).toEqual([
      'rule 5 in postrouting does not match oifname wan1',
      'rule 7 in postrouting does not match oifname wan1',
    ]);
    const masq = planKernelNat(resolveConfig({ internal: '192.168.1.0/24', external: 'wan0' }), 'nft');
    expect(verifyNftTable(masq, parseNftJson(OUR_SNAT_TABLE)).join('\n')).toMatch(/has 2 rules, expected 1[\s\S]*does not masquerade/);
    expect(verifyNftTable(masq, parseNftJson(''))).toEqual(['table ip tunnat is missing']);
  });
});

describe('nftConflicts', () => {
  it('finds an iptables-nft MASQUERADE on the same interface covering the LAN', () => {
    const c = nftConflicts(parseNftJson(IPTABLES_NFT_MASQ), LAN, 'wan0');
    expect(c).toEqual([{ where: 'table ip nat, chain POSTROUTING, rule handle 4', what: 'masquerade', show: 'nft -a list chain ip nat POSTROUTING' }]);
  });
  it('ignores rules for another interface, other sources, or negated matches on ours', () => {
    expect(nftConflicts(parseNftJson(IPTABLES_NFT_MASQ), LAN, 'wan1')).toEqual([]);
    expect(nftConflicts(parseNftJson(nativeNatRule(`${OIF('wan0')}, ${SADDR('10.9.0.0', 16)}, ${MASQ}`)), LAN, 'wan0')).toEqual([]);
    expect(nftConflicts(parseNftJson(nativeNatRule(`${OIF('wan0', '!=')}, ${MASQ}`)), LAN, 'wan0')).toEqual([]);
  });
  it('a rule with no interface match, or a wildcard that covers ours, conflicts', () => {
    expect(nftConflicts(parseNftJson(nativeNatRule(MASQ)), LAN, 'wan0')).toHaveLength(1);
    expect(nftConflicts(parseNftJson(nativeNatRule(`${OIF('wan*')}, {"snat": {"addr": "203.0.113.9"}}`)), LAN, 'wan0')).toEqual([
      { where: 'table inet mine, chain post, rule handle 2', what: 'snat', show: 'nft -a list chain inet mine post' },
    ]);
  });
  it('never counts tunnat\'s own table', () => {
    expect(nftConflicts(parseNftJson(OUR_SNAT_TABLE), LAN, 'wan0')).toEqual([]);
  });
});

const SAVE = `# Generated by iptables-save v1.8.9 (nf_tables) on Wed Nov 25 17:35:06 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:TUNNAT-FORWARD - [0:0]
[5:300] -A FORWARD -j TUNNAT-FORWARD
[2:80] -A TUNNAT-FORWARD -s 192.168.1.0/24 -o wan0 -m conntrack --ctstate INVALID -j DROP
COMMIT
# Completed on Wed Nov 25 17:35:06 2026
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:TUNNAT-POSTROUTING - [0:0]
[0:0] -A POSTROUTING -s 10.99.0.0/16 -o lan0 -j MASQUERADE
[4:240] -A POSTROUTING -j TUNNAT-POSTROUTING
[4:240] -A TUNNAT-POSTROUTING -s 192.168.1.0/24 -o wan0 -j MASQUERADE
COMMIT
`;

describe('iptables-save', () => {
  const tables = parseIptablesSave(SAVE);
  it('parses tables, chains and rules (counters stripped)', () => {
    expect([...tables.keys()]).toEqual(['filter', 'nat']);
    expect(tables.get('nat')!.chains.get('POSTROUTING')).toBe('ACCEPT');
    expect(tables.get('nat')!.chains.get('TUNNAT-POSTROUTING')).toBe('-');
    expect(tables.get('nat')!.rules).toContain('-A POSTROUTING -j TUNNAT-POSTROUTING');
  });
  it('finds our chains and jumps', () => {
    expect(iptablesOwnObjects(tables)).toEqual([
      { table: 'nat', chain: 'TUNNAT-POSTROUTING', from: 'POSTROUTING', exists: true, jumps: 1 },
      { table: 'filter', chain: 'TUNNAT-FORWARD', from: 'FORWARD', exists: true, jumps: 1 },
      { table: 'raw', chain: 'TUNNAT-PREROUTING', from: 'PREROUTING', exists: false, jumps: 0 },
    ]);
    expect(iptablesOwnObjects(new Map())).toEqual([
      { table: 'nat', chain: 'TUNNAT-POSTROUTING', from: 'POSTROUTING', exists: false, jumps: 0 },
      { table: 'filter', chain: 'TUNNAT-FORWARD', from: 'FORWARD', exists: false, jumps: 0 },
      { table: 'raw', chain: 'TUNNAT-PREROUTING', from: 'PREROUTING', exists: false, jumps: 0 },
    ]);
  });
  it('verifies the rules line by line against the plan', () => {
    const plan = planKernelNat(resolveConfig({ internal: '192.168.1.0/24', external: 'wan0' }), 'iptables');
    expect(verifyIptables(plan, tables)).toEqual([]);
    const other = planKernelNat(resolveConfig({ internal: '192.168.3.0/24', external: 'wan0' }), 'iptables');
    expect(verifyIptables(other, tables).join('\n')).toMatch(/chain TUNNAT-POSTROUTING holds:/);
  });
  it('reads rule counters', () => {
    expect(iptablesCounters(SAVE, 'TUNNAT-FORWARD')).toEqual([
      { rule: '-A TUNNAT-FORWARD -s 192.168.1.0/24 -o wan0 -m conntrack --ctstate INVALID -j DROP', packets: 2, bytes: 80 },
    ]);
  });
  it('conflicts: a MASQUERADE for another interface is not one; one for ours is', () => {
    expect(iptablesConflicts(tables, LAN, 'wan0', 'iptables')).toEqual([]);
    const mine = parseIptablesSave('*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -o wan0 -j SNAT --to-source 203.0.113.9\nCOMMIT\n');
    expect(iptablesConflicts(mine, LAN, 'wan0', 'iptables-legacy')).toEqual([
      { where: 'iptables-legacy table nat: -A POSTROUTING -o wan0 -j SNAT --to-source 203.0.113.9', what: 'snat', show: 'iptables-legacy-save -t nat' },
    ]);
    const wildcard = parseIptablesSave('*nat\n-A POSTROUTING -s 192.168.0.0/16 -o wan+ -j MASQUERADE\nCOMMIT\n');
    expect(iptablesConflicts(wildcard, LAN, 'wan0', 'iptables')).toHaveLength(1);
    const negated = parseIptablesSave('*nat\n-A POSTROUTING ! -o wan0 -j MASQUERADE\nCOMMIT\n');
    expect(iptablesConflicts(negated, LAN, 'wan0', 'iptables')).toEqual([]);
  });
});
