/**
 * Observability end to end: `tunnat run` in a namespace lab with --pcap, real traffic from two LAN
 * hosts, and everything a person would look at checked against what was sent: per-host bytes in
 * /metrics against the hosts' own interface counters (within 1 %), the test's UDP flow in
 * `tunnat conntrack`, in `tunnat conntrack --events` and in `tunnat trace`, `tunnat stats`, and the
 * pcap file read back with tcpdump.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NsProcess } from '../../src/lab/process.js';
import { defaultCliPath } from '../../src/lab/router.js';
import { startServices } from '../../src/lab/services.js';
import { parsePromText, sampleValue } from '../../src/observe/promtext.js';
import { buildTestLab, Cleanup, inNs, isRoot, randomFile, startTestRouter, type Lab, type TestRouter } from './harness.js';
import { run } from '../../src/util/exec.js';

const SERVER = '203.0.113.2';
const UDP_PORT_H0 = 41234;
const UDP_PORT_H1 = 41235;

/** Sequential UDP request/response (no loss, exact byte counts): prints {sent, received, replyBytes}. */
const UDP_LOAD = String.raw`
const dgram = require('node:dgram');
const [host, port, count, size, sport] = process.argv.slice(1);
const s = dgram.createSocket('udp4');
const payload = Buffer.alloc(Number(size), 0x62);
let sent = 0, received = 0, replyBytes = 0, timer;
const next = () => {
  if (sent >= Number(count)) { s.close(); console.log(JSON.stringify({ sent, received, replyBytes })); return; }
  sent++;
  s.send(payload, Number(port), host);
  timer = setTimeout(next, 1000);
};
s.on('message', (m) => { received++; replyBytes += m.length; clearTimeout(timer); next(); });
s.bind(Number(sport), next);
`;

interface Counters {
  rxBytes: number;
  rxPackets: number;
  txBytes: number;
  txPackets: number;
}

async function ifCounters(netns: string, dev: string): Promise<Counters> {
  const r = await inNs(netns, ['sh', '-c', `cd /sys/class/net/${dev}/statistics && cat rx_bytes rx_packets tx_bytes tx_packets`]);
  const [rxBytes, rxPackets, txBytes, txPackets] = r.stdout.trim().split(/\s+/).map(Number) as [number, number, number, number];
  return { rxBytes, rxPackets, txBytes, txPackets };
}

/** IP bytes through a veth: its byte counters include a 14-byte Ethernet header per frame. */
function ipBytes(before: Counters, after: Counters): { out: number; in: number } {
  return {
    out: after.txBytes - before.txBytes - 14 * (after.txPackets - before.txPackets),
    in: after.rxBytes - before.rxBytes - 14 * (after.rxPackets - before.rxPackets),
  };
}

