/**
 * A stateful traffic model for the data-plane fuzzer. Pure random bytes mostly die in the parser; to
 * reach the deep paths (replies, TCP state, hairpins, ICMP errors about live flows, fragments of
 * translated datagrams, exhaustion) the model plays both ends: LAN hosts open flows, remote hosts
 * answer what actually left the NAT (it remembers forwarded packets), errors quote real packets, and
 * then any of it may be fragmented, mangled, or replaced by garbage. Seeds also come from the scapy
 * captures in test/fixtures/wire/packets.json, re-addressed into the model's world.
 */
import { readFileSync } from 'node:fs';
import { icmpEcho, tcpPacket, udpPacket } from '../../../src/wire/build.js';
import { TCP_FLAGS } from '../../../src/wire/tcp.js';
import { mutate, ODD_TCP_FLAGS, pickAddress, pickPort, type AddressBook } from './mutate.js';
import {
  IP, PROTO_ICMP, PROTO_TCP, PROTO_UDP, dstOf, evenCuts, fixIpChecksum, fixL4Checksum, fragment, icmpErrorPacket, ihl,
  isFragment, protoOf, srcOf, setDontFragment, wr16, wr32,
} from './packets.js';
import { rd16, rd32 } from '../../../src/wire/bytes.js';
import type { Rng } from './rng.js';



export interface World extends AddressBook {
  isInternal(a: number): boolean;
  /** LAN routers: inside addresses that are not hosts and may send ICMP errors. */
  lanRouters: readonly number[];
  /** Remote routers that send ICMP errors about packets in transit. */
  wanRouters: readonly number[];
}

/** A packet that left the translator, remembered so the model can answer it. */
interface Seen {
  pkt: Buffer;
  /** Written towards the WAN (source = public address) or towards the LAN. */
  outward: boolean;
}

interface Fixture {
  name: string;
  hex: string;
}

let fixtureCache: Buffer[] | null = null;

/** The scapy-made packets of test/fixtures/wire (the "real captures" the fuzz is seeded with). */
export function fixturePackets(): Buffer[] {
  if (fixtureCache) return fixtureCache;
  const url = new URL('../../fixtures/wire/packets.json', import.meta.url);
  const file = JSON.parse(readFileSync(url, 'utf8')) as { packets: Fixture[] };
  fixtureCache = file.packets.map((p) => Buffer.from(p.hex, 'hex'));
  return fixtureCache;
}

export interface TrafficStats {
  generated: number;
  byKind: Record<string, number>;
}

export class TrafficModel {
  private readonly seen: Seen[] = [];
  private readonly seenMax = 512;
  private seenNext = 0;
  private ipId = 1;
  readonly stats: TrafficStats = { generated: 0, byKind: {} };
  /** Source ports LAN hosts use: few, so endpoints collide and mappings get shared and remapped. */
  private readonly lanPorts: number[];

  constructor(
    private readonly rng: Rng,
    private readonly world: World,
    /** Public ports of port forwards, so unsolicited traffic hits them too. */
    private readonly forwardPorts: readonly number[],
  ) {
    this.lanPorts = [0, 1, 53, 123, 1023, 1024, 1025, 5353, 20000, 20001, 29999, 40000, 40001, 50000, 65535];
    for (let i = 0; i < 12; i++) this.lanPorts.push(rng.range(1024, 65535));
  }

  /** Remember what the translator wrote back (only forwarded packets). */
  observe(pkt: Uint8Array): void {
    if (pkt.length < 20) return;
    const outward = !this.world.isInternal(dstOf(pkt)) && dstOf(pkt) !== this.world.publicIp;
    const item = { pkt: Buffer.from(pkt), outward };
    // A ring, newest at seenNext - 1, so replies can favour what just happened (a handshake or a
    // teardown only completes if each step answers the previous one).
    if (this.seen.length < this.seenMax) this.seen.push(item);
    else this.seen[this.seenNext] = item;
    this.seenNext = (this.seenNext + 1) % this.seenMax;
  }

