import { describe, it, expect } from 'vitest';
import { udpPacket, tcpPacket, icmpEcho } from '../../src/wire/build.js';
import { TCP_FLAGS } from '../../src/wire/tcp.js';
import { parsePacketFilter } from '../../src/observe/filter.js';
import type { TraceMessage, TraceRecord } from '../../src/observe/trace.js';
import { formatTrace } from '../../src/observe/trace-format.js';
import type { FlowEvent } from '../../src/observe/events.js';
import { formatEvent } from '../../src/observe/events.js';
import { observed, HOST_A, HOST_B, REMOTE, PUB } from './helpers.js';
import { FakeTun } from '../../src/tun/fake.js';
import { Dataplane } from '../../src/dataplane/loop.js';
import { Observatory } from '../../src/observe/observatory.js';
import { VNET_HDR_LEN, VNET_F, VNET_GSO, writeVnetHeader } from '../../src/dataplane/vnet.js';
import { fold16, pseudoHeaderSum } from '../../src/wire/checksum.js';
import { createLogger } from '../../src/util/log.js';
import { makeNat } from '../nat/helpers.js';

const payload = Buffer.from('trace me');

function records(msgs: TraceMessage[]): TraceRecord[] {
  return msgs.flatMap((m) => (m.type === 'packet' ? [m.record] : []));
}

