import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it, expect } from 'vitest';
import { restoreSnapshot, takeSnapshot, writeSnapshot } from '../../src/nat/snapshot.js';
import { Verdict, DropReason, Path } from '../../src/nat/translator.js';
import { emitIpv4Header, icmpError } from '../../src/wire/build.js';
import { ICMP_TYPE, ICMP_UNREACH_CODE } from '../../src/wire/icmp.js';
import { internetChecksum, pseudoHeaderSum } from '../../src/wire/checksum.js';
import { crc32c, writeSctpChecksum } from '../../src/wire/crc32c.js';
import { EgressPolicy, parseEgress } from '../../src/nat/policy.js';
import { listFlows } from '../../src/conntrack/listing.js';
import { makeNat, checkAllChecksums, collectingSink, parse, ip, PUB, REMOTE, HOST_A, HOST_B } from './helpers.js';

const GRE = 47;
const ESP = 50;
const OTHER = ip('198.51.100.7');

/** An IPv4 packet of any protocol with an opaque payload. */
function raw(proto: number, src: number, dst: number, payload: Uint8Array = Buffer.from('0123456789abcdef'), frag = 0, id = 7): Buffer {
  const b = Buffer.alloc(20 + payload.length);
  emitIpv4Header(b, 0, { src, dst, protocol: proto, totalLength: b.length, id });
  if (frag !== 0) {
    b.writeUInt16BE(frag, 6);
    b.writeUInt16BE(0, 10);
    b.writeUInt16BE(internetChecksum(b, 0, 20), 10);
  }
  b.set(payload, 20);
  return b;
}

/** A valid SCTP (INIT chunk, CRC32c) or UDP-Lite (full coverage, checksum) header and payload for HOST_A → REMOTE. */
function udpLikeHeader(proto: number): Buffer {
  if (proto === 132) {
    const b = Buffer.alloc(20);
    b.writeUInt16BE(5000, 0);
    b.writeUInt16BE(80, 2);
    b[12] = 1;
    b.writeUInt16BE(8, 14);
    writeSctpChecksum(b, 0, crc32c(b, 0, b.length));
    return b;
  }
  const b = Buffer.alloc(12);
  b.writeUInt16BE(5000, 0);
  b.writeUInt16BE(80, 2);
  b.writeUInt16BE(internetChecksum(b, 0, 12, pseudoHeaderSum(HOST_A, REMOTE, 136, 12)) || 0xffff, 6);
  return b;
}

/** The quoted header's source, destination and protocol of an ICMP error (the quote is cut short). */
const quotedAddrs = (err: Buffer) => [err.readUInt32BE(28 + 12), err.readUInt32BE(28 + 16), err[28 + 9]];

