/**
 * Fail closed in every instant: while the router starts and stops, a LAN host keeps sending a UDP
 * datagram every millisecond, and the WAN must never see a private (192.168.0.0/16) source. The
 * gateway forwards only while forwarding is on, so forwarding must go on after every rule that
 * diverts LAN traffic into tunnat (or every NAT rule, for the kernel engine) exists, and off before
 * any of them is removed. The capture must also hold translated datagrams from the running phases,
 * so that a router that never forwarded anything cannot pass.
 *
 * Needs root (namespaces, veths, a TUN, tcpdump).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnIn, type NsProcess } from '../../src/lab/process.js';
import { captureOn, Cleanup, inNs, isRoot, plainLabUp, startTestRouter, type PlainLab } from './harness.js';

const SINK_PORT = 9;
const CYCLES = 5;
/** How long each run forwards before it is stopped: long enough for plenty of translated datagrams. */
const RUN_MS = 300;

// One datagram per millisecond, each from a fresh source port every 100 (new flows keep coming),
// until killed. Plain node: nothing to build.
const SENDER = `
const dgram = require('node:dgram');
const [host, port] = process.argv.slice(1);
let sock = dgram.createSocket('udp4');
let n = 0;
setInterval(() => {
  if (++n % 100 === 0) { sock.close(); sock = dgram.createSocket('udp4'); }
  sock.send('fail-closed ' + n, Number(port), host, () => {});
}, 1);
console.log('sending');
`;

describe.skipIf(!isRoot)('fail closed while starting and stopping', () => {
  const cleanup = new Cleanup((l) => console.error(l));
  let lab: PlainLab;
  let sender: NsProcess;
  let n = 0;

  beforeAll(async () => {
    lab = await plainLabUp(cleanup, 1);
    // The gate this test is about: nothing is forwarded until the router turns forwarding on.
    await inNs(lab.gw, ['sysctl', '-q', '-w', 'net.ipv4.ip_forward=0']);
    sender = spawnIn(lab.hosts[0]!, [process.execPath, '-e', SENDER, lab.inetAddress, String(SINK_PORT)], { label: 'udp sender', cleanup });
    await sender.waitForLine(/sending/, 10_000);
  }, 60_000);

  afterAll(async () => {
    await cleanup.run();
  }, 60_000);

  async function cycles(engine: 'userspace' | 'kernel', signals: NodeJS.Signals[]): Promise<void> {
    const capture = await captureOn(lab.inet, lab.inetDev, cleanup, ['udp', 'dst', 'port', String(SINK_PORT)]);
    const outputs: string[] = [];
    for (const signal of signals) {
      const router = await startTestRouter({ gwNetns: lab.gw, id: `fc${lab.id}${n++}`, cleanup, engine });
      await new Promise((r) => setTimeout(r, RUN_MS));
      const code = await router.process!.stop(signal, 10_000);
      outputs.push(router.output());
      expect(code, router.output()).toBe(0);
    }
    // Datagrams still in flight when the last router stopped.
    await new Promise((r) => setTimeout(r, 100));
    await capture.stop();
    const packets = (await capture.packets()).filter((p) => p.kind === 'ip');
    const leaks = packets.filter((p) => p.src?.startsWith('192.168.')).map((p) => p.line);
    const translated = packets.filter((p) => p.src === lab.wanAddress).length;
    expect(leaks.slice(0, 10), `${leaks.length} private-source datagrams on the WAN`).toEqual([]);
    // About RUN_MS datagrams per run get through; demand a fair share of them.
    expect(translated, outputs.join('\n---\n')).toBeGreaterThan(CYCLES * RUN_MS * 0.3);
  }

  it(`userspace engine: ${CYCLES} starts and SIGINT stops leak no private source`, async () => {
    await cycles('userspace', Array<NodeJS.Signals>(CYCLES).fill('SIGINT'));
  }, 60_000);

  it(`userspace engine: ${CYCLES} starts and SIGTERM stops (no --state) leak no private source`, async () => {
    await cycles('userspace', Array<NodeJS.Signals>(CYCLES).fill('SIGTERM'));
  }, 60_000);

  it(`kernel engine: ${CYCLES} starts and stops leak no private source`, async () => {
    await cycles('kernel', Array<NodeJS.Signals>(CYCLES).fill('SIGTERM'));
  }, 60_000);
});
