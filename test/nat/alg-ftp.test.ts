import { describe, it, expect } from 'vitest';
import { tcpPacket } from '../../src/wire/build.js';
import { TCP_FLAGS } from '../../src/wire/tcp.js';
import { rd16, rd32 } from '../../src/wire/bytes.js';
import { fold16, pseudoHeaderSum } from '../../src/wire/checksum.js';
import { Verdict, type Translator } from '../../src/nat/translator.js';
import { enableFtpAlg, type FtpAlg } from '../../src/nat/alg-ftp.js';
import { FLOW_ALG, FLOW_EXPECTED } from '../../src/conntrack/table.js';
import { takeSnapshot, writeSnapshot, readSnapshot } from '../../src/nat/snapshot.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { makeNat, checkAllChecksums, ip, LAN, PUB, HOST_A, HOST_B } from './helpers.js';

const SYN = TCP_FLAGS.SYN;
const ACK = TCP_FLAGS.ACK;
const PSH = TCP_FLAGS.PSH;
const SERVER = ip('198.51.100.2');
const CLIENT_OUT = ip('198.51.100.3');
const NOW = 1000;

/** Run one packet through the translator in a 2 KiB slot; the packet as written back, or null if dropped. */
function run(nat: Translator, pkt: Buffer, partial = false): Buffer | null {
  const buf = Buffer.alloc(2048);
  pkt.copy(buf);
  const v = nat.process(buf, 0, pkt.length, NOW, partial);
  if (v !== Verdict.FORWARD) return null;
  return Buffer.from(buf.subarray(0, pkt.length + nat.lengthDelta));
}

const text = (s: string) => Buffer.from(s, 'latin1');
const payloadOf = (p: Buffer) => p.subarray(20 + ((p[32]! >> 4) << 2)).toString('latin1');
const seqOf = (p: Buffer) => rd32(p, 24);
const ackOf = (p: Buffer) => rd32(p, 28);

/** An outbound control connection HOST_A:40000 → SERVER:21, handshake done; returns the public port. */
function openOutbound(nat: Translator, host = HOST_A, sport = 40000): number {
  const syn = run(nat, tcpPacket({ src: host, dst: SERVER, srcPort: sport, dstPort: 21, seq: 1000, ack: 0, flags: SYN }))!;
  const ext = rd16(syn, 20);
  run(nat, tcpPacket({ src: SERVER, dst: PUB, srcPort: 21, dstPort: ext, seq: 5000, ack: 1001, flags: SYN | ACK }));
  run(nat, tcpPacket({ src: host, dst: SERVER, srcPort: sport, dstPort: 21, seq: 1001, ack: 5001, flags: ACK }));
  return ext;
}

function clientData(host: number, seq: number, ack: number, payload: string, sport = 40000): Buffer {
  return tcpPacket({ src: host, dst: SERVER, srcPort: sport, dstPort: 21, seq, ack, flags: ACK | PSH, payload: text(payload) });
}

function setup(opts: Parameters<typeof makeNat>[0] = {}, max?: number): { nat: Translator; alg: FtpAlg } {
  const nat = makeNat(opts);
  const alg = enableFtpAlg(nat, [21], max);
  return { nat, alg };
}

