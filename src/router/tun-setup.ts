/**
 * How the router sizes and sets up its TUN: the MTU that keeps "fragmentation needed" on the right side
 * of the translation, the buffer slot per packet, and the offloads asked of the kernel.
 */
import { readFileSync } from 'node:fs';
import { run } from '../util/exec.js';
import type { RouterConfig } from '../config/config.js';
import type { Logger } from '../util/log.js';
import { type NativeTun, TUN_F } from '../tun/native.js';
import { VNET_HDR_LEN } from '../dataplane/vnet.js';
import { parseCidr } from '../wire/addr.js';

const DEFAULT_TUN_MTU = 1500;
/** A buffer slot for one packet when the TUN gives no superpackets. */
export const SLOT_SIZE = 2048;

/**
 * The TUN's MTU: the smallest of the WAN's and the LAN interfaces'. A packet too big for the narrowest
 * link must be refused (ICMP fragmentation needed, RFC 1191) at the first routing step, into the TUN,
 * while it still carries the addresses its sender knows. Refused later, after translation, the error
 * would go to the gateway's own public address (upload) or leave quoting a LAN address (download).
 */
export async function tunMtuFor(wan: string, internal: RouterConfig['internal']): Promise<number> {
  const mtuOf = (dev: string): number | null => {
    try {
      const v = Number(readFileSync(`/sys/class/net/${dev}/mtu`, 'utf8').trim());
      return Number.isInteger(v) && v >= 576 ? v : null;
    } catch {
      return null;
    }
  };
  const devs = new Set<string>([wan]);
  try {
    const routes = JSON.parse((await run(['ip', '-j', '-4', 'route', 'show', 'table', 'main'])).stdout) as { dst?: string; dev?: string }[];
    for (const r of routes) {
      const c = r.dst && r.dst !== 'default' ? parseCidr(r.dst.includes('/') ? r.dst : `${r.dst}/32`) : null;
      if (!c || !r.dev) continue;
      // A route into (or onto) an internal prefix leads to the LAN.
      if (internal.some((i) => c.prefixLength >= i.prefixLength && ((c.network & i.mask) >>> 0) === i.network)) devs.add(r.dev);
    }
  } catch {
    // No route listing: the WAN's MTU alone.
  }
  const mtus = [...devs].map(mtuOf).filter((m): m is number => m !== null);
  return mtus.length > 0 ? Math.min(...mtus) : DEFAULT_TUN_MTU;
}
/** A GSO superpacket is at most 64 KiB of IP, after the virtio-net header. */
export const GSO_SLOT_SIZE = 65536 + VNET_HDR_LEN + 6;

/**
 * Ask the kernel for superpackets and partial checksums (what makes wireguard-go and Tailscale fast on
 * a TUN): TSO for TCP, USO for UDP where the kernel has it (6.2+). Returns whether the virtio-net header
 * is in use; without any offload the header is still there but every packet is plain.
 */
export function enableOffloads(tun: NativeTun, log: Logger): boolean {
  const base = TUN_F.CSUM | TUN_F.TSO4 | TUN_F.TSO6 | TUN_F.TSO_ECN;
  for (const [flags, what] of [[base | TUN_F.USO4 | TUN_F.USO6, 'csum, tso, uso'], [base, 'csum, tso'], [TUN_F.CSUM, 'csum']] as const) {
    try {
      tun.setOffload(flags);
      log.info('TUN offloads on', { offloads: what });
      return true;
    } catch {
      // Older kernel: try fewer offloads.
    }
  }
  log.warn('TUN offloads unavailable; packets are handled one by one');
  return true;
}
