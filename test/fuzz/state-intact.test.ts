/**
 * STYLE.md item 9 for the translator as a whole: mutated real packets, placed at random offsets inside
 * larger buffers, against a translator that holds live flows of every kind. For every input:
 * - process() never throws and returns a verdict;
 * - it never reads or writes a byte outside [off, off + len) (a Proxy records every index it touches);
 * - a DROP leaves the packet's bytes and the translator's state exactly as they were (fragments aside:
 *   remembering a fragment set is what dropping a fragment means);
 * - a FORWARD keeps checksums valid, gives back one TTL hop and leaks no inside address.
 */
import { describe, expect, it } from 'vitest';
import { Translator, Verdict } from '../../src/nat/translator.js';
import { icmpEcho, icmpError, tcpPacket, udpPacket } from '../../src/wire/build.js';
import { TCP_FLAGS } from '../../src/wire/tcp.js';
import { DEFAULT_TIMEOUTS } from '../../src/conntrack/timeouts.js';
import { seededRng } from '../../src/nat/ports.js';
import { Rng } from './lib/rng.js';
import { mutate, type AddressBook } from './lib/mutate.js';
import { checkForwarded } from './lib/invariants.js';
import { addr, fixIpChecksum, fixL4Checksum, hex, isFragment, looksLikeIpv4 } from './lib/packets.js';
import { fixturePackets } from './lib/traffic.js';

const PUB = addr('203.0.113.1');
const R = addr('198.51.100.53');
const A = addr('192.168.1.10');
const B = addr('192.168.1.11');
const isInternal = (a: number): boolean => a >>> 8 === addr('192.168.1.0') >>> 8;
const SYN = TCP_FLAGS.SYN, ACK = TCP_FLAGS.ACK;
const NOW = 5_000;
const ITERATIONS = 4_000;

/**
 * A translator holding a replied UDP flow, an established TCP connection, a ping and a port-forward flow;
 * with `maxFlows` 4 the table is full, so every new flow must evict one (and a drop must not).
 */
function seeded(maxFlows: number): { nat: Translator; live: Buffer[] } {
  const nat = new Translator({
    internal: [{ network: addr('192.168.1.0'), prefixLength: 24 }],
    publicIp: PUB,
    ports: [1024, 65535],
    excludedPorts: [[20000, 29999]],
    maxFlows,
    // The seeded UDP flow is a DNS query and its answer, whose default timer (udpQueryAnswered, 5 s) would
    // run out before NOW: a lookup would then remove it, a change no drop made. Keep it for the whole test.
    timeouts: { ...DEFAULT_TIMEOUTS, udpQueryAnswered: DEFAULT_TIMEOUTS.udp, udpQueryUnanswered: DEFAULT_TIMEOUTS.udp },
    seed: 99,
    rng: seededRng(7),
    forwards: [{ protocol: 6, publicPort: 8080, address: B, port: 80 }],
  });
  const go = (p: Buffer): Buffer => {
    const copy = Buffer.from(p);
    if (nat.process(p, 0, p.length, 0) !== Verdict.FORWARD) throw new Error(`seeding failed on ${hex(copy)}`);
    return copy;
  };
  const payload = Buffer.from('state intact');
  const live = [
    go(udpPacket({ src: A, dst: R, srcPort: 40000, dstPort: 53, payload })),
    go(udpPacket({ src: R, dst: PUB, srcPort: 53, dstPort: 40000, payload })),
    go(tcpPacket({ src: B, dst: R, srcPort: 40001, dstPort: 80, seq: 1, ack: 0, flags: SYN, mss: 1460 })),
    go(tcpPacket({ src: R, dst: PUB, srcPort: 80, dstPort: 40001, seq: 9, ack: 2, flags: SYN | ACK })),
    go(tcpPacket({ src: B, dst: R, srcPort: 40001, dstPort: 80, seq: 2, ack: 10, flags: ACK, payload })),
    go(icmpEcho({ src: A, dst: R, type: 8, identifier: 7, sequence: 1, payload })),
    go(tcpPacket({ src: R, dst: PUB, srcPort: 5555, dstPort: 8080, seq: 1, ack: 0, flags: SYN })),
  ];
  // Replies from inside and errors quoting live flows, as extra seeds for the mutations.
  live.push(icmpEcho({ src: R, dst: PUB, type: 0, identifier: 7, sequence: 1 }));
  live.push(tcpPacket({ src: B, dst: R, srcPort: 80, dstPort: 5555, seq: 1, ack: 2, flags: SYN | ACK }));
  const outUdp = udpPacket({ src: PUB, dst: R, srcPort: 40000, dstPort: 53, payload });
  live.push(icmpError({ src: R, dst: PUB, type: 3, code: 3, quoted: outUdp }));
  return { nat, live };
}

