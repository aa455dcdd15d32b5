import { DEFAULTS, type RouterConfig } from '../config/config.js';
import { DEFAULT_TIMEOUTS, type Timeouts } from '../conntrack/timeouts.js';
import { cidrToString, ipToString, type Cidr } from '../wire/addr.js';
import { KernelNatError, NOTHING_CHANGED } from './errors.js';

/**
 * The kernel engine's plan: what the same `tunnat run` flags mean when the kernel's netfilter does
 * the translation instead of tunnat. Pure — config in, commands and ruleset text out — so that
 * `tunnat kernel plan` can show it without root and tests can read it without a kernel.
 *
 * The recipe is the classic one: masquerade (or SNAT) the LAN prefixes on the outbound interface,
 * size the connection-tracking table, set its idle timeouts, and turn on forwarding — last, so that
 * no packet is forwarded before the NAT rules exist. Everything lives in objects of tunnat's own
 * (one nft table, or two iptables chains jumped to from the built-ins) so that removing it touches
 * nothing else.
 */

export type KernelBackend = 'nft' | 'iptables';

/** nftables: one table, two base chains. */
export const NFT_FAMILY = 'ip';
export const NFT_TABLE = 'tunnat';
export const NFT_NAT_CHAIN = 'postrouting';
export const NFT_FILTER_CHAIN = 'forward';
/** With --alg ftp: the chain that assigns the kernel's FTP helper, and the helper object it names. */
export const NFT_HELPER_CHAIN = 'prerouting';
export const NFT_FTP_HELPER = 'ftp';

/** iptables: one chain per table, reached by a jump rule from the built-in chain. */
export const IPT_CHAINS = [
  { table: 'nat', chain: 'TUNNAT-POSTROUTING', from: 'POSTROUTING' },
  { table: 'filter', chain: 'TUNNAT-FORWARD', from: 'FORWARD' },
] as const;
/** With --alg ftp: where the kernel's FTP helper is assigned (CT --helper must run before conntrack confirms). */
export const IPT_HELPER_CHAIN = { table: 'raw', chain: 'TUNNAT-PREROUTING', from: 'PREROUTING' } as const;
/** Every chain tunnat may own, for finding and removing them whatever the plan was. */
export const IPT_OWN_CHAINS = [...IPT_CHAINS, IPT_HELPER_CHAIN] as const;

/** Wait up to this many seconds for the xtables lock (another iptables run) instead of failing. */
const XTABLES_WAIT_S = '5';

/** Facts about the host that the plan depends on; the caller looks them up (apply.ts probeEnv). */
export interface PlanEnv {
  /** The gateway has --public-ip on one of its interfaces (irrelevant for masquerade). */
  publicIpOwned?: boolean;
  /** --public-ip lies inside a prefix configured on --external, so neighbours will ARP for it there. */
  publicIpOnLink?: boolean;
}

/** What apply.ts does for a step; `cmd` is the same change as a person would type it. */
export type KernelAction =
  /** Load `plan.ruleset` with the backend's tool (nft -f / iptables-restore --noflush). */
  | { kind: 'ruleset' }
  /**
   * Keys are paths under /proc/sys ("net/ipv4/ip_forward"); the old values are saved first. An optional
   * setting whose key the kernel lacks (a protocol tracker not built in or loaded) is skipped with a warning.
   */
  | { kind: 'sysctl'; settings: { key: string; value: string; optional?: boolean }[] }
  /** `ip addr add <address>/32 dev <dev>`: the gateway takes the SNAT address so it answers ARP for it. */
  | { kind: 'address'; address: string; dev: string };

export interface KernelStep {
  cmd: string[];
  /** Standard input of `cmd` (the ruleset). */
  input?: string;
  /** One line: what the step is for. */
  why: string;
  action: KernelAction;
}

export interface KernelNatSpec {
  kind: 'masquerade' | 'snat';
  /** SNAT only. */
  address: string | null;
  /** Null = the kernel's own choice (keep the source port when free, else pick one); else TCP/UDP ports are confined to it. */
  ports: [number, number] | null;
  /** A pool (address is `A-B`): the same inside host always gets the same address (--persistent). */
  persistent?: boolean;
}