describe('FTP ALG: active mode (LAN client)', () => {
  it('marks the control connection and rewrites PORT to the public address and a mapped port', () => {
    const { nat, alg } = setup();
    openOutbound(nat);
    const out = run(nat, clientData(HOST_A, 1001, 5001, 'PORT 192,168,1,10,195,80\r\n'))!;
    expect(payloadOf(out)).toBe('PORT 203,0,113,1,195,80\r\n');
    expect(out.length).toBe(20 + 20 + 25);
    expect(rd16(out, 2)).toBe(out.length);
    checkAllChecksums(out);
    expect(nat.flows.flags[0]! & FLOW_ALG).toBe(FLOW_ALG);
    expect(alg.stats.rewrites).toBe(1);
    expect(alg.lastRewrite).toEqual({ old: 'PORT 192,168,1,10,195,80', new: 'PORT 203,0,113,1,195,80' });
    const [x] = alg.expectations();
    expect(x).toMatchObject({ peer: SERVER, extPort: 50000 });
  });

  it('rewrites EPRT, keeping its delimiter', () => {
    const { nat } = setup();
    openOutbound(nat);
    const out = run(nat, clientData(HOST_A, 1001, 5001, 'EPRT |1|192.168.1.10|50001|\r\n'))!;
    expect(payloadOf(out)).toBe('EPRT |1|203.0.113.1|50001|\r\n');
    checkAllChecksums(out);
    const out2 = run(nat, clientData(HOST_A, 1001 + 29, 5001, 'eprt !1!192.168.1.10!50002!\r\n'))!;
    expect(payloadOf(out2)).toBe('eprt !1!203.0.113.1!50002!\r\n');
  });

  it('adjusts sequence and acknowledgement numbers both ways, retransmissions and SACK included', () => {
    const { nat } = setup();
    openOutbound(nat);
    const cmd = 'PORT 192,168,1,10,195,80\r\n'; // 26 bytes, 25 once rewritten
    const first = run(nat, clientData(HOST_A, 1001, 5001, cmd))!;
    expect(seqOf(first)).toBe(1001);
    // The retransmission gets the same rewrite and the same (old) offset.
    const again = run(nat, clientData(HOST_A, 1001, 5001, cmd))!;
    expect(payloadOf(again)).toBe('PORT 203,0,113,1,195,80\r\n');
    expect(seqOf(again)).toBe(1001);
    // The server acknowledges what it got (25 bytes): the client must see its own 26.
    const ext = rd16(first, 20);
    const reply = run(nat, tcpPacket({ src: SERVER, dst: PUB, srcPort: 21, dstPort: ext, seq: 5001, ack: 1026, flags: ACK | PSH, payload: text('200 PORT ok\r\n') }))!;
    expect(ackOf(reply)).toBe(1027);
    expect(seqOf(reply)).toBe(5001);
    checkAllChecksums(reply);
    // The client's next command starts after its 26 bytes: the server must see it after 25.
    const next = run(nat, clientData(HOST_A, 1027, 5014, 'LIST\r\n'))!;
    expect(seqOf(next)).toBe(1026);
    expect(ackOf(next)).toBe(5014);
    checkAllChecksums(next);
    // A SACK block from the server about bytes after the rewrite moves back like the ack.
    const sack = tcpPacket({ src: SERVER, dst: PUB, srcPort: 21, dstPort: ext, seq: 5014, ack: 1026, flags: ACK });
    const withSack = Buffer.alloc(sack.length + 12);
    sack.copy(withSack, 0, 0, 40);
    withSack[32] = (32 >> 2) << 4;
    withSack.set([1, 1, 5, 10], 40);
    withSack.writeUInt32BE(1032, 44);
    withSack.writeUInt32BE(1040, 48);
    withSack.writeUInt16BE(withSack.length, 2);
    fixChecksums(withSack);
    const sacked = run(nat, withSack)!;
    expect(ackOf(sacked)).toBe(1027);
    expect(sacked.readUInt32BE(44)).toBe(1033);
    expect(sacked.readUInt32BE(48)).toBe(1041);
    checkAllChecksums(sacked);
  });

  it('a retransmitted command gets the same public port (and so the same text) even when the port was not preserved', () => {
    const { nat, alg } = setup();
    openOutbound(nat);
    // 20500 lies in the excluded range: the mapping gets a random port, which the retransmission must keep.
    const cmd = 'PORT 192,168,1,10,80,20\r\n';
    const first = payloadOf(run(nat, clientData(HOST_A, 1001, 5001, cmd))!);
    expect(first).not.toBe('PORT 203,0,113,1,80,20\r\n');
    for (let i = 0; i < 3; i++) expect(payloadOf(run(nat, clientData(HOST_A, 1001, 5001, cmd))!)).toBe(first);
    expect(alg.pending).toBe(1);
    expect(nat.mappings.size).toBe(2); // the control connection's and the data endpoint's
  });

  it('the expectation admits exactly the expected data connection, once, whatever the filtering', () => {
    for (const filtering of ['address-port', 'address', 'endpoint'] as const) {
      const { nat, alg } = setup({ filtering });
      openOutbound(nat);
      run(nat, clientData(HOST_A, 1001, 5001, 'PORT 192,168,1,10,195,80\r\n'));
      // Another address is not the server: the expectation does not admit it (nor does the filtering,
      // except endpoint-independent filtering, which by definition admits anyone to an existing mapping).
      if (filtering !== 'endpoint') {
        expect(run(nat, tcpPacket({ src: CLIENT_OUT, dst: PUB, srcPort: 20, dstPort: 50000, seq: 1, ack: 0, flags: SYN }))).toBeNull();
        expect(alg.pending).toBe(1);
      }
      // The server, from any port, to the expected port: admitted to the client's endpoint.
      const data = run(nat, tcpPacket({ src: SERVER, dst: PUB, srcPort: 20, dstPort: 50000, seq: 1, ack: 0, flags: SYN }))!;
      expect(data).not.toBeNull();
      expect(rd32(data, 16)).toBe(HOST_A);
      expect(rd16(data, 22)).toBe(50000);
      const flow = nat.lastEntry >> 1;
      expect(nat.flows.flags[flow]! & FLOW_EXPECTED).toBe(FLOW_EXPECTED);
      expect(alg.pending).toBe(0);
      expect(alg.stats.expectationsUsed).toBe(1);
      // Only once: a second connection from another server port finds no expectation. Under the looser
      // filtering modes the mapping now in use lets it in by the ordinary rules; under address-and-port
      // dependent filtering nothing does.
      const second = run(nat, tcpPacket({ src: SERVER, dst: PUB, srcPort: 2020, dstPort: 50000, seq: 1, ack: 0, flags: SYN }));
      expect(alg.stats.expectationsUsed).toBe(1);
      if (filtering === 'address-port') expect(second).toBeNull();
      else expect(nat.flows.flags[nat.lastEntry >> 1]! & FLOW_EXPECTED).toBe(0);
    }
  });

  it('without the ALG, PORT goes out unchanged and the data connection is refused', () => {
    const nat = makeNat();
    openOutbound(nat);
    const out = run(nat, clientData(HOST_A, 1001, 5001, 'PORT 192,168,1,10,195,80\r\n'))!;
    expect(payloadOf(out)).toBe('PORT 192,168,1,10,195,80\r\n');
    expect(run(nat, tcpPacket({ src: SERVER, dst: PUB, srcPort: 20, dstPort: 50000, seq: 1, ack: 0, flags: SYN }))).toBeNull();
  });

  it('expectations expire, and go with their control connection', () => {
    const { nat, alg } = setup();
    openOutbound(nat);
    run(nat, clientData(HOST_A, 1001, 5001, 'PORT 192,168,1,10,195,80\r\n'));
    expect(alg.pending).toBe(1);
    expect(nat.mappings.lookupExternal(6, PUB, 50000)).toBeGreaterThanOrEqual(0);
    nat.sweep(NOW + alg.timeoutMs + 1, 16);
    expect(alg.pending).toBe(0);
    expect(alg.stats.expectationsExpired).toBe(1);
    expect(nat.mappings.lookupExternal(6, PUB, 50000)).toBeLessThan(0);
    // A new command replaces the old expectation; removing the control connection removes it.
    run(nat, clientData(HOST_A, 1026, 5001, 'PORT 192,168,1,10,195,81\r\n'));
    run(nat, clientData(HOST_A, 1051, 5001, 'PORT 192,168,1,10,195,82\r\n'));
    expect(alg.expectations().map((x) => x.extPort)).toEqual([50002]);
    nat.flows.flush();
    expect(alg.pending).toBe(0);
    expect(nat.mappings.size).toBe(0);
    expect(alg.seqadj.size).toBe(0);
  });

  it('bounds expectations: beyond the limit a command is left alone and counted', () => {
    const { nat, alg } = setup({}, 2);
    for (let i = 0; i < 3; i++) {
      openOutbound(nat, HOST_A, 40000 + i);
      const out = run(nat, clientData(HOST_A, 1001, 5001, `PORT 192,168,1,10,195,${80 + i}\r\n`, 40000 + i))!;
      expect(payloadOf(out)).toBe(i < 2 ? `PORT 203,0,113,1,195,${80 + i}\r\n` : `PORT 192,168,1,10,195,${80 + i}\r\n`);
    }
    expect(alg.pending).toBe(2);
    expect(alg.stats.refusedLimit).toBe(1);
  });

  it('leaves malformed, foreign and split commands alone, and counts them', () => {
    const { nat, alg } = setup();
    openOutbound(nat);
    let seq = 1001;
    for (const bad of ['PORT 192,168,1,300,195,80\r\n', 'PORT 192,168,1,10,195\r\n', 'PORT a,b\r\n', 'EPRT |2|::1|5000|\r\n', 'EPRT |1|192.168.1.10|0|\r\n']) {
      const out = run(nat, clientData(HOST_A, seq, 5001, bad))!;
      expect(payloadOf(out)).toBe(bad);
      checkAllChecksums(out);
      seq += bad.length;
    }
    expect(alg.stats.malformed).toBe(5);
    // Another LAN host's address: never opened from here.
    const foreign = run(nat, clientData(HOST_A, seq, 5001, 'PORT 192,168,1,11,195,80\r\n'))!;
    expect(payloadOf(foreign)).toBe('PORT 192,168,1,11,195,80\r\n');
    expect(alg.stats.malformed).toBe(6);
    seq += 26;
    const split = run(nat, clientData(HOST_A, seq, 5001, 'PORT 192,168,1,10,19'))!;
    expect(payloadOf(split)).toBe('PORT 192,168,1,10,19');
    expect(alg.stats.split).toBe(1);
    expect(alg.pending).toBe(0);
    expect(alg.stats.rewrites).toBe(0);
  });

  it('grows a packet within its room, and refuses (counted) when it would not fit', () => {
    const pub = ip('203.0.113.100');
    const { nat, alg } = setup({ publicIp: pub });
    const host = ip('192.168.1.1');
    const syn = run(nat, tcpPacket({ src: host, dst: SERVER, srcPort: 40000, dstPort: 21, seq: 1000, ack: 0, flags: SYN }))!;
    const ext = rd16(syn, 20);
    run(nat, tcpPacket({ src: SERVER, dst: pub, srcPort: 21, dstPort: ext, seq: 5000, ack: 1001, flags: SYN | ACK }));
    const cmd = clientData(host, 1001, 5001, 'PORT 192,168,1,1,195,80\r\n');
    nat.packetRoom = cmd.length + 1;
    expect(payloadOf(run(nat, cmd)!)).toBe('PORT 192,168,1,1,195,80\r\n');
    expect(alg.stats.noRoom).toBe(1);
    nat.packetRoom = 0;
    const grown = run(nat, cmd)!;
    expect(payloadOf(grown)).toBe('PORT 203,0,113,100,195,80\r\n');
    expect(grown.length).toBe(cmd.length + 2);
    checkAllChecksums(grown);
  });

  it('a partial checksum gets the pseudo-header sum of the new length', () => {
    const { nat } = setup();
    openOutbound(nat);
    const out = run(nat, clientData(HOST_A, 1001, 5001, 'PORT 192,168,1,10,195,80\r\n'), true)!;
    expect(rd16(out, 36)).toBe(fold16(pseudoHeaderSum(PUB, SERVER, 6, out.length - 20)));
    // A later segment only has its sequence number moved: data to the partial sum, so the field keeps
    // what the address rewrite made of it.
    const next = clientData(HOST_A, 1027, 5001, 'LIST\r\n');
    next.writeUInt16BE(fold16(pseudoHeaderSum(HOST_A, SERVER, 6, next.length - 20)), 36);
    const moved = run(nat, next, true)!;
    expect(seqOf(moved)).toBe(1026);
    expect(rd16(moved, 36)).toBe(fold16(pseudoHeaderSum(PUB, SERVER, 6, moved.length - 20)));
  });
});