describe('the packet trace', () => {
  it('costs nothing until someone subscribes, and gives the loop its tap back afterwards', () => {
    const o = observed();
    expect(o.loop.tap).toBeNull();
    const observersBefore = o.nat.observers.length;
    const off = o.obs.tracer.subscribe(parsePacketFilter([]), 10, () => {});
    expect(o.loop.tap).not.toBeNull();
    off();
    expect(o.loop.tap).toBeNull();
    expect(o.nat.observers.length).toBe(observersBefore);
  });

  it('explains a new outbound flow and its reply: tuples, port choice, fields and checksums', () => {
    const o = observed();
    const got: TraceMessage[] = [];
    o.obs.tracer.subscribe(parsePacketFilter(['udp', 'host', '192.168.1.10']), 100, (m) => got.push(m));
    const [out] = o.run(udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40000, dstPort: 7, payload, ttl: 63 }));
    const publicPort = out!.readUInt16BE(20);
    o.run(udpPacket({ src: REMOTE, dst: PUB, srcPort: 7, dstPort: publicPort, payload, ttl: 63 }));
    const [first, reply] = records(got);
    expect(first).toMatchObject({
      verdict: 'forward',
      path: 'outbound',
      drop: null,
      before: { protocol: 'udp', src: '192.168.1.10', dst: '203.0.113.2', srcPort: 40000, dstPort: 7, ttl: 63 },
      after: { src: '203.0.113.1', srcPort: 40000, ttl: 64 },
      // Port 7 is well-known: an unanswered query has the query timer (30 s), not the 300 s of udp.
      flow: { matched: 'original', created: true, state: 'UNREPLIED', secondsLeft: 30 },
      port: { decision: 'preserved', insidePort: 40000, publicPort: 40000, publicAddress: '203.0.113.1' },
      checksumsVerified: true,
    });
    const fields = first!.changes.map((c) => c.field);
    expect(fields).toEqual(['ip.ttl', 'ip.src', 'ip.checksum', 'udp.checksum']);
    expect(first!.changes[1]).toEqual({ field: 'ip.src', from: '192.168.1.10', to: '203.0.113.1' });

    expect(reply).toMatchObject({
      path: 'inbound',
      // One query and its answer: replied, not (yet) a stream, so not assured.
      flow: { matched: 'reply', created: false, state: 'REPLIED' },
      port: null,
      after: { dst: '192.168.1.10', dstPort: 40000 },
      checksumsVerified: true,
    });
    const text = formatTrace(reply!).join('\n');
    expect(text).toContain('matched by its reply tuple 203.0.113.2:7 → 203.0.113.1:40000');
    expect(text).toContain('goes back to 192.168.1.10:40000');
    expect(text).toContain('ip.dst 203.0.113.1 → 192.168.1.10');
    expect(text).toContain('every checksum recomputed in full matches');
  });

  it('says why a port was remapped, and shows TCP state changes', () => {
    const o = observed();
    const got: TraceMessage[] = [];
    o.obs.tracer.subscribe(parsePacketFilter(['tcp']), 100, (m) => got.push(m));
    o.run(tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40001, dstPort: 80, seq: 1, ack: 0, flags: TCP_FLAGS.SYN }));
    const [synB] = o.run(tcpPacket({ src: HOST_B, dst: REMOTE, srcPort: 40001, dstPort: 80, seq: 1, ack: 0, flags: TCP_FLAGS.SYN }));
    const portB = synB!.readUInt16BE(20);
    o.run(tcpPacket({ src: REMOTE, dst: PUB, srcPort: 80, dstPort: portB, seq: 9, ack: 2, flags: TCP_FLAGS.SYN | TCP_FLAGS.ACK }));
    const [a, b, synack] = records(got);
    expect(a!.flow).toMatchObject({ created: true, stateBefore: 'NONE', state: 'SYN_SENT' });
    expect(b!.port).toMatchObject({ decision: 'remapped', insidePort: 40001 });
    expect(b!.port!.why).toContain('port 40001 on 203.0.113.1 is already mapped to 192.168.1.10:40001');
    expect(b!.port!.publicPort % 2).toBe(1);
    expect(synack!.flow).toMatchObject({ stateBefore: 'SYN_SENT', state: 'SYN_RECV', matched: 'reply' });
    expect(formatTrace(synack!).join('\n')).toContain('state SYN_SENT → SYN_RECV');
  });

  it('names the state a UDP flow had before its first reply (UNREPLIED), not a TCP state', () => {
    const o = observed();
    const got: TraceMessage[] = [];
    o.obs.tracer.subscribe(parsePacketFilter(['udp']), 100, (m) => got.push(m));
    const [out] = o.run(udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40010, dstPort: 53, payload }));
    o.run(udpPacket({ src: REMOTE, dst: PUB, srcPort: 53, dstPort: out!.readUInt16BE(20), payload }));
    o.run(udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40010, dstPort: 53, payload }));
    const [first, reply, again] = records(got);
    expect(first!.flow).toMatchObject({ created: true, state: 'UNREPLIED', stateBefore: null });
    expect(reply!.flow).toMatchObject({ state: 'REPLIED', stateBefore: 'UNREPLIED' });
    expect(again!.flow).toMatchObject({ state: 'REPLIED', stateBefore: null });
    const text = formatTrace(reply!).join('\n');
    expect(text).toContain('state UNREPLIED → REPLIED;');
    expect(text).not.toContain('NONE');
  });

  it('shows drops with their reason', () => {
    const o = observed();
    const got: TraceMessage[] = [];
    o.obs.tracer.subscribe(parsePacketFilter([]), 100, (m) => got.push(m));
    o.run(tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40002, dstPort: 80, seq: 1, ack: 1, flags: TCP_FLAGS.ACK }));
    const [r] = records(got);
    expect(r).toMatchObject({ verdict: 'drop', drop: 'no-mapping', after: null, checksumsVerified: null });
    expect(formatTrace(r!).join('\n')).toMatch(/DROP \(no-mapping\)[\s\S]*no flow or mapping matches/);
  });

  it('is rate-bounded per subscriber and reports what it did not show', () => {
    const o = observed({ batch: 64 });
    const slow: TraceMessage[] = [];
    const fast: TraceMessage[] = [];
    o.obs.tracer.subscribe(parsePacketFilter(['icmp']), 2, (m) => slow.push(m));
    o.obs.tracer.subscribe(parsePacketFilter(['icmp']), 100, (m) => fast.push(m));
    const pings = Array.from({ length: 10 }, (_, i) => icmpEcho({ src: HOST_A, dst: REMOTE, type: 8, identifier: 77, sequence: i }));
    expect(o.run(...pings)).toHaveLength(10);
    expect(records(slow)).toHaveLength(2);
    expect(records(fast)).toHaveLength(10);
    // The same record object serves both subscribers (built once per packet).
    expect(records(slow)[0]).toBe(records(fast)[0]);
    o.obs.tracer.flushSuppressed();
    expect(slow.at(-1)).toEqual({ type: 'suppressed', count: 8 });
    // A second later the bucket has refilled.
    o.advance(1000);
    o.run(icmpEcho({ src: HOST_A, dst: REMOTE, type: 8, identifier: 77, sequence: 11 }));
    expect(records(slow)).toHaveLength(3);
  });
});