  /** A remembered packet: half the time one of the 16 newest. */
  private pickSeen(): Seen {
    const n = this.seen.length;
    if (this.rng.chance(0.5)) return this.seen[(this.seenNext - 1 - this.rng.int(Math.min(16, n)) + this.seenMax) % this.seenMax % n]!;
    return this.rng.pick(this.seen);
  }

  private count(kind: string, n = 1): void {
    this.stats.generated += n;
    this.stats.byKind[kind] = (this.stats.byKind[kind] ?? 0) + n;
  }

  /** The next packets to inject (usually one; fragments and floods give several). */
  next(): Buffer[] {
    const rng = this.rng;
    const kind = rng.weighted<string>([
      [26, 'outbound'],
      [28, 'reply'],
      [6, 'unsolicited'],
      [8, 'icmp-error'],
      [6, 'fragments'],
      [6, 'fixture'],
      [3, 'hairpin'],
      [2, 'garbage'],
      [1, 'flood'],
    ]);
    let pkts: Buffer[];
    switch (kind) {
      case 'outbound':
        pkts = [this.outbound()];
        break;
      case 'reply':
        pkts = [this.reply() ?? this.outbound()];
        break;
      case 'unsolicited':
        pkts = [this.unsolicited()];
        break;
      case 'icmp-error':
        pkts = [this.icmpError()];
        break;
      case 'fragments':
        pkts = this.fragments();
        break;
      case 'fixture':
        pkts = [this.fixture()];
        break;
      case 'hairpin':
        pkts = [this.hairpin()];
        break;
      case 'garbage':
        pkts = [this.garbage()];
        break;
      default:
        pkts = this.flood();
    }
    // Then, sometimes, mangle (a hostile or broken sender), and usually repair checksums the way a
    // sender's stack would have computed them: a kernel drops bad IP header checksums before routing.
    const out: Buffer[] = [];
    for (let p of pkts) {
      if (kind !== 'garbage' && rng.chance(0.2)) {
        p = mutate(rng, p, this.world);
        if (rng.chance(0.85)) fixIpChecksum(p);
        if (rng.chance(0.5)) fixL4Checksum(p);
        this.count('mutated');
      }
      out.push(p);
    }
    this.count(kind, out.length);
    return out;
  }

  private lanHost(): number {
    return this.rng.pick(this.world.lan);
  }

  private remote(): number {
    return this.rng.pick(this.world.remotes);
  }

  private lanPort(): number {
    return this.rng.pick(this.lanPorts);
  }

  private payload(): Buffer {
    const rng = this.rng;
    const n = rng.weighted<number>([
      [5, 0],
      [30, rng.int(64)],
      [10, rng.int(600)],
      [4, 1000 + rng.int(460)],
    ]);
    return rng.bytes(n);
  }

  private id(): number {
    this.ipId = (this.ipId + 1) & 0xffff;
    return this.ipId;
  }

  /** A clean packet of a protocol between two endpoints. */
  private make(proto: number, src: number, dst: number, sport: number, dport: number, flags: number = TCP_FLAGS.SYN): Buffer {
    const rng = this.rng;
    const ttl = rng.chance(0.9) ? 64 : rng.pick([0, 1, 2, 128, 255]);
    const id = this.id();
    if (proto === PROTO_TCP) {
      const payload = flags & TCP_FLAGS.SYN ? Buffer.alloc(0) : this.payload();
      return tcpPacket({
        src, dst, srcPort: sport, dstPort: dport, seq: rng.u32(), ack: flags & TCP_FLAGS.ACK ? rng.u32() : 0, flags, ttl, id, payload,
        ...(flags & TCP_FLAGS.SYN && rng.chance(0.7) ? { mss: rng.pick([536, 1200, 1460, 65495]) } : {}),
      });
    }
    if (proto === PROTO_UDP) {
      return udpPacket({ src, dst, srcPort: sport, dstPort: dport, payload: this.payload(), ttl, id, checksum: rng.chance(0.95) });
    }
    const type = rng.chance(0.9) ? 8 : 13;
    const p = icmpEcho({ src, dst, type: 8, identifier: sport, sequence: rng.u16(), payload: this.payload(), ttl, id });
    if (type === 13) {
      // Timestamp request: another query type whose identifier is translated.
      p[ihl(p)] = 13;
      fixL4Checksum(p);
    }
    return p;
  }

