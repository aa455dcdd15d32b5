import { parseCidr, parseIpv4, type Cidr } from '../wire/addr.js';
import { IPT_CHAINS, IPT_OWN_CHAINS, NFT_FAMILY, NFT_FILTER_CHAIN, NFT_HELPER_CHAIN, NFT_NAT_CHAIN, NFT_TABLE, type KernelPlan } from './plan.js';

/**
 * Reading the firewall as it is: `nft -j list ruleset` and `iptables-save` turned into plain data,
 * then the questions apply/verify/remove ask of it — is our table there, which of our jumps exist,
 * does someone else already translate traffic leaving the external interface. Pure, so every
 * decision is unit-tested on recorded output.
 */

// ---------------------------------------------------------------------------------------------
// nftables JSON

export interface NftChain {
  family: string;
  table: string;
  name: string;
  handle: number;
  type?: string;
  hook?: string;
  prio?: number;
  policy?: string;
}

export interface NftRule {
  family: string;
  table: string;
  chain: string;
  handle: number;
  expr: unknown[];
}

export interface NftRuleset {
  tables: { family: string; name: string }[];
  chains: NftChain[];
  rules: NftRule[];
  /** Sets, maps, flowtables, objects: anything that makes a table non-empty besides chains. */
  otherObjects: { family: string; table: string; kind: string }[];
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);
const num = (v: unknown): number | undefined => (typeof v === 'number' ? v : undefined);

/** Parse `nft -j list ruleset` (or `list table`); throws on text that is not nft's JSON. */
export function parseNftJson(text: string): NftRuleset {
  const out: NftRuleset = { tables: [], chains: [], rules: [], otherObjects: [] };
  if (text.trim() === '') return out;
  const doc = JSON.parse(text) as unknown;
  if (!isRecord(doc) || !Array.isArray(doc['nftables'])) throw new Error(`not nft JSON output: ${text.slice(0, 120)}`);
  for (const item of doc['nftables'] as unknown[]) {
    if (!isRecord(item)) continue;
    const [kind, body] = Object.entries(item)[0] ?? [];
    if (!kind || !isRecord(body) || kind === 'metainfo') continue;
    const family = str(body['family']) ?? '';
    if (kind === 'table') {
      out.tables.push({ family, name: str(body['name']) ?? '' });
    } else if (kind === 'chain') {
      const c: NftChain = { family, table: str(body['table']) ?? '', name: str(body['name']) ?? '', handle: num(body['handle']) ?? 0 };
      const type = str(body['type']);
      const hook = str(body['hook']);
      const prio = num(body['prio']);
      const policy = str(body['policy']);
      if (type !== undefined) c.type = type;
      if (hook !== undefined) c.hook = hook;
      if (prio !== undefined) c.prio = prio;
      if (policy !== undefined) c.policy = policy;
      out.chains.push(c);
    } else if (kind === 'rule') {
      out.rules.push({
        family,
        table: str(body['table']) ?? '',
        chain: str(body['chain']) ?? '',
        handle: num(body['handle']) ?? 0,
        expr: Array.isArray(body['expr']) ? (body['expr'] as unknown[]) : [],
      });
    } else {
      out.otherObjects.push({ family, table: str(body['table']) ?? '', kind });
    }
  }
  return out;
}

export function hasNftTable(rs: NftRuleset, family: string, name: string): boolean {
  return rs.tables.some((t) => t.family === family && t.name === name);
}

/** A table's chains that exist and whether each is empty; used for what iptables-nft leaves behind. */
export function nftChainsOf(rs: NftRuleset, family: string, table: string): { name: string; rules: number; policy: string | undefined; base: boolean }[] {
  return rs.chains
    .filter((c) => c.family === family && c.table === table)
    .map((c) => ({
      name: c.name,
      rules: rs.rules.filter((r) => r.family === family && r.table === table && r.chain === c.name).length,
      policy: c.policy,
      base: c.hook !== undefined,
    }));
}

// ---------------------------------------------------------------------------------------------
// iptables-save

export interface IptTable {
  /** Chain name → policy ('-' for user chains). */
  chains: Map<string, string>;
  /** "-A CHAIN …" lines in order (rule counters, if any, stripped). */
  rules: string[];
}

/** Parse `iptables-save` text into tables; comments and COMMIT lines are dropped. */
export function parseIptablesSave(text: string): Map<string, IptTable> {
  const tables = new Map<string, IptTable>();
  let cur: IptTable | null = null;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    if (line.startsWith('*')) {
      cur = { chains: new Map(), rules: [] };
      tables.set(line.slice(1), cur);
    } else if (!cur) {
      continue;
    } else if (line.startsWith(':')) {
      const [name, policy] = line.slice(1).split(/\s+/);
      if (name) cur.chains.set(name, policy ?? '-');
    } else if (line.startsWith('[')) {
      // `iptables-save -c`: "[pkts:bytes] -A …"
      cur.rules.push(line.slice(line.indexOf(']') + 1).trim());
    } else if (line.startsWith('-A ')) {
      cur.rules.push(line);
    }
  }
  return tables;
}

