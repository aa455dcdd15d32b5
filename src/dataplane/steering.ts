import { IPPROTO, IPV4_FRAG, IPV4_OFF } from '../wire/ipv4.js';
import { rd16, rd32 } from '../wire/bytes.js';
import { isErrorType, isQueryType } from '../wire/icmp.js';
import { sliceOwner } from '../nat/ports.js';
import type { PortForward } from '../nat/policy.js';

/**
 * Which data-plane worker owns a packet (--workers N). Every worker translates its own flows with its own
 * tables; nothing is shared on the packet path, so the owner of a packet must follow from the packet alone,
 * the same in both directions of a flow:
 *
 *   from the LAN      the inside endpoint's port (ICMP: the identifier): sliceOwner(port). A worker maps
 *                     only the public ports of its own slice and keeps the inside port when it can, so
 *                     the public port of a mapping has the same owner as the inside endpoint, and every
 *                     flow of one inside endpoint (whatever its destination) is on one worker: one mapping
 *                     per endpoint (RFC 4787 REQ-1) holds across workers.
 *   to a public addr  the public port: sliceOwner(port). Replies find the worker that made the mapping;
 *                     a port forward's traffic goes to the owner of its public port, and its LAN side
 *                     (the forward's target endpoint) is steered there too.
 *   hairpin           (LAN to a public address) the owner of the destination's public port, which holds
 *                     the mapping or forward being reached.
 *   ICMP errors       the quoted packet's flow, by the same rules.
 *   address-only      (GRE, ESP, …) a hash of the remote address: those flows are keyed by (protocol,
 *                     remote) and only one LAN host may hold each.
 *   anything else     (malformed, the gateway's own but for its ICMP errors about LAN deliveries, later
 *                     fragments) the worker that read it (-1), which
 *                     judges it as before: a counted drop, or written back unchanged.
 *
 * Pure and allocation-free; the public addresses and forwards are set by the control plane.
 */
export const HERE = -1;

const PORTED = new Uint8Array(256);
PORTED[IPPROTO.TCP] = 1;
PORTED[IPPROTO.UDP] = 1;
PORTED[IPPROTO.SCTP] = 1;
PORTED[IPPROTO.UDPLITE] = 1;

export class Steering {
  private publicAddrs = new Uint32Array(0);
  /** Per protocol: 1 where some forward's LAN-side port is that number (a cheap first test). */
  private readonly targetPort = new Map<number, Uint8Array>();
  /** Per protocol: (inside address × 65536 + inside port) → the forward's public port. */
  private readonly targets = new Map<number, Map<number, number>>();

  constructor(readonly count: number) {
    if (!Number.isInteger(count) || count < 1 || count > 64) throw new RangeError(`workers must be 1..64, got ${count}`);
  }

  setPublicAddresses(addrs: readonly number[]): void {
    this.publicAddrs = Uint32Array.from(addrs, (a) => a >>> 0);
  }

  setForwards(list: readonly PortForward[]): void {
    this.targetPort.clear();
    this.targets.clear();
    for (const f of list) {
      let ports = this.targetPort.get(f.protocol);
      if (!ports) this.targetPort.set(f.protocol, (ports = new Uint8Array(65536)));
      ports[f.port] = 1;
      let m = this.targets.get(f.protocol);
      if (!m) this.targets.set(f.protocol, (m = new Map()));
      m.set((f.address >>> 0) * 65536 + f.port, f.publicPort);
    }
  }

  isPublic(addr: number): boolean {
    const a = this.publicAddrs;
    for (let i = 0; i < a.length; i++) if (a[i] === addr) return true;
    return false;
  }

