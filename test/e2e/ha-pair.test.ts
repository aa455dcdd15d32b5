/**
 * A gateway pair under traffic (docs/ha.md): tunnat on two gateways with the flow-state sync between
 * them and keepalived moving the shared addresses. Every failure case of issue 15 that a test can show
 * without timing the machine: connections live through a kill -9 of the active, through the whole active
 * gateway going away, through a cut sync link and a restarted standby (each followed by a full resync),
 * and a forced split brain neither leaks a private address nor gives one public port to two hosts. The
 * outage figures themselves are measured by `npm run bench:failover`; here they are only logged.
 * A capture of what each gateway sends to the WAN runs from start to end.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'node:http';
import { buildHaLab, type HaLab } from '../../src/lab/ha-topology.js';
import { failoverOnce, startPair, SYNC_PORT, type Pair } from '../../src/lab/ha-pair.js';
import { unixGet } from '../../src/lab/router.js';
import { spawnIn } from '../../src/lab/process.js';
import { parseFlows, translatedSource } from '../../src/lab/flows.js';
import { SyncAgent } from '../../src/ha/sync.js';
import { Cleanup, captureOn, inNs, isRoot, waitUntil, type Capture } from './harness.js';

if (!isRoot) console.warn('ha-pair.test.ts: the gateway-pair tests are skipped: they need root (namespaces, TUN, keepalived)');

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The first snapshot of the live page's stream (GET /live, server-sent events) over the router's socket. */
function firstLiveSnapshot(socketPath: string): Promise<{ ha: { role: string; node: number; peer: string } }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path: '/live', method: 'GET' }, (res) => {
      let buf = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        buf += c;
        const m = /event: snapshot\ndata: (.*)\n/.exec(buf);
        if (m) {
          req.destroy();
          resolve(JSON.parse(m[1]!));
        }
      });
    });
    req.setTimeout(5000, () => req.destroy(new Error('no live snapshot within 5 s')));
    req.on('error', reject);
    req.end();
  });
}