/** `iptables-save -c` rule counters for lines of one chain, in order. */
export function iptablesCounters(text: string, chain: string): { rule: string; packets: number; bytes: number }[] {
  const out: { rule: string; packets: number; bytes: number }[] = [];
  for (const raw of text.split('\n')) {
    const m = /^\[(\d+):(\d+)\]\s+(-A (\S+) .*)$/.exec(raw.trim());
    if (m && m[4] === chain) out.push({ rule: m[3]!, packets: Number(m[1]), bytes: Number(m[2]) });
  }
  return out;
}

/** What of tunnat's iptables objects exists: per table, the chain and how many jumps to it. */
export function iptablesOwnObjects(tables: Map<string, IptTable>): { table: string; chain: string; from: string; exists: boolean; jumps: number }[] {
  return IPT_OWN_CHAINS.map((c) => {
    const t = tables.get(c.table);
    const jumpLine = `-A ${c.from} -j ${c.chain}`;
    return {
      table: c.table,
      chain: c.chain,
      from: c.from,
      exists: t?.chains.has(c.chain) ?? false,
      jumps: t ? t.rules.filter((r) => r === jumpLine).length : 0,
    };
  });
}

// ---------------------------------------------------------------------------------------------
// Verification: is what the kernel holds what the plan says?

/** Problems found (empty = verified). */
export function verifyNftTable(plan: KernelPlan, rs: NftRuleset): string[] {
  const problems: string[] = [];
  if (!hasNftTable(rs, NFT_FAMILY, NFT_TABLE)) return [`table ${NFT_FAMILY} ${NFT_TABLE} is missing`];
  const chain = (name: string) => rs.chains.find((c) => c.family === NFT_FAMILY && c.table === NFT_TABLE && c.name === name);
  const rulesOf = (name: string) => rs.rules.filter((r) => r.family === NFT_FAMILY && r.table === NFT_TABLE && r.chain === name);
  const nat = chain(NFT_NAT_CHAIN);
  const fwd = chain(NFT_FILTER_CHAIN);
  if (!nat || nat.type !== 'nat' || nat.hook !== 'postrouting') problems.push(`chain ${NFT_NAT_CHAIN} is missing or not a nat postrouting chain`);
  if (!fwd || fwd.type !== 'filter' || fwd.hook !== 'forward') problems.push(`chain ${NFT_FILTER_CHAIN} is missing or not a filter forward chain`);
  const natRules = rulesOf(NFT_NAT_CHAIN);
  const expected = plan.nat.ports ? 2 : 1;
  if (natRules.length !== expected) problems.push(`chain ${NFT_NAT_CHAIN} has ${natRules.length} rules, expected ${expected}`);
  for (const r of natRules) {
    const s = natStatement(r.expr);
    if (!s || s.kind !== plan.nat.kind) problems.push(`rule ${r.handle} in ${NFT_NAT_CHAIN} does not ${plan.nat.kind}`);
    else if (s.kind === 'snat' && s.address !== plan.nat.address) problems.push(`rule ${r.handle} snats to ${s.address}, expected ${plan.nat.address}`);
    const oif = oifMatch(r.expr);
    if (!oif || oif.negated || !oif.names.includes(plan.external)) problems.push(`rule ${r.handle} in ${NFT_NAT_CHAIN} does not match oifname ${plan.external}`);
  }
  const fwdRules = rulesOf(NFT_FILTER_CHAIN);
  if (fwdRules.length !== 1 || !fwdRules[0]!.expr.some((e) => isRecord(e) && 'drop' in e)) {
    problems.push(`chain ${NFT_FILTER_CHAIN} should hold one drop rule, holds ${fwdRules.length} rules`);
  }
  if ((plan.algFtp ?? []).length > 0) {
    const helper = chain(NFT_HELPER_CHAIN);
    if (!helper || helper.type !== 'filter' || helper.hook !== 'prerouting') problems.push(`chain ${NFT_HELPER_CHAIN} (the FTP helper) is missing or not a filter prerouting chain`);
    else if (rulesOf(NFT_HELPER_CHAIN).length !== 1) problems.push(`chain ${NFT_HELPER_CHAIN} should hold one helper rule, holds ${rulesOf(NFT_HELPER_CHAIN).length}`);
  }
  return problems;
}