export interface KernelPlan {
  backend: KernelBackend;
  internal: string[];
  external: string;
  nat: KernelNatSpec;
  /** Exactly what is fed to `nft -f -` or `iptables-restore --noflush`. */
  ruleset: string;
  /** The command that loads `ruleset` (it reads standard input). */
  rulesetCmd: string[];
  /** Standard input of `removalCmd` ('' when it takes none): exactly what removes the rules again. */
  removal: string;
  removalCmd: string[];
  /** The rules as `iptables-save` prints them, per table (iptables only; used to verify). */
  iptablesRules: { table: string; chain: string; from: string; rules: string[]; jump: string }[];
  /** Ports whose TCP connections from the LAN get the kernel's FTP helper (--alg ftp). */
  algFtp: number[];
  /** In order. */
  steps: KernelStep[];
  /** Settings without a kernel equivalent, rounding, and what the kernel does differently. */
  notes: string[];
}

/** Kernel sysctl(s) for each tunnat timeout. UDP has two: unreplied (and young) flows, and streams. */
export const TIMEOUT_SYSCTLS: Readonly<Record<keyof Timeouts, readonly string[]>> = {
  tcpSynSent: ['net/netfilter/nf_conntrack_tcp_timeout_syn_sent'],
  tcpSynRecv: ['net/netfilter/nf_conntrack_tcp_timeout_syn_recv'],
  tcpEstablished: ['net/netfilter/nf_conntrack_tcp_timeout_established'],
  tcpFinWait: ['net/netfilter/nf_conntrack_tcp_timeout_fin_wait'],
  tcpCloseWait: ['net/netfilter/nf_conntrack_tcp_timeout_close_wait'],
  tcpLastAck: ['net/netfilter/nf_conntrack_tcp_timeout_last_ack'],
  tcpTimeWait: ['net/netfilter/nf_conntrack_tcp_timeout_time_wait'],
  tcpClose: ['net/netfilter/nf_conntrack_tcp_timeout_close'],
  // The kernel uses udp_timeout until a flow has seen replies for 2 s, then udp_timeout_stream
  // (nf_conntrack_proto_udp.c); tunnat has one UDP timeout, so both get it.
  udp: ['net/netfilter/nf_conntrack_udp_timeout', 'net/netfilter/nf_conntrack_udp_timeout_stream'],
  // The kernel has no per-port UDP timers: these two have no sysctl of their own (see notes).
  udpQueryUnanswered: [],
  udpQueryAnswered: [],
  icmp: ['net/netfilter/nf_conntrack_icmp_timeout'],
  generic: ['net/netfilter/nf_conntrack_generic_timeout'],
  sctpOpening: ['net/netfilter/nf_conntrack_sctp_timeout_cookie_wait', 'net/netfilter/nf_conntrack_sctp_timeout_cookie_echoed', 'net/netfilter/nf_conntrack_sctp_timeout_heartbeat_sent'],
  sctpEstablished: ['net/netfilter/nf_conntrack_sctp_timeout_established'],
  sctpShutdown: ['net/netfilter/nf_conntrack_sctp_timeout_shutdown_sent', 'net/netfilter/nf_conntrack_sctp_timeout_shutdown_recd', 'net/netfilter/nf_conntrack_sctp_timeout_shutdown_ack_sent'],
  sctpClosed: ['net/netfilter/nf_conntrack_sctp_timeout_closed'],
};

export const SYSCTL_IP_FORWARD = 'net/ipv4/ip_forward';
export const SYSCTL_CT_MAX = 'net/netfilter/nf_conntrack_max';
export const SYSCTL_CT_ACCT = 'net/netfilter/nf_conntrack_acct';

/** "net/netfilter/nf_conntrack_max" → "net.netfilter.nf_conntrack_max". */
export function sysctlName(key: string): string {
  return key.split('/').join('.');
}

/** The kernel takes whole seconds; never round a timeout down to 0. */
function seconds(v: number): number {
  return Math.max(1, Math.ceil(v));
}

function nftString(s: string): string {
  return `"${s}"`;
}

function nftSaddr(internal: Cidr[]): string {
  const list = internal.map(cidrToString);
  return list.length === 1 ? list[0]! : `{ ${list.join(', ')} }`;
}

