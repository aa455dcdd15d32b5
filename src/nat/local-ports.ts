import { readFileSync } from 'node:fs';

/**
 * The gateway's own bound sockets, read from /proc/net/{tcp,udp} of the namespace tunnat runs in.
 * A port the gateway listens on (sshd, a DNS server) must never become a mapping, or its traffic would
 * be handed to a LAN host. Ephemeral ports are kept apart by the ip_local_port_range that routing sets.
 */
export interface LocalPorts {
  tcp: Set<number>;
  udp: Set<number>;
}

/** Parse /proc/net/tcp or /proc/net/udp text: ports of sockets bound to `addr` or to any address. */
export function parseProcNet(text: string, addr: number, listeningOnly: boolean): Set<number> {
  const out = new Set<number>();
  const lines = text.split('\n');
  for (let i = 1; i < lines.length; i++) {
    const cols = lines[i]!.trim().split(/\s+/);
    if (cols.length < 4) continue;
    const [hexAddr, hexPort] = cols[1]!.split(':');
    if (!hexAddr || !hexPort || hexAddr.length !== 8) continue;
    // /proc prints the address as the raw little-endian 32-bit word.
    const le = parseInt(hexAddr, 16) >>> 0;
    const local = (((le & 0xff) << 24) | (((le >>> 8) & 0xff) << 16) | (((le >>> 16) & 0xff) << 8) | (le >>> 24)) >>> 0;
    const state = parseInt(cols[3]!, 16);
    if (listeningOnly && state !== 0x0a) continue; // TCP_LISTEN
    if (local === 0 || local === addr) out.add(parseInt(hexPort, 16));
  }
  return out;
}

/** The gateway's bound ports for each public address in `addrs`, from one read of /proc/net/{tcp,udp}. */
export function readLocalPorts(addrs: readonly number[]): Map<number, LocalPorts> {
  const read = (p: string) => {
    try {
      return readFileSync(p, 'utf8');
    } catch {
      return '';
    }
  };
  const tcp = read('/proc/net/tcp');
  const udp = read('/proc/net/udp');
  const out = new Map<number, LocalPorts>();
  for (const addr of addrs) {
    out.set(addr, {
      tcp: parseProcNet(tcp, addr, true),
      // Every bound UDP socket counts: UDP has no listen state.
      udp: parseProcNet(udp, addr, false),
    });
  }
  return out;
}
