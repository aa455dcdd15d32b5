/**
 * Failing closed refuses LAN traffic that would leave untranslated, never the gateway's own traffic.
 * A TCP service on the gateway's public address and ping of that address are probed from the WAN
 * every 50 ms while tunnat runs, is stopped for a restart (SIGTERM with --state: the TUN is kept,
 * persistent and with no reader), restores, is killed (kill -9: the TUN is gone, the rules stay),
 * adopts, and stops cleanly. Every probe must be answered, the gateway's own curl to the WAN host must
 * work in each of those states, and a LAN host must stay cut off whenever no tunnat runs.
 *
 * Needs root (namespaces, veths, a TUN).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnIn, type NsProcess } from '../../src/lab/process.js';
import { httpSeenBy } from '../../src/lab/probes.js';
import { startServices } from '../../src/lab/services.js';
import { Cleanup, inNs, isRoot, plainLabUp, startTestRouter, type PlainLab, type TestRouter } from './harness.js';

/** A port like SSH's: below the NAT's mapped range, so only the gateway's own service can own it. */
const SERVICE_PORT = 22;
const PROBE_EVERY_MS = 50;
/** How long each state is probed. */
const STATE_MS = 1500;
/** TCP and ICMP probes together that one stop or kill may lose (see the assertion). */
const MAX_TRANSITION_LOSS = 2;

// Answers every connection with one line and closes it.
const SERVICE = `
const net = require('node:net');
const [host, port] = process.argv.slice(1);
net.createServer((s) => s.end('gateway\\n')).listen(Number(port), host, () => console.log('listening'));
`;

// One TCP probe every EVERY ms; each prints one JSON line. A probe counts as answered only if the line
// came back within a second: a dropped SYN is retransmitted after one, so a slower answer means a loss.
const PROBER = `
const net = require('node:net');
const [host, port, every] = process.argv.slice(1);
let n = 0;
setInterval(() => {
  const id = ++n;
  const t0 = Date.now();
  let got = '';
  let done = false;
  const s = net.connect({ host, port: Number(port) });
  const finish = (err) => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    s.destroy();
    const ms = Date.now() - t0;
    console.log(JSON.stringify({ id, t0, ms, ok: err === null && got === 'gateway\\n' && ms < 1000, err }));
  };
  const timer = setTimeout(() => finish('timeout'), 3000);
  s.setEncoding('utf8');
  s.on('data', (d) => (got += d));
  s.on('end', () => finish(null));
  s.on('error', (e) => finish(e.code || e.message));
}, Number(every));
console.log('probing');
`;

interface Probe {
  id: number;
  t0: number;
  ms: number;
  ok: boolean;
  err: string | null;
}

