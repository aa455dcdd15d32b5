/**
 * The lab for a standby gateway pair: two gateways side by side on one LAN and one WAN, each cabled
 * to a switch namespace, with a direct link between them for the flow-state sync.
 *
 * ```
 *  switch namespace "sw": two bridges; each port is a veth whose other end is in another namespace
 *    br-lan ─┬─ lan-a ─── gwa lan0 192.168.1.2       br-wan ─┬─ wan-a ─── gwa wan0 203.0.113.3
 *            ├─ lan-b ─── gwb lan0 192.168.1.3               ├─ wan-b ─── gwb wan0 203.0.113.4
 *            └─ h<i>  ─── h<i> eth0 192.168.1.(10+i)         └─ inet  ─── inet eth0 203.0.113.2
 *
 *  sync link, no switch:  gwa sync0 192.168.255.1/30 ─────── gwb sync0 192.168.255.2/30
 * ```
 *
 * The two shared addresses, 192.168.1.1 on the LAN and 203.0.113.1 on the WAN, are not configured
 * here: keepalived adds them to whichever gateway is MASTER. Both gateways route by default through
 * the internet host; the LAN hosts through the LAN's shared address, so they follow it.
 *
 * A switch namespace in the middle (rather than a bridge inside one gateway, as in topology.ts) lets
 * a test pull a gateway's cables without touching the gateway: the switch-side port goes down and the
 * gateway sees its link lose carrier, as on real hardware.
 */
import { execIn, addAddress, addBridge, addRoute, addVeth, createNetns, linkUp, netnsName, randomId, setMaster } from './netns.js';
import { Cleanup } from './cleanup.js';
import { HOST_IF, lanHostAddress, LAN_SUBNET, MAX_LAN_HOSTS, INET_ADDRESS, type LanHost } from './topology.js';
import { isRecord, parseJsonArray } from '../host/ip-json.js';

export const HA_LAN_VIP = '192.168.1.1';
export const HA_WAN_VIP = '203.0.113.1';
export const HA_LAN_BRIDGE = 'br-lan';
export const HA_WAN_BRIDGE = 'br-wan';
/** Interface names inside each gateway namespace. */
export const HA_LAN_IF = 'lan0';
export const HA_WAN_IF = 'wan0';
export const HA_SYNC_IF = 'sync0';

export type GwName = 'a' | 'b';

/** Per-gateway addresses: index 0 is gateway A, 1 is gateway B. */
const GW_PLAN = [
  { name: 'a', lan: '192.168.1.2', wan: '203.0.113.3', sync: '192.168.255.1' },
  { name: 'b', lan: '192.168.1.3', wan: '203.0.113.4', sync: '192.168.255.2' },
] as const;
const SYNC_PREFIX = 30;

export interface HaLabOptions {
  /** Unique id carried by every namespace name (default: random). */
  id?: string;
  /** Number of LAN hosts (default 1): 192.168.1.10, .11, … */
  lanHosts?: number;
  /** Registry to record undo steps in (default: a new one, owned by the lab). */
  cleanup?: Cleanup;
  /** Progress lines. */
  log?: (line: string) => void;
  /** Namespace name prefix (default "tn"): names are `<prefix><id>-<role>`. */
  prefix?: string;
}

export interface GwInfo {
  name: GwName;
  netns: string;
  lanDev: typeof HA_LAN_IF;
  wanDev: typeof HA_WAN_IF;
  syncDev: typeof HA_SYNC_IF;
  /** The gateway's own (fixed) addresses, without prefix length. */
  lanAddress: string;
  wanAddress: string;
  syncAddress: string;
  peerSyncAddress: string;
  /** The switch namespace's ports this gateway's lan0 and wan0 are cabled to. */
  switchLanPort: string;
  switchWanPort: string;
}

export interface HaLab {
  id: string;
  switchNetns: string;
  gateways: [GwInfo, GwInfo];
  lanVip: typeof HA_LAN_VIP;
  lanVipCidr: `${typeof HA_LAN_VIP}/24`;
  wanVip: typeof HA_WAN_VIP;
  wanVipCidr: `${typeof HA_WAN_VIP}/24`;
  lanSubnet: string;
  lanHosts: LanHost[];
  inet: { netns: string; dev: string; address: string };
  /** Every namespace of this lab. */
  namespaces: string[];
  cleanup: Cleanup;
  /** Remove everything the lab created (and anything registered on its cleanup since). */
  destroy(): Promise<void>;
  /**
   * Gateway `i` (0 = A, 1 = B) is gone as a whole, as if every cable were pulled: its switch-side LAN
   * and WAN ports and its end of the sync link go down, so it and its neighbours see carrier loss.
   * `gone` false plugs it back in. The gateway's namespace and processes are left alone.
   */
  gatewayGone(i: 0 | 1, gone: boolean): Promise<void>;
  /** The sync link alone fails (`cut` true) or comes back: gateway A's end of it goes down or up. */
  cutSync(cut: boolean): Promise<void>;
  /** The gateways that hold the public address (203.0.113.1) on wan0 now. */
  vipHolder(): Promise<GwName[]>;
  /** Which of the two shared addresses gateway `i` holds now. */
  vipsOf(i: 0 | 1): Promise<{ lan: boolean; wan: boolean }>;
}