export function verifyIptables(plan: KernelPlan, tables: Map<string, IptTable>): string[] {
  const problems: string[] = [];
  for (const t of plan.iptablesRules) {
    const tab = tables.get(t.table);
    if (!tab || !tab.chains.has(t.chain)) {
      problems.push(`chain ${t.chain} is missing from table ${t.table}`);
      continue;
    }
    const have = tab.rules.filter((r) => r.startsWith(`-A ${t.chain} `));
    if (have.join('\n') !== t.rules.join('\n')) {
      problems.push(`chain ${t.chain} holds:\n  ${have.join('\n  ') || '(nothing)'}\nexpected:\n  ${t.rules.join('\n  ')}`);
    }
    const jumps = tab.rules.filter((r) => r === t.jump).length;
    if (jumps !== 1) problems.push(`${t.from} in table ${t.table} has ${jumps} jumps to ${t.chain}, expected 1`);
  }
  return problems;
}

// ---------------------------------------------------------------------------------------------
// Conflicts: someone else's SNAT/MASQUERADE for the same traffic

export interface Conflict {
  /** Where the rule is, in words a person can look up. */
  where: string;
  what: 'masquerade' | 'snat';
  /** A command that shows it. */
  show: string;
}

interface OifMatch {
  names: string[];
  negated: boolean;
}

function natStatement(expr: unknown[]): { kind: 'masquerade' | 'snat'; address: string | null } | null {
  for (const e of expr) {
    if (!isRecord(e)) continue;
    if ('masquerade' in e) return { kind: 'masquerade', address: null };
    if ('snat' in e) {
      const body = e['snat'];
      const addr = isRecord(body) ? body['addr'] : undefined;
      return { kind: 'snat', address: typeof addr === 'string' ? addr : null };
    }
    const xt = e['xt'];
    if (isRecord(xt) && xt['type'] === 'target') {
      if (xt['name'] === 'MASQUERADE') return { kind: 'masquerade', address: null };
      if (xt['name'] === 'SNAT') return { kind: 'snat', address: null };
    }
  }
  return null;
}

function matchOf(e: unknown): { op: string; left: unknown; right: unknown } | null {
  if (!isRecord(e) || !isRecord(e['match'])) return null;
  const m = e['match'];
  return { op: str(m['op']) ?? '==', left: m['left'], right: m['right'] };
}

function oifMatch(expr: unknown[]): OifMatch | null {
  for (const e of expr) {
    const m = matchOf(e);
    if (!m || !isRecord(m.left) || !isRecord(m.left['meta'])) continue;
    const key = m.left['meta']['key'];
    if (key !== 'oifname' && key !== 'oif') continue;
    const names: string[] = [];
    if (typeof m.right === 'string') names.push(m.right);
    else if (isRecord(m.right) && Array.isArray(m.right['set'])) {
      for (const v of m.right['set'] as unknown[]) if (typeof v === 'string') names.push(v);
    }
    return { names, negated: m.op === '!=' };
  }
  return null;
}

/** nft interface-name patterns: a trailing '*' is a wildcard ("eth*"). */
function ifnameMatches(pattern: string, name: string): boolean {
  return pattern.endsWith('*') ? name.startsWith(pattern.slice(0, -1)) : pattern === name;
}

function rangeOverlaps(lo: number, hi: number, internal: Cidr[]): boolean {
  return internal.some((c) => {
    const cLo = c.network >>> 0;
    const cHi = (c.network | (~c.mask >>> 0)) >>> 0;
    return lo <= cHi && hi >= cLo;
  });
}

/** An nft right-hand side as address ranges; null when it is not something we understand. */
function addressRanges(right: unknown): [number, number][] | null {
  const one = (v: unknown): [number, number] | null => {
    if (typeof v === 'string') {
      const a = parseIpv4(v);
      return a === null ? null : [a, a];
    }
    if (isRecord(v) && isRecord(v['prefix'])) {
      const c = parseCidr(`${String(v['prefix']['addr'])}/${String(v['prefix']['len'])}`);
      return c ? [c.network >>> 0, (c.network | (~c.mask >>> 0)) >>> 0] : null;
    }
    if (isRecord(v) && Array.isArray(v['range'])) {
      const [a, b] = (v['range'] as unknown[]).map((x) => (typeof x === 'string' ? parseIpv4(x) : null));
      return a != null && b != null ? [a, b] : null;
    }
    return null;
  };
  if (isRecord(right) && Array.isArray(right['set'])) {
    const out: [number, number][] = [];
    for (const v of right['set'] as unknown[]) {
      const r = one(v);
      if (!r) return null;
      out.push(r);
    }
    return out;
  }
  const r = one(right);
  return r ? [r] : null;
}

