/**
 * Mutations a broken or hostile sender makes: random and "interesting" bytes in every header field
 * (lengths, IHL, fragment bits, TTL 0/1, protocol numbers, zero ports, TCP flag sets, data offsets,
 * ICMP types, the packet quoted inside an ICMP error), truncation and extension, IP options. Each
 * mutation returns a new Buffer; the caller decides whether checksums are then repaired (a kernel
 * drops IP header checksum errors before routing, so most packets reaching the TUN have a good one).
 */
import type { Rng } from './rng.js';
import { IP, IP_OPTION_SAMPLES, PROTO_ICMP, PROTO_TCP, PROTO_UDP, fitTotalLength, ihl, protoOf, withIpOptions, wr16, wr32 } from './packets.js';
import { rd16 } from '../../../src/wire/bytes.js';
import { TCP_FLAGS } from '../../../src/wire/tcp.js';

/** Addresses worth putting anywhere: the lab's, the special ones, and neighbours of the lab's. */
export interface AddressBook {
  lan: readonly number[];
  remotes: readonly number[];
  publicIp: number;
  /** Interesting addresses that belong to nobody here. */
  odd: readonly number[];
  /** Ports worth hitting: pool edges, forwards, the gateway's range, 0. */
  ports: readonly number[];
}

const INTERESTING8 = [0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x0f, 0x10, 0x11, 0x12, 0x3f, 0x40, 0x45, 0x46, 0x4f, 0x50, 0x7f, 0x80, 0xf0, 0xff];
const INTERESTING16 = [0, 1, 7, 8, 19, 20, 21, 27, 28, 0x7fff, 0x8000, 0xfffe, 0xffff];
const PROTOCOLS = [0, 1, 2, 4, 6, 17, 41, 47, 50, 51, 58, 89, 132, 136, 255];
const FIN = TCP_FLAGS.FIN, SYN = TCP_FLAGS.SYN, RST = TCP_FLAGS.RST, PSH = TCP_FLAGS.PSH, ACK = TCP_FLAGS.ACK, URG = TCP_FLAGS.URG, ECE = TCP_FLAGS.ECE, CWR = TCP_FLAGS.CWR;
/** TCP flag sets that should never open or move a flow, and some that should (the order is part of the seeded runs). */
export const ODD_TCP_FLAGS = [
  0, FIN, FIN | SYN, FIN | RST, SYN | RST, FIN | SYN | RST, FIN | SYN | RST | PSH,
  FIN | PSH | URG, // Xmas scan
  FIN | SYN | RST | PSH | ACK | URG,
  FIN | SYN | RST | PSH | ACK | URG | ECE | CWR,
  SYN | ACK, RST | ACK, FIN | ACK, RST, SYN,
  SYN | ECE | CWR, // an ECN-setup SYN
  PSH | ACK, ACK,
];

export function pickAddress(rng: Rng, book: AddressBook): number {
  switch (rng.int(5)) {
    case 0:
      return rng.pick(book.lan);
    case 1:
      return rng.pick(book.remotes);
    case 2:
      return book.publicIp;
    case 3:
      return rng.pick(book.odd);
    default:
      return rng.u32();
  }
}

export function pickPort(rng: Rng, book: AddressBook): number {
  return rng.chance(0.7) ? rng.pick(book.ports) : rng.u16();
}