// Needs root: namespaces, TUN devices, keepalived, tcpdump. CI runs as root.
describe.skipIf(!isRoot)('a gateway pair: tunnat on both, flow state synced, keepalived moving the addresses', () => {
  const cleanup = new Cleanup((l) => console.error(l));
  let lab: HaLab;
  let pair: Pair;
  const captures: Capture[] = [];
  const log = (l: string) => console.log(`[ha-pair] ${l}`);
  const workers = process.env.TUNNAT_TEST_WORKERS ? Number(process.env.TUNNAT_TEST_WORKERS) : undefined;

  beforeAll(async () => {
    lab = await buildHaLab({ cleanup, lanHosts: 2, log });
    // Everything either gateway sends towards the WAN, from before the first start to the end.
    for (const g of lab.gateways) captures.push(await captureOn(lab.switchNetns, g.switchWanPort, cleanup, ['ip']));
    // A LAN host sending every millisecond from the first start to the end: every instant of every failover,
    // stop and start below has a packet in it that must not leave untranslated.
    const h1 = lab.lanHosts[1]!;
    const every1ms = `const s = require('dgram').createSocket('udp4'); let n = 0; setInterval(() => s.send(String(n++), 9, '${lab.inet.address}'), 1);`;
    spawnIn(h1.netns, [process.execPath, '-e', every1ms], { label: 'LAN host sending every 1 ms', cleanup });
    pair = await startPair({ lab, cleanup, log, ...(workers ? { workers } : {}) });
  }, 90_000);

  afterAll(async () => {
    await cleanup.run();
  }, 60_000);

  it('kill -9 of the active tunnat: every connection goes on, the UDP stream keeps its public port', async () => {
    const r = await failoverOnce(pair, lab, cleanup, 'kill', { idle: 200, round: 1, log });
    expect(r.to).toBe(1 - r.from);
    expect(r.report.idle).toMatchObject({ count: 200, ok: 200, failed: 0, errors: [] });
    expect(r.report.active.error).toBeNull();
    expect(r.report.active.outOfOrder).toBe(0);
    expect(r.report.active.echoed).toBe(r.report.active.sent);
    expect(r.connectionsKept).toBe(true);
    // The remote saw one mapping for the stream, on the shared public address.
    expect(r.udpSources).toHaveLength(1);
    expect(r.udpSources[0]).toMatch(/^203\.0\.113\.1:\d+$/);
    // The packets lost are the outage's; the stream came back (a sanity bound, not a figure).
    expect(r.report.udp.received).toBeGreaterThan(r.report.udp.sent / 2);
    expect(r.outageMs).toBeLessThan(10_000);
    const st = await pair.gateways[r.to!].status();
    expect(st.role).toBe('active');
    const m = (await unixGet(pair.gateways[r.to!].socketPath, '/metrics')).body;
    expect(m).toMatch(/tunnat_ha_role\{role="active"\} 1/);
    expect(m).toMatch(/tunnat_ha_role_changes_total \d+/);
  }, 120_000);

  it('the live page shows each gateway\'s role and how it hears its peer', async () => {
    const active = (await pair.active())!;
    for (const g of pair.gateways) {
      const snap = await firstLiveSnapshot(g.socketPath);
      expect(snap.ha).toMatchObject({ role: g.index === active ? 'active' : 'standby', node: g.index });
      expect(snap.ha.peer).toMatch(/heard/);
    }
  }, 30_000);

  it('only the active answers ARP for the public address; the standby stays silent', async () => {
    const active = (await pair.active())!;
    const caps: Capture[] = [];
    for (const g of lab.gateways) caps.push(await captureOn(lab.switchNetns, g.switchWanPort, cleanup, ['arp']));
    // The internet host forgets the address and asks again, three times.
    for (let k = 0; k < 3; k++) {
      await inNs(lab.inet.netns, ['ip', 'neigh', 'flush', 'dev', lab.inet.dev]);
      await inNs(lab.inet.netns, ['ping', '-c', '1', '-W', '1', lab.wanVip], { allowFail: true });
    }
    const replies: number[] = [];
    for (const c of caps) {
      await c.stop();
      replies.push((await c.text()).split('\n').filter((l) => /Reply 203\.0\.113\.1 is-at/.test(l)).length);
    }
    expect(replies[active]).toBeGreaterThanOrEqual(3);
    expect(replies[1 - active]).toBe(0);
  }, 60_000);

  it('SIGTERM of the active tunnat (a stop, not a crash): the standby takes over with every connection', async () => {
    const active = (await pair.active())!;
    await pair.waitSynced(active, 30_000);
    const r = await failoverOnce(pair, lab, cleanup, 'stop', { idle: 50, round: 5, log });
    expect(r.to).toBe(1 - active);
    expect(r.connectionsKept).toBe(true);
    expect(r.udpSources).toHaveLength(1);
  }, 120_000);

  it('the restarted gateway gets a full resync as the standby, and the next failover keeps every connection', async () => {
    const active = (await pair.active())!;
    await pair.waitSynced(active, 30_000);
    const standby = pair.gateways[1 - active]!;
    const st = await standby.status();
    expect(st.role).toBe('standby');
    expect(st.sync!.stats.resyncsApplied).toBeGreaterThanOrEqual(1);
    const r = await failoverOnce(pair, lab, cleanup, 'kill', { idle: 50, round: 2, log });
    expect(r.to).toBe(standby.index);
    expect(r.connectionsKept).toBe(true);
    expect(r.udpSources).toHaveLength(1);
  }, 120_000);

  it('the whole active gateway gone (its cables pulled): the standby takes over with every connection', async () => {
    const active = (await pair.active())!;
    await pair.waitSynced(active, 30_000);
    const r = await failoverOnce(pair, lab, cleanup, 'gone', { idle: 50, round: 3, log });
    expect(r.to).toBe(1 - active);
    expect(r.connectionsKept).toBe(true);
    expect(r.udpSources).toHaveLength(1);
    // Back on its cables, the old active does not take the addresses back (no preemption).
    await pair.waitSynced(r.to!, 30_000);
    expect(await pair.active()).toBe(r.to);
  }, 120_000);

  it('a sync link cut for a while: the active drops its backlog, resyncs the standby when it is back, and a failover after keeps every connection', async () => {
    const active = (await pair.active())!;
    await pair.waitSynced(active, 30_000);
    const standby = pair.gateways[1 - active]!;
    const before = (await standby.status()).sync!.stats.resyncsApplied;
    await lab.cutSync(true);
    // Flows made while the standby hears nothing.
    const h1 = lab.lanHosts[1]!;
    await inNs(h1.netns, ['sh', '-c', `for i in 1 2 3 4 5; do echo x | socat -u - UDP4-SENDTO:${lab.inet.address}:9,sourceport=4600$i; done`]);
    await sleep(5000);
    const act = await pair.gateways[active].status();
    expect(act.sync!.peer.alive).toBe(false);
    expect(act.sync!.lag.unacked).toBe(0);
    await lab.cutSync(false);
    await waitUntil('the standby to apply a full resync', async () => (await standby.status()).sync!.stats.resyncsApplied > before, 15_000);
    await pair.waitSynced(active, 30_000);
    // The flows made during the cut are on the standby now.
    const sflows = parseFlows((await unixGet(standby.socketPath, '/conntrack')).body);
    for (let i = 1; i <= 5; i++) expect(sflows.some((f) => f.original.src === h1.address && f.original.srcPort === 46000 + i)).toBe(true);
    const r = await failoverOnce(pair, lab, cleanup, 'kill', { idle: 50, round: 4, log });
    expect(r.connectionsKept).toBe(true);
    expect(r.udpSources).toHaveLength(1);
  }, 150_000);

  it('a stuck tunnat (SIGSTOP: its TUN still open) fails the health check, and the standby takes over', async () => {
    const active = (await pair.active())!;
    await pair.waitSynced(active, 30_000);
    const stuck = pair.gateways[active];
    const pid = stuck.router!.process!.pid;
    process.kill(pid, 'SIGSTOP');
    try {
      const ms = await waitUntil('the other gateway to take over', () => pair.gateways[1 - active]!.status().then((x) => x.role === 'active').catch(() => false), 15_000, 100);
      log(`stuck tunnat on ${stuck.name}: the other gateway active after ${ms} ms (keepalived's check: every 1 s, 2 failures)`);
      expect(await lab.vipsOf(active)).toEqual({ lan: false, wan: false });
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    // Running again, it finds the address gone and waits as the standby.
    await waitUntil('the resumed gateway to be the standby', () => stuck.status().then((x) => x.role === 'standby').catch(() => false), 10_000, 100);
    await pair.waitSynced((1 - active) as 0 | 1, 30_000);
  }, 60_000);

  it('a sync message without the pair key is counted and dropped; it changes no flow', async () => {
    const active = (await pair.active())!;
    const standby = pair.gateways[1 - active]!;
    const g = lab.gateways[standby.index];
    const before = (await standby.status()).sync!.stats.badMac;
    const flows = (await standby.status()).flows;
    // A message built by a real agent, with another key: well formed, wrongly signed.
    const forged: Uint8Array[] = [];
    const agent = new SyncAgent({
      key: new TextEncoder().encode('somebody else, not the pair key.'),
      node: active,
      send: (m) => forged.push(m),
      now: () => performance.now(),
      deliver: () => {},
      startResync: () => {},
      flowCount: () => 0,
    });
    agent.setRole('active');
    const hex = Buffer.from(forged[0]!).toString('hex');
    const send = `require('dgram').createSocket('udp4').send(Buffer.from('${hex}', 'hex'), ${SYNC_PORT}, '${g.syncAddress}', () => process.exit(0))`;
    await inNs(lab.gateways[active].netns, [process.execPath, '-e', send]);
    await waitUntil('the forged message to be counted', async () => (await standby.status()).sync!.stats.badMac > before, 5_000);
    expect((await standby.status()).flows).toBe(flows);
    const m = (await unixGet(standby.socketPath, '/metrics')).body;
    expect(m).toMatch(/tunnat_ha_sync_rejected_total\{reason="bad-mac"\} [1-9]/);
  }, 30_000);

  it('split brain forced (no VRRP between the two): both translate, but never one public port for two hosts', async () => {
    const active = (await pair.active())!;
    await pair.waitSynced(active, 30_000);
    // Drop VRRP on the switch: each gateway stops hearing the other and takes the addresses.
    await inNs(lab.switchNetns, ['nft', '-f', '-'], {
      input: 'table bridge splitbrain {\n  chain between {\n    type filter hook forward priority 0;\n    ip protocol vrrp drop\n  }\n}\n',
    });
    try {
      await waitUntil('both gateways to be active', async () => {
        const s = await Promise.all(pair.gateways.map((g) => g.status().then((x) => x.role).catch(() => null)));
        return s.every((r) => r === 'active');
      }, 10_000, 50);
      // Each LAN host through a different gateway (their ARP entries for the shared address pinned), both
      // from the same ports.
      const macs = await Promise.all(lab.gateways.map(async (g) => JSON.parse((await inNs(g.netns, ['ip', '-j', 'link', 'show', 'lan0'])).stdout)[0].address as string));
      for (let i = 0; i < 2; i++) {
        const h = lab.lanHosts[i]!;
        await inNs(h.netns, ['ip', 'neigh', 'replace', lab.lanVip, 'lladdr', macs[i]!, 'dev', h.dev, 'nud', 'permanent']);
        await inNs(h.netns, ['sh', '-c', `for p in 47001 47002 47003 33300 1500; do echo x | socat -u - UDP4-SENDTO:${lab.inet.address}:9,sourceport=$p; done`]);
      }
      await sleep(500);
      const byPort = new Map<string, Set<string>>();
      for (const g of pair.gateways) {
        for (const f of parseFlows((await unixGet(g.socketPath, '/conntrack')).body)) {
          if (f.protocol !== 'udp') continue;
          const pub = translatedSource(f);
          const key = `${pub.address}:${pub.port}`;
          if (!byPort.has(key)) byPort.set(key, new Set());
          byPort.get(key)!.add(`${f.original.src}:${f.original.srcPort}`);
        }
      }
      const ours = [...byPort.entries()].filter(([, inside]) => [...inside].some((e) => /^192\.168\.1\.1[01]:(4700[123]|33300|1500)$/.test(e)));
      expect(ours.length).toBeGreaterThanOrEqual(10);
      for (const [pub, inside] of ours) expect([...inside], `public ${pub}`).toHaveLength(1);
    } finally {
      await inNs(lab.switchNetns, ['nft', 'delete', 'table', 'bridge', 'splitbrain']);
      for (const h of lab.lanHosts) await inNs(h.netns, ['ip', 'neigh', 'del', lab.lanVip, 'dev', h.dev], { allowFail: true });
    }
    // Healed: one active again, the other resynced as its standby.
    await waitUntil('one active gateway', async () => (await pair.active()) !== null, 15_000, 100);
    await pair.waitSynced((await pair.active())!, 30_000);
  }, 120_000);

  it('nothing with a private address left either gateway on the WAN, at any moment of all the above', async () => {
    let packets = 0;
    for (const c of captures) {
      await c.stop();
      const lines = (await c.text()).split('\n').filter((l) => l.trim() !== '');
      packets += lines.length;
      const leaks = lines.filter((l) => /\b192\.168\.\d+\.\d+/.test(l) || /\b10\.\d+\.\d+\.\d+\b/.test(l) || /\b172\.(1[6-9]|2\d|3[01])\.\d+\.\d+/.test(l));
      expect(leaks, leaks.slice(0, 5).join('\n')).toEqual([]);
    }
    // The capture saw the traffic it judged: thousands of translated packets.
    expect(packets).toBeGreaterThan(1000);
  }, 60_000);
});

// Needs root (as above). The demo a user runs: `tunnat lab --ha --once`, with its checks.
describe.skipIf(!isRoot)('tunnat lab --ha --once', () => {
  it('builds the pair, kills the active tunnat under traffic, prints the outage and the connections that lived, and cleans up', async () => {
    const { runHaLab } = await import('../../src/lab/ha-demo.js');
    const { listNetns, randomId } = await import('../../src/lab/netns.js');
    const id = randomId(6);
    const lines: string[] = [];
    const ok = await runHaLab({ once: true, id, idle: 50, trapSignals: false, log: (l) => lines.push(l) });
    const text = lines.join('\n');
    expect(ok, text).toBe(true);
    expect(text).toMatch(/outage: \d+ ms without UDP echoes/);
    expect(text).toMatch(/TCP connections that lived through it\s+51\/51/);
    expect((await listNetns()).filter((n) => n.includes(id))).toEqual([]);
  }, 120_000);
});

// Needs root (as above). With --user, the data plane runs unprivileged: the root parent reads the pair's
// key and changes the ARP answer when the child's controller asks.
describe.skipIf(!isRoot)('a gateway pair with --user nobody (privilege separation)', () => {
  const cleanup = new Cleanup((l) => console.error(l));
  afterAll(async () => {
    await cleanup.run();
  }, 60_000);

  it('fails over on kill -9 with every connection, the data plane running as nobody on both gateways', async () => {
    const log = (l: string) => console.log(`[ha-pair --user] ${l}`);
    const lab = await buildHaLab({ cleanup, lanHosts: 1, log });
    const pair = await startPair({ lab, cleanup, log, extraArgs: ['--user', 'nobody'] });
    for (const g of pair.gateways) expect(g.router!.output()).toMatch(/"dataplaneUser":"nobody"/);
    const r = await failoverOnce(pair, lab, cleanup, 'kill', { idle: 20, round: 1, log });
    expect(r.to).toBe(1);
    expect(r.connectionsKept).toBe(true);
    expect(r.udpSources).toHaveLength(1);
    // The new active answers ARP for the public address (the parent added it when the child asked).
    const arp = await inNs(lab.gateways[1].netns, ['ip', 'neigh', 'show', 'proxy']);
    expect(arp.stdout).toContain(lab.wanVip);
    expect((await inNs(lab.gateways[0].netns, ['ip', 'neigh', 'show', 'proxy'])).stdout).not.toContain(lab.wanVip);
  }, 120_000);
});