describe('FTP ALG: passive mode (LAN server behind a forward)', () => {
  function openInbound(nat: Translator): void {
    run(nat, tcpPacket({ src: CLIENT_OUT, dst: PUB, srcPort: 6000, dstPort: 21, seq: 100, ack: 0, flags: SYN }));
    run(nat, tcpPacket({ src: HOST_B, dst: CLIENT_OUT, srcPort: 21, dstPort: 6000, seq: 900, ack: 101, flags: SYN | ACK }));
    run(nat, tcpPacket({ src: CLIENT_OUT, dst: PUB, srcPort: 6000, dstPort: 21, seq: 101, ack: 901, flags: ACK }));
  }
  const serverData = (seq: number, payload: string) =>
    tcpPacket({ src: HOST_B, dst: CLIENT_OUT, srcPort: 21, dstPort: 6000, seq, ack: 101, flags: ACK | PSH, payload: text(payload) });
  const forwards = [{ protocol: 6, publicPort: 21, address: HOST_B, port: 21 }];

  it('rewrites 227 and admits the client to the server\'s data port', () => {
    const { nat, alg } = setup({ forwards });
    openInbound(nat);
    const out = run(nat, serverData(901, '227 Entering Passive Mode (192,168,1,11,200,10).\r\n'))!;
    expect(payloadOf(out)).toBe('227 Entering Passive Mode (203,0,113,1,200,10).\r\n');
    checkAllChecksums(out);
    const data = run(nat, tcpPacket({ src: CLIENT_OUT, dst: PUB, srcPort: 6001, dstPort: 51210, seq: 1, ack: 0, flags: SYN }))!;
    expect(rd32(data, 16)).toBe(HOST_B);
    expect(rd16(data, 22)).toBe(51210);
    expect(alg.stats.expectationsUsed).toBe(1);
    // The client's ack of the shorter reply moves back to the server's numbering.
    const ack = run(nat, tcpPacket({ src: CLIENT_OUT, dst: PUB, srcPort: 6000, dstPort: 21, seq: 101, ack: 901 + 49, flags: ACK }))!;
    expect(ackOf(ack)).toBe(901 + 50);
  });

  it('rewrites the port of 229 when the public port differs, and expects it', () => {
    const { nat, alg } = setup({ forwards });
    openInbound(nat);
    // Port 20500 lies in the excluded range, so the mapping gets another port and the reply changes.
    const out = run(nat, serverData(901, '229 Entering Extended Passive Mode (|||20500|)\r\n'))!;
    const m = /\(\|\|\|(\d+)\|\)/.exec(payloadOf(out));
    expect(m).not.toBeNull();
    const port = Number(m![1]);
    expect(port).not.toBe(20500);
    expect(alg.expectations()[0]!.extPort).toBe(port);
    checkAllChecksums(out);
    const data = run(nat, tcpPacket({ src: CLIENT_OUT, dst: PUB, srcPort: 6002, dstPort: port, seq: 1, ack: 0, flags: SYN }))!;
    expect(rd16(data, 22)).toBe(20500);
  });

  it('does not watch inbound connections that are not forwarded, nor client replies', () => {
    const { nat, alg } = setup({ forwards });
    openInbound(nat);
    // The outside client's own PORT needs nothing: it comes from outside.
    const out = run(nat, tcpPacket({ src: CLIENT_OUT, dst: PUB, srcPort: 6000, dstPort: 21, seq: 101, ack: 901, flags: ACK | PSH, payload: text('PORT 198,51,100,3,1,1\r\n') }))!;
    expect(payloadOf(out)).toBe('PORT 198,51,100,3,1,1\r\n');
    expect(alg.stats.rewrites + alg.stats.malformed).toBe(0);
  });
});