function natSpec(cfg: RouterConfig): KernelNatSpec {
  const defaultPorts = cfg.ports[0] === DEFAULTS.ports[0] && cfg.ports[1] === DEFAULTS.ports[1];
  const pool = cfg.publicPool ?? [];
  return {
    kind: cfg.publicIp === null ? 'masquerade' : 'snat',
    address: cfg.publicIp === null ? null : pool.length > 1 ? poolRange(cfg) : ipToString(cfg.publicIp),
    ports: defaultPorts ? null : [cfg.ports[0], cfg.ports[1]],
    ...(pool.length > 1 ? { persistent: true } : {}),
  };
}

/**
 * A pool as the kernel takes it: one range, `A-B`, with `persistent` so that one inside host keeps one
 * address (the kernel hashes the source address over the range: paired pooling). The kernel has no list
 * of separate addresses and tunnat's static SNAT entries are not translated into rules: both are refused
 * rather than approximated.
 */
function poolRange(cfg: RouterConfig): string {
  const pool = cfg.publicPool;
  if (cfg.snat.length > 0) {
    throw new KernelNatError('UNSUPPORTED', `the kernel engine does not take --snat entries (static SNAT per prefix); use the userspace engine. ${NOTHING_CHANGED}`);
  }
  for (let i = 1; i < pool.length; i++) {
    if (pool[i] !== pool[i - 1]! + 1) {
      throw new KernelNatError(
        'UNSUPPORTED',
        `the kernel engine takes a pool only as one range of consecutive addresses (LOW-HIGH); ${pool.map(ipToString).join(',')} is not one. ${NOTHING_CHANGED}`,
      );
    }
  }
  return `${ipToString(pool[0]!)}-${ipToString(pool[pool.length - 1]!)}`;
}

function natStatementNft(nat: KernelNatSpec, withPorts: boolean): string {
  const ports = withPorts && nat.ports ? `:${nat.ports[0]}-${nat.ports[1]}` : '';
  if (nat.kind === 'masquerade') return ports ? `masquerade to ${ports}` : 'masquerade';
  return `snat to ${nat.address}${ports}${nat.persistent ? ' persistent' : ''}`;
}

function nftRuleset(internal: Cidr[], external: string, nat: KernelNatSpec, algFtp: readonly number[]): string {
  const match = `ip saddr ${nftSaddr(internal)} oifname ${nftString(external)}`;
  // A port range needs a transport protocol to apply to, so TCP and UDP get their own rule and
  // everything else (ICMP: the kernel rewrites its identifier only on a clash) the plain one.
  const natRules = nat.ports
    ? [`meta l4proto { tcp, udp } ${match} counter ${natStatementNft(nat, true)}`, `${match} counter ${natStatementNft(nat, false)}`]
    : [`${match} counter ${natStatementNft(nat, false)}`];
  return [
    // `create` fails when the table exists, so two instances cannot both apply: the whole
    // transaction is refused instead of merging into someone else's table.
    `create table ${NFT_FAMILY} ${NFT_TABLE}`,
    `table ${NFT_FAMILY} ${NFT_TABLE} {`,
    `\tchain ${NFT_NAT_CHAIN} {`,
    '\t\ttype nat hook postrouting priority srcnat; policy accept;',
    ...natRules.map((r) => `\t\t${r}`),
    '\t}',
    '',
    `\tchain ${NFT_FILTER_CHAIN} {`,
    '\t\ttype filter hook forward priority filter; policy accept;',
    `\t\t${match} ct state invalid counter drop`,
    '\t}',
    ...(algFtp.length > 0 ? nftHelper(internal, algFtp) : []),
    '}',
    '',
  ].join('\n');
}

/**
 * The kernel's FTP helper for control connections from the LAN to `ports` (Linux 4.7 and later assign
 * helpers only explicitly): a ct helper object, assigned in prerouting, after conntrack has looked the
 * packet up and before it confirms the new connection.
 */
