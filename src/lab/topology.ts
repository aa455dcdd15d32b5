/**
 * The standard lab: LAN hosts on a bridge in a gateway namespace, a WAN link to an "internet"
 * namespace, and optionally routers in between (traceroute) and a far host behind a narrow link
 * (path MTU discovery).
 *
 * ```
 *  h0 (192.168.1.10) ─┐                     ┌────────── gw ──────────┐          ┌──── inet ────┐
 *  h1 (192.168.1.11) ─┼─ lan<i> ── br-lan (192.168.1.1)   wan0 (203.0.113.1) ── eth0 (203.0.113.2)
 *  ...               ─┘                     └────────────────────────┘    [r1..rN]└──────────────┘
 *                                                                                   far0 (mtu) ── far
 * ```
 *
 * Interface names only need to be unique inside their namespace, so they are fixed; the namespace
 * names carry the run's id.
 */
import { addAddress, addBridge, addRoute, addVeth, createNetns, linkUp, netnsName, randomId, setMaster, setSysctl } from './netns.js';
import { Cleanup } from './cleanup.js';

export const LAN_SUBNET = '192.168.1.0/24';
export const LAN_GATEWAY = '192.168.1.1';
export const LAN_BRIDGE = 'br-lan';
export const WAN_IF = 'wan0';
export const GW_WAN_ADDRESS = '203.0.113.1';
export const INET_ADDRESS = '203.0.113.2';
/** Address of the first router on the WAN link when `extraHops` > 0. */
export const HOP1_WAN_ADDRESS = '203.0.113.254';
/** The far host's link (behind inet, with the reduced MTU). */
export const FAR_INET_ADDRESS = '198.51.100.65';
export const FAR_ADDRESS = '198.51.100.66';
const FAR_PREFIX = 26;
/** Interface name inside every non-gateway namespace. */
export const HOST_IF = 'eth0';
export const MAX_LAN_HOSTS = 200;
export const MAX_EXTRA_HOPS = 12;

export interface LabOptions {
  /** Unique id carried by every namespace name (default: random). */
  id?: string;
  /** Number of LAN hosts (default 2): 192.168.1.10, .11, … */
  lanHosts?: number;
  /** Namespace name prefix (default "tn"): names are `<prefix><id>-<role>`. */
  prefix?: string;
  /** Name of the gateway namespace (default `<prefix><id>-gw`). */
  gwNetnsName?: string;
  /** Extra addresses for the internet host (each added as a /32), e.g. ["203.0.113.3", "198.51.100.1"]. */
  inetExtraAddresses?: string[];
  /** Router namespaces between the gateway and the internet host (default 0). */
  extraHops?: number;
  /** When set, adds a far host (198.51.100.66) behind the internet host over a link with this MTU. */
  pathMtu?: number;
  /** Registry to record undo steps in (default: a new one, owned by the lab). */
  cleanup?: Cleanup;
  /** Progress lines. */
  log?: (line: string) => void;
}

export interface LanHost {
  netns: string;
  /** Interface name inside the host's namespace. */
  dev: string;
  address: string;
}

export interface Lab {
  id: string;
  gw: {
    netns: string;
    lanBridge: string;
    lanAddress: string;
    lanSubnet: string;
    wanDev: string;
    wanAddress: string;
    /** The gateway's next hop on the WAN link. */
    wanNextHop: string;
  };
  lanHosts: LanHost[];
  inet: {
    netns: string;
    /** The internet host's WAN-facing interface (capture here to see what leaves the gateway). */
    dev: string;
    address: string;
    /** All addresses the internet host answers on, the main one first. */
    addresses: string[];
  };
  /** Router namespaces between gw and inet, nearest to gw first. */
  hops: { netns: string; westAddress: string; eastAddress: string }[];
  far: { netns: string; address: string; mtu: number } | null;
  /** Every namespace of this lab. */
  namespaces: string[];
  cleanup: Cleanup;
  /** Remove everything the lab created (and anything registered on its cleanup since). */
  destroy(): Promise<void>;
}

/** LAN host i's address: 192.168.1.(10+i). */
export function lanHostAddress(i: number): string {
  return `192.168.1.${10 + i}`;
}

/** Transit link k (1-based) between hop k and the next node: consecutive /30s from 198.51.100.200 upward. */
export function transitLink(k: number): { west: string; east: string; prefix: number } {
  const base = 196 + 4 * k;
  return { west: `198.51.100.${base + 1}`, east: `198.51.100.${base + 2}`, prefix: 30 };
}