describe('address-only NAT for protocols without a tracker (generic)', () => {
  it('translates GRE out with the public source and maps the reply back, payload untouched', () => {
    const nat = makeNat();
    const out = raw(GRE, HOST_A, REMOTE);
    const body = Buffer.from(out.subarray(20));
    expect(nat.process(out, 0, out.length, 0)).toBe(Verdict.FORWARD);
    checkAllChecksums(out);
    expect(parse(out)).toMatchObject({ src: PUB, dst: REMOTE, proto: GRE, ttl: 65 });
    expect(out.subarray(20)).toEqual(body);
    expect(nat.lastPath).toBe(Path.OUTBOUND);
    expect(nat.lastCreated).toBe(true);

    const back = raw(GRE, REMOTE, PUB);
    expect(nat.process(back, 0, back.length, 10)).toBe(Verdict.FORWARD);
    checkAllChecksums(back);
    expect(parse(back)).toMatchObject({ src: REMOTE, dst: HOST_A });
    expect(nat.lastPath).toBe(Path.INBOUND);

    const [f] = listFlows(nat.flows, 20);
    expect(f).toMatchObject({
      protocol: 'gre', state: 'REPLIED',
      original: { src: '192.168.1.10', dst: '203.0.113.2', srcPort: 0, dstPort: 0 },
      reply: { src: '203.0.113.2', dst: '203.0.113.1', srcPort: 0, dstPort: 0 },
      packets: { original: 1, reply: 1 },
    });
    // No public port is taken for an address-only flow.
    expect(nat.mappings.size).toBe(0);
  });

  it('an unknown protocol number (253) and ESP get the same treatment', () => {
    for (const proto of [253, ESP, 4]) {
      const nat = makeNat();
      const out = raw(proto, HOST_A, REMOTE);
      expect(nat.process(out, 0, out.length, 0)).toBe(Verdict.FORWARD);
      expect(parse(out).src).toBe(PUB);
      const back = raw(proto, REMOTE, PUB);
      expect(nat.process(back, 0, back.length, 1)).toBe(Verdict.FORWARD);
      expect(parse(back).dst).toBe(HOST_A);
    }
  });

  it('one LAN host per (protocol, remote address): a second host is refused as protocol-busy with ICMP 3/13', () => {
    const nat = makeNat();
    const sink = collectingSink();
    nat.sink = sink;
    const a = raw(GRE, HOST_A, REMOTE);
    expect(nat.process(a, 0, a.length, 0)).toBe(Verdict.FORWARD);
    const b = raw(GRE, HOST_B, REMOTE);
    const original = Buffer.from(b);
    expect(nat.process(b, 0, b.length, 1)).toBe(Verdict.DROP);
    expect(nat.lastDrop).toBe(DropReason.PROTOCOL_BUSY);
    expect(nat.stats.drops[DropReason.PROTOCOL_BUSY]).toBe(1);
    expect(sink.sent).toHaveLength(1);
    const err = sink.sent[0]!;
    checkAllChecksums(err);
    expect(parse(err)).toMatchObject({ src: REMOTE, dst: HOST_B, proto: 1 });
    expect([err[20], err[21]]).toEqual([ICMP_TYPE.DEST_UNREACH, ICMP_UNREACH_CODE.ADMIN_PROHIBITED]);
    expect(err.subarray(28, 28 + original.length)).toEqual(original);

    // Other remote, other protocol: free to host B.
    const c = raw(GRE, HOST_B, OTHER);
    expect(nat.process(c, 0, c.length, 2)).toBe(Verdict.FORWARD);
    const d = raw(ESP, HOST_B, REMOTE);
    expect(nat.process(d, 0, d.length, 3)).toBe(Verdict.FORWARD);
    // Host A's flow still gets its replies.
    const back = raw(GRE, REMOTE, PUB);
    nat.process(back, 0, back.length, 4);
    expect(parse(back).dst).toBe(HOST_A);
  });

  it('expires by the generic timeout (600 s by default), which is configurable; then the pair is free again', () => {
    const nat = makeNat();
    expect(nat.timeouts.generic).toBe(600);
    const a = raw(GRE, HOST_A, REMOTE);
    nat.process(a, 0, a.length, 0);
    const early = raw(GRE, HOST_B, REMOTE);
    expect(nat.process(early, 0, early.length, 599_000)).toBe(Verdict.DROP);
    const late = raw(GRE, HOST_B, REMOTE);
    expect(nat.process(late, 0, late.length, 600_001)).toBe(Verdict.FORWARD);
    expect(nat.flows.size).toBe(1);
    expect(nat.flowsOfHost(HOST_A)).toBe(0);

    const short = makeNat({ timeouts: { ...nat.timeouts, generic: 5 } });
    const s = raw(GRE, HOST_A, REMOTE);
    short.process(s, 0, s.length, 0);
    expect(short.sweep(5_001, 1024)).toBe(1);
    expect(short.flows.size).toBe(0);
  });

  it('an unsolicited packet from outside goes to the gateway; a hairpin to the public address has nobody to reach', () => {
    const nat = makeNat();
    const p = raw(GRE, REMOTE, PUB);
    expect(nat.process(p, 0, p.length, 0)).toBe(Verdict.FORWARD);
    expect(nat.lastPath).toBe(Path.LOCAL);
    expect(parse(p).dst).toBe(PUB);
    const h = raw(GRE, HOST_A, PUB);
    expect(nat.process(h, 0, h.length, 0)).toBe(Verdict.DROP);
    expect(nat.lastDrop).toBe(DropReason.NO_MAPPING);
    expect(nat.flows.size).toBe(0);
  });

  it('the egress policy and the host limit refuse with ICMP; the table full too', () => {
    const limited = makeNat({ maxFlowsPerHost: 1 });
    const sink = collectingSink();
    limited.sink = sink;
    const a = raw(GRE, HOST_A, REMOTE);
    limited.process(a, 0, a.length, 0);
    const b = raw(GRE, HOST_A, OTHER);
    expect(limited.process(b, 0, b.length, 0)).toBe(Verdict.DROP);
    expect(limited.lastDrop).toBe(DropReason.HOST_LIMIT);
    expect(sink.sent).toHaveLength(1);
    expect(limited.flowsOfHost(HOST_A)).toBe(1);

    const full = makeNat({ maxFlows: 1 });
    const fs = collectingSink();
    full.sink = fs;
    const x = raw(GRE, HOST_A, REMOTE);
    full.process(x, 0, x.length, 0);
    // Answer it, so the early drop may not take it.
    const xr = raw(GRE, REMOTE, PUB);
    full.process(xr, 0, xr.length, 0);
    const y = raw(GRE, HOST_B, OTHER);
    expect(full.process(y, 0, y.length, 0)).toBe(Verdict.DROP);
    expect(full.lastDrop).toBe(DropReason.TABLE_FULL);
    expect(fs.sent).toHaveLength(1);
  });

  it('an egress allowlist (which names no such protocol) refuses them: silently, or with ICMP 3/13 under --egress-reject', () => {
    for (const reject of [false, true]) {
      const nat = makeNat({ egress: new EgressPolicy(parseEgress('tcp:443,icmp')), egressReject: reject });
      const sink = collectingSink();
      nat.sink = sink;
      for (const proto of [GRE, 132, 136]) {
        const p = proto === 132 || proto === 136 ? raw(proto, HOST_A, REMOTE, udpLikeHeader(proto)) : raw(proto, HOST_A, REMOTE);
        expect(nat.process(p, 0, p.length, 0)).toBe(Verdict.DROP);
        expect(nat.lastDrop).toBe(DropReason.EGRESS_POLICY);
      }
      expect(sink.sent).toHaveLength(reject ? 3 : 0);
      for (const err of sink.sent) expect([err[20], err[21]]).toEqual([ICMP_TYPE.DEST_UNREACH, ICMP_UNREACH_CODE.ADMIN_PROHIBITED]);
    }
  });

  it('fragments: the first fragment opens the flow, a later one follows with the same addresses', () => {
    const nat = makeNat();
    const first = raw(GRE, HOST_A, REMOTE, Buffer.alloc(16, 1), 0x2000, 99); // MF
    expect(nat.process(first, 0, first.length, 0)).toBe(Verdict.FORWARD);
    expect(parse(first).src).toBe(PUB);
    const second = raw(GRE, HOST_A, REMOTE, Buffer.alloc(8, 2), 2, 99); // offset 16 bytes, last
    expect(nat.process(second, 0, second.length, 0)).toBe(Verdict.FORWARD);
    checkAllChecksums(second);
    expect(parse(second).src).toBe(PUB);
    expect(nat.flows.packets[0]).toBe(2); // flow 0's original direction counts both fragments
  });

  it('a later fragment of a refused datagram gets no ICMP (RFC 1122) and is dropped', () => {
    const nat = makeNat();
    const sink = collectingSink();
    nat.sink = sink;
    const a = raw(GRE, HOST_A, REMOTE);
    nat.process(a, 0, a.length, 0);
    const first = raw(GRE, HOST_B, REMOTE, Buffer.alloc(16, 1), 0x2000, 5);
    expect(nat.process(first, 0, first.length, 1)).toBe(Verdict.DROP);
    const later = raw(GRE, HOST_B, REMOTE, Buffer.alloc(8, 2), 2, 5);
    expect(nat.process(later, 0, later.length, 1)).toBe(Verdict.DROP);
    expect(nat.lastDrop).toBe(DropReason.FRAGMENT);
    expect(sink.sent).toHaveLength(1); // only about the first fragment
  });

  it('an ICMP error quoting a GRE packet is translated both ways (address-only quote)', () => {
    const nat = makeNat();
    const out = raw(GRE, HOST_A, REMOTE);
    nat.process(out, 0, out.length, 0);
    // A router on the way answers about the translated packet.
    const router = ip('198.51.100.1');
    const err = icmpError({ src: router, dst: PUB, type: ICMP_TYPE.DEST_UNREACH, code: ICMP_UNREACH_CODE.PROTO_UNREACH, quoted: out.subarray(0, 28) });
    expect(nat.process(err, 0, err.length, 1)).toBe(Verdict.FORWARD);
    checkAllChecksums(err);
    expect(parse(err)).toMatchObject({ src: router, dst: HOST_A });
    expect(quotedAddrs(err)).toEqual([HOST_A, REMOTE, GRE]);
    expect(nat.stats.icmpErrorsTranslated).toBe(1);

    // And the LAN host's error about a reply it got goes out with the public address in the quote.
    const back = raw(GRE, REMOTE, PUB);
    nat.process(back, 0, back.length, 2);
    const lanErr = icmpError({ src: HOST_A, dst: REMOTE, type: ICMP_TYPE.DEST_UNREACH, code: ICMP_UNREACH_CODE.PROTO_UNREACH, quoted: back.subarray(0, 28) });
    expect(nat.process(lanErr, 0, lanErr.length, 3)).toBe(Verdict.FORWARD);
    checkAllChecksums(lanErr);
    expect(parse(lanErr)).toMatchObject({ src: PUB, dst: REMOTE });
    expect(quotedAddrs(lanErr)).toEqual([REMOTE, PUB, GRE]);
    expect(internetChecksum(lanErr, 28, 20)).toBe(0);
  });
});