function fixChecksums(p: Buffer): void {
  p.writeUInt16BE(0, 10);
  let s = 0;
  for (let i = 0; i < 20; i += 2) s += p.readUInt16BE(i);
  p.writeUInt16BE(~fold16(s) & 0xffff, 10);
  p.writeUInt16BE(0, 36);
  const l4 = p.length - 20;
  let t = pseudoHeaderSum(p.readUInt32BE(12), p.readUInt32BE(16), 6, l4);
  for (let i = 20; i < p.length; i += 2) t += i + 1 < p.length ? p.readUInt16BE(i) : p[i]! << 8;
  p.writeUInt16BE(~fold16(t) & 0xffff, 36);
}

describe('FTP ALG: hostile payloads', () => {
  it('never throws, always leaves valid checksums, and keeps expectations bounded', () => {
    let x = 12345;
    const rnd = (n: number) => {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      return x % n;
    };
    const { nat, alg } = setup({}, 8);
    openOutbound(nat);
    const prefixes = ['PORT ', 'EPRT ', 'port ', 'eprt |1|', 'PORT 192,168,1,10,', 'EPRT |1|192.168.1.10|'];
    const alphabet = '0123456789,.|() \r\n\x00\xff-+abc';
    let seq = 1001;
    for (let i = 0; i < 2000; i++) {
      let body = prefixes[rnd(prefixes.length)]!;
      const n = rnd(40);
      for (let k = 0; k < n; k++) body += alphabet[rnd(alphabet.length)];
      const pkt = clientData(HOST_A, seq, 5001, body);
      const out = run(nat, pkt);
      expect(out).not.toBeNull();
      checkAllChecksums(out!);
      seq = (seq + body.length) >>> 0;
    }
    expect(alg.pending).toBeLessThanOrEqual(1);
    expect(alg.stats.rewrites + alg.stats.malformed + alg.stats.split).toBeGreaterThan(0);
  });
});