/** One mutation. */
export function mutateOnce(rng: Rng, input: Buffer, book: AddressBook): Buffer {
  let p: Buffer = Buffer.from(input);
  if (p.length < 20) return rng.chance(0.5) ? Buffer.concat([p, rng.bytes(rng.int(40))]) : p;
  const h = Math.min(ihl(p), p.length);
  const l4 = h;
  const proto = protoOf(p);
  switch (rng.int(18)) {
    case 0: // a random byte in the headers
      p[rng.int(Math.min(p.length, 64))] = rng.u8();
      break;
    case 1: // an interesting byte anywhere in the headers
      p[rng.int(Math.min(p.length, 64))] = rng.pick(INTERESTING8);
      break;
    case 2: // one bit
      {
        const at = rng.int(Math.min(p.length, 64));
        p[at] = p[at]! ^ (1 << rng.int(8));
      }
      break;
    case 3: // version / IHL
      p[IP.VIHL] = rng.chance(0.7) ? 0x40 | rng.int(16) : rng.u8();
      break;
    case 4: // total length: short, long, off by one
      wr16(p, IP.TOTAL_LENGTH, rng.chance(0.5) ? rng.pick(INTERESTING16) : p.length + rng.range(-3, 3));
      break;
    case 5: // fragment bits: MF, DF, reserved, random offset
      wr16(p, IP.FRAG, rng.pick([0x2000, 0x4000, 0x8000, 0x2000 | rng.int(0x2000), rng.int(0x2000), 0x6000, 0xffff, 0]));
      break;
    case 6: // TTL 0/1 and the edges
      p[IP.TTL] = rng.pick([0, 1, 2, 254, 255]);
      break;
    case 7: // another protocol on the same bytes
      p[IP.PROTO] = rng.pick(PROTOCOLS);
      break;
    case 8: // addresses
      wr32(p, rng.chance(0.5) ? IP.SRC : IP.DST, pickAddress(rng, book));
      break;
    case 9: // ports (or the ICMP type/code and identifier)
      if (proto === PROTO_TCP || proto === PROTO_UDP) wr16(p, l4 + (rng.chance(0.5) ? 0 : 2), rng.chance(0.3) ? 0 : pickPort(rng, book));
      else if (proto === PROTO_ICMP) wr16(p, l4 + 4, rng.chance(0.3) ? 0 : rng.u16());
      break;
    case 10: // TCP flags and data offset, UDP length, ICMP type
      if (proto === PROTO_TCP && l4 + 13 < p.length) {
        if (rng.chance(0.6)) p[l4 + 13] = rng.pick(ODD_TCP_FLAGS);
        else p[l4 + 12] = rng.int(16) << 4;
      } else if (proto === PROTO_UDP) {
        wr16(p, l4 + 4, rng.chance(0.5) ? rng.pick(INTERESTING16) : p.length - h + rng.range(-2, 2));
      } else if (proto === PROTO_ICMP && l4 + 1 < p.length) {
        p[l4] = rng.pick([0, 3, 4, 5, 8, 9, 10, 11, 12, 13, 14, 17, 18, 30, 40, 255]);
        p[l4 + 1] = rng.pick([0, 1, 3, 4, 13, 255]);
      }
      break;
    case 11: // inside an ICMP error: the quoted header's IHL, protocol, addresses, ports
      if (proto === PROTO_ICMP && l4 + 8 + 20 <= p.length) {
        const qh = l4 + 8;
        switch (rng.int(5)) {
          case 0:
            p[qh] = 0x40 | rng.int(16);
            break;
          case 1:
            p[qh + 9] = rng.pick(PROTOCOLS);
            break;
          case 2:
            wr32(p, qh + (rng.chance(0.5) ? 12 : 16), pickAddress(rng, book));
            break;
          case 3:
            wr16(p, qh + 20 + (rng.chance(0.5) ? 0 : 2), pickPort(rng, book));
            break;
          default:
            wr16(p, qh + 2, rng.pick(INTERESTING16));
        }
      }
      break;
    case 12: // cut short, total length left claiming more
      p = p.subarray(0, rng.int(p.length + 1));
      break;
    case 13: // cut short and made consistent
      p = Buffer.from(p.subarray(0, Math.max(20, rng.int(p.length + 1))));
      fitTotalLength(p);
      break;
    case 14: // trailing bytes past the total length (link padding)
      p = Buffer.concat([p, rng.bytes(1 + rng.int(32))]);
      break;
    case 15: // IP options
      if (h === 20) p = withIpOptions(p, rng.pick(IP_OPTION_SAMPLES));
      break;
    case 16: // the identification (fragment key)
      wr16(p, IP.ID, rng.pick([0, 1, rd16(p, IP.ID) + 1, rng.u16()]));
      break;
    default: // a run of random bytes in the payload
      if (p.length > h + 4) {
        const at = h + rng.int(p.length - h);
        const n = Math.min(p.length - at, 1 + rng.int(16));
        for (let i = 0; i < n; i++) p[at + i] = rng.u8();
      }
  }
  return p;
}

export function mutate(rng: Rng, input: Buffer, book: AddressBook, rounds = 1 + rng.int(3)): Buffer {
  let p = input;
  for (let i = 0; i < rounds; i++) p = mutateOnce(rng, p, book);
  return p;
}
