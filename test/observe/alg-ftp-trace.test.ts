import { describe, it, expect } from 'vitest';
import { tcpPacket } from '../../src/wire/build.js';
import { TCP_FLAGS } from '../../src/wire/tcp.js';
import { parsePacketFilter } from '../../src/observe/filter.js';
import type { TraceMessage } from '../../src/observe/trace.js';
import { formatTrace } from '../../src/observe/trace-format.js';
import { enableFtpAlg } from '../../src/nat/alg-ftp.js';
import { formatFlow, listFlows } from '../../src/conntrack/listing.js';
import { observed, HOST_A, PUB, ip, checkAllChecksums } from './helpers.js';

const SERVER = ip('198.51.100.2');
const SYN = TCP_FLAGS.SYN;
const ACK = TCP_FLAGS.ACK;
const PSH = TCP_FLAGS.PSH;

describe('the FTP ALG through the data plane', () => {
  it('writes the rewritten packet at its new length, traces the rewrite, and lists the control and data flows', () => {
    const o = observed();
    enableFtpAlg(o.nat, [21]);
    const got: TraceMessage[] = [];
    o.obs.tracer.subscribe(parsePacketFilter(['tcp']), 100, (m) => got.push(m));
    const [syn] = o.run(tcpPacket({ src: HOST_A, dst: SERVER, srcPort: 40000, dstPort: 21, seq: 1000, ack: 0, flags: SYN }));
    const ext = syn!.readUInt16BE(20);
    o.run(tcpPacket({ src: SERVER, dst: PUB, srcPort: 21, dstPort: ext, seq: 5000, ack: 1001, flags: SYN | ACK }));
    const cmd = tcpPacket({
      src: HOST_A, dst: SERVER, srcPort: 40000, dstPort: 21, seq: 1001, ack: 5001, flags: ACK | PSH,
      payload: Buffer.from('PORT 192,168,1,10,195,80\r\n'),
    });
    const [out] = o.run(cmd);
    expect(out!.length).toBe(cmd.length - 1);
    expect(out!.subarray(40).toString('latin1')).toBe('PORT 203,0,113,1,195,80\r\n');
    checkAllChecksums(out!);
    const rec = got.map((m) => (m.type === 'packet' ? m.record : null)).filter((r) => r !== null).at(-1)!;
    expect(rec.alg).toEqual({ name: 'ftp', old: 'PORT 192,168,1,10,195,80', new: 'PORT 203,0,113,1,195,80' });
    expect(rec.after!.length).toBe(out!.length);
    expect(rec.checksumsVerified).toBe(true);
    expect(formatTrace(rec).join('\n')).toContain('ftp ALG rewrote "PORT 192,168,1,10,195,80" → "PORT 203,0,113,1,195,80"');
    // The server's data connection, and the listing of both flows.
    const [data] = o.run(tcpPacket({ src: SERVER, dst: PUB, srcPort: 20, dstPort: 50000, seq: 1, ack: 0, flags: SYN }));
    expect(data).toBeDefined();
    const flows = listFlows(o.nat.flows, o.clock());
    expect(flows.map((f) => f.alg).sort()).toEqual(['ftp-control', 'ftp-data']);
    expect(formatFlow(flows.find((f) => f.alg === 'ftp-control')!)).toMatch(/helper=ftp$/);
    expect(formatFlow(flows.find((f) => f.alg === 'ftp-data')!)).toMatch(/expected=ftp$/);
    // A packet of a flow the ALG does not watch carries no ALG record.
    expect(got.map((m) => (m.type === 'packet' ? m.record.alg : null)).filter((a) => a !== null)).toHaveLength(1);
  });
});
