import { Translator, type NatOptions, type PacketSink } from '../../src/nat/translator.js';
import { DEFAULT_TIMEOUTS } from '../../src/conntrack/timeouts.js';
import { seededRng } from '../../src/nat/ports.js';
import { parseIpv4 } from '../../src/wire/addr.js';
import { Ipv4View } from '../../src/wire/ipv4.js';
import { UdpView } from '../../src/wire/udp.js';
import { TcpView } from '../../src/wire/tcp.js';
import { IcmpView } from '../../src/wire/icmp.js';

export const ip = (s: string): number => {
  const v = parseIpv4(s);
  if (v === null) throw new Error(`bad address ${s}`);
  return v;
};

export const LAN = '192.168.1.0/24';
export const PUB = ip('203.0.113.1');
export const REMOTE = ip('203.0.113.2');
export const HOST_A = ip('192.168.1.10');
export const HOST_B = ip('192.168.1.11');

export function makeNat(over: Partial<NatOptions> = {}): Translator {
  return new Translator({
    internal: [{ network: ip('192.168.1.0'), prefixLength: 24 }],
    publicIp: PUB,
    ports: [1024, 65535],
    excludedPorts: [[20000, 29999]],
    maxFlows: 1024,
    timeouts: { ...DEFAULT_TIMEOUTS },
    seed: 1234,
    rng: seededRng(42),
    ...over,
  });
}

/** Parse a packet and check every checksum in it with a full recomputation. */
/** Collects generated packets the way the data plane would send them. */
export function collectingSink(): PacketSink & { sent: Buffer[] } {
  const buf = Buffer.alloc(64 * 2048);
  let next = 0;
  const sent: Buffer[] = [];
  return {
    buf,
    sent,
    alloc: (n) => (n <= 2048 && next < buf.length ? ((next += 2048), next - 2048) : -1),
    commit: (off, len) => sent.push(Buffer.from(buf.subarray(off, off + len))),
  };
}

export function checkAllChecksums(pkt: Uint8Array): void {
  const v = new Ipv4View();
  if (v.wrap(pkt, 0, pkt.length) !== 0) throw new Error('not an IPv4 packet');
  if (!v.verifyChecksum()) throw new Error('bad IPv4 header checksum');
  const off = v.payloadOffset;
  const len = v.payloadLength;
  if (v.protocol === 17) {
    const u = new UdpView();
    u.wrap(pkt, off, len);
    if (!u.verifyChecksum(v.sourceAddress, v.destinationAddress)) throw new Error('bad UDP checksum');
  } else if (v.protocol === 6) {
    const t = new TcpView();
    t.wrap(pkt, off, len);
    if (!t.verifyChecksum(v.sourceAddress, v.destinationAddress)) throw new Error('bad TCP checksum');
  } else if (v.protocol === 1) {
    const c = new IcmpView();
    c.wrap(pkt, off, len);
    if (!c.verifyChecksum()) throw new Error('bad ICMP checksum');
  }
}

export function parse(pkt: Uint8Array) {
  const v = new Ipv4View();
  if (v.wrap(pkt, 0, pkt.length) !== 0) throw new Error('not IPv4');
  const out = { src: v.sourceAddress, dst: v.destinationAddress, ttl: v.ttl, proto: v.protocol, sport: 0, dport: 0, id: 0 };
  if (v.protocol === 17 || v.protocol === 6) {
    out.sport = (pkt[v.payloadOffset]! << 8) | pkt[v.payloadOffset + 1]!;
    out.dport = (pkt[v.payloadOffset + 2]! << 8) | pkt[v.payloadOffset + 3]!;
  } else if (v.protocol === 1) {
    out.id = (pkt[v.payloadOffset + 4]! << 8) | pkt[v.payloadOffset + 5]!;
  }
  return out;
}