function nftHelper(internal: Cidr[], ports: readonly number[]): string[] {
  const dports = ports.length === 1 ? String(ports[0]) : `{ ${ports.join(', ')} }`;
  return [
    '',
    `\tct helper ${NFT_FTP_HELPER} {`,
    '\t\ttype "ftp" protocol tcp;',
    '\t}',
    '',
    `\tchain ${NFT_HELPER_CHAIN} {`,
    '\t\ttype filter hook prerouting priority filter; policy accept;',
    `\t\tip saddr ${nftSaddr(internal)} tcp dport ${dports} counter ct helper set "${NFT_FTP_HELPER}"`,
    '\t}',
  ];
}

/** Rules in the form `iptables-save` prints them back, so verification can compare lines. */
function iptablesRules(internal: Cidr[], external: string, nat: KernelNatSpec, algFtp: readonly number[]): KernelPlan['iptablesRules'] {
  const [natChain, filterChain] = IPT_CHAINS;
  const target = (withPorts: boolean): string => {
    const ports = withPorts && nat.ports ? `${nat.ports[0]}-${nat.ports[1]}` : null;
    if (nat.kind === 'masquerade') return ports ? `-j MASQUERADE --to-ports ${ports}` : '-j MASQUERADE';
    return `-j SNAT --to-source ${nat.address}${ports ? `:${ports}` : ''}${nat.persistent ? ' --persistent' : ''}`;
  };
  const natRules: string[] = [];
  const dropRules: string[] = [];
  for (const c of internal) {
    const m = `-s ${cidrToString(c)} -o ${external}`;
    if (nat.ports) {
      natRules.push(`-A ${natChain.chain} ${m} -p tcp ${target(true)}`, `-A ${natChain.chain} ${m} -p udp ${target(true)}`);
    }
    natRules.push(`-A ${natChain.chain} ${m} ${target(false)}`);
    dropRules.push(`-A ${filterChain.chain} ${m} -m conntrack --ctstate INVALID -j DROP`);
  }
  const helper = IPT_HELPER_CHAIN;
  const helperRules = internal.flatMap((c) =>
    algFtp.map((p) => `-A ${helper.chain} -s ${cidrToString(c)} -p tcp -m tcp --dport ${p} -j CT --helper ftp`));
  return [
    { ...natChain, rules: natRules, jump: `-A ${natChain.from} -j ${natChain.chain}` },
    { ...filterChain, rules: dropRules, jump: `-A ${filterChain.from} -j ${filterChain.chain}` },
    ...(helperRules.length > 0 ? [{ ...helper, rules: helperRules, jump: `-A ${helper.from} -j ${helper.chain}` }] : []),
  ];
}

function iptablesRuleset(rules: KernelPlan['iptablesRules']): string {
  const lines: string[] = [];
  for (const t of rules) {
    lines.push(`*${t.table}`, `:${t.chain} - [0:0]`, ...t.rules);
    // NAT: appended, so the administrator's own earlier rules keep precedence (a competing one is
    // refused before this runs). Filter: inserted first, so an ACCEPT elsewhere cannot let an
    // untranslatable packet out.
    lines.push(t.table === 'filter' ? `-I ${t.from} 1 -j ${t.chain}` : t.jump, 'COMMIT');
  }
  return lines.join('\n') + '\n';
}

/** The iptables-restore script that deletes exactly tunnat's jumps and chains. */
export function iptablesRemoval(items: { table: string; chain: string; from: string; jumps: number; exists: boolean }[]): string {
  const lines: string[] = [];
  for (const t of items) {
    if (!t.exists && t.jumps === 0) continue;
    lines.push(`*${t.table}`);
    for (let i = 0; i < t.jumps; i++) lines.push(`-D ${t.from} -j ${t.chain}`);
    if (t.exists) lines.push(`-F ${t.chain}`, `-X ${t.chain}`);
    lines.push('COMMIT');
  }
  return lines.length ? lines.join('\n') + '\n' : '';
}

function describeNat(nat: KernelNatSpec, external: string): string {
  const how = nat.kind === 'masquerade' ? `masquerade behind ${external}'s address` : `SNAT to ${nat.address} on ${external}`;
  return nat.ports ? `${how}, TCP/UDP ports ${nat.ports[0]}-${nat.ports[1]}` : how;
}

/** How the plan is meant to be used (not facts about the host: those are PlanEnv). */
export interface KernelPlanOptions {
  /**
   * One gateway of a standby pair (`--ha`): the public address is a VIP that keepalived moves. Needs
   * SNAT to one address; the gateway never takes that address itself (see the address step).
   */
  ha?: boolean;
}