describe.skipIf(!isRoot)("the gateway's own traffic while tunnat runs, restarts, is killed and stops", () => {
  const cleanup = new Cleanup((l) => console.error(l));
  let lab: PlainLab;
  let dir: string;

  beforeAll(async () => {
    lab = await plainLabUp(cleanup, 1);
    await startServices({ netns: lab.inet, addresses: [lab.inetAddress], cleanup });
    const svc = spawnIn(lab.gw, [process.execPath, '-e', SERVICE, lab.wanAddress, String(SERVICE_PORT)], { label: 'gateway service', cleanup });
    await svc.waitForLine(/listening/, 10_000);
    dir = mkdtempSync(join(tmpdir(), 'tunnat-gw-'));
    cleanup.defer({ label: `remove ${dir}`, sync: () => rmSync(dir, { recursive: true, force: true }) });
  }, 60_000);

  afterAll(async () => {
    await cleanup.run();
  }, 60_000);

  it('answers every probe of its public address and its own curl in every state; the LAN stays cut off while stopped', async () => {
    const state = join(dir, 'flows.json');
    let n = 0;
    const start = (): Promise<TestRouter> => startTestRouter({ gwNetns: lab.gw, id: `go${lab.id}${n++}`, cleanup, args: ['--state', state] });
    // Each state begins with its transition (a stop, a kill, a start) and is steady once that returns.
    const marks: { at: number; what: string; transition: boolean }[] = [];
    const mark = (what: string, transition: boolean): void => {
      marks.push({ at: Date.now(), what, transition });
    };
    const hold = (): Promise<void> => new Promise((r) => setTimeout(r, STATE_MS));

    // The gateway's own TCP to the WAN: its reply comes back to the public address like the service's SYNs.
    const curls: string[] = [];
    const gatewayCurl = async (what: string): Promise<void> => {
      try {
        const seen = await httpSeenBy(lab.gw, lab.inetAddress, { timeoutS: 3 });
        if (seen.remoteAddress !== lab.wanAddress) curls.push(`${what}: the WAN host saw ${seen.remoteAddress}`);
      } catch (err) {
        curls.push(`${what}: ${(err as Error).message.split('\n')[0]}`);
      }
    };
    // While no tunnat runs, LAN traffic must still be refused (fail closed).
    const lanLeaks: string[] = [];
    const lanRefused = async (what: string): Promise<void> => {
      const r = await inNs(lab.hosts[0]!, ['ping', '-n', '-c', '1', '-W', '1', lab.inetAddress], { allowFail: true });
      if (r.exitCode === 0) lanLeaks.push(`${what}: a LAN host reached the WAN with no tunnat running`);
    };

    const first = await start();
    const prober: NsProcess = spawnIn(lab.inet, [process.execPath, '-e', PROBER, lab.wanAddress, String(SERVICE_PORT), String(PROBE_EVERY_MS)], {
      label: 'tcp prober',
      cleanup,
    });
    await prober.waitForLine(/probing/, 10_000);
    const pinger = spawnIn(lab.inet, ['ping', '-n', '-D', '-i', String(PROBE_EVERY_MS / 1000), '-W', '1', lab.wanAddress], { label: 'pinger', cleanup });

    mark('running', false);
    await Promise.all([hold(), gatewayCurl('running')]);

    mark('stopping for a restart (SIGTERM with --state)', true);
    expect(await first.process!.stop('SIGTERM', 10_000), first.output()).toBe(0);
    mark('stopped for a restart', false);
    await Promise.all([hold(), gatewayCurl('stopped for a restart'), lanRefused('stopped for a restart')]);

    mark('starting with --state (restore)', true);
    const second = await start();
    mark('restored', false);
    expect(second.output()).toMatch(/adopted the routing/);
    await Promise.all([hold(), gatewayCurl('restored')]);

    mark('killing (kill -9)', true);
    await second.process!.stop('SIGKILL');
    mark('killed', false);
    await Promise.all([hold(), gatewayCurl('killed'), lanRefused('killed')]);

    mark('starting after kill -9 (adoption)', true);
    const third = await start();
    mark('adopted', false);
    expect(third.output()).toMatch(/adopted the routing/);
    await Promise.all([hold(), gatewayCurl('adopted')]);

    mark('stopping (SIGINT)', true);
    expect(await third.process!.stop('SIGINT', 10_000), third.output()).toBe(0);
    mark('stopped', false);
    await Promise.all([hold(), gatewayCurl('stopped'), lanRefused('stopped')]);
    mark('end', false);

    await prober.stop('SIGTERM', 3_000);
    await pinger.stop('SIGINT', 3_000);

    // The states a loss sent between `from` and `to` may have happened in; a transition among them is blamed.
    const statesDuring = (from: number, to: number) => marks.filter((m, i) => m.at <= to && (marks[i + 1]?.at ?? Infinity) >= from);
    const probes = prober
      .output()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      // A probe still open when the prober stopped printed nothing, and is not counted.
      .map((l) => JSON.parse(l) as Probe);
    const tcpLost = probes.filter((p) => !p.ok).map((p) => ({ from: p.t0, to: p.t0, what: `tcp probe ${p.id}: ${p.err ?? `${p.ms} ms`}` }));

    // Echo replies by sequence number, with the time ping printed each; a request without its reply was
    // sent between the replies before and after it.
    const replies = new Map([...pinger.output().matchAll(/^\[(\d+\.\d+)\].*icmp_seq=(\d+) ttl=/gm)].map((m) => [Number(m[2]), Number(m[1]) * 1000]));
    const last = Math.max(0, ...replies.keys());
    const pingLost: { from: number; to: number; what: string }[] = [];
    for (let seq = 1; seq <= last; seq++) {
      if (replies.has(seq)) continue;
      let before = seq - 1;
      while (before > 0 && !replies.has(before)) before--;
      let after = seq + 1;
      while (!replies.has(after)) after++;
      pingLost.push({ from: replies.get(before) ?? marks[0]!.at, to: replies.get(after)!, what: `echo request ${seq}` });
    }

    // A transition may lose what the kernel had already routed into the TUN when tunnat stopped reading
    // it (the device's queue is dropped with it); a steady state loses nothing.
    const steady: string[] = [];
    const perTransition = new Map<string, number>();
    for (const l of [...tcpLost, ...pingLost]) {
      const states = statesDuring(l.from, l.to);
      const t = states.find((m) => m.transition);
      if (t) perTransition.set(t.what, (perTransition.get(t.what) ?? 0) + 1);
      else steady.push(`${l.what} (${states.map((m) => m.what).join(', ')})`);
    }
    const summary = `${probes.length} TCP probes, ${replies.size} echo replies; lost in transitions: ${JSON.stringify([...perTransition])}`;
    const expected = (marks.at(-1)!.at - marks[0]!.at) / PROBE_EVERY_MS / 2;
    expect(probes.length, summary).toBeGreaterThan(expected);
    expect(last, summary).toBeGreaterThan(expected);
    expect(steady, summary).toEqual([]);
    for (const [what, lost] of perTransition) expect(lost, `${what}: ${summary}`).toBeLessThanOrEqual(MAX_TRANSITION_LOSS);
    expect(curls).toEqual([]);
    expect(lanLeaks).toEqual([]);
  }, 120_000);
});