  /** The worker that owns the IPv4 packet at buf[off, off + len), or HERE. */
  ownerOf(buf: Uint8Array, off: number, len: number): number {
    if (this.count === 1 || len < 20 || buf[off]! >> 4 !== 4) return HERE;
    const ihl = (buf[off]! & 15) * 4;
    if (ihl < 20 || len < ihl) return HERE;
    // Later fragments carry no ports: the worker that reads one keeps it (see docs/workers.md).
    if ((rd16(buf, off + IPV4_OFF.FLAGS_FRAGMENT) & IPV4_FRAG.OFFSET_MASK) !== 0) return HERE;
    const proto = buf[off + IPV4_OFF.PROTOCOL]!;
    const src = rd32(buf, off + IPV4_OFF.SOURCE);
    const dst = rd32(buf, off + IPV4_OFF.DESTINATION);
    const t = off + ihl;
    const rest = len - ihl;
    if (this.isPublic(src)) {
      // The gateway's own packets stay, but for the ICMP errors its kernel sends about a packet tunnat
      // delivered to the LAN (a host that does not answer): those are translated by the quoted flow's owner.
      if (proto !== IPPROTO.ICMP || len - ihl < 8 || !isErrorType(buf[off + ihl]!)) return HERE;
      return this.quotedOwner(buf, off + ihl + 8, len - ihl - 8, false);
    }
    const inbound = this.isPublic(dst);
    if (PORTED[proto] === 1) {
      if (rest < 4) return HERE;
      return inbound ? sliceOwner(rd16(buf, t + 2), this.count) : this.insideOwner(proto, src, rd16(buf, t));
    }
    if (proto === IPPROTO.ICMP) {
      if (rest < 8) return HERE;
      const type = buf[t]!;
      if (isQueryType(type)) return inbound ? HERE_IF_REQUEST(type, sliceOwner(rd16(buf, t + 4), this.count)) : sliceOwner(rd16(buf, t + 4), this.count);
      if (isErrorType(type)) return this.quotedOwner(buf, t + 8, rest - 8, inbound);
      return HERE;
    }
    return hashAddress(inbound ? src : dst, this.count);
  }

  /** The owner of a flow seen from the LAN side: a forward's target goes with its public port. */
  private insideOwner(proto: number, addr: number, port: number): number {
    const ports = this.targetPort.get(proto);
    if (ports !== undefined && ports[port] === 1) {
      const pub = this.targets.get(proto)!.get(addr * 65536 + port);
      if (pub !== undefined) return sliceOwner(pub, this.count);
    }
    return sliceOwner(port, this.count);
  }

  /**
   * An ICMP error's owner is its quoted packet's flow. Quoted by a WAN host, the packet is one we sent out:
   * its source is the public endpoint. Quoted by a LAN host, it is one we delivered: its destination is
   * the inside endpoint.
   */
  private quotedOwner(buf: Uint8Array, q: number, qlen: number, inbound: boolean): number {
    if (qlen < 20 || buf[q]! >> 4 !== 4) return HERE;
    const ihl = (buf[q]! & 15) * 4;
    if (ihl < 20 || qlen < ihl + 8) return HERE;
    const proto = buf[q + IPV4_OFF.PROTOCOL]!;
    const t = q + ihl;
    if (PORTED[proto] === 1) {
      return inbound
        ? sliceOwner(rd16(buf, t), this.count)
        : this.insideOwner(proto, rd32(buf, q + IPV4_OFF.DESTINATION), rd16(buf, t + 2));
    }
    if (proto === IPPROTO.ICMP) return isQueryType(buf[t]!) ? sliceOwner(rd16(buf, t + 4), this.count) : HERE;
    return hashAddress(rd32(buf, q + (inbound ? IPV4_OFF.DESTINATION : IPV4_OFF.SOURCE)), this.count);
  }
}

/** An echo request to a public address is for the gateway itself: any worker writes it back. */
function HERE_IF_REQUEST(type: number, owner: number): number {
  return type === 8 || type === 13 ? HERE : owner;
}

function hashAddress(addr: number, count: number): number {
  let h = Math.imul(addr ^ (addr >>> 16), 0x45d9f3b);
  h = Math.imul(h ^ (h >>> 16), 0x45d9f3b);
  return ((h ^ (h >>> 16)) >>> 0) % count;
}
