/**
 * Pre-built packets for the benchmarks: many packets side by side in one Buffer, one fixed-size slot
 * each, as the data plane's batch buffer holds them. Built once, outside any timed loop.
 */
import { emitIpv4Tcp, emitIpv4Udp } from '../../src/wire/build.js';
import { ip4, PROTO_TCP, PROTO_UDP, type Rng32 } from './reference.js';

export const PUBLIC_IP = ip4(203, 0, 113, 1);

export interface PacketSpec {
  proto: typeof PROTO_TCP | typeof PROTO_UDP;
  src: number;
  dst: number;
  sport: number;
  dport: number;
  ttl: number;
  payloadLength: number;
  /** TCP only. */
  flags?: number;
  seq?: number;
  ack?: number;
}

export class PacketSet {
  readonly buf: Buffer;
  readonly lens: Uint16Array;
  readonly specs: PacketSpec[] = [];

  constructor(
    readonly count: number,
    /** Bytes per slot; a packet never spans two. */
    readonly stride: number,
  ) {
    this.buf = Buffer.alloc(count * stride);
    this.lens = new Uint16Array(count);
  }

  offset(i: number): number {
    return i * this.stride;
  }

  /** Writes packet i with checksums; the payload is random bytes from `rng`. */
  put(i: number, spec: PacketSpec, rng: Rng32): void {
    const payload = rng.bytes(spec.payloadLength);
    const off = this.offset(i);
    const len =
      spec.proto === PROTO_UDP
        ? emitIpv4Udp(this.buf, off, { src: spec.src, dst: spec.dst, srcPort: spec.sport, dstPort: spec.dport, ttl: spec.ttl, payload })
        : emitIpv4Tcp(this.buf, off, {
            src: spec.src,
            dst: spec.dst,
            srcPort: spec.sport,
            dstPort: spec.dport,
            ttl: spec.ttl,
            seq: spec.seq ?? 0,
            ack: spec.ack ?? 0,
            flags: spec.flags ?? 0,
            payload,
          });
    if (len > this.stride) throw new RangeError(`packet of ${len} bytes does not fit a ${this.stride}-byte slot`);
    this.lens[i] = len;
    this.specs[i] = spec;
  }
}

/** A remote endpoint on the "internet" side: the two documentation ranges. */
export function remoteAddress(rng: Rng32): number {
  return rng.u32() & 1 ? ip4(203, 0, 113, 2 + rng.below(250)) : ip4(198, 51, 100, 1 + rng.below(254));
}

/** A LAN host in 192.168.0.0/16, never .0 or .255 of its /24. */
export function lanAddress(rng: Rng32): number {
  return ip4(192, 168, rng.below(256), 1 + rng.below(254));
}

/** Linux's default ephemeral port range (net.ipv4.ip_local_port_range), what clients use. */
export function ephemeralPort(rng: Rng32): number {
  return 32768 + rng.below(61000 - 32768);
}

const SERVICE_PORTS = [53, 80, 123, 443, 443, 443, 993, 8080];
export function servicePort(rng: Rng32): number {
  return SERVICE_PORTS[rng.below(SERVICE_PORTS.length)]!;
}