/** False only when the rule provably matches no source inside `internal`. */
function saddrMayOverlap(expr: unknown[], internal: Cidr[]): boolean {
  for (const e of expr) {
    const m = matchOf(e);
    if (!m || !isRecord(m.left) || !isRecord(m.left['payload'])) continue;
    const p = m.left['payload'];
    if (p['protocol'] !== 'ip' || p['field'] !== 'saddr' || m.op !== '==') continue;
    const ranges = addressRanges(m.right);
    if (ranges && !ranges.some(([lo, hi]) => rangeOverlaps(lo, hi, internal))) return false;
  }
  return true;
}

/**
 * Rules outside tunnat's own objects that source-NAT traffic from `internal` leaving `external` (or
 * any interface). Netfilter binds a flow's NAT once, in the first nat chain that translates it, so
 * such a rule would silently win over tunnat's or lose to it depending on priority and order.
 */
export function nftConflicts(rs: NftRuleset, internal: Cidr[], external: string): Conflict[] {
  const natTables = new Set(
    rs.chains.filter((c) => c.type === 'nat' && c.hook === 'postrouting' && (c.family === 'ip' || c.family === 'inet')).map((c) => `${c.family} ${c.table}`),
  );
  const ours = (r: NftRule) =>
    (r.family === NFT_FAMILY && r.table === NFT_TABLE) || IPT_OWN_CHAINS.some((c) => r.family === 'ip' && r.table === c.table && r.chain === c.chain);
  const out: Conflict[] = [];
  for (const r of rs.rules) {
    if (ours(r) || !natTables.has(`${r.family} ${r.table}`)) continue;
    const s = natStatement(r.expr);
    if (!s) continue;
    const oif = oifMatch(r.expr);
    if (oif) {
      const hits = oif.names.some((n) => ifnameMatches(n, external));
      if (oif.negated ? hits : !hits) continue;
    }
    if (!saddrMayOverlap(r.expr, internal)) continue;
    out.push({
      where: `table ${r.family} ${r.table}, chain ${r.chain}, rule handle ${r.handle}`,
      what: s.kind,
      show: `nft -a list chain ${r.family} ${r.table} ${r.chain}`,
    });
  }
  return out;
}

/** The same question for `iptables-save -t nat` text (iptables-legacy, which nft cannot see). */
export function iptablesConflicts(tables: Map<string, IptTable>, internal: Cidr[], external: string, tool: string): Conflict[] {
  const nat = tables.get('nat');
  if (!nat) return [];
  const out: Conflict[] = [];
  const ownChains: string[] = IPT_CHAINS.map((c) => c.chain);
  for (const rule of nat.rules) {
    const words = rule.split(/\s+/);
    const chain = words[1] ?? '';
    if (ownChains.includes(chain)) continue;
    const target = words[words.indexOf('-j') + 1];
    if (target !== 'MASQUERADE' && target !== 'SNAT') continue;
    const opt = (flag: string): { value: string; negated: boolean } | null => {
      const i = words.indexOf(flag);
      if (i < 0) return null;
      return { value: words[i + 1] ?? '', negated: words[i - 1] === '!' };
    };
    const o = opt('-o');
    if (o) {
      // iptables interface wildcards end in '+'.
      const hits = o.value.endsWith('+') ? external.startsWith(o.value.slice(0, -1)) : o.value === external;
      if (o.negated ? hits : !hits) continue;
    }
    const s = opt('-s');
    if (s && !s.negated) {
      const c = parseCidr(s.value.includes('/') ? s.value : `${s.value}/32`);
      if (c && !rangeOverlaps(c.network >>> 0, (c.network | (~c.mask >>> 0)) >>> 0, internal)) continue;
    }
    out.push({ where: `${tool} table nat: ${rule}`, what: target === 'SNAT' ? 'snat' : 'masquerade', show: `${tool}-save -t nat` });
  }
  return out;
}

/** Counters of our nft rules: NAT rule packets (= new flows translated) and invalid drops. */
export function nftOwnCounters(rs: NftRuleset): { natPackets: number; invalidDrops: number } {
  const sum = (chain: string) =>
    rs.rules
      .filter((r) => r.family === NFT_FAMILY && r.table === NFT_TABLE && r.chain === chain)
      .reduce((acc, r) => {
        for (const e of r.expr) {
          if (isRecord(e) && isRecord(e['counter'])) acc += num(e['counter']['packets']) ?? 0;
        }
        return acc;
      }, 0);
  return { natPackets: sum(NFT_NAT_CHAIN), invalidDrops: sum(NFT_FILTER_CHAIN) };
}
