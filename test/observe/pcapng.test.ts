import { describe, it, expect, afterAll } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { udpPacket, tcpPacket, icmpError, icmpEcho } from '../../src/wire/build.js';
import { TCP_FLAGS } from '../../src/wire/tcp.js';
import { PcapngWriter, SNAP_HEADERS } from '../../src/observe/pcapng.js';
import { PcapRelay, replayPcap } from '../../src/observe/pcap-relay.js';
import { headerBytes, UNPARSED_SNAP } from '../../src/observe/decode.js';
import { resolveConfig } from '../../src/config/resolve.js';
import { readdirSync, statSync } from 'node:fs';
import { observed, HOST_A, REMOTE } from './helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'tunnat-pcap-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Block {
  type: number;
  body: Buffer;
}

/** A minimal pcapng reader (little-endian sections only), independent of the writer. */
function blocks(file: Buffer): Block[] {
  const out: Block[] = [];
  let o = 0;
  while (o < file.length) {
    const type = file.readUInt32LE(o);
    const len = file.readUInt32LE(o + 4);
    expect(len % 4).toBe(0);
    expect(file.readUInt32LE(o + len - 4)).toBe(len);
    out.push({ type, body: file.subarray(o + 8, o + len - 4) });
    o += len;
  }
  return out;
}

function options(b: Buffer, start: number): Map<number, Buffer[]> {
  const m = new Map<number, Buffer[]>();
  let o = start;
  while (o + 4 <= b.length) {
    const code = b.readUInt16LE(o);
    const len = b.readUInt16LE(o + 2);
    if (code === 0) break;
    m.set(code, [...(m.get(code) ?? []), b.subarray(o + 4, o + 4 + len)]);
    o += 4 + ((len + 3) & ~3);
  }
  return m;
}

