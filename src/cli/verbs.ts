import { HELP_FLAG, synopsis, type Flags, type Verb } from './flags.js';
import { ROUTER_FLAGS } from './router-flags.js';
import { CONNTRACK_VERB } from './conntrack-cmd.js';
import { STATS_VERB } from './stats-cmd.js';
import { TRACE_VERB } from './trace-cmd.js';
import { HA_VERB } from './ha-cmd.js';

/**
 * Every verb of `tunnat`, with its flags: what main.ts parses and what `tunnat help` and
 * `tunnat VERB --help` print. No side effects, so tests can read it.
 */

export const RUN_VERB = {
  name: 'run',
  brief: 'translate the traffic of --internal behind --external',
  summary:
    'Translate the traffic of --internal behind --external (masquerade on its primary address, or static\n' +
    'SNAT to --public-ip); serve the live page (/), /metrics and /conntrack on --http. Stops cleanly on\n' +
    'Ctrl-C / SIGTERM, removing its routing. Bad flags exit 2; a start that cannot do what was asked exits 1.',
  flags: {
    ...ROUTER_FLAGS,
    'dry-run': { type: 'boolean', about: 'check the flags, the config file and this host; print the resolved settings; change nothing' },
    help: HELP_FLAG,
  },
} as const satisfies Verb;

/**
 * One gateway of a standby pair with the kernel engine (`kernel plan|apply --ha DIR`): keepalived moves
 * the addresses, conntrackd replicates the kernel's connection table over a dedicated sync link.
 */
export const KERNEL_HA_FLAGS = {
  ha: { type: 'string', arg: 'DIR', about: 'one gateway of a standby pair: also write conntrackd.conf, keepalived.conf and their notify script into DIR (plan prints them); needs --public-ip VIP and the --ha-* flags' },
  'ha-node': { type: 'string', arg: '0|1', about: 'with --ha: which gateway of the pair this is' },
  'ha-lan-if': { type: 'string', arg: 'IFACE', about: "with --ha: the LAN interface, where keepalived puts --ha-lan-vip" },
  'ha-lan-vip': { type: 'string', arg: 'ADDR/PREFIX', about: "with --ha: the LAN hosts' gateway address, e.g. 192.168.1.1/24" },
  'ha-wan-vip': { type: 'string', arg: 'ADDR/PREFIX', about: 'with --ha: the public VIP on --external, the address of --public-ip (default --public-ip/32)' },
  'ha-sync-if': { type: 'string', arg: 'IFACE', about: 'with --ha: the link dedicated to conntrackd between the two gateways' },
  'ha-sync-local': { type: 'string', arg: 'ADDR', about: "with --ha: this gateway's address on the sync link" },
  'ha-sync-peer': { type: 'string', arg: 'ADDR', about: "with --ha: the other gateway's address on the sync link" },
  'ha-vrid': { type: 'string', arg: 'N', about: "with --ha: keepalived's VRRP id of the LAN address; the public one takes N+1 (default 51)" },
  'ha-priority': { type: 'string', arg: 'N', about: 'with --ha: VRRP priority 1-254, the higher is master when both start together (default 150 for node 0, 100 for node 1)' },
} as const satisfies Flags;

export const KERNEL_VERB = {
  name: 'kernel plan|apply|remove',
  brief: "the kernel's own NAT for the same flags: print the recipe, apply it, remove it",
  summary:
    "The kernel's own NAT for the same flags as `tunnat run`, without a running process.\n" +
    'plan    print the recipe (ip_forward, MASQUERADE or SNAT, conntrack sizing), each command with what it is for\n' +
    'apply   apply it and exit; it stays until `tunnat kernel remove` (or a reboot) and the output says how to\n' +
    '        make it survive reboots\n' +
    'remove  remove what `tunnat kernel apply` (or a crashed `tunnat run --engine kernel`) left (takes --backend only)\n' +
    'With --ha DIR, plan and apply are for one gateway of a standby pair: SNAT to the public VIP (--public-ip),\n' +
    'never the VIP taken by this gateway itself (keepalived moves it), and conntrackd.conf, keepalived.conf and\n' +
    'their notify script for DIR: plan prints them, apply writes them (docs/ha.md).',
  flags: { ...ROUTER_FLAGS, ...KERNEL_HA_FLAGS, help: HELP_FLAG },
} as const satisfies Verb;

export const LAB_VERB = {
  name: 'lab',
  brief: 'a namespace lab with tunnat in it, showing real traffic being translated',
  summary:
    'Build a namespace lab (LAN hosts, gateway, internet host), run tunnat in it and show real traffic being\n' +
    'translated; it keeps running until Ctrl-C removes everything.',
  flags: {
    once: { type: 'boolean', about: 'run the demo, clean up and exit (0 if every step worked)' },
    ha: { type: 'boolean', about: 'a gateway pair instead: tunnat and keepalived on two gateways; kills the active tunnat under traffic and prints the outage and the connections that lived' },
    'http-port': { type: 'string', arg: 'PORT', about: "the host's 127.0.0.1 port that reaches the router's live page (default 9100)" },
    id: { type: 'string', arg: 'ID', about: 'names the namespaces tn<ID>-gw, tn<ID>-h0, … (1-12 lowercase letters or digits)' },
    help: HELP_FLAG,
  },
} as const satisfies Verb;

export const DOWN_VERB = {
  name: 'down',
  brief: 'remove the routing set-up a killed tunnat left behind',
  summary: 'Remove the routing set-up a killed tunnat left behind (a running one cleans up itself).',
  flags: {
    tun: { type: 'string', arg: 'NAME', about: 'the TUN device of the run to clean up (default tunnat0)' },
    table: { type: 'string', arg: 'N', about: "that run's --table (default 7301)" },
    help: HELP_FLAG,
  },
} as const satisfies Verb;

export const VERBS: readonly Verb[] = [RUN_VERB, CONNTRACK_VERB, STATS_VERB, TRACE_VERB, HA_VERB, LAB_VERB, KERNEL_VERB, DOWN_VERB];

/** `tunnat help`: every verb's synopsis, then what each is for. */
export function usage(): string {
  return [
    'tunnat — a userspace NAT router on a TUN device',
    '',
    'Usage:',
    ...VERBS.map((v) => synopsis(v).replace(/^/gm, '  ')),
    '  tunnat help',
    '',
    ...VERBS.map((v) => `${v.name.split(' ')[0]!.padEnd(10)} ${v.brief}`),
    '',
    '`tunnat VERB --help` says what each flag of VERB does.',
    '',
  ].join('\n');
}
