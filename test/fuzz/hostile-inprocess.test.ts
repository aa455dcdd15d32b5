/**
 * The hostile-traffic catalogue of the reliability work, in process and exact: each kind of bad packet
 * the namespace tests (test/e2e/hostile-*.test.ts) send from a LAN host or from the internet, here
 * fed straight to the translator next to a live established connection, with the verdict, the drop
 * reason or path, and "the established connection still works, with the same public port" asserted.
 * Figures for docs/reliability.md come from the same cases.
 */
import { beforeEach, describe, expect, it } from 'vitest';
import { DROP_REASON_NAMES, PATH_NAMES, Translator, Verdict, type NatOptions } from '../../src/nat/translator.js';
import { icmpEcho, icmpError, tcpPacket, udpPacket } from '../../src/wire/build.js';
import { TCP_FLAGS } from '../../src/wire/tcp.js';
import { HOST_A, HOST_B, PUB, REMOTE, checkAllChecksums, ip, makeNat, parse } from '../nat/helpers.js';
import { checkDrained, checkState, leaks } from './lib/invariants.js';
import {
  IP, IP_OPTION_SAMPLES, evenCuts, fitTotalLength, fixIpChecksum, fragment, l4ChecksumValid, withIpOptions, wr16,
} from './lib/packets.js';

const SYN = TCP_FLAGS.SYN, ACK = TCP_FLAGS.ACK, FIN = TCP_FLAGS.FIN, RST = TCP_FLAGS.RST, PSH = TCP_FLAGS.PSH, URG = TCP_FLAGS.URG;
const payload = Buffer.from('hostile traffic');
const isInternal = (a: number): boolean => a >>> 8 === ip('192.168.1.0') >>> 8;
const OTHER = ip('198.51.100.66');

interface Outcome {
  verdict: 'forward' | 'drop' | 'held';
  /** Drop reason name, or path name when forwarded. */
  why: string;
}

function run(nat: Translator, p: Buffer, now = 1000): Outcome {
  const v = nat.process(p, 0, p.length, now);
  const verdict = v === Verdict.FORWARD ? 'forward' : v === Verdict.DROP ? 'drop' : 'held';
  const why = v === Verdict.DROP ? DROP_REASON_NAMES[nat.lastDrop] ?? '?' : v === Verdict.FORWARD ? PATH_NAMES[nat.lastPath] ?? 'fragment' : 'held';
  if (v === Verdict.FORWARD) expect(leaks(p, isInternal, PUB)).toEqual([]);
  return { verdict, why };
}

/** An established TCP connection HOST_A:33000 ↔ REMOTE:443 and its public port; `ping` proves it still works. */
function established(nat: Translator): { port: number; ping(now?: number): void } {
  const syn = tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 33000, dstPort: 443, seq: 1, ack: 0, flags: SYN, mss: 1460 });
  expect(run(nat, syn, 0)).toEqual({ verdict: 'forward', why: 'outbound' });
  const port = parse(syn).sport;
  expect(run(nat, tcpPacket({ src: REMOTE, dst: PUB, srcPort: 443, dstPort: port, seq: 7, ack: 2, flags: SYN | ACK }), 0).verdict).toBe('forward');
  expect(run(nat, tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 33000, dstPort: 443, seq: 2, ack: 8, flags: ACK }), 0).verdict).toBe('forward');
  return {
    port,
    ping(now = 2000) {
      const out = tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 33000, dstPort: 443, seq: 2, ack: 8, flags: ACK | PSH, payload });
      expect(run(nat, out, now)).toEqual({ verdict: 'forward', why: 'outbound' });
      expect(parse(out)).toMatchObject({ src: PUB, sport: port });
      checkAllChecksums(out);
      const back = tcpPacket({ src: REMOTE, dst: PUB, srcPort: 443, dstPort: port, seq: 8, ack: 2 + payload.length, flags: ACK | PSH, payload });
      expect(run(nat, back, now)).toEqual({ verdict: 'forward', why: 'inbound' });
      expect(parse(back)).toMatchObject({ dst: HOST_A, dport: 33000 });
      checkAllChecksums(back);
    },
  };
}