/** Everything about the flows and mappings a dropped packet must not change (fragments aside). */
function digest(nat: Translator): string {
  const t = nat.flows;
  const parts: number[] = [t.size, nat.mappings.size];
  for (const p of [1, 6, 17]) parts.push(nat.mappings.pool(p)?.used ?? -1);
  for (let f = 0; f < t.capacity; f++) {
    if (!t.isInUse(f)) continue;
    parts.push(f, t.proto[f]!, t.flags[f]!, t.state[f]!, t.detail[f]!, t.expires[f]!, t.mapping[f]!, t.mapping2[f]!);
    for (const e of [f * 2, f * 2 + 1]) parts.push(t.tSrc[e]!, t.tDst[e]!, t.tSport[e]!, t.tDport[e]!, t.packets[e]!, t.bytes[e]!);
  }
  for (let m = 0; m < nat.mappings.capacity; m++) parts.push(nat.mappings.refs[m]!);
  return parts.join(',');
}

/** A view of `target` that records every index read or written outside [lo, hi). */
function guard(target: Uint8Array, lo: number, hi: number, log: string[]): Uint8Array {
  const check = (k: string | symbol, op: string): number | null => {
    if (typeof k !== 'string' || k === '') return null;
    const i = Number(k);
    if (!Number.isInteger(i)) return null;
    if (i < lo || i >= hi) log.push(`${op} [${i}] outside [${lo}, ${hi})`);
    return i;
  };
  return new Proxy(target, {
    get(t, k) {
      const i = check(k, 'read');
      if (i !== null) return t[i];
      const v: unknown = Reflect.get(t, k, t);
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
    },
    set(t, k, v: number) {
      const i = check(k, 'write');
      if (i !== null) t[i] = v;
      else Reflect.set(t, k, v, t);
      return true;
    },
  });
}

describe('hostile input leaves the translator intact', () => {
  it.each([
    ['a table with room', 64],
    ['a full table', 4],
  ])(`%s: ${ITERATIONS} mutated real packets at random offsets: no throw, no stray access, drops change nothing`, (_name, maxFlows) => {
    const rng = new Rng(0x5eed);
    const book: AddressBook = {
      lan: [A, B],
      remotes: [R, addr('203.0.113.2')],
      publicIp: PUB,
      odd: ['0.0.0.0', '255.255.255.255', '127.0.0.1', '192.168.1.255'].map(addr),
      ports: [0, 53, 80, 7, 8080, 40000, 40001, 5555, 20000, 65535],
    };
    let { nat, live } = seeded(maxFlows);
    expect(nat.flows.size).toBe(4);
    const seeds = [...fixturePackets(), ...live];
    const verdicts = [0, 0, 0];
    for (let i = 0; i < ITERATIONS; i++) {
      let pkt = mutate(rng, Buffer.from(rng.pick(seeds)), book, 1 + rng.int(4));
      if (rng.chance(0.8)) fixIpChecksum(pkt);
      if (rng.chance(0.5)) fixL4Checksum(pkt);
      if (rng.chance(0.05)) pkt = rng.bytes(rng.int(70));
      const before = rng.int(24);
      const after = rng.int(24);
      const raw = rng.bytes(before + pkt.length + after);
      pkt.copy(raw, before);
      const len = rng.chance(0.1) ? rng.int(pkt.length + after + 1) : pkt.length;
      const input = Buffer.from(raw);
      const state = digest(nat);
      const log: string[] = [];
      const where = `iteration ${i}, packet ${hex(raw.subarray(before, before + len))}`;
      let verdict: number;
      try {
        verdict = nat.process(guard(raw, before, before + len, log), before, len, NOW);
      } catch (err) {
        throw new Error(`${where}: threw ${(err as Error).stack}`);
      }
      expect([Verdict.FORWARD, Verdict.DROP, Verdict.HELD], where).toContain(verdict);
      verdicts[verdict]!++;
      expect(log, where).toEqual([]);
      expect(raw.subarray(0, before).equals(input.subarray(0, before)), `${where}: bytes before the packet changed`).toBe(true);
      expect(raw.subarray(before + len).equals(input.subarray(before + len)), `${where}: bytes after the packet changed`).toBe(true);
      const inPkt = input.subarray(before, before + len);
      if (verdict === Verdict.DROP) {
        expect(raw.subarray(before, before + len).equals(inPkt), `${where}: a dropped packet was modified`).toBe(true);
        // A drop changes nothing (fragments excepted: a stray fragment is held or remembered by design).
        if (!(looksLikeIpv4(inPkt) && isFragment(inPkt))) expect(digest(nat), `${where}: a drop changed the state`).toBe(state);
      } else if (verdict === Verdict.FORWARD) {
        expect(checkForwarded({ before: inPkt, after: raw.subarray(before, before + len), verdict, partial: false, isInternal, publicIp: PUB }), where).toEqual([]);
      }
      if (verdict !== Verdict.DROP) ({ nat, live } = seeded(maxFlows)); // back to the seeded state for the next input
    }
    // The mutations reach all three verdicts.
    expect(verdicts.every((n) => n > 0), `verdicts ${verdicts}`).toBe(true);
  });
});
