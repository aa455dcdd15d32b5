/**
 * Seeded mutation fuzz over the scapy fixtures: random byte flips, length-field rewrites,
 * truncations and extensions at random buffer offsets. wrap() must never throw; after an OK
 * verdict every accessor and setter must stay inside the bytes the verdict vouched for (checked
 * by a Proxy that records any index outside them); a failed wrap must leave the view as it was;
 * parsing must not write; incremental setters must keep a valid checksum valid.
 */
import { describe, expect, it } from 'vitest';
import { IcmpVerdict, IcmpView } from '../../src/wire/icmp.js';
import { IPPROTO, Ipv4Verdict, Ipv4View } from '../../src/wire/ipv4.js';
import { TcpVerdict, TcpView } from '../../src/wire/tcp.js';
import { UdpVerdict, UdpView } from '../../src/wire/udp.js';
import { PACKETS, bytesOf, prng, type Rng } from '../fixtures/wire/fixtures.js';

const ITERATIONS_PER_FIXTURE = 250;

/** A Uint8Array stand-in that logs every index read or written outside [lo, hi). */
function guard(target: Uint8Array, lo: number, hi: number, log: string[], what: string): Uint8Array {
  const check = (k: string | symbol, op: string): number | null => {
    if (typeof k !== 'string') return null;
    const i = Number(k);
    if (!Number.isInteger(i) || k === '') return null;
    if (i < lo || i >= hi) log.push(`${what}: ${op} [${i}] outside [${lo}, ${hi})`);
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

const INTERESTING = [0x00, 0xff, 0x40, 0x45, 0x4f, 0x44, 0x46, 0x50, 0xf0, 0x05, 0x14, 0x7f, 0x80, 0x01, 0x02, 0x04, 0x08];

/** Mutates a copy of the packet inside a larger random buffer; returns the buffer, offset and claimed length. */
function mutate(rng: Rng, pkt: Buffer): { buf: Uint8Array; off: number; len: number } {
  const before = rng.int(16);
  const after = rng.int(16);
  const buf = new Uint8Array(before + pkt.length + after);
  for (let i = 0; i < buf.length; i++) buf[i] = rng.int(256);
  buf.set(pkt, before);
  let len = pkt.length;
  const rounds = 1 + rng.int(4);
  for (let r = 0; r < rounds; r++) {
    // Mostly hit the first 60 bytes, where every header and length field lives.
    const at = before + (rng.int(4) === 0 ? rng.int(pkt.length) : rng.int(Math.min(60, pkt.length)));
    switch (rng.int(7)) {
      case 0:
        buf[at] = rng.int(256);
        break;
      case 1:
        buf[at] = INTERESTING[rng.int(INTERESTING.length)]!;
        break;
      case 2:
        buf[at] = buf[at]! ^ (1 << rng.int(8));
        break;
      case 3: {
        // A length field of some layer: IP total length, UDP length, a quoted total length.
        const f = [2, 24, 30, 38][rng.int(4)]!;
        if (before + f + 1 < buf.length) {
          const v = [0, 7, 8, 19, 20, 0xffff, pkt.length, pkt.length + 1, rng.u16()][rng.int(9)]!;
          buf[before + f] = v >>> 8;
          buf[before + f + 1] = v & 0xff;
        }
        break;
      }
      case 4:
        len = rng.int(len + 1);
        break;
      case 5: {
        // In a TCP header: NOPs from the options start to a random point, then an option whose
        // length may run past the header end, so the option walk meets every edge.
        const tcpAt = before + (pkt[0]! & 0x0f) * 4;
        if (pkt[9] !== 6 || tcpAt + 20 >= buf.length) break;
        const tcpEnd = Math.min(tcpAt + (buf[tcpAt + 12]! >>> 4) * 4, buf.length);
        if (tcpEnd <= tcpAt + 20) break;
        const p = tcpAt + 20 + rng.int(tcpEnd - tcpAt - 20);
        buf.fill(1, tcpAt + 20, p);
        buf[p] = [0, 2, 2, 2, 3, 8][rng.int(6)]!;
        if (p + 1 < buf.length) buf[p + 1] = [0, 1, 2, 3, 4, 4, 4, 10, 40][rng.int(9)]!;
        break;
      }
      default:
        len = Math.min(len + rng.int(after + 1), buf.length - before);
    }
  }
  return { buf, off: before, len };
}

interface Views {
  ip: Ipv4View;
  inner: Ipv4View;
  udp: UdpView;
  tcp: TcpView;
  icmp: IcmpView;
}

const inRange = (x: number, lo: number, hi: number): boolean => Number.isInteger(x) && x >= lo && x <= hi;

/** Reads everything readable; returns a digest of what it read (to compare across repeats). */
function readAll(v: Views, raw: Uint8Array, off: number, len: number, log: string[]): number[] {
  const out: number[] = [];
  const [oldBuf, oldOff, oldHlen, oldTlen] = [v.ip.buf, v.ip.off, v.ip.headerLength, v.ip.totalLength];
  const verdict = v.ip.wrap(guard(raw, off, off + len, log, 'ipv4'), off, len);
  out.push(verdict);
  expect(Object.values(Ipv4Verdict)).toContain(verdict);
  if (verdict !== Ipv4Verdict.OK) {
    // Identity, not deep equality: deep equality would read the guarded buffer out of bounds.
    expect(v.ip.buf === oldBuf).toBe(true);
    expect([v.ip.off, v.ip.headerLength, v.ip.totalLength]).toEqual([oldOff, oldHlen, oldTlen]);
    return out;
  }
  const ip = v.ip;
  expect(ip.version).toBe(4);
  expect(inRange(ip.headerLength, 20, 60)).toBe(true);
  expect(inRange(ip.totalLength, ip.headerLength, len)).toBe(true);
  expect(ip.payloadOffset).toBe(off + ip.headerLength);
  expect(ip.payloadOffset + ip.payloadLength).toBeLessThanOrEqual(off + len);
  for (const x of [ip.dscpEcn, ip.ttl, ip.protocol]) expect(inRange(x, 0, 255)).toBe(true);
  for (const x of [ip.identification, ip.headerChecksum]) expect(inRange(x, 0, 0xffff)).toBe(true);
  expect(inRange(ip.fragmentOffset, 0, 0x1fff)).toBe(true);
  for (const x of [ip.sourceAddress, ip.destinationAddress]) expect(inRange(x, 0, 0xffffffff)).toBe(true);
  out.push(ip.sourceAddress, ip.destinationAddress, ip.protocol, Number(ip.verifyChecksum()), Number(ip.isFragment));

  // Every L4 view on the payload, whatever the protocol byte says: more paths for the same bytes.
  const pOff = ip.payloadOffset;
  const pLen = ip.payloadLength;
  const l4 = guard(raw, pOff, pOff + pLen, log, 'l4');
  const src = ip.sourceAddress;
  const dst = ip.destinationAddress;

  const uv = v.udp.wrap(l4, pOff, pLen);
  out.push(uv);
  if (uv === UdpVerdict.OK) {
    const u = v.udp;
    expect(inRange(u.length, 8, pLen)).toBe(true);
    expect(u.dataOffset + u.dataLength).toBeLessThanOrEqual(pOff + pLen);
    expect(inRange(u.computeChecksum(src, dst), 1, 0xffff)).toBe(true);
    out.push(u.sourcePort, u.destinationPort, u.checksum, Number(u.verifyChecksum(src, dst)));
  } else {
    expect(uv === UdpVerdict.TRUNCATED || uv === UdpVerdict.BAD_LENGTH).toBe(true);
  }

  const tv = v.tcp.wrap(l4, pOff, pLen);
  out.push(tv);
  if (tv === TcpVerdict.OK) {
    const t = v.tcp;
    expect(inRange(t.headerLength, 20, Math.min(60, pLen))).toBe(true);
    expect(t.segmentLength).toBe(pLen);
    expect(t.payloadOffset + t.payloadLength).toBe(pOff + pLen);
    for (const x of [t.sequenceNumber, t.acknowledgmentNumber]) expect(inRange(x, 0, 0xffffffff)).toBe(true);
    expect(inRange(t.computeChecksum(src, dst), 0, 0xffff)).toBe(true);
    out.push(t.sourcePort, t.destinationPort, t.flags, t.window, t.urgentPointer, Number(t.verifyChecksum(src, dst)));
    // Options must be parsed from the header alone: rewrap on exactly the header bytes.
    const hdrOnly = guard(raw, pOff, pOff + t.headerLength, log, 'tcp options');
    expect(t.wrap(hdrOnly, pOff, t.headerLength)).toBe(TcpVerdict.OK);
    const mssAt = t.mssOptionOffset();
    if (mssAt >= 0) expect(inRange(mssAt, pOff + 22, pOff + t.headerLength - 2)).toBe(true);
    out.push(t.mssOption());
    t.wrap(l4, pOff, pLen);
  } else {
    expect(tv === TcpVerdict.TRUNCATED || tv === TcpVerdict.BAD_DATA_OFFSET).toBe(true);
  }

  const mv = v.icmp.wrap(l4, pOff, pLen);
  out.push(mv);
  if (mv === IcmpVerdict.OK) {
    const m = v.icmp;
    out.push(m.type, m.code, m.identifier, m.sequence, m.nextHopMtu, Number(m.verifyChecksum()));
    expect(m.isQuery && m.isError).toBe(false);
    if (m.isError) {
      const q = guard(raw, m.innerOffset, m.innerOffset + m.innerLength, log, 'quoted');
      const iv = v.inner.wrapQuoted(q, m.innerOffset, m.innerLength);
      out.push(iv);
      if (iv === Ipv4Verdict.OK) {
        const inner = v.inner;
        expect(inner.payloadOffset + inner.payloadLength).toBeLessThanOrEqual(m.innerOffset + m.innerLength);
        expect(inRange(inner.payloadLength, 0, inner.totalLength - inner.headerLength)).toBe(true);
        out.push(inner.sourceAddress, inner.destinationAddress, Number(inner.verifyChecksum()), Number(inner.truncated));
      }
    }
  } else {
    expect(mv).toBe(IcmpVerdict.TRUNCATED);
  }
  return out;
}

/** Applies the incremental setters for the packet's protocol; a valid checksum must stay valid. */
function rewriteAll(v: Views, rng: Rng): void {
  const ip = v.ip;
  const ipOk = ip.verifyChecksum();
  const src = ip.sourceAddress;
  const dst = ip.destinationAddress;
  // readAll leaves an L4 view on this packet only if it wrapped OK; otherwise its buf is empty.
  const udp = ip.protocol === IPPROTO.UDP && v.udp.buf.length > 0 && v.udp.verifyChecksum(src, dst);
  const tcp = ip.protocol === IPPROTO.TCP && v.tcp.buf.length > 0 && v.tcp.verifyChecksum(src, dst);
  const icmp = ip.protocol === IPPROTO.ICMP && v.icmp.buf.length > 0 && v.icmp.verifyChecksum();
  const newSrc = rng.u32();
  ip.setSourceAddressWithChecksum(newSrc);
  ip.setTtlWithChecksum(rng.int(256));
  expect(ip.verifyChecksum()).toBe(ipOk);
  if (udp) {
    v.udp.updateChecksumForAddressChange(src, newSrc);
    v.udp.setSourcePortWithChecksum(rng.u16());
    expect(v.udp.verifyChecksum(newSrc, dst)).toBe(true);
  }
  if (tcp) {
    v.tcp.updateChecksumForAddressChange(src, newSrc);
    v.tcp.setDestinationPortWithChecksum(rng.u16());
    v.tcp.setMssOptionWithChecksum(rng.u16());
    expect(v.tcp.verifyChecksum(newSrc, dst)).toBe(true);
  }
  if (icmp) {
    v.icmp.setIdentifierWithChecksum(rng.u16());
    expect(v.icmp.verifyChecksum()).toBe(true);
  }
}

describe('mutation fuzz over the fixtures', () => {
  it.each(PACKETS.map((p, i) => [p.name, p, i] as const))('%s: wrap never throws, accessors stay in bounds', (_n, p, seed) => {
    const rng = prng(0xf0220 + seed);
    const views: Views = { ip: new Ipv4View(), inner: new Ipv4View(), udp: new UdpView(), tcp: new TcpView(), icmp: new IcmpView() };
    const pkt = bytesOf(p);
    const verdicts = new Set<number>();
    for (let i = 0; i < ITERATIONS_PER_FIXTURE; i++) {
      const { buf, off, len } = mutate(rng, pkt);
      const snapshot = Uint8Array.from(buf);
      const log: string[] = [];
      const first = readAll(views, buf, off, len, log);
      verdicts.add(first[0]!);
      expect(log, `iteration ${i}`).toEqual([]);
      // Parsing wrote nothing, and reading twice gives the same answers.
      expect(Buffer.from(buf).equals(Buffer.from(snapshot))).toBe(true);
      expect(readAll(views, buf, off, len, log)).toEqual(first);
      if (first[0] === Ipv4Verdict.OK) {
        rewriteAll(views, rng);
        expect(log, `iteration ${i} (setters)`).toEqual([]);
        for (let j = 0; j < off; j++) expect(buf[j]).toBe(snapshot[j]);
        for (let j = off + len; j < buf.length; j++) expect(buf[j]).toBe(snapshot[j]);
      }
      // Fresh L4 views, so one left over from an earlier packet is never taken for this one's.
      views.udp = new UdpView();
      views.tcp = new TcpView();
      views.icmp = new IcmpView();
    }
    // The mutations reach both the OK path and at least one rejection.
    expect(verdicts.has(Ipv4Verdict.OK)).toBe(true);
    expect(verdicts.size).toBeGreaterThan(1);
  });

  it('all verdicts of every view are reached across the corpus', () => {
    const rng = prng(7);
    const seen = { ip: new Set<number>(), udp: new Set<number>(), tcp: new Set<number>(), icmp: new Set<number>(), inner: new Set<number>() };
    const v: Views = { ip: new Ipv4View(), inner: new Ipv4View(), udp: new UdpView(), tcp: new TcpView(), icmp: new IcmpView() };
    for (let i = 0; i < 4000; i++) {
      const p = PACKETS[rng.int(PACKETS.length)]!;
      const { buf, off, len } = mutate(rng, bytesOf(p));
      const ipv = v.ip.wrap(buf, off, len);
      seen.ip.add(ipv);
      if (ipv !== Ipv4Verdict.OK) continue;
      seen.udp.add(v.udp.wrap(buf, v.ip.payloadOffset, v.ip.payloadLength));
      seen.tcp.add(v.tcp.wrap(buf, v.ip.payloadOffset, v.ip.payloadLength));
      const mv = v.icmp.wrap(buf, v.ip.payloadOffset, v.ip.payloadLength);
      seen.icmp.add(mv);
      if (mv === IcmpVerdict.OK) seen.inner.add(v.inner.wrapQuoted(buf, v.icmp.innerOffset, v.icmp.innerLength));
    }
    expect([...seen.ip].sort()).toEqual(Object.values(Ipv4Verdict).sort());
    expect([...seen.udp].sort()).toEqual(Object.values(UdpVerdict).sort());
    expect([...seen.tcp].sort()).toEqual(Object.values(TcpVerdict).sort());
    expect([...seen.icmp].sort()).toEqual(Object.values(IcmpVerdict).sort());
    expect(seen.inner.has(Ipv4Verdict.OK)).toBe(true);
  });
});
