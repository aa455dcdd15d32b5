import { describe, it, expect } from 'vitest';
import { tcpPacket } from '../../src/wire/build.js';
import { TCP_FLAGS } from '../../src/wire/tcp.js';
import { rd16, rd32 } from '../../src/wire/bytes.js';
import { Verdict, type Translator } from '../../src/nat/translator.js';
import { enableFtpAlg } from '../../src/nat/alg-ftp.js';
import { AlgRedirects } from '../../src/nat/alg-redirect.js';
import { FLOW_EXPECTED } from '../../src/conntrack/table.js';
import { sliceOwner } from '../../src/nat/ports.js';
import { makeNat, ip, PUB, HOST_A } from './helpers.js';

const SYN = TCP_FLAGS.SYN;
const ACK = TCP_FLAGS.ACK;
const PSH = TCP_FLAGS.PSH;
const SERVER = ip('198.51.100.2');
const NOW = 1000;

describe('AlgRedirects: FTP data endpoints shared between workers', () => {
  it('publishes, finds, refuses when its region is full, and clears a restarted worker\'s entries', () => {
    const sab = AlgRedirects.create(3, 4);
    const w = [0, 1, 2].map((i) => new AlgRedirects(sab, 3, i, 4));
    expect(w[0]!.ownerOf(HOST_A, 5000)).toBe(-1);
    expect(w[1]!.add(HOST_A, 5000, 7)).toBe(true);
    expect(w[2]!.add(0xc0a80164, 6000, 8)).toBe(true); // 192.168.1.100: the sign bit of an Int32 word
    for (const r of w) {
      expect(r.ownerOf(HOST_A, 5000)).toBe(1);
      expect(r.ownerOf(0xc0a80164, 6000)).toBe(2);
      expect(r.ownerOf(HOST_A, 5001)).toBe(-1);
    }
    // The same endpoint again takes no slot; a full region refuses a new one.
    expect(w[1]!.add(HOST_A, 5000, 9)).toBe(true);
    for (let p = 1; p <= 3; p++) expect(w[1]!.add(HOST_A, 5000 + p, 10)).toBe(true);
    expect(w[1]!.size).toBe(4);
    expect(w[1]!.hasRoom(HOST_A, 5009)).toBe(false);
    expect(w[1]!.hasRoom(HOST_A, 5002)).toBe(true);
    expect(w[1]!.add(HOST_A, 5009, 11)).toBe(false);
    w[1]!.clearOwn();
    expect(w[0]!.ownerOf(HOST_A, 5000)).toBe(-1);
    expect(w[0]!.ownerOf(0xc0a80164, 6000)).toBe(2);
    expect(() => new AlgRedirects(sab, 2, 0, 4)).toThrow(RangeError);
  });
});

/** Two workers' translators, as worker-thread.ts builds them with --alg ftp. */
function twoWorkers(): Translator[] {
  const sab = AlgRedirects.create(2);
  return [0, 1].map((index) => {
    const nat = makeNat({ slice: { index, count: 2 }, seed: 11 + index });
    enableFtpAlg(nat, [21]);
    nat.algRedirects = new AlgRedirects(sab, 2, index);
    return nat;
  });
}

function run(nat: Translator, pkt: Buffer): { verdict: number; out: Buffer } {
  const buf = Buffer.alloc(2048);
  pkt.copy(buf);
  const verdict = nat.process(buf, 0, pkt.length, NOW);
  return { verdict, out: Buffer.from(buf.subarray(0, pkt.length + nat.lengthDelta)) };
}