describe('the trace with TUN offloads', () => {
  it('checks a partial checksum as the pseudo-header sum and counts the segments of a superpacket', () => {
    const tun = new FakeTun({ vnetHdr: true });
    const nat = makeNat();
    const loop = new Dataplane(tun, nat, { batch: 4, slotSize: 65536 + VNET_HDR_LEN, vnetHdr: true, clock: () => 5 });
    const obs = new Observatory(nat, loop, { log: createLogger('error', () => {}), clock: () => 5 });
    const got: TraceMessage[] = [];
    obs.tracer.subscribe(parsePacketFilter([]), 100, (m) => got.push(m));
    const pkt = tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40100, dstPort: 80, seq: 1, ack: 0, flags: TCP_FLAGS.SYN });
    const syn = Buffer.alloc(VNET_HDR_LEN + pkt.length);
    writeVnetHeader(syn, 0, { flags: VNET_F.NEEDS_CSUM, csumStart: 20, csumOffset: 16 });
    pkt.writeUInt16BE(fold16(pseudoHeaderSum(pkt.readUInt32BE(12), pkt.readUInt32BE(16), 6, pkt.length - 20)), 36);
    pkt.copy(syn, VNET_HDR_LEN);
    tun.inject(syn);
    // A 20 000-byte superpacket on the same flow (the handshake is not finished; it still translates).
    const big = tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40100, dstPort: 80, seq: 2, ack: 0, flags: TCP_FLAGS.ACK, payload: Buffer.alloc(20000, 1) });
    big.writeUInt16BE(fold16(pseudoHeaderSum(big.readUInt32BE(12), big.readUInt32BE(16), 6, big.length - 20)), 36);
    const gso = Buffer.alloc(VNET_HDR_LEN + big.length);
    writeVnetHeader(gso, 0, { flags: VNET_F.NEEDS_CSUM, gsoType: VNET_GSO.TCPV4, gsoSize: 1448, hdrLen: 40, csumStart: 20, csumOffset: 16 });
    big.copy(gso, VNET_HDR_LEN);
    tun.inject(gso);
    loop.runBatch();
    const [a, b] = records(got);
    expect(a).toMatchObject({ verdict: 'forward', checksumPartial: true, checksumsVerified: true, segments: 1 });
    expect(b).toMatchObject({ checksumPartial: true, checksumsVerified: true, segments: Math.ceil(20000 / 1448) });
    const text = formatTrace(b!).join('\n');
    expect(text).toContain('the tcp checksum is partial');
    expect(text).toContain(`one superpacket standing for ${Math.ceil(20000 / 1448)} wire packets`);
  });
});

describe('flow events (conntrack -E)', () => {
  it('NEW, UPDATE and DESTROY, filtered, and detached when the last listener leaves', () => {
    const o = observed();
    const all: FlowEvent[] = [];
    const udpOnly: FlowEvent[] = [];
    const observers = o.nat.observers.length;
    const offAll = o.obs.events.subscribe({}, (e) => all.push(e));
    const offUdp = o.obs.events.subscribe({ proto: 'udp' }, (e) => udpOnly.push(e));
    expect(o.nat.observers.length).toBe(observers + 1);
    const [syn] = o.run(tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40003, dstPort: 80, seq: 1, ack: 0, flags: TCP_FLAGS.SYN }));
    o.run(tcpPacket({ src: REMOTE, dst: PUB, srcPort: 80, dstPort: syn!.readUInt16BE(20), seq: 9, ack: 2, flags: TCP_FLAGS.SYN | TCP_FLAGS.ACK }));
    o.run(udpPacket({ src: HOST_B, dst: REMOTE, srcPort: 5353, dstPort: 53, payload }));
    o.advance(10_000 * 1000);
    o.nat.sweep(o.clock(), 10_000);
    expect(all.map((e) => `${e.type} ${e.flow.protocol} ${e.flow.state}${e.from ? ' from ' + e.from : ''}${e.reason ? ' ' + e.reason : ''}`)).toEqual([
      'new tcp SYN_SENT',
      'update tcp SYN_RECV from SYN_SENT',
      'new udp UNREPLIED',
      'destroy tcp SYN_RECV expired',
      'destroy udp UNREPLIED expired',
    ]);
    expect(all[0]!.flow.secondsLeft).toBe(240);
    expect(udpOnly.map((e) => e.type)).toEqual(['new', 'destroy']);
    expect(formatEvent(all[3]!)).toMatch(/^ *\[DESTROY\] tcp .*src=192\.168\.1\.10 .*\(expired\)$/);
    offAll();
    offUdp();
    expect(o.nat.observers.length).toBe(observers);
  });
});