  private outbound(): Buffer {
    const rng = this.rng;
    const proto = rng.weighted<number>([
      [4, PROTO_UDP],
      [4, PROTO_TCP],
      [2, PROTO_ICMP],
    ]);
    const dst = rng.chance(0.93) ? this.remote() : pickAddress(rng, this.world);
    const dport = rng.pick([53, 80, 443, 7, 123, 3478, 5060, rng.u16(), 0]);
    const flags = proto === PROTO_TCP && rng.chance(0.15) ? rng.pick(ODD_TCP_FLAGS) : TCP_FLAGS.SYN;
    return this.make(proto, this.lanHost(), dst, proto === PROTO_ICMP ? rng.u16() & 0xff : this.lanPort(), dport, flags);
  }

  /** LAN host to the public address: a hairpin to a mapped or forwarded port, or the gateway itself. */
  private hairpin(): Buffer {
    const rng = this.rng;
    const target = this.seenOutward();
    const dport = target && rng.chance(0.7) ? rd16(target.pkt, ihl(target.pkt)) : rng.chance(0.5) && this.forwardPorts.length ? rng.pick(this.forwardPorts) : pickPort(rng, this.world);
    const proto = target && rng.chance(0.7) ? protoOf(target.pkt) : rng.pick([PROTO_UDP, PROTO_TCP, PROTO_ICMP]);
    return this.make(proto === PROTO_ICMP ? PROTO_ICMP : proto, this.lanHost(), this.world.publicIp, this.lanPort(), dport);
  }

  private seenOutward(): Seen | null {
    for (let i = 0; i < 8 && this.seen.length > 0; i++) {
      const s = this.pickSeen();
      if (s.outward && !isFragment(s.pkt)) return s;
    }
    return null;
  }

  private seenAny(): Seen | null {
    for (let i = 0; i < 8 && this.seen.length > 0; i++) {
      const s = this.pickSeen();
      if (!isFragment(s.pkt) && s.pkt.length >= ihl(s.pkt) + 8) return s;
    }
    return null;
  }

  /**
   * Answer a packet that left the translator, as its receiver would: swap the endpoints, and for TCP
   * pick the flags that move the handshake or the teardown along (sometimes a RST, sometimes nonsense).
   */
  private reply(): Buffer | null {
    const s = this.seenAny();
    if (!s) return null;
    const rng = this.rng;
    const p = s.pkt;
    const h = ihl(p);
    const proto = protoOf(p);
    const src = dstOf(p);
    const dst = srcOf(p);
    if (proto === PROTO_ICMP) {
      // Only requests get answers: echo → echo reply, timestamp → timestamp reply.
      const type = p[h]!;
      if (type !== 8 && type !== 13) return null;
      const e = icmpEcho({ src, dst, type: 0, identifier: rd16(p, h + 4), sequence: rd16(p, h + 6), id: this.id() });
      if (type === 13) {
        e[ihl(e)] = 14;
        fixL4Checksum(e);
      }
      return e;
    }
    if (proto !== PROTO_TCP && proto !== PROTO_UDP) return null;
    const sport = rd16(p, h + 2);
    const dport = rd16(p, h);
    if (proto === PROTO_UDP) return this.make(PROTO_UDP, src, dst, sport, dport);
    const got = p[h + 13]!;
    let flags: number;
    if (rng.chance(0.05)) flags = TCP_FLAGS.RST | (rng.chance(0.5) ? TCP_FLAGS.ACK : 0);
    else if (rng.chance(0.05)) flags = rng.pick(ODD_TCP_FLAGS);
    else if (got & TCP_FLAGS.SYN) flags = got & TCP_FLAGS.ACK ? TCP_FLAGS.ACK : TCP_FLAGS.SYN | TCP_FLAGS.ACK;
    else if (got & TCP_FLAGS.FIN) flags = rng.chance(0.5) ? TCP_FLAGS.ACK : TCP_FLAGS.FIN | TCP_FLAGS.ACK;
    else flags = rng.chance(0.15) ? TCP_FLAGS.FIN | TCP_FLAGS.ACK : TCP_FLAGS.ACK | (rng.chance(0.5) ? TCP_FLAGS.PSH : 0);
    return this.make(PROTO_TCP, src, dst, sport, dport, flags);
  }