describe('FTP ALG across workers', () => {
  it('the data connection\'s LAN side is handed, unchanged, to the worker that holds its flow', () => {
    const [w0, w1] = twoWorkers() as [Translator, Translator];
    // The control connection's port is worker 0's; the data port the client names (50002) is worker 1's.
    expect(sliceOwner(40000, 2)).toBe(0);
    expect(sliceOwner(50002, 2)).toBe(1);
    const syn = run(w0, tcpPacket({ src: HOST_A, dst: SERVER, srcPort: 40000, dstPort: 21, seq: 1000, ack: 0, flags: SYN }));
    const ctlPort = rd16(syn.out, 20);
    run(w0, tcpPacket({ src: SERVER, dst: PUB, srcPort: 21, dstPort: ctlPort, seq: 5000, ack: 1001, flags: SYN | ACK }));
    run(w0, tcpPacket({ src: HOST_A, dst: SERVER, srcPort: 40000, dstPort: 21, seq: 1001, ack: 5001, flags: ACK }));
    const cmd = run(w0, tcpPacket({ src: HOST_A, dst: SERVER, srcPort: 40000, dstPort: 21, seq: 1001, ack: 5001, flags: ACK | PSH, payload: Buffer.from('PORT 192,168,1,10,195,82\r\n') }));
    expect(cmd.verdict).toBe(Verdict.FORWARD);
    const m = /^PORT 203,0,113,1,(\d+),(\d+)\r\n$/.exec(cmd.out.subarray(40).toString('latin1'));
    expect(m).not.toBeNull();
    const extPort = Number(m![1]) * 256 + Number(m![2]);
    // Worker 0 made the mapping in its own slice, so the server's connection is steered to it.
    expect(sliceOwner(extPort, 2)).toBe(0);
    expect(w0.algRedirects!.size).toBe(1);
    expect(w1.algRedirects!.ownerOf(HOST_A, 50002)).toBe(0);

    const dataSyn = run(w0, tcpPacket({ src: SERVER, dst: PUB, srcPort: 20, dstPort: extPort, seq: 1, ack: 0, flags: SYN }));
    expect(dataSyn.verdict).toBe(Verdict.FORWARD);
    expect(rd32(dataSyn.out, 16)).toBe(HOST_A);
    expect(rd16(dataSyn.out, 22)).toBe(50002);
    expect(w0.flows.flags[w0.lastEntry >> 1]! & FLOW_EXPECTED).toBe(FLOW_EXPECTED);

    // The client's answer is steered by its port to worker 1, which holds no flow for it: handed over.
    const synAck = tcpPacket({ src: HOST_A, dst: SERVER, srcPort: 50002, dstPort: 20, seq: 9000, ack: 2, flags: SYN | ACK });
    const at1 = run(w1, synAck);
    expect(at1.verdict).toBe(Verdict.HANDOFF);
    expect(w1.handoffTo).toBe(0);
    expect(at1.out.equals(synAck)).toBe(true);
    expect(w1.flows.size).toBe(0);
    expect(w1.mappings.size).toBe(0);
    const at0 = run(w0, at1.out);
    expect(at0.verdict).toBe(Verdict.FORWARD);
    expect(rd32(at0.out, 12)).toBe(PUB);
    expect(rd16(at0.out, 20)).toBe(extPort);

    // Another endpoint of the same host is worker 1's own business.
    const other = run(w1, tcpPacket({ src: HOST_A, dst: SERVER, srcPort: 50004, dstPort: 80, seq: 1, ack: 0, flags: SYN }));
    expect(other.verdict).toBe(Verdict.FORWARD);
    expect(w1.flows.size).toBe(1);

    // When the data flow and the control connection are gone, so is the mapping, and the owner's sweep
    // withdraws the entry: worker 1 sets up that endpoint's flows itself again.
    w0.flows.flush();
    w0.sweep(NOW, 64);
    expect(w0.algRedirects!.size).toBe(0);
    expect(w1.algRedirects!.ownerOf(HOST_A, 50002)).toBe(-1);
    expect(run(w1, tcpPacket({ src: HOST_A, dst: SERVER, srcPort: 50002, dstPort: 20, seq: 1, ack: 0, flags: SYN })).verdict).toBe(Verdict.FORWARD);
  });

  it('a LAN server behind a forward: the PASV data port is published by the control connection\'s worker', () => {
    const sab = AlgRedirects.create(2);
    const server = ip('192.168.1.20');
    const [w0, w1] = [0, 1].map((index) => {
      const nat = makeNat({ slice: { index, count: 2 }, seed: 3 + index, forwards: [{ protocol: 6, port: 21, address: server, publicPort: 21 }] });
      enableFtpAlg(nat, [21]);
      nat.algRedirects = new AlgRedirects(sab, 2, index);
      return nat;
    }) as [Translator, Translator];
    const owner = sliceOwner(21, 2);
    const [own, other] = owner === 0 ? [w0, w1] : [w1, w0];
    const client = ip('198.51.100.9');
    run(own, tcpPacket({ src: client, dst: PUB, srcPort: 33000, dstPort: 21, seq: 1, ack: 0, flags: SYN }));
    run(own, tcpPacket({ src: server, dst: client, srcPort: 21, dstPort: 33000, seq: 100, ack: 2, flags: SYN | ACK }));
    run(own, tcpPacket({ src: client, dst: PUB, srcPort: 33000, dstPort: 21, seq: 2, ack: 101, flags: ACK }));
    // The server's data port lies in the other worker's slice.
    const dataPort = sliceOwner(50002, 2) === owner ? 50004 : 50002;
    expect(sliceOwner(dataPort, 2)).not.toBe(owner);
    const reply = run(own, tcpPacket({
      src: server, dst: client, srcPort: 21, dstPort: 33000, seq: 101, ack: 2, flags: ACK | PSH,
      payload: Buffer.from(`227 Entering Passive Mode (192,168,1,20,${dataPort >> 8},${dataPort & 255})\r\n`),
    }));
    expect(reply.out.subarray(40).toString('latin1')).toMatch(/^227 Entering Passive Mode \(203,0,113,1,\d+,\d+\)\r\n$/);
    expect(other.algRedirects!.ownerOf(server, dataPort)).toBe(owner);
    const lanSide = run(other, tcpPacket({ src: server, dst: client, srcPort: dataPort, dstPort: 40001, seq: 1, ack: 2, flags: SYN | ACK }));
    expect(lanSide.verdict).toBe(Verdict.HANDOFF);
    expect(other.handoffTo).toBe(owner);
  });
});