describe('flow events carry the packet that caused them', () => {
  const line = (e: FlowEvent) => `${e.type} ${e.flow.state} ${e.flow.packets.original}/${e.flow.packets.reply} ${e.flow.bytes.original}/${e.flow.bytes.reply}`;

  it('TCP: NEW counts the SYN, each UPDATE the segment that moved the state', () => {
    const o = observed();
    const evs: FlowEvent[] = [];
    o.obs.events.subscribe({}, (e) => evs.push(e));
    const syn = tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40020, dstPort: 80, seq: 1, ack: 0, flags: TCP_FLAGS.SYN });
    const [out] = o.run(syn);
    const port = out!.readUInt16BE(20);
    const synack = tcpPacket({ src: REMOTE, dst: PUB, srcPort: 80, dstPort: port, seq: 9, ack: 2, flags: TCP_FLAGS.SYN | TCP_FLAGS.ACK, payload: Buffer.alloc(4) });
    o.run(synack);
    const ack = tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 40020, dstPort: 80, seq: 2, ack: 14, flags: TCP_FLAGS.ACK, payload });
    o.run(ack);
    expect(evs.map(line)).toEqual([
      `new SYN_SENT 1/0 ${syn.length}/0`,
      `update SYN_RECV 1/1 ${syn.length}/${synack.length}`,
      `update ESTABLISHED 2/1 ${syn.length + ack.length}/${synack.length}`,
    ]);
    // The last line agrees with the table after the packet.
    const listed = o.nat.flows;
    expect(evs.at(-1)!.flow.packets).toEqual({ original: listed.packets[evs.at(-1)!.flow.id * 2], reply: listed.packets[evs.at(-1)!.flow.id * 2 + 1] });
    expect(formatEvent(evs[0]!)).toMatch(new RegExp(`sport=40020 dport=80 packets=1 bytes=${syn.length} .* packets=0 bytes=0$`));
  });

  it('UDP: NEW with the first datagram, UPDATE UNREPLIED → REPLIED with the first reply (a query is not a stream)', () => {
    const o = observed();
    const evs: FlowEvent[] = [];
    o.obs.events.subscribe({ proto: 'udp' }, (e) => evs.push(e));
    const q = udpPacket({ src: HOST_B, dst: REMOTE, srcPort: 5300, dstPort: 53, payload });
    const [out] = o.run(q);
    const r = udpPacket({ src: REMOTE, dst: PUB, srcPort: 53, dstPort: out!.readUInt16BE(20), payload: Buffer.alloc(30) });
    o.run(r);
    o.run(udpPacket({ src: REMOTE, dst: PUB, srcPort: 53, dstPort: out!.readUInt16BE(20), payload }));
    expect(evs.map(line)).toEqual([`new UNREPLIED 1/0 ${q.length}/0`, `update REPLIED 1/1 ${q.length}/${r.length}`]);
    expect(evs[1]!.from).toBe('UNREPLIED');
    expect(evs[1]!.flow.secondsLeft).toBe(evs[0]!.flow.secondsLeft);
    expect(formatEvent(evs[1]!)).toMatch(/^ *\[UPDATE\] udp .* REPLIED .*\(was UNREPLIED\)$/);
  });
});