  /** Nobody asked: a remote host to the public address, on a mapped, forwarded or random port. */
  private unsolicited(): Buffer {
    const rng = this.rng;
    const target = this.seenOutward();
    let dport: number;
    if (target && rng.chance(0.5)) dport = rd16(target.pkt, ihl(target.pkt));
    else if (this.forwardPorts.length && rng.chance(0.3)) dport = rng.pick(this.forwardPorts);
    else dport = pickPort(rng, this.world);
    const proto = rng.pick([PROTO_UDP, PROTO_TCP, PROTO_TCP, PROTO_ICMP]);
    const flags = proto === PROTO_TCP ? rng.pick([TCP_FLAGS.SYN, TCP_FLAGS.SYN, TCP_FLAGS.ACK, TCP_FLAGS.RST, TCP_FLAGS.FIN | TCP_FLAGS.ACK, rng.pick(ODD_TCP_FLAGS)]) : TCP_FLAGS.SYN;
    // Sometimes a WAN sender claims a LAN source: the translator cannot see interfaces, only addresses.
    const src = rng.chance(0.05) ? this.lanHost() : this.remote();
    if (proto === PROTO_ICMP) {
      return icmpEcho({ src, dst: this.world.publicIp, type: rng.pick([0, 8] as const), identifier: dport, sequence: 1, id: this.id() });
    }
    return this.make(proto, src, this.world.publicIp, rng.pick([53, 80, 443, rng.u16()]), dport, flags);
  }

  /**
   * An ICMP error about a real packet (one that left the translator, quoted as its receiver saw it) or
   * an invented one, from a router on either side, with the quote cut at various lengths.
   */
  private icmpError(): Buffer {
    const rng = this.rng;
    const s = this.seenAny();
    let quoted: Buffer;
    let outward: boolean;
    if (s && rng.chance(0.8)) {
      quoted = s.pkt;
      outward = s.outward;
    } else {
      outward = rng.chance(0.5);
      const lan = this.lanHost();
      const far = this.remote();
      quoted = outward
        ? this.make(rng.pick([PROTO_UDP, PROTO_TCP, PROTO_ICMP]), rng.chance(0.5) ? this.world.publicIp : lan, far, pickPort(rng, this.world), pickPort(rng, this.world))
        : this.make(rng.pick([PROTO_UDP, PROTO_TCP]), far, rng.chance(0.5) ? lan : this.world.publicIp, pickPort(rng, this.world), pickPort(rng, this.world));
    }
    // The error goes back to the quoted packet's sender: from its receiver or a router on the way.
    const qsrc = srcOf(quoted);
    const qdst = dstOf(quoted);
    let src: number;
    let dst: number;
    if (outward) {
      // Left towards the WAN: the error comes from outside, to the public address.
      src = rng.chance(0.6) ? qdst : rng.pick(this.world.wanRouters);
      dst = qsrc;
    } else {
      // Delivered into the LAN: the error comes from the LAN host or a LAN router, to the remote sender.
      src = rng.chance(0.6) ? qdst : rng.pick(this.world.lanRouters);
      dst = qsrc;
    }
    const [type, code] = rng.pick([
      [3, 3], [3, 1], [3, 4], [3, 13], [11, 0], [11, 1], [12, 0], [4, 0], [5, 1], [3, 0],
    ] as const);
    const quoteLength = rng.pick([ihl(quoted) + 8, ihl(quoted) + 8, 28, quoted.length, rng.int(quoted.length + 1)]);
    return icmpErrorPacket({ src, dst, type, code, quoted, quoteLength, mtu: type === 3 && code === 4 ? 1280 : 0 });
  }