const snapshot = (nat: Translator): string => JSON.stringify([nat.flows.size, nat.mappings.size, nat.mappings.pool(17)!.used, nat.mappings.pool(6)!.used]);

describe('hostile packets, one kind at a time, next to a live connection', () => {
  let nat: Translator;
  let conn: ReturnType<typeof established>;
  beforeEach(() => {
    nat = makeNat({ forwards: [{ protocol: 6, publicPort: 8080, address: HOST_B, port: 80 }] });
    conn = established(nat);
  });

  const udpOut = (o: Partial<Parameters<typeof udpPacket>[0]> = {}): Buffer => udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 5000, dstPort: 53, payload, ...o });

  const cases: { name: string; from: 'lan' | 'wan'; make: () => Buffer; want: Outcome; state: 'intact' | 'changed' }[] = [
    // Truncated and inconsistent headers.
    { name: 'IPv4 header cut at 12 bytes', from: 'lan', make: () => udpOut().subarray(0, 12), want: { verdict: 'drop', why: 'malformed' }, state: 'intact' },
    { name: 'total length beyond the bytes read', from: 'lan', make: () => udpOut().subarray(0, 30), want: { verdict: 'drop', why: 'malformed' }, state: 'intact' },
    { name: 'IHL 15 in a 36-byte packet', from: 'lan', make: () => { const p = udpOut(); p[0] = 0x4f; fixIpChecksum(p); return p; }, want: { verdict: 'drop', why: 'malformed' }, state: 'intact' },
    { name: 'IHL 4', from: 'wan', make: () => { const p = udpPacket({ src: REMOTE, dst: PUB, srcPort: 1, dstPort: 2, payload }); p[0] = 0x44; return p; }, want: { verdict: 'drop', why: 'malformed' }, state: 'intact' },
    { name: 'UDP length larger than the datagram', from: 'lan', make: () => { const p = udpOut(); wr16(p, 24, 500); return p; }, want: { verdict: 'drop', why: 'malformed' }, state: 'intact' },
    { name: 'UDP header cut (IP payload of 4 bytes)', from: 'lan', make: () => { const p = Buffer.from(udpOut().subarray(0, 24)); fitTotalLength(p); fixIpChecksum(p); return p; }, want: { verdict: 'drop', why: 'malformed' }, state: 'intact' },
    { name: 'TCP data offset 15 in a 20-byte segment', from: 'wan', make: () => { const p = tcpPacket({ src: REMOTE, dst: PUB, srcPort: 443, dstPort: conn.port, seq: 1, ack: 1, flags: ACK }); p[32] = 0xf0; return p; }, want: { verdict: 'drop', why: 'malformed' }, state: 'intact' },
    { name: 'TCP data offset 2', from: 'lan', make: () => { const p = tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 33000, dstPort: 443, seq: 1, ack: 1, flags: ACK }); p[32] = 0x20; return p; }, want: { verdict: 'drop', why: 'malformed' }, state: 'intact' },
    { name: 'ICMP message of 4 bytes', from: 'wan', make: () => { const p = Buffer.from(icmpEcho({ src: REMOTE, dst: PUB, type: 0, identifier: 1, sequence: 1 }).subarray(0, 24)); fitTotalLength(p); fixIpChecksum(p); return p; }, want: { verdict: 'drop', why: 'malformed' }, state: 'intact' },
    { name: 'IPv6 packet on the IPv4 TUN', from: 'lan', make: () => { const p = Buffer.alloc(48); p[0] = 0x60; return p; }, want: { verdict: 'drop', why: 'unsupported-protocol' }, state: 'intact' },
    // Bad checksums: ICMP errors are checked (RFC 5508 REQ-3); TCP/UDP are not, and stay bad (below).
    { name: 'ICMP error with a bad ICMP checksum', from: 'wan', make: () => { const p = icmpError({ src: OTHER, dst: PUB, type: 3, code: 3, quoted: tcpPacket({ src: PUB, dst: REMOTE, srcPort: conn.port, dstPort: 443, seq: 1, ack: 1, flags: ACK }) }); p[22] = p[22]! ^ 0xff; return p; }, want: { verdict: 'drop', why: 'checksum' }, state: 'intact' },
    { name: 'ICMP error whose quoted IP header checksum is wrong', from: 'wan', make: () => {
      const q = tcpPacket({ src: PUB, dst: REMOTE, srcPort: conn.port, dstPort: 443, seq: 1, ack: 1, flags: ACK });
      q[10] = q[10]! ^ 0x55;
      return icmpError({ src: OTHER, dst: PUB, type: 3, code: 3, quoted: q });
    }, want: { verdict: 'drop', why: 'checksum' }, state: 'intact' },
    // Odd TCP flag sets: never open a flow, never move one.
    { name: 'SYN+FIN from the LAN', from: 'lan', make: () => tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 33001, dstPort: 80, seq: 1, ack: 0, flags: SYN | FIN }), want: { verdict: 'drop', why: 'tcp-flags' }, state: 'intact' },
    { name: 'SYN+RST from the LAN', from: 'lan', make: () => tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 33001, dstPort: 80, seq: 1, ack: 0, flags: SYN | RST }), want: { verdict: 'drop', why: 'tcp-flags' }, state: 'intact' },
    { name: 'null scan (no flags) from the LAN', from: 'lan', make: () => tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 33001, dstPort: 80, seq: 1, ack: 0, flags: 0 }), want: { verdict: 'drop', why: 'tcp-flags' }, state: 'intact' },
    { name: 'Xmas scan (FIN+PSH+URG) to the public address', from: 'wan', make: () => tcpPacket({ src: OTHER, dst: PUB, srcPort: 1, dstPort: 45000, seq: 1, ack: 0, flags: FIN | PSH | URG }), want: { verdict: 'drop', why: 'tcp-flags' }, state: 'intact' },
    { name: 'SYN+FIN on the established connection', from: 'wan', make: () => tcpPacket({ src: REMOTE, dst: PUB, srcPort: 443, dstPort: conn.port, seq: 1, ack: 0, flags: SYN | FIN }), want: { verdict: 'drop', why: 'tcp-flags' }, state: 'intact' },
    { name: 'bare FIN (no ACK) on the established connection', from: 'lan', make: () => tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 33000, dstPort: 443, seq: 1, ack: 0, flags: FIN }), want: { verdict: 'drop', why: 'tcp-flags' }, state: 'intact' },
    { name: 'ACK with no connection, from the LAN', from: 'lan', make: () => tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 33002, dstPort: 80, seq: 1, ack: 1, flags: ACK }), want: { verdict: 'drop', why: 'no-mapping' }, state: 'intact' },
    // Zero ports.
    { name: 'UDP to the public address, port 0', from: 'wan', make: () => udpPacket({ src: OTHER, dst: PUB, srcPort: 9, dstPort: 0, payload }), want: { verdict: 'forward', why: 'local' }, state: 'intact' },
    { name: 'UDP from port 0 to a NAT port without a mapping', from: 'wan', make: () => udpPacket({ src: OTHER, dst: PUB, srcPort: 0, dstPort: 45000, payload }), want: { verdict: 'drop', why: 'no-mapping' }, state: 'intact' },
    { name: 'UDP from the LAN with source port 0 (gets a real public port)', from: 'lan', make: () => udpOut({ srcPort: 0 }), want: { verdict: 'forward', why: 'outbound' }, state: 'changed' },
    // IP options are carried, and the translation stays correct.
    { name: 'UDP with record-route options', from: 'lan', make: () => withIpOptions(udpOut(), IP_OPTION_SAMPLES[0]!), want: { verdict: 'forward', why: 'outbound' }, state: 'changed' },
    { name: 'TCP data with a timestamp option on the connection', from: 'lan', make: () => withIpOptions(tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 33000, dstPort: 443, seq: 2, ack: 8, flags: ACK, payload }), IP_OPTION_SAMPLES[2]!), want: { verdict: 'forward', why: 'outbound' }, state: 'changed' },
    // TTL 0/1: the gateway's kernel enforces TTL before the TUN; tunnat gives back the hop it costs.
    { name: 'TTL 0 from the LAN', from: 'lan', make: () => udpOut({ ttl: 0 }), want: { verdict: 'forward', why: 'outbound' }, state: 'changed' },
    { name: 'TTL 1 reply from the WAN', from: 'wan', make: () => tcpPacket({ src: REMOTE, dst: PUB, srcPort: 443, dstPort: conn.port, seq: 8, ack: 2, flags: ACK, ttl: 1 }), want: { verdict: 'forward', why: 'inbound' }, state: 'changed' },
    // Other IP protocols.
    // GRE, ESP, IPv6-in-IPv4: translated by address only (a flow of their own).
    ...[47, 50, 41].map((proto) => ({
      name: `IP protocol ${proto} from the LAN`,
      from: 'lan' as const,
      make: () => { const p = udpOut(); p[IP.PROTO] = proto; fixIpChecksum(p); return p; },
      want: { verdict: 'forward' as const, why: 'outbound' },
      state: 'changed' as const,
    })),
    // A UDP header labelled SCTP: no valid chunk follows (and its "CRC32c" is whatever the bytes say): refused.
    { name: 'IP protocol 132 (SCTP) from the LAN with a UDP header', from: 'lan', make: () => { const p = udpOut(); p[IP.PROTO] = 132; fixIpChecksum(p); return p; }, want: { verdict: 'drop', why: 'malformed' }, state: 'intact' },
    { name: 'GRE to the public address (the gateway\'s own)', from: 'wan', make: () => { const p = udpPacket({ src: OTHER, dst: PUB, srcPort: 1, dstPort: 2, payload }); p[IP.PROTO] = 47; fixIpChecksum(p); return p; }, want: { verdict: 'forward', why: 'local' }, state: 'intact' },
    // Unsolicited packets to the public address.
    { name: 'UDP to a NAT port nobody mapped', from: 'wan', make: () => udpPacket({ src: OTHER, dst: PUB, srcPort: 53, dstPort: 45000, payload }), want: { verdict: 'drop', why: 'no-mapping' }, state: 'intact' },
    { name: 'TCP SYN to a NAT port nobody mapped', from: 'wan', make: () => tcpPacket({ src: OTHER, dst: PUB, srcPort: 1, dstPort: 45000, seq: 1, ack: 0, flags: SYN }), want: { verdict: 'drop', why: 'no-mapping' }, state: 'intact' },
    { name: 'TCP SYN from a stranger to the connection\'s public port', from: 'wan', make: () => tcpPacket({ src: OTHER, dst: PUB, srcPort: 443, dstPort: conn.port, seq: 1, ack: 0, flags: SYN }), want: { verdict: 'drop', why: 'filtered' }, state: 'intact' },
    { name: 'stray ACK to a NAT port', from: 'wan', make: () => tcpPacket({ src: OTHER, dst: PUB, srcPort: 443, dstPort: 45001, seq: 1, ack: 1, flags: ACK }), want: { verdict: 'drop', why: 'no-mapping' }, state: 'intact' },
    { name: 'stray RST from a stranger to the connection\'s public port', from: 'wan', make: () => tcpPacket({ src: OTHER, dst: PUB, srcPort: 443, dstPort: conn.port, seq: 1, ack: 1, flags: RST }), want: { verdict: 'drop', why: 'no-mapping' }, state: 'intact' },
    { name: 'echo reply nobody asked for (the gateway\'s)', from: 'wan', make: () => icmpEcho({ src: OTHER, dst: PUB, type: 0, identifier: 4242, sequence: 1 }), want: { verdict: 'forward', why: 'local' }, state: 'intact' },
    // Spoofed ICMP errors.
    { name: 'ICMP error quoting an invented flow, from the WAN (the gateway\'s to judge)', from: 'wan', make: () => icmpError({ src: OTHER, dst: PUB, type: 3, code: 3, quoted: udpPacket({ src: PUB, dst: REMOTE, srcPort: 45002, dstPort: 53, payload }) }), want: { verdict: 'forward', why: 'local' }, state: 'intact' },
    { name: 'ICMP error quoting an invented flow, from the LAN', from: 'lan', make: () => icmpError({ src: HOST_A, dst: REMOTE, type: 3, code: 3, quoted: udpPacket({ src: REMOTE, dst: HOST_A, srcPort: 53, dstPort: 45002, payload }) }), want: { verdict: 'drop', why: 'no-mapping' }, state: 'intact' },
    { name: 'ICMP error quoting the real connection (translated; errors never touch a flow)', from: 'wan', make: () => icmpError({ src: OTHER, dst: PUB, type: 3, code: 1, quoted: tcpPacket({ src: PUB, dst: REMOTE, srcPort: conn.port, dstPort: 443, seq: 2, ack: 8, flags: ACK }) }), want: { verdict: 'forward', why: 'inbound' }, state: 'intact' },
    { name: 'ICMP error quoting an ICMP error', from: 'wan', make: () => icmpError({ src: OTHER, dst: PUB, type: 3, code: 3, quoted: icmpError({ src: PUB, dst: REMOTE, type: 3, code: 3, quoted: udpOut() }) }), want: { verdict: 'forward', why: 'local' }, state: 'intact' },
    { name: 'an ICMP error cut into fragments', from: 'wan', make: () => { const e = icmpError({ src: OTHER, dst: PUB, type: 3, code: 3, quoted: udpOut({ payload: Buffer.alloc(200) }) }); return fragment(e, [64])[0]!; }, want: { verdict: 'drop', why: 'fragment' }, state: 'intact' },
    // Addresses that are nobody's.
    { name: 'LAN to LAN through the TUN', from: 'lan', make: () => udpOut({ dst: HOST_B }), want: { verdict: 'drop', why: 'not-ours' }, state: 'intact' },
    { name: 'WAN to a LAN address directly', from: 'wan', make: () => udpPacket({ src: OTHER, dst: HOST_A, srcPort: 1, dstPort: 2, payload }), want: { verdict: 'drop', why: 'not-ours' }, state: 'intact' },
    { name: 'WAN to another outside address', from: 'wan', make: () => udpPacket({ src: OTHER, dst: REMOTE, srcPort: 1, dstPort: 2, payload }), want: { verdict: 'drop', why: 'not-ours' }, state: 'intact' },
  ];

  it.each(cases)('$from: $name → $want.verdict ($want.why)', (c) => {
    const before = snapshot(nat);
    const drops = nat.stats.drops.reduce((a, b) => a + b, 0);
    const p = c.make();
    expect(run(nat, p)).toEqual(c.want);
    if (c.want.verdict === 'drop') expect(nat.stats.drops.reduce((a, b) => a + b, 0)).toBe(drops + 1);
    if (c.state === 'intact') expect(snapshot(nat)).toBe(before);
    if (c.want.verdict === 'forward' && c.want.why !== 'local') checkAllChecksums(p);
    expect(checkState(nat)).toEqual([]);
    conn.ping();
  });

  it('bad TCP/UDP checksums are not verified, and are not repaired either: the packet stays bad', () => {
    // The receiver's stack drops it; a NAT that recomputed checksums would launder corrupted data.
    for (const p of [udpOut({ srcPort: 5100 }), tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 33000, dstPort: 443, seq: 2, ack: 8, flags: ACK, payload })]) {
      p[p.length - 1] = p[p.length - 1]! ^ 0x5a;
      expect(l4ChecksumValid(p)).toBe(false);
      expect(run(nat, p).verdict).toBe('forward');
      expect(l4ChecksumValid(p)).toBe(false);
    }
    conn.ping();
  });

  it('overlapping and stray fragments: overlaps dropped, strays held within bounds and expired', () => {
    const big = udpOut({ srcPort: 5200, payload: Buffer.alloc(600, 1) });
    const frags = fragment(big, evenCuts(608, 200));
    expect(frags.length).toBe(4);
    // A stray middle fragment waits for its first; a copy shifted by 8 bytes overlaps it.
    expect(run(nat, Buffer.from(frags[1]!)).verdict).toBe('held');
    const overlap = Buffer.from(frags[1]!);
    wr16(overlap, IP.FRAG, 0x2000 | (200 / 8 + 1));
    fixIpChecksum(overlap);
    expect(run(nat, overlap)).toEqual({ verdict: 'drop', why: 'fragment' });
    expect(nat.fragments.stats.overlaps).toBe(1);
    // Strays of 50 other datagrams: held while they fit, then dropped; all gone after the timeout.
    for (let i = 0; i < 50; i++) {
      const f = fragment(udpOut({ srcPort: 6000 + i, payload: Buffer.alloc(300, i) }), [160])[1]!;
      wr16(f, IP.ID, 1000 + i);
      fixIpChecksum(f);
      run(nat, f);
    }
    expect(nat.fragments.heldBytes).toBeLessThanOrEqual(nat.fragments.limits.maxHeldBytes);
    expect(nat.fragments.size).toBeLessThanOrEqual(nat.fragments.limits.maxDatagrams);
    nat.sweep(1000 + nat.fragments.limits.timeoutMs + 1, 16);
    expect(nat.fragments.size).toBe(0);
    expect(nat.fragments.heldBytes).toBe(0);
    conn.ping(1000 + nat.fragments.limits.timeoutMs + 2);
  });

  it('a spoofed ICMP error about the live connection is translated but never removes or refreshes it', () => {
    const f = nat.flows.lookup(6, HOST_A, REMOTE, 33000, 443, 0) >> 1;
    const expires = nat.flows.expires[f];
    const state = nat.flows.state[f];
    const err = icmpError({ src: OTHER, dst: PUB, type: 3, code: 1, quoted: tcpPacket({ src: PUB, dst: REMOTE, srcPort: conn.port, dstPort: 443, seq: 2, ack: 8, flags: ACK }) });
    expect(run(nat, err, 5000)).toEqual({ verdict: 'forward', why: 'inbound' });
    expect(parse(err).dst).toBe(HOST_A);
    expect(nat.flows.expires[f]).toBe(expires);
    expect(nat.flows.state[f]).toBe(state);
    checkAllChecksums(err);
    conn.ping();
  });
});