// Needs root: namespaces, veth pairs, a TUN device, tcpdump. CI runs as root.
describe.skipIf(!isRoot)('observability of a running router', () => {
  const cleanup = new Cleanup((l) => console.error(l));
  let lab: Lab;
  let router: TestRouter;
  let target: string;
  let pcapDir: string;
  let pcapFile: string;
  let blob: { dir: string; name: string; sha256: string };
  const cli = (args: string[]) => run([process.execPath, defaultCliPath(), ...args], { allowFail: true, timeoutMs: 20_000 });

  beforeAll(async () => {
    lab = await buildTestLab(cleanup, { lanHosts: 2 });
    blob = await randomFile(cleanup, 3 * 1024 * 1024);
    await startServices({ netns: lab.inet.netns, addresses: [SERVER], filesDir: blob.dir, cleanup });
    pcapDir = mkdtempSync(join(tmpdir(), 'tunnat-obs-'));
    cleanup.defer({ label: `remove ${pcapDir}`, sync: () => rmSync(pcapDir, { recursive: true, force: true }) });
    pcapFile = join(pcapDir, 'trace.pcapng');
    // Whole packets (the default keeps headers only): the file must hold the payloads this test sends.
    router = await startTestRouter({ gwNetns: lab.gw.netns, id: `obs-${lab.id}`, cleanup, args: ['--pcap', pcapFile, '--pcap-snaplen', '0'] });
    target = `unix:${router.socketPath!}`;
  }, 60_000);

  afterAll(async () => {
    await cleanup.run();
  }, 60_000);

  it('counts bytes per LAN host as the hosts themselves count them (within 1 %), and shows the flow everywhere', async () => {
    const [h0, h1] = lab.lanHosts as [Lab['lanHosts'][number], Lab['lanHosts'][number]];
    // Watchers first, so they see the flow being born.
    const events = new NsProcess(null, [process.execPath, defaultCliPath(), 'conntrack', '--events', '--http', target, '--proto', 'udp', '--src', h0.address], {
      cleanup,
      label: 'tunnat conntrack --events',
    });
    const trace = new NsProcess(null, [process.execPath, defaultCliPath(), 'trace', 'udp', 'and', 'port', String(UDP_PORT_H0), '--count', '2', '--http', target], {
      cleanup,
      label: 'tunnat trace',
    });
    await events.waitForLine(/following flow events/);
    await trace.waitForLine(/tracing udp and port 41234/);

    const metricsBefore = parsePromText(await router.metrics());
    const c0 = await ifCounters(h0.netns, h0.dev);
    const c1 = await ifCounters(h1.netns, h1.dev);
    const load = async (netns: string, count: number, size: number, sport: number) =>
      JSON.parse((await inNs(netns, [process.execPath, '-e', UDP_LOAD, SERVER, '7', String(count), String(size), String(sport)], { timeoutMs: 60_000 })).stdout) as {
        sent: number;
        received: number;
        replyBytes: number;
      };
    const [u0, u1] = await Promise.all([load(h0.netns, 200, 1000, UDP_PORT_H0), load(h1.netns, 100, 400, UDP_PORT_H1)]);
    expect(u0.received).toBe(200);
    expect(u1.received).toBe(100);
    // A TCP download on each host on top (about 3 MB and 1.5 MB at the IP level).
    const curl = (netns: string, range?: string) =>
      inNs(netns, ['curl', '-sS', '--fail', '--noproxy', '*', '--max-time', '60', '-o', '/dev/null', ...(range ? ['-r', range] : []), `http://${SERVER}/files/${blob.name}`], { timeoutMs: 70_000 });
    await Promise.all([curl(h0.netns), curl(h1.netns, '0-1572863')]);
    const d0 = ipBytes(c0, await ifCounters(h0.netns, h0.dev));
    const d1 = ipBytes(c1, await ifCounters(h1.netns, h1.dev));
    const metricsAfter = parsePromText(await router.metrics());

    const delta = (host: string, direction: string) =>
      sampleValue(metricsAfter, 'tunnat_host_bytes_total', { host, direction }) - sampleValue(metricsBefore, 'tunnat_host_bytes_total', { host, direction });
    for (const [host, d] of [[h0.address, d0], [h1.address, d1]] as const) {
      const out = delta(host, 'outbound');
      const inb = delta(host, 'inbound');
      console.log(`${host}: tunnat out ${out} in ${inb}; interface out ${d.out} in ${d.in}`);
      expect(d.in, `${host} received`).toBeGreaterThan(1_000_000);
      expect(Math.abs(out - d.out) / d.out, `${host} outbound: tunnat ${out}, interface ${d.out}`).toBeLessThan(0.01);
      expect(Math.abs(inb - d.in) / d.in, `${host} inbound: tunnat ${inb}, interface ${d.in}`).toBeLessThan(0.01);
    }
    // The UDP part is known to the byte: 28 bytes of IP and UDP header per datagram.
    const udpFlow = (await router.conntrack()).find((f) => f.protocol === 'udp' && f.original.src === h0.address && f.original.srcPort === UDP_PORT_H0);
    expect(udpFlow?.bytes).toEqual({ original: 200 * 1028, reply: u0.replyBytes + 200 * 28 });

    // `tunnat conntrack` shows the flow, filtered.
    const list = await cli(['conntrack', '--http', target, '--proto', 'udp', '--src', h0.address]);
    expect(list.exitCode, list.stderr).toBe(0);
    expect(list.stdout).toMatch(new RegExp(`^udp .* src=${h0.address.replace(/\./g, '\\.')} dst=203\\.0\\.113\\.2 sport=${UDP_PORT_H0} dport=7 packets=200 `, 'm'));
    expect(list.stdout).not.toContain(h1.address);
    // `--events` saw it born.
    await events.waitForLine(new RegExp(`\\[NEW\\] udp .*sport=${UDP_PORT_H0} dport=7`));
    expect(events.output()).not.toContain(`sport=${UDP_PORT_H1}`);
    // The trace explained its first packet and the reply, then stopped by itself (--count 2).
    expect(await trace.exited).toBe(0);
    const t = trace.output();
    expect(t).toMatch(new RegExp(`OUTBOUND +udp ${h0.address.replace(/\./g, '\\.')}:${UDP_PORT_H0} → 203\\.0\\.113\\.2:7`));
    expect(t).toContain(`flow `);
    expect(t).toMatch(/port \d+ \((preserved|remapped)\)/);
    expect(t).toContain(`ip.src ${h0.address} → 203.0.113.1`);
    expect(t).toMatch(/INBOUND +udp 203\.0\.113\.2:7 → 203\.0\.113\.1:\d+/);
    // Offloads on or off, the checksums tunnat wrote are right (a partial one holds the right pseudo-header sum).
    expect(t).toMatch(/verified +(every checksum recomputed in full matches|IP checksum recomputed in full matches; the udp checksum is partial .* and that sum is right)/);
    expect(t).not.toContain('WRONG');

    // `tunnat stats` prints the counters.
    const stats = await cli(['stats', '--http', target]);
    expect(stats.exitCode, stats.stderr).toBe(0);
    expect(stats.stdout).toMatch(/^packets +outbound=\d+ inbound=\d+/m);
    expect(stats.stdout).toContain(`host ${h0.address}`);
    await events.stop();
  }, 180_000);

  it('writes a pcap file tcpdump reads: each packet before and after translation', async () => {
    expect(await router.stop()).toBe(0);
    expect(statSync(pcapFile).size).toBeGreaterThan(1_000_000);
    const r = await run(['tcpdump', '-nn', '-r', pcapFile, 'udp', 'and', 'port', String(UDP_PORT_H0)], { allowFail: true });
    expect(r.exitCode, r.stderr).toBe(0);
    const lines = r.stdout.split('\n').filter((l) => l.trim() !== '');
    const before = lines.filter((l) => l.includes(`192.168.1.10.${UDP_PORT_H0} > 203.0.113.2.7: UDP, length 1000`));
    const after = lines.filter((l) => /203\.0\.113\.1\.\d+ > 203\.0\.113\.2\.7: UDP, length 1000/.test(l));
    expect(before).toHaveLength(200);
    expect(after).toHaveLength(200);
    // Replies: as they arrived (to the public address) and as they went to the host.
    expect(lines.filter((l) => /203\.0\.113\.2\.7 > 192\.168\.1\.10\.41234: UDP/.test(l))).toHaveLength(200);
  }, 60_000);
});