describe('pcapng writer (--pcap)', () => {
  it('records each packet as read and as written, on two interfaces, with drop reasons as comments', async () => {
    const o = observed();
    const file = join(dir, 'a.pcapng');
    expect(o.obs.startPcap(file)).toBe(true);
    expect(o.loop.tap).not.toBeNull();
    const udp = udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 41000, dstPort: 7, payload: Buffer.from('x'.repeat(101)) });
    const [out] = o.run(udp, tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 41001, dstPort: 80, seq: 1, ack: 1, flags: TCP_FLAGS.ACK }));
    await o.obs.close();
    expect(o.loop.tap).toBeNull();

    const bs = blocks(readFileSync(file));
    expect(bs.map((b) => b.type)).toEqual([0x0a0d0d0a, 1, 1, 6, 6, 6]);
    expect(bs[0]!.body.readUInt32LE(0)).toBe(0x1a2b3c4d);
    const names = bs.slice(1, 3).map((b) => {
      expect(b.body.readUInt16LE(0)).toBe(228); // LINKTYPE_IPV4
      return String(options(b.body, 8).get(2)![0]);
    });
    expect(names).toEqual(['faketun0:before', 'faketun0:after']);
    const epb = bs.slice(3).map((b) => {
      const caplen = b.body.readUInt32LE(12);
      const data = b.body.subarray(20, 20 + caplen);
      const opts = options(b.body, 20 + ((caplen + 3) & ~3));
      return { iface: b.body.readUInt32LE(0), data, comment: opts.get(1)?.map(String)[0] };
    });
    expect(epb[0]).toMatchObject({ iface: 0, comment: 'new flow 0, port preserved' });
    expect(epb[0]!.data.equals(udp)).toBe(true);
    expect(epb[1]!.iface).toBe(1);
    expect(epb[1]!.data.equals(out!)).toBe(true);
    expect(epb[2]).toMatchObject({ iface: 0, comment: 'dropped: no-mapping' });
    expect(o.obs.pcap()).toMatchObject({ packets: { before: 2, after: 1 }, dropped: 0 });

    // tcpdump reads it (when installed: CI installs it).
    if (existsSync('/usr/bin/tcpdump') || existsSync('/usr/sbin/tcpdump')) {
      const r = spawnSync('tcpdump', ['-nn', '-r', file], { encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      const lines = r.stdout.trim().split('\n');
      expect(lines).toHaveLength(3);
      expect(lines[0]).toContain('192.168.1.10.41000 > 203.0.113.2.7: UDP, length 101');
      expect(lines[1]).toContain('203.0.113.1.41000 > 203.0.113.2.7: UDP, length 101');
    }
  });

  it('refuses a file it cannot create with a clear message, and the router runs on without it', () => {
    expect(() => PcapngWriter.open(join(dir, 'no/such/dir/x.pcapng'))).toThrow(/cannot write the pcap file .*no\/such\/dir\/x\.pcapng: ENOENT/);
    const o = observed();
    expect(o.obs.startPcap(join(dir, 'missing-dir', 'x.pcapng'))).toBe(false);
    expect(o.lines.some((l) => l.includes('running without --pcap') && l.includes('"level":"error"'))).toBe(true);
    expect(o.loop.tap).toBeNull();
    expect(o.run(udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 1, dstPort: 7, payload: Buffer.from('ok') }))).toHaveLength(1);
  });

  it('keeps only the headers of each packet with snaplen "headers", and the first N bytes with N', async () => {
    const big = Buffer.alloc(1200, 0x61);
    const udp = udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 41100, dstPort: 7, payload: big });
    const tcp = tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 41101, dstPort: 80, seq: 1, ack: 0, flags: TCP_FLAGS.SYN, mss: 1460, payload: big });
    const captured = async (name: string, snaplen: number) => {
      const o = observed();
      const file = join(dir, name);
      expect(o.obs.startPcap(file, { snaplen })).toBe(true);
      o.run(udp, tcp);
      await o.obs.close();
      const bs = blocks(readFileSync(file));
      const idbSnap = bs[1]!.body.readUInt32LE(4);
      return {
        idbSnap,
        epb: bs.slice(3).map((b) => ({ caplen: b.body.readUInt32LE(12), len: b.body.readUInt32LE(16), data: b.body.subarray(20, 20 + b.body.readUInt32LE(12)) })),
      };
    };
    const h = await captured('headers.pcapng', SNAP_HEADERS);
    // UDP: 20 + 8; TCP with its MSS option: 20 + 24. The original length is kept.
    expect(h.epb.map((e) => [e.caplen, e.len])).toEqual([[28, udp.length], [28, udp.length], [44, tcp.length], [44, tcp.length]]);
    expect(h.epb[0]!.data.equals(udp.subarray(0, 28))).toBe(true);
    expect(h.idbSnap).toBe(0);
    const n = await captured('first96.pcapng', 96);
    expect(n.epb.map((e) => e.caplen)).toEqual([96, 96, 96, 96]);
    expect(n.idbSnap).toBe(96);
    if (existsSync('/usr/bin/tcpdump') || existsSync('/usr/sbin/tcpdump')) {
      const r = spawnSync('tcpdump', ['-nn', '-r', join(dir, 'headers.pcapng')], { encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout).toContain('192.168.1.10.41100 > 203.0.113.2.7: UDP, length 1200');
    }
  });

  it('rotates like tcpdump -C/-W: FILE is the newest, FILE.1 … the older ones, each a whole capture, at most N files', async () => {
    const o = observed({ batch: 64 });
    const file = join(dir, 'ring.pcapng');
    // Packets of 1228 bytes before and after: about 2500 bytes a packet, 8 packets per 20 000-byte file.
    const limit = 20_000;
    expect(o.obs.startPcap(file, { maxFileBytes: limit, files: 3 })).toBe(true);
    const payload = Buffer.alloc(1200, 0x62);
    for (let i = 0; i < 60; i++) o.run(udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 42000 + i, dstPort: 7, payload }));
    await o.obs.close();
    const w = o.obs.pcapWriter!;
    expect(w.rotations).toBeGreaterThanOrEqual(6);
    expect(w.dropped).toBe(0);
    const names = readdirSync(dir).filter((f) => f.startsWith('ring.pcapng')).sort();
    expect(names).toEqual(['ring.pcapng', 'ring.pcapng.1', 'ring.pcapng.2']);
    const ports: number[][] = [];
    for (const name of ['ring.pcapng.2', 'ring.pcapng.1', 'ring.pcapng']) {
      const buf = readFileSync(join(dir, name));
      expect(statSync(join(dir, name)).size).toBeLessThanOrEqual(limit);
      const bs = blocks(buf);
      // Each file stands alone: section header, both interfaces, then packets.
      expect(bs.slice(0, 3).map((b) => b.type)).toEqual([0x0a0d0d0a, 1, 1]);
      ports.push(bs.slice(3).filter((b) => b.body.readUInt32LE(0) === 0).map((b) => b.body.subarray(20).readUInt16BE(20)));
    }
    // Oldest to newest, in order, nothing lost between files, and the newest packet last in FILE.
    const all = ports.flat();
    expect(all).toEqual(Array.from({ length: all.length }, (_, i) => 42000 + 60 - all.length + i));
    expect(all.at(-1)).toBe(42059);
    if (existsSync('/usr/bin/tcpdump') || existsSync('/usr/sbin/tcpdump')) {
      for (const name of names) expect(spawnSync('tcpdump', ['-nn', '-r', join(dir, name)], { encoding: 'utf8' }).status).toBe(0);
    }
  });

  it('--pcap-snaplen, --pcap-size and --pcap-files: headers only, 100 MB, 10 files unless told', () => {
    const base = { internal: '192.168.1.0/24', external: 'wan0', pcap: '/tmp/x.pcapng' };
    expect(resolveConfig(base)).toMatchObject({ pcapSnaplen: 'headers', pcapSize: 100, pcapFiles: 10 });
    expect(resolveConfig({ ...base, pcapSnaplen: '0', pcapSize: '0', pcapFiles: '1' })).toMatchObject({ pcapSnaplen: 0, pcapSize: 0, pcapFiles: 1 });
    expect(resolveConfig({ ...base, pcapSnaplen: '128' }).pcapSnaplen).toBe(128);
    expect(() => resolveConfig({ ...base, pcapSnaplen: 'all' })).toThrow(/pcapSnaplen.*"headers" or bytes/);
    expect(() => resolveConfig({ ...base, pcapFiles: '0' })).toThrow(/pcapFiles/);
  });
});