/** IPv4 addresses (without prefix) configured on `dev` in `netns`, from `ip -j addr`; empty if it does not exist. */
export async function addressesOn(netns: string, dev: string): Promise<string[]> {
  const r = await execIn(netns, ['ip', '-j', '-4', 'addr', 'show', 'dev', dev], { allowFail: true });
  if (r.exitCode !== 0) return [];
  const out: string[] = [];
  for (const link of parseJsonArray(r.stdout, `ip -j addr show dev ${dev}`)) {
    const infos = link['addr_info'];
    if (!Array.isArray(infos)) continue;
    for (const a of infos) if (isRecord(a) && typeof a['local'] === 'string') out.push(a['local']);
  }
  return out;
}

function checkOptions(opts: HaLabOptions): void {
  const n = opts.lanHosts ?? 1;
  if (!Number.isInteger(n) || n < 0 || n > MAX_LAN_HOSTS) throw new RangeError(`lanHosts must be 0..${MAX_LAN_HOSTS}`);
}

/** Build the gateway-pair lab. On failure everything created so far is removed before the error propagates. */
export async function buildHaLab(opts: HaLabOptions = {}): Promise<HaLab> {
  checkOptions(opts);
  const log = opts.log ?? (() => {});
  const cleanup = opts.cleanup ?? new Cleanup(log);
  return cleanup.undoOnFailure(() => build(opts, cleanup, log));
}