describe('FTP ALG: restored flows', () => {
  it('a control connection restored into a run without the ALG is an ordinary flow', () => {
    const { nat: before } = setup();
    openOutbound(before);
    const snap = takeSnapshot(before, [LAN], NOW);
    expect(snap.flows).toHaveLength(1);
    const file = join(mkdtempSync(join(tmpdir(), 'tunnat-alg-')), 'flows.json');
    writeSnapshot(file, snap);
    const saved = readSnapshot(file).flows;
    rmSync(dirname(file), { recursive: true, force: true });
    expect(saved[0]!.flags & FLOW_ALG).toBe(FLOW_ALG);
    const plain = makeNat();
    expect(plain.restoreFlow(saved[0]!, NOW)).toBe(true);
    expect(plain.flows.flags[plain.flows.lookup(6, HOST_A, SERVER, 40000, 21, NOW) >> 1]! & FLOW_ALG).toBe(0);
    const out = run(plain, clientData(HOST_A, 1001, 5001, 'PORT 192,168,1,10,195,80\r\n'))!;
    expect(payloadOf(out)).toBe('PORT 192,168,1,10,195,80\r\n');
    // With the ALG on, it stays a control connection and later commands are rewritten.
    const { nat: withAlg } = setup();
    expect(withAlg.restoreFlow(saved[0]!, NOW)).toBe(true);
    const rw = run(withAlg, clientData(HOST_A, 1001, 5001, 'PORT 192,168,1,10,195,80\r\n'))!;
    expect(payloadOf(rw)).toBe('PORT 203,0,113,1,195,80\r\n');
  });
});

