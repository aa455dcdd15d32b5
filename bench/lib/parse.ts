/**
 * Parsing: Ipv4View.wrap then UdpView/TcpView.wrap on realistic packets, reading the fields the NAT
 * reads (addresses, protocol, TTL, ports, lengths, TCP flags). Each operation's digest of those
 * fields is compared with the same digest computed from the values the packets were built from.
 */
import { Ipv4View } from '../../src/wire/ipv4.js';
import { TCP_FLAGS, TcpView } from '../../src/wire/tcp.js';
import { UdpView } from '../../src/wire/udp.js';
import type { BenchCase } from './harness.js';
import { cyclicCase } from './cyclic.js';
import { ephemeralPort, lanAddress, PacketSet, remoteAddress, servicePort } from './packets.js';
import { PROTO_TCP, PROTO_UDP, Rng32 } from './reference.js';

export interface ParseOptions {
  /** Distinct packets the loop cycles through. */
  packets: number;
}

/** DNS-query-sized UDP datagram, and a TCP data segment. */
const UDP_PAYLOAD = 40;
const TCP_PAYLOAD = 200;
const TCP_ACK_PSH = TCP_FLAGS.ACK | TCP_FLAGS.PSH;

export function* parseCases(opts: ParseOptions): Generator<BenchCase> {
  const rng = new Rng32(0x7a11);
  const k = opts.packets;

  // UDP: digest = verdicts + src + dst + protocol + ttl + ports + UDP length.
  {
    const set = new PacketSet(k, 128);
    const expected = new Int32Array(k);
    for (let i = 0; i < k; i++) {
      const s = { proto: PROTO_UDP, src: lanAddress(rng), dst: remoteAddress(rng), sport: ephemeralPort(rng), dport: 53, ttl: 64, payloadLength: UDP_PAYLOAD } as const;
      set.put(i, s, rng);
      expected[i] = (s.src + s.dst + PROTO_UDP + s.ttl + ((s.sport << 16) | s.dport) + 8 + UDP_PAYLOAD) | 0;
    }
    const ip = new Ipv4View();
    const udp = new UdpView();
    const { buf, lens, stride } = set;
    yield cyclicCase({
      group: 'parse',
      name: 'ipv4+udp wrap + read fields',
      size: set.lens[0]!,
      sizeLabel: `${set.lens[0]} B`,
      expected,
      loop(start, n) {
        let acc = 0;
        let j = start;
        for (let i = 0; i < n; i++) {
          const v = ip.wrap(buf, j * stride, lens[j]!);
          const u = udp.wrap(buf, ip.payloadOffset, ip.payloadLength);
          acc = (acc + v + u + ip.sourceAddress + ip.destinationAddress + ip.protocol + ip.ttl +
            ((udp.sourcePort << 16) | udp.destinationPort) + udp.length) | 0;
          if (++j === k) j = 0;
        }
        return acc;
      },
      describe: (j) => `packet ${j} (${JSON.stringify(set.specs[j])})`,
    });
  }

  // TCP: digest = verdicts + src + dst + protocol + ttl + ports + flags + payload length.
  {
    const set = new PacketSet(k, 256);
    const expected = new Int32Array(k);
    for (let i = 0; i < k; i++) {
      const s = {
        proto: PROTO_TCP, src: lanAddress(rng), dst: remoteAddress(rng), sport: ephemeralPort(rng), dport: servicePort(rng),
        ttl: 64, payloadLength: TCP_PAYLOAD, flags: TCP_ACK_PSH, seq: rng.u32(), ack: rng.u32(),
      } as const;
      set.put(i, s, rng);
      expected[i] = (s.src + s.dst + PROTO_TCP + s.ttl + ((s.sport << 16) | s.dport) + TCP_ACK_PSH + TCP_PAYLOAD) | 0;
    }
    const ip = new Ipv4View();
    const tcp = new TcpView();
    const { buf, lens, stride } = set;
    yield cyclicCase({
      group: 'parse',
      name: 'ipv4+tcp wrap + read fields',
      size: set.lens[0]!,
      sizeLabel: `${set.lens[0]} B`,
      expected,
      loop(start, n) {
        let acc = 0;
        let j = start;
        for (let i = 0; i < n; i++) {
          const v = ip.wrap(buf, j * stride, lens[j]!);
          const t = tcp.wrap(buf, ip.payloadOffset, ip.payloadLength);
          acc = (acc + v + t + ip.sourceAddress + ip.destinationAddress + ip.protocol + ip.ttl +
            ((tcp.sourcePort << 16) | tcp.destinationPort) + tcp.flags + tcp.payloadLength) | 0;
          if (++j === k) j = 0;
        }
        return acc;
      },
      describe: (j) => `packet ${j} (${JSON.stringify(set.specs[j])})`,
    });
  }
}