  /** A datagram cut into fragments: in order, reversed, shuffled, with duplicates, overlaps, or pieces missing. */
  private fragments(): Buffer[] {
    const rng = this.rng;
    let base: Buffer;
    do base = rng.chance(0.6) ? this.outbound() : (this.reply() ?? this.unsolicited());
    while (base.length - ihl(base) < 24 && rng.chance(0.8));
    if (base.length - ihl(base) < 16) base = this.make(PROTO_UDP, this.lanHost(), this.remote(), this.lanPort(), 53);
    setDontFragment(base, false);
    const payloadLen = rd16(base, IP.TOTAL_LENGTH) - ihl(base);
    const step = rng.pick([8, 16, 24, 64, 256, 512]);
    let frags = fragment(base, rng.chance(0.8) ? evenCuts(payloadLen, step) : [rng.int(payloadLen), rng.int(payloadLen)]);
    const how = rng.int(6);
    if (how === 1) frags.reverse();
    else if (how === 2) frags = shuffle(rng, frags);
    else if (how === 3 && frags.length > 1) frags.push(Buffer.from(rng.pick(frags))); // duplicate
    else if (how === 4 && frags.length > 1) frags.splice(rng.int(frags.length), 1); // missing piece
    else if (how === 5 && frags.length > 1) {
      // An overlapping piece: a copy of one fragment at a shifted offset.
      const f = Buffer.from(rng.pick(frags));
      const off = rd16(f, IP.FRAG) & 0x1fff;
      wr16(f, IP.FRAG, (rd16(f, IP.FRAG) & 0xe000) | Math.max(0, off + rng.pick([-1, 1, 2])) & 0x1fff);
      fixIpChecksum(f);
      frags.splice(rng.int(frags.length + 1), 0, f);
    }
    if (rng.chance(0.1)) frags = frags.filter((f) => (rd16(f, IP.FRAG) & 0x1fff) !== 0); // strays only
    return frags.length ? frags : [base];
  }

  /** A scapy fixture moved into this world: inside addresses become LAN hosts, outside ones remotes. */
  private fixture(): Buffer {
    const rng = this.rng;
    const p = Buffer.from(rng.pick(fixturePackets()));
    const move = (at: number): void => {
      const a = rd32(p, at);
      const inside = a >>> 16 === 0xc0a8;
      const pub = a === 0xcb007101; // 203.0.113.1, the fixtures' public address
      wr32(p, at, pub ? this.world.publicIp : inside ? this.lanHost() : this.remote());
    };
    move(IP.SRC);
    move(IP.DST);
    fixIpChecksum(p);
    fixL4Checksum(p);
    return p;
  }

  private garbage(): Buffer {
    const rng = this.rng;
    const b = rng.bytes(rng.int(80));
    if (b.length > 0 && rng.chance(0.6)) b[0] = rng.pick([0x45, 0x46, 0x4f, 0x60, 0x44]);
    if (b.length >= 20 && rng.chance(0.5)) {
      wr16(b, IP.TOTAL_LENGTH, b.length);
      wr32(b, IP.SRC, pickAddress(rng, this.world));
      wr32(b, IP.DST, pickAddress(rng, this.world));
      fixIpChecksum(b);
    }
    return b;
  }

  /** Many new flows at once (a scan, a P2P client, an attack): fills the table and the port pool. */
  private flood(): Buffer[] {
    const rng = this.rng;
    const n = 16 + rng.int(200);
    const out: Buffer[] = [];
    const inbound = rng.chance(0.2);
    for (let i = 0; i < n; i++) {
      if (inbound) out.push(this.make(PROTO_UDP, this.remote(), this.world.publicIp, rng.u16(), pickPort(rng, this.world)));
      else out.push(this.make(rng.chance(0.7) ? PROTO_UDP : PROTO_TCP, this.lanHost(), this.remote(), rng.range(1024, 65535), rng.u16()));
    }
    return out;
  }
}

function shuffle<T>(rng: Rng, items: T[]): T[] {
  const a = [...items];
  for (let i = a.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}