function checkOptions(opts: LabOptions): void {
  const n = opts.lanHosts ?? 2;
  if (!Number.isInteger(n) || n < 0 || n > MAX_LAN_HOSTS) throw new RangeError(`lanHosts must be 0..${MAX_LAN_HOSTS}`);
  const hops = opts.extraHops ?? 0;
  if (!Number.isInteger(hops) || hops < 0 || hops > MAX_EXTRA_HOPS) throw new RangeError(`extraHops must be 0..${MAX_EXTRA_HOPS}`);
  if (opts.pathMtu !== undefined && (!Number.isInteger(opts.pathMtu) || opts.pathMtu < 576 || opts.pathMtu > 1500)) {
    throw new RangeError('pathMtu must be an integer in 576..1500');
  }
  for (const a of opts.inetExtraAddresses ?? []) {
    if (!/^(203\.0\.113|198\.51\.100)\.\d{1,3}$/.test(a)) {
      throw new RangeError(`extra internet address ${a} must be a single address in 203.0.113.0/24 or 198.51.100.0/24`);
    }
    if (a === GW_WAN_ADDRESS || a === INET_ADDRESS || a === HOP1_WAN_ADDRESS || a === FAR_ADDRESS || a === FAR_INET_ADDRESS) {
      throw new RangeError(`extra internet address ${a} is already used by the lab`);
    }
  }
}

/** Build the standard lab. On failure everything created so far is removed before the error propagates. */
export async function buildLab(opts: LabOptions = {}): Promise<Lab> {
  checkOptions(opts);
  const log = opts.log ?? (() => {});
  const cleanup = opts.cleanup ?? new Cleanup(log);
  return cleanup.undoOnFailure(() => build(opts, cleanup, log));
}