describe('a restart keeps address-only, SCTP and UDP-Lite flows (flow snapshot)', () => {
  it('saves and restores them with their tuples, and replies still map back', () => {
    const nat = makeNat();
    const g = raw(GRE, HOST_A, REMOTE);
    nat.process(g, 0, g.length, 0);
    const s = raw(132, HOST_B, REMOTE, udpLikeHeader(132));
    expect(nat.process(s, 0, s.length, 0)).toBe(Verdict.FORWARD);
    const dir = mkdtempSync(join(tmpdir(), 'tunnat-snap-'));
    try {
      const file = join(dir, 'flows.json');
      writeSnapshot(file, takeSnapshot(nat, ['192.168.1.0/24'], 1000));
      const next = makeNat();
      expect(restoreSnapshot(next, file, ['192.168.1.0/24'], 2000)).toMatchObject({ restored: 2, skipped: 0 });
      const back = raw(GRE, REMOTE, PUB);
      expect(next.process(back, 0, back.length, 3000)).toBe(Verdict.FORWARD);
      expect(parse(back).dst).toBe(HOST_A);
      // The pair is still taken after the restart.
      const busy = raw(GRE, HOST_B, REMOTE);
      expect(next.process(busy, 0, busy.length, 3000)).toBe(Verdict.DROP);
      expect(next.lastDrop).toBe(DropReason.PROTOCOL_BUSY);
      expect(listFlows(next.flows, 3000).map((f) => f.protocol).sort()).toEqual(['gre', 'sctp']);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('egress rules name every protocol', () => {
  it('allows what is listed by name or number, refuses ports on protocols without them', () => {
    const policy = new EgressPolicy(parseEgress('gre,esp@203.0.113.0/24,sctp:36412,udplite:*,253'));
    expect(policy.allows(GRE, REMOTE, 0)).toBe(true);
    expect(policy.allows(ESP, REMOTE, 0)).toBe(true);
    expect(policy.allows(ESP, OTHER, 0)).toBe(false);
    expect(policy.allows(132, REMOTE, 36412)).toBe(true);
    expect(policy.allows(132, REMOTE, 80)).toBe(false);
    expect(policy.allows(136, REMOTE, 9)).toBe(true);
    expect(policy.allows(253, REMOTE, 0)).toBe(true);
    expect(policy.allows(4, REMOTE, 0)).toBe(false);
    expect(() => parseEgress('gre:80')).toThrow(/gre has no ports/);
    expect(() => parseEgress('bogus')).toThrow(/unknown protocol/);
    expect(() => parseEgress('300')).toThrow(/unknown protocol/);

    const nat = makeNat({ egress: policy });
    const g = raw(GRE, HOST_A, REMOTE);
    expect(nat.process(g, 0, g.length, 0)).toBe(Verdict.FORWARD);
    const ipip = raw(4, HOST_A, REMOTE);
    expect(nat.process(ipip, 0, ipip.length, 0)).toBe(Verdict.DROP);
    expect(nat.lastDrop).toBe(DropReason.EGRESS_POLICY);
  });
});