describe('floods past --max-flows and port exhaustion', () => {
  const small = (over: Partial<NatOptions> = {}): Translator => makeNat({ maxFlows: 64, ports: [40000, 40031], excludedPorts: [], ...over });

  it('a flood of new flows evicts unreplied ones, never the established connection; the rest are table-full', () => {
    const nat = small({ ports: [1024, 65535], excludedPorts: [[20000, 29999]] });
    const conn = established(nat);
    let forwarded = 0;
    for (let i = 0; i < 2000; i++) {
      const p = udpPacket({ src: ip(`192.168.1.${20 + (i % 200)}`), dst: REMOTE, srcPort: 10000 + i, dstPort: 53, payload });
      if (run(nat, p, 1000 + i).verdict === 'forward') forwarded++;
    }
    expect(nat.flows.size).toBeLessThanOrEqual(64);
    expect(nat.stats.flowsRemoved['early-drop']).toBeGreaterThan(1900);
    expect(forwarded).toBe(2000); // unassured flows make room for each other
    conn.ping(4000);
    // Once every slot holds an assured flow (a UDP stream: replied, then more than a query's worth of
    // packets), new flows are refused as table-full.
    const full = small({ ports: [1024, 65535], excludedPorts: [[20000, 29999]] });
    const c2 = established(full);
    for (let i = 0; i < 63; i++) {
      const mk = () => udpPacket({ src: HOST_B, dst: REMOTE, srcPort: 10000 + i, dstPort: 53, payload });
      const out = mk();
      run(full, out);
      run(full, udpPacket({ src: REMOTE, dst: PUB, srcPort: 53, dstPort: parse(out).sport, payload }));
      for (let k = 0; k < 4; k++) run(full, mk());
    }
    expect(full.flows.size).toBe(64);
    expect(run(full, udpPacket({ src: HOST_B, dst: REMOTE, srcPort: 30000, dstPort: 53, payload }))).toEqual({ verdict: 'drop', why: 'table-full' });
    c2.ping();
    expect(checkState(full)).toEqual([]);
  });

  it('port exhaustion: unanswered queries give up their ports; then new endpoints are refused as ports-exhausted with rate-limited ICMP, old ones keep working', () => {
    // Room for two flows per port, so that a full table never early-drops one of a pair below.
    const nat = small({ maxFlows: 128 });
    const conn = established(nat);
    const outcomes: Record<string, number> = {};
    for (let i = 0; i < 200; i++) {
      const o = run(nat, udpPacket({ src: HOST_B, dst: REMOTE, srcPort: 10000 + i, dstPort: 53, payload }), 1000);
      outcomes[o.why] = (outcomes[o.why] ?? 0) + 1;
    }
    // 32 UDP ports (the connection's port is from the TCP pool): the first 32 endpoints get one, each later
    // one reclaims the port of an unanswered query (port-reclaim.ts).
    expect(outcomes).toEqual({ outbound: 200 });
    expect(nat.stats.portsReclaimed).toBe(168);
    expect(nat.mappings.pool(17)!.used).toBe(32);
    // Give every mapping left a second flow: a mapping two flows share is never reclaimed.
    const holders = [...nat.flows.flows()].filter((f) => nat.flows.proto[f] === 17).map((f) => nat.flows.tSport[f * 2]!);
    expect(holders).toHaveLength(32);
    for (const port of holders) expect(run(nat, udpPacket({ src: HOST_B, dst: OTHER, srcPort: port, dstPort: 53, payload })).verdict).toBe('forward');
    for (let i = 0; i < 20; i++) {
      const o = run(nat, udpPacket({ src: HOST_B, dst: REMOTE, srcPort: 11000 + i, dstPort: 53, payload }), 1000);
      outcomes[o.why] = (outcomes[o.why] ?? 0) + 1;
    }
    expect(outcomes).toEqual({ outbound: 200, 'ports-exhausted': 20 });
    expect(nat.stats.portsReclaimed).toBe(168);
    // No sink here: every refusal's ICMP 3/13 is counted as suppressed rather than sent.
    expect(nat.stats.generatedSuppressed).toBe(20);
    conn.ping();
    // An endpoint that already has a mapping still opens flows to new destinations (endpoint-independent).
    expect(run(nat, udpPacket({ src: HOST_B, dst: ip('198.51.100.99'), srcPort: holders[0]!, dstPort: 53, payload })).verdict).toBe('forward');
    // Every timeout passes: ports come back.
    nat.sweep(1e10, nat.flows.capacity);
    expect(checkDrained(nat)).toEqual([]);
  });
});