async function build(opts: LabOptions, cleanup: Cleanup, log: (line: string) => void): Promise<Lab> {
  const id = opts.id ?? randomId();
  const nHosts = opts.lanHosts ?? 2;
  const nHops = opts.extraHops ?? 0;
  const extras = opts.inetExtraAddresses ?? [];
  const name = (role: string): string => netnsName(id, role, opts.prefix);
  const gw = opts.gwNetnsName ?? name('gw');
  const inet = name('inet');
  const namespaces: string[] = [];
  const ns = async (name: string): Promise<string> => {
    await createNetns(name, cleanup);
    namespaces.push(name);
    return name;
  };

  // Gateway: LAN bridge and WAN interface. ip_forward stays at the namespace default (0): turning
  // it on is the NAT engine's job, and the e2e tests check that the router restores it.
  await ns(gw);
  await ns(inet);
  log(`namespaces: gateway ${gw}, internet ${inet}`);
  await addBridge(gw, LAN_BRIDGE);
  await addAddress(gw, LAN_BRIDGE, `${LAN_GATEWAY}/24`);
  await linkUp(gw, LAN_BRIDGE);

  const lanHosts: LanHost[] = [];
  for (let i = 0; i < nHosts; i++) {
    const host = await ns(name(`h${i}`));
    const port = `lan${i}`;
    await addVeth({ netns: gw, name: port }, { netns: host, name: HOST_IF });
    await setMaster(gw, port, LAN_BRIDGE);
    await linkUp(gw, port);
    const address = lanHostAddress(i);
    await addAddress(host, HOST_IF, `${address}/24`);
    await linkUp(host, HOST_IF);
    await addRoute(host, 'default', { via: LAN_GATEWAY });
    lanHosts.push({ netns: host, dev: HOST_IF, address });
  }
  if (nHosts > 0) log(`LAN ${LAN_SUBNET} on ${gw}/${LAN_BRIDGE}: ${lanHosts.map((h) => `${h.address} (${h.netns})`).join(', ')}`);

  const inetAddresses = [INET_ADDRESS, ...extras];
  const hops: Lab['hops'] = [];
  let wanNextHop = INET_ADDRESS;
  if (nHops === 0) {
    await addVeth({ netns: gw, name: WAN_IF }, { netns: inet, name: HOST_IF });
    await addAddress(gw, WAN_IF, `${GW_WAN_ADDRESS}/24`);
    await addAddress(inet, HOST_IF, `${INET_ADDRESS}/24`);
    // The extra addresses are /32s: reachable through the default route, and answering ARP on
    // eth0 when they fall inside the WAN /24 (Linux replies for any local address by default).
    for (const a of extras) await addAddress(inet, HOST_IF, `${a}/32`);
    await linkUp(gw, WAN_IF);
    await linkUp(inet, HOST_IF);
  } else {
    wanNextHop = HOP1_WAN_ADDRESS;
    const wanInside = inetAddresses.filter((a) => a.startsWith('203.0.113.'));
    const routers: string[] = [];
    for (let k = 1; k <= nHops; k++) routers.push(await ns(name(`r${k}`)));
    await addVeth({ netns: gw, name: WAN_IF }, { netns: routers[0]!, name: 'west' });
    await addAddress(gw, WAN_IF, `${GW_WAN_ADDRESS}/24`);
    await linkUp(gw, WAN_IF);
    for (let k = 1; k <= nHops; k++) {
      const r = routers[k - 1]!;
      const link = transitLink(k);
      const isLast = k === nHops;
      await setSysctl(r, 'net.ipv4.ip_forward', '1');
      await addVeth({ netns: r, name: 'east' }, { netns: isLast ? inet : routers[k]!, name: isLast ? HOST_IF : 'west' });
      await addAddress(r, 'east', `${link.west}/${link.prefix}`);
      await linkUp(r, 'east');
      let westAddress: string;
      if (k === 1) {
        westAddress = HOP1_WAN_ADDRESS;
        await addAddress(r, 'west', `${HOP1_WAN_ADDRESS}/24`);
        // The gateway believes the internet host's 203.0.113.x addresses are on its WAN link;
        // r1 answers ARP for them and routes them on (proxy ARP).
        await setSysctl(r, 'net.ipv4.conf.west.proxy_arp', '1');
      } else {
        const prev = transitLink(k - 1);
        westAddress = prev.east;
        await addAddress(r, 'west', `${westAddress}/${prev.prefix}`);
      }
      await linkUp(r, 'west');
      if (k > 1) await addRoute(r, '203.0.113.0/24', { via: transitLink(k - 1).west });
      // Toward the internet host: default east, and its 203.0.113.x addresses explicitly (they
      // would otherwise match the connected or westward 203.0.113.0/24).
      await addRoute(r, 'default', { via: link.east });
      for (const a of wanInside) await addRoute(r, `${a}/32`, { via: link.east });
      hops.push({ netns: r, westAddress, eastAddress: link.west });
    }
    const last = transitLink(nHops);
    await addAddress(inet, HOST_IF, `${last.east}/${last.prefix}`);
    for (const a of inetAddresses) await addAddress(inet, HOST_IF, `${a}/32`);
    await linkUp(inet, HOST_IF);
    await addRoute(inet, 'default', { via: last.west });
    log(`${nHops} router(s) between gateway and internet: ${hops.map((h) => h.netns).join(' → ')}`);
  }
  await addRoute(gw, 'default', { via: wanNextHop });

  let far: Lab['far'] = null;
  if (opts.pathMtu !== undefined) {
    const farNs = await ns(name('far'));
    await setSysctl(inet, 'net.ipv4.ip_forward', '1');
    await addVeth({ netns: inet, name: 'far0' }, { netns: farNs, name: HOST_IF }, { mtu: opts.pathMtu });
    await addAddress(inet, 'far0', `${FAR_INET_ADDRESS}/${FAR_PREFIX}`);
    await addAddress(farNs, HOST_IF, `${FAR_ADDRESS}/${FAR_PREFIX}`);
    await linkUp(inet, 'far0');
    await linkUp(farNs, HOST_IF);
    await addRoute(farNs, 'default', { via: FAR_INET_ADDRESS });
    far = { netns: farNs, address: FAR_ADDRESS, mtu: opts.pathMtu };
    log(`far host ${FAR_ADDRESS} (${farNs}) behind the internet host over a ${opts.pathMtu}-byte MTU link`);
  }
  log(`WAN: ${gw}/${WAN_IF} ${GW_WAN_ADDRESS}/24 → internet host ${inetAddresses.join(', ')} (${inet})`);

  return {
    id,
    gw: {
      netns: gw,
      lanBridge: LAN_BRIDGE,
      lanAddress: LAN_GATEWAY,
      lanSubnet: LAN_SUBNET,
      wanDev: WAN_IF,
      wanAddress: GW_WAN_ADDRESS,
      wanNextHop,
    },
    lanHosts,
    inet: { netns: inet, dev: HOST_IF, address: INET_ADDRESS, addresses: inetAddresses },
    hops,
    far,
    namespaces,
    cleanup,
    destroy: () => cleanup.run(),
  };
}
