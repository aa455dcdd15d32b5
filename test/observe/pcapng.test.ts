import { describe, it, expect, afterAll } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { udpPacket, tcpPacket } from '../../src/wire/build.js';
import { TCP_FLAGS } from '../../src/wire/tcp.js';
import { PcapngWriter } from '../../src/observe/pcapng.js';
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
});