/** Why a pair needs SNAT, for the refusal and docs/ha.md. */
export const HA_NEEDS_SNAT =
  "a standby pair (--ha) needs --public-ip with the public VIP: the kernel's MASQUERADE deletes its connection " +
  'tracking entries when the interface loses its address, so the entries replicated to the standby would be ' +
  'flushed exactly when the VIP moves; SNAT names the address and its entries survive the move';

export function planKernelNat(cfg: RouterConfig, backend: KernelBackend, env: PlanEnv = {}, opts: KernelPlanOptions = {}): KernelPlan {
  const nat = natSpec(cfg);
  if (opts.ha && nat.kind !== 'snat') throw new KernelNatError('UNSUPPORTED', `${HA_NEEDS_SNAT}. ${NOTHING_CHANGED}`);
  if (opts.ha && nat.persistent) {
    throw new KernelNatError('UNSUPPORTED', `a standby pair (--ha) moves one public address: give --public-ip one address, not a pool. ${NOTHING_CHANGED}`);
  }
  const internal = cfg.internal.map(cidrToString);
  const lan = internal.join(', ');
  const ext = cfg.external;
  const notes: string[] = [];
  const steps: KernelStep[] = [];

  const ipt = iptablesRules(cfg.internal, ext, nat, cfg.algFtp);
  const helperWhy = cfg.algFtp.length > 0 ? `; and the kernel's FTP helper for control connections from the LAN to TCP ${cfg.algFtp.join(', ')} (--alg ftp)` : '';
  let ruleset: string;
  let rulesetCmd: string[];
  let removal: string;
  let removalCmd: string[];
  if (backend === 'nft') {
    ruleset = nftRuleset(cfg.internal, ext, nat, cfg.algFtp);
    rulesetCmd = ['nft', '-f', '-'];
    removal = '';
    removalCmd = ['nft', 'delete', 'table', NFT_FAMILY, NFT_TABLE];
    steps.push({
      cmd: rulesetCmd,
      input: ruleset,
      why:
        `NAT rules in a table of tunnat's own, loaded as one transaction: ${describeNat(nat, ext)} for ${lan}; ` +
        `and drop what conntrack calls INVALID (NAT skips it, so it would leave with a private source address)${helperWhy}`,
      action: { kind: 'ruleset' },
    });
  } else {
    ruleset = iptablesRuleset(ipt);
    rulesetCmd = ['iptables-restore', '-w', XTABLES_WAIT_S, '--noflush'];
    removal = iptablesRemoval(ipt.map((t) => ({ ...t, jumps: 1, exists: true })));
    removalCmd = rulesetCmd;
    steps.push({
      cmd: rulesetCmd,
      input: ruleset,
      why:
        `NAT rules in chains of tunnat's own, jumped to from POSTROUTING and FORWARD: ${describeNat(nat, ext)} for ${lan}; ` +
        `and drop what conntrack calls INVALID (NAT skips it, so it would leave with a private source address). ` +
        `--noflush keeps every other rule; each table commits atomically${helperWhy}`,
      action: { kind: 'ruleset' },
    });
  }

  if (opts.ha) {
    // The address step below would make this gateway answer ARP for the VIP whether it is the master or
    // not: on the standby that steals the public address's traffic from the master (whichever gateway
    // answered ARP last gets the replies, and the standby has no entries for them). keepalived adds the VIP
    // on the master only, and the kernel answers ARP for an address of its own without any help.
    notes.push(
      `--ha: ${nat.address} is the pair's public VIP: keepalived adds it on the master, whose kernel then answers ARP for it; ` +
        'no `ip addr add` here, since a standby holding it would answer ARP for it too and draw the replies away from the master',
    );
  } else if (nat.kind === 'snat' && env.publicIpOwned === false) {
    if (env.publicIpOnLink) {
      steps.push({
        cmd: ['ip', 'addr', 'add', `${nat.address}/32`, 'dev', ext],
        why: `take ${nat.address} on ${ext} so this host answers ARP for it: replies must reach the gateway before conntrack can map them back`,
        action: { kind: 'address', address: nat.address!, dev: ext },
      });
    } else {
      notes.push(`${nat.address} is not configured on this host and not on ${ext}'s subnet: the upstream router must route it to this gateway.`);
    }
  }

  steps.push({
    cmd: ['sysctl', '-w', `${sysctlName(SYSCTL_CT_ACCT)}=1`],
    why: 'count packets and bytes per connection, so /conntrack, `conntrack -L` and the per-host traffic (tunnat stats, the live page) show them',
    action: { kind: 'sysctl', settings: [{ key: SYSCTL_CT_ACCT, value: '1' }] },
  });
  steps.push({
    cmd: ['sysctl', '-w', `${sysctlName(SYSCTL_CT_MAX)}=${cfg.maxFlows}`],
    why: `size the connection table (--max-flows): every translated flow holds one entry, and when the table is full new flows are dropped`,
    action: { kind: 'sysctl', settings: [{ key: SYSCTL_CT_MAX, value: String(cfg.maxFlows) }] },
  });

  const t = cfg.timeouts;
  const timeoutSettings = (names: (keyof Timeouts)[], optional = false) =>
    names.flatMap((n) => TIMEOUT_SYSCTLS[n].map((key) => ({ key, value: String(seconds(t[n])), ...(optional ? { optional } : {}) })));
  const tcpNames: (keyof Timeouts)[] = [
    'tcpSynSent', 'tcpSynRecv', 'tcpEstablished', 'tcpFinWait', 'tcpCloseWait', 'tcpLastAck', 'tcpTimeWait', 'tcpClose',
  ];
  const groups: { names: (keyof Timeouts)[]; why: string; optional?: boolean }[] = [
    {
      names: tcpNames,
      why:
        `TCP idle timeouts: established ${seconds(t.tcpEstablished)} s (RFC 5382 REQ-5 asks at least 2 h 4 min; Linux's default is 5 days), ` +
        `opening and closing states ${seconds(t.tcpSynSent)} s (REQ-5: at least 4 min; Linux: 60-120 s)`,
    },
    {
      names: ['udp'],
      why: `UDP idle timeout ${seconds(t.udp)} s for new and replied flows alike (RFC 4787 REQ-5: at least 2 min; Linux's defaults are 30 s and 120 s)`,
    },
    {
      names: ['icmp'],
      why: `ICMP query (echo) timeout ${seconds(t.icmp)} s (RFC 5508 REQ-2: at least 60 s; Linux's default is 30 s)`,
    },
    {
      names: ['generic'],
      why: `timeout ${seconds(t.generic)} s for protocols tracked by address only (ESP, IPIP, unknown numbers; Linux's default is 600 s)`,
    },
    {
      names: ['sctpOpening', 'sctpEstablished', 'sctpShutdown', 'sctpClosed'],
      why:
        `SCTP association timeouts: opening ${seconds(t.sctpOpening)} s, established ${seconds(t.sctpEstablished)} s, ` +
        `shutting down ${seconds(t.sctpShutdown)} s, closed ${seconds(t.sctpClosed)} s (Linux: 3 s, 210 s, 3 s, 10 s); skipped where the SCTP tracker is absent`,
      optional: true,
    },
  ];
  for (const g of groups) {
    const settings = timeoutSettings(g.names, g.optional);
    steps.push({
      cmd: ['sysctl', '-w', ...settings.map((s) => `${sysctlName(s.key)}=${s.value}`)],
      why: g.why,
      action: { kind: 'sysctl', settings },
    });
  }
  const rounded = (Object.keys(t) as (keyof Timeouts)[]).filter((n) => seconds(t[n]) !== t[n]);
  if (rounded.length) notes.push(`the kernel counts timeouts in whole seconds: ${rounded.join(', ')} rounded up`);

  steps.push({
    cmd: ['sysctl', '-w', `${sysctlName(SYSCTL_IP_FORWARD)}=1`],
    why: 'make the host a router (forward packets between interfaces); last, so nothing is forwarded before the NAT rules exist',
    action: { kind: 'sysctl', settings: [{ key: SYSCTL_IP_FORWARD, value: '1' }] },
  });

  const ignored: string[] = [];
  if (cfg.tun !== DEFAULTS.tun) ignored.push('--tun');
  if (cfg.table !== DEFAULTS.table) ignored.push('--table');
  if (cfg.batch !== DEFAULTS.batch) ignored.push('--batch');
  if (cfg.gatewayPorts[0] !== DEFAULTS.gatewayPorts[0] || cfg.gatewayPorts[1] !== DEFAULTS.gatewayPorts[1]) ignored.push('--gateway-ports');
  notes.push(
    'GRE keeps the kernel\'s own GRE timers (nf_conntrack_gre_timeout 30 s, _stream 180 s), where tunnat gives it the generic timeout',
  );
  if (cfg.forwards.length > 0) {
    // Not silently dropped: a user comparing the engines must know the kernel side has no DNAT here.
    notes.push('--forward: the kernel engine writes no DNAT rules (yet); forwards work with the userspace engine, or add `dnat` rules by hand');
  }
  if (cfg.algFtp.length > 0) {
    notes.push(
      `--alg ftp: control connections from the LAN to TCP ${cfg.algFtp.join(', ')} get the kernel's FTP helper (nf_conntrack_ftp with nf_nat_ftp), ` +
        'which rewrites PORT/EPRT and 227/229 and expects the data connection for 300 s (tunnat: 120 s)',
    );
  }
  if (ignored.length) {
    notes.push(`${ignored.join(', ')}: userspace-engine settings with no kernel equivalent, ignored (conntrack keeps the gateway's own connections apart from translated ones)`);
  }
  if (nat.kind === 'masquerade') {
    notes.push(`masquerade looks up ${ext}'s address for each new flow and forgets flows through ${ext} when it goes down, so a changed address needs no restart`);
  }
  const nonDefault = (Object.keys(DEFAULT_TIMEOUTS) as (keyof Timeouts)[]).some((n) => t[n] !== DEFAULT_TIMEOUTS[n]);
  if (nonDefault) notes.push('timeouts differ from tunnat\'s RFC-minded defaults; see docs/kernel.md for the RFC minimums');
  notes.push(
    'net.netfilter.* timeouts and ip_forward are per network namespace; nf_conntrack_max can only be changed from the host\'s initial namespace',
  );

  return {
    backend,
    internal,
    external: ext,
    nat,
    ruleset,
    rulesetCmd,
    removal,
    removalCmd,
    iptablesRules: ipt,
    algFtp: [...cfg.algFtp],
    steps,
    notes,
  };
}