describe('headerBytes (what --pcap-snaplen headers keeps)', () => {
  it('is the IP header and the transport header, options included; an ICMP error adds what it quotes', () => {
    const syn = tcpPacket({ src: HOST_A, dst: REMOTE, srcPort: 1, dstPort: 2, seq: 1, ack: 0, flags: TCP_FLAGS.SYN, mss: 1460, payload: Buffer.alloc(50) });
    expect(headerBytes(syn, 0, syn.length)).toBe(44);
    const ping = icmpEcho({ src: HOST_A, dst: REMOTE, type: 8, identifier: 7, sequence: 1, payload: Buffer.alloc(56) });
    expect(headerBytes(ping, 0, ping.length)).toBe(28);
    const err = icmpError({ src: REMOTE, dst: HOST_A, type: 3, code: 3, quoted: udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 5, dstPort: 6, payload: Buffer.alloc(100) }) });
    expect(headerBytes(err, 0, err.length)).toBe(20 + 8 + 20 + 8);
    // A later fragment: its IP header only. At an offset in a bigger buffer: relative to that offset.
    const frag = Buffer.from(udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 5, dstPort: 6, payload: Buffer.alloc(100) }));
    frag.writeUInt16BE(0x0010, 6);
    expect(headerBytes(frag, 0, frag.length)).toBe(20);
    const framed = Buffer.concat([Buffer.alloc(10), syn]);
    expect(headerBytes(framed, 10, syn.length)).toBe(44);
    // Never past the packet; something that is not IPv4: its first bytes.
    expect(headerBytes(syn, 0, 30)).toBe(30);
    expect(headerBytes(Buffer.alloc(300, 0x60), 0, 300)).toBe(UNPARSED_SNAP);
  });
});


describe('pcap relay (--pcap with several workers)', () => {
  it('a worker relays its packets, and the file the main thread writes equals the one a single loop writes', async () => {
    const direct = join(dir, 'direct.pcapng');
    const relayed = join(dir, 'relayed.pcapng');
    const o = observed();
    expect(o.obs.startPcap(direct, { snaplen: 60 })).toBe(true);
    const writer = PcapngWriter.open(relayed, { tunName: 'faketun0', snaplen: 60 });
    const chunks: Buffer[] = [];
    const relay = new PcapRelay(60, (c) => chunks.push(c));
    o.obs.taps.add(relay);
    const udp = udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 41000, dstPort: 7, payload: Buffer.from('x'.repeat(101)) });
    // Forwarded (a new flow, with its comment), and dropped (a truncated packet: a comment saying why).
    o.run(udp, Buffer.from(udp.subarray(0, 24)));
    relay.close();
    expect(chunks.length).toBe(1);
    for (const c of chunks) replayPcap(writer, c);
    await o.obs.close();
    await writer.close();
    expect(writer.packets).toEqual({ before: 2, after: 1 });
    const a = blocks(readFileSync(direct));
    const b = blocks(readFileSync(relayed));
    expect(b.length).toBe(a.length);
    // Section and interface headers, then the packets: byte for byte, times and comments included.
    for (let i = 0; i < a.length; i++) expect(b[i]!.body.equals(a[i]!.body), `block ${i}`).toBe(true);
  });
});