async function build(opts: HaLabOptions, cleanup: Cleanup, log: (line: string) => void): Promise<HaLab> {
  const id = opts.id ?? randomId();
  const nHosts = opts.lanHosts ?? 1;
  const name = (role: string): string => netnsName(id, role, opts.prefix);
  const namespaces: string[] = [];
  const ns = async (n: string): Promise<string> => {
    await createNetns(n, cleanup);
    namespaces.push(n);
    return n;
  };

  // The switch: two bridges, every port of which is a veth whose other end is in a lab namespace.
  const sw = await ns(name('sw'));
  for (const br of [HA_LAN_BRIDGE, HA_WAN_BRIDGE]) {
    await addBridge(sw, br);
    await linkUp(sw, br);
  }
  const plug = async (port: string, bridge: string, peer: { netns: string; name: string }): Promise<void> => {
    await addVeth({ netns: sw, name: port }, peer);
    await setMaster(sw, port, bridge);
    await linkUp(sw, port);
  };

  const gwNs = [await ns(name('gwa')), await ns(name('gwb'))] as const;
  const inet = await ns(name('inet'));
  log(`namespaces: switch ${sw}, gateways ${gwNs.join(' and ')}, internet ${inet}`);

  // Each gateway: lan0 and wan0 cabled to the switch, fixed addresses only. ip_forward stays at the
  // namespace default (0): turning it on is the NAT engine's job.
  const gateways: GwInfo[] = [];
  for (let i = 0; i < 2; i++) {
    const plan = GW_PLAN[i]!;
    const gw = gwNs[i]!;
    const info: GwInfo = {
      name: plan.name,
      netns: gw,
      lanDev: HA_LAN_IF,
      wanDev: HA_WAN_IF,
      syncDev: HA_SYNC_IF,
      lanAddress: plan.lan,
      wanAddress: plan.wan,
      syncAddress: plan.sync,
      peerSyncAddress: GW_PLAN[1 - i]!.sync,
      switchLanPort: `lan-${plan.name}`,
      switchWanPort: `wan-${plan.name}`,
    };
    await plug(info.switchLanPort, HA_LAN_BRIDGE, { netns: gw, name: HA_LAN_IF });
    await plug(info.switchWanPort, HA_WAN_BRIDGE, { netns: gw, name: HA_WAN_IF });
    await addAddress(gw, HA_LAN_IF, `${plan.lan}/24`);
    await addAddress(gw, HA_WAN_IF, `${plan.wan}/24`);
    await linkUp(gw, HA_LAN_IF);
    await linkUp(gw, HA_WAN_IF);
    gateways.push(info);
  }

  // The sync link: one veth straight from A to B, no switch in between (a cross-over cable).
  const [ga, gb] = gateways as [GwInfo, GwInfo];
  await addVeth({ netns: ga.netns, name: HA_SYNC_IF }, { netns: gb.netns, name: HA_SYNC_IF });
  for (const g of [ga, gb]) {
    await addAddress(g.netns, HA_SYNC_IF, `${g.syncAddress}/${SYNC_PREFIX}`);
    await linkUp(g.netns, HA_SYNC_IF);
  }

  // The internet host answers the public address on-link, so it needs no route back.
  await plug('inet', HA_WAN_BRIDGE, { netns: inet, name: HOST_IF });
  await addAddress(inet, HOST_IF, `${INET_ADDRESS}/24`);
  await linkUp(inet, HOST_IF);
  for (const g of gateways) await addRoute(g.netns, 'default', { via: INET_ADDRESS });

  const lanHosts: LanHost[] = [];
  for (let i = 0; i < nHosts; i++) {
    const host = await ns(name(`h${i}`));
    await plug(`h${i}`, HA_LAN_BRIDGE, { netns: host, name: HOST_IF });
    const address = lanHostAddress(i);
    await addAddress(host, HOST_IF, `${address}/24`);
    await linkUp(host, HOST_IF);
    await addRoute(host, 'default', { via: HA_LAN_VIP });
    lanHosts.push({ netns: host, dev: HOST_IF, address });
  }
  log(
    `gateways: A ${ga.lanAddress}/${ga.wanAddress} (${ga.netns}), B ${gb.lanAddress}/${gb.wanAddress} (${gb.netns}), ` +
      `sync ${ga.syncAddress} ↔ ${gb.syncAddress}; shared ${HA_LAN_VIP} and ${HA_WAN_VIP} left to keepalived`,
  );
  if (nHosts > 0) log(`LAN ${LAN_SUBNET}: ${lanHosts.map((h) => `${h.address} (${h.netns})`).join(', ')}`);

  // Both failures act on the sync link, so its two ends are set from one picture of what is wrong:
  // an end is down while its gateway is gone, and A's end also while the link is cut.
  const gone = [false, false];
  let syncCut = false;
  const setLink = (netns: string, dev: string, up: boolean): Promise<unknown> =>
    execIn(netns, ['ip', 'link', 'set', dev, up ? 'up' : 'down']);
  const applySync = async (): Promise<void> => {
    await setLink(ga.netns, HA_SYNC_IF, !gone[0] && !syncCut);
    await setLink(gb.netns, HA_SYNC_IF, !gone[1]);
  };

  const vipsOf = async (i: 0 | 1): Promise<{ lan: boolean; wan: boolean }> => {
    const g = gateways[i]!;
    const [lan, wan] = await Promise.all([addressesOn(g.netns, HA_LAN_IF), addressesOn(g.netns, HA_WAN_IF)]);
    return { lan: lan.includes(HA_LAN_VIP), wan: wan.includes(HA_WAN_VIP) };
  };

  return {
    id,
    switchNetns: sw,
    gateways: [ga, gb],
    lanVip: HA_LAN_VIP,
    lanVipCidr: `${HA_LAN_VIP}/24`,
    wanVip: HA_WAN_VIP,
    wanVipCidr: `${HA_WAN_VIP}/24`,
    lanSubnet: LAN_SUBNET,
    lanHosts,
    inet: { netns: inet, dev: HOST_IF, address: INET_ADDRESS },
    namespaces,
    cleanup,
    destroy: () => cleanup.run(),
    gatewayGone: async (i, isGone) => {
      const g = gateways[i]!;
      gone[i] = isGone;
      await setLink(sw, g.switchLanPort, !isGone);
      await setLink(sw, g.switchWanPort, !isGone);
      await applySync();
      log(`gateway ${g.name.toUpperCase()} ${isGone ? 'gone (cables pulled)' : 'back'}`);
    },
    cutSync: async (cut) => {
      syncCut = cut;
      await applySync();
      log(`sync link ${cut ? 'cut' : 'restored'}`);
    },
    vipHolder: async () => {
      const held = await Promise.all([vipsOf(0), vipsOf(1)]);
      return gateways.filter((_, i) => held[i]!.wan).map((g) => g.name);
    },
    vipsOf,
  };
}