// ---------------------------------------------------------------------------------------------
// Display

function shellQuote(arg: string): string {
  return /^[A-Za-z0-9_./:=,@%+-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;
}

/** A command as a shell line; long sysctl lists one setting per line. */
export function commandText(step: Pick<KernelStep, 'cmd' | 'input'>): string {
  const [first, ...rest] = step.cmd.map(shellQuote);
  let line: string;
  if (step.cmd[0] === 'sysctl' && rest.length > 3) {
    line = `${first} ${rest[0]} \\\n  ${rest.slice(1).join(' \\\n  ')}`;
  } else {
    line = [first, ...rest].join(' ');
  }
  if (step.input === undefined) return line;
  return `${line} <<'EOF'\n${step.input.replace(/\n$/, '')}\nEOF`;
}

/** The teaching view printed by `tunnat kernel plan`. */
export function formatPlan(plan: KernelPlan, header?: string): string {
  const out: string[] = [];
  out.push(`# ${header ?? `tunnat kernel NAT plan (backend: ${plan.backend})`}`);
  out.push(`# ${describeNat(plan.nat, plan.external)} for ${plan.internal.join(', ')}`);
  out.push('');
  plan.steps.forEach((s, i) => {
    out.push(`# ${i + 1}. ${s.why}`);
    out.push(commandText(s));
    out.push('');
  });
  out.push('# To undo: forwarding off first, then the rules, then the other sysctls back to the values');
  out.push('# tunnat saved before changing them (tunnat kernel remove, or stopping tunnat run, does all of it):');
  out.push(commandText(plan.removal === '' ? { cmd: plan.removalCmd } : { cmd: plan.removalCmd, input: plan.removal }));
  out.push('');
  if (plan.notes.length) {
    out.push('# Notes:');
    for (const n of plan.notes) out.push(`#  - ${n}`);
  }
  return out.join('\n') + '\n';
}
