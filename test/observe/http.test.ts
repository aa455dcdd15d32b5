import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import http from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { udpPacket, icmpEcho } from '../../src/wire/build.js';
import { startHttp } from '../../src/observe/http.js';
import { createRegistry } from '../../src/metrics/registry.js';
import { listFlows } from '../../src/conntrack/listing.js';
import { sseConnect } from '../../src/observe/sse.js';
import { cmdConntrack } from '../../src/cli/conntrack-cmd.js';
import { cmdStats } from '../../src/cli/stats-cmd.js';
import { cmdTrace } from '../../src/cli/trace-cmd.js';
import type { CliIo } from '../../src/observe/cli.js';
import { observed, HOST_A, HOST_B, REMOTE } from './helpers.js';

/**
 * The router's HTTP side with the observability routes, on a unix socket in a temporary directory
 * (no TCP port, nothing outside this process): streams, their clients going away, slow clients, and
 * the commands that read them.
 */
type Env = ReturnType<typeof observed> & { sock: string; target: string; close: () => Promise<void> };
let env: Env;
let dir: string;

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), 'tunnat-http-'));
  const o = observed();
  const sock = join(dir, 'r.sock');
  const registry = createRegistry(o.nat, o.loop, { hosts: o.obs.hosts, loopMetrics: o.obs.loopMetrics, observe: o.obs, defaultMetrics: false });
  const close = await startHttp(
    { registry, conntrack: () => listFlows(o.nat.flows, o.clock()), handlers: o.obs.handlers() },
    { tcp: null, unixPath: sock },
  );
  env = { ...o, sock, target: `unix:${sock}`, close };
});

afterEach(async () => {
  await env.obs.close();
  await env.close();
  rmSync(dir, { recursive: true, force: true });
});

function get(path: string): Promise<{ status: number; body: string; type: string }> {
  return new Promise((resolve, reject) => {
    http
      .get({ socketPath: env.sock, path }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body, type: String(res.headers['content-type']) }));
      })
      .on('error', reject);
  });
}

async function until(what: string, cond: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

function capture(): CliIo & { stdout: string[]; stderr: string[] } {
  const stdout: string[] = [];
  const stderr: string[] = [];
  return { stdout, stderr, out: (l) => stdout.push(l), err: (l) => stderr.push(l) };
}

const ping = (seq: number, src = HOST_A) => icmpEcho({ src, dst: REMOTE, type: 8, identifier: 500, sequence: seq });

describe('HTTP streams', () => {
  it('serves the live page and its snapshots with the flows and per-host traffic', async () => {
    env.run(udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 41234, dstPort: 7, payload: Buffer.from('page') }));
    const page = await get('/');
    expect(page.status).toBe(200);
    expect(page.type).toContain('text/html');
    expect(page.body).toContain("new EventSource('live')");
    const snaps: string[] = [];
    const conn = await sseConnect(env.target, '/live', (ev, data) => ev === 'snapshot' && snaps.push(data));
    await until('a snapshot', () => snaps.length > 0);
    conn.close();
    const snap = JSON.parse(snaps[0]!) as { flows: { original: { srcPort: number } }[]; hosts: { host: string; bytes: { outbound: number } }[] };
    expect(snap.flows.map((f) => f.original.srcPort)).toContain(41234);
    expect(snap.hosts).toContainEqual(expect.objectContaining({ host: '192.168.1.10', bytes: { outbound: 32, inbound: 0 } }));
    await until('the page client to be gone', () => env.obs.clients().live === 0);
  });

  it('streams flow events and detaches when the client disconnects mid-stream', async () => {
    const base = env.nat.observers.length;
    const events: string[] = [];
    const conn = await sseConnect(env.target, '/events?proto=udp', (ev, data) => ev === 'flow' && events.push(data));
    await until('the subscription', () => env.obs.events.subscribers === 1);
    env.run(ping(1), udpPacket({ src: HOST_B, dst: REMOTE, srcPort: 999, dstPort: 53, payload: Buffer.from('q') }));
    await until('an event', () => events.length === 1);
    expect(JSON.parse(events[0]!)).toMatchObject({ type: 'new', flow: { protocol: 'udp', original: { src: '192.168.1.11', srcPort: 999 } } });
    conn.close();
    await until('the subscription to end', () => env.obs.events.subscribers === 0);
    expect(env.nat.observers.length).toBe(base);
    // The router is unaffected.
    expect(env.run(ping(2))).toHaveLength(1);
    expect(env.lines.some((l) => l.includes('events client detached'))).toBe(true);
  });

  it('gives the packet loop its tap back when a trace client vanishes', async () => {
    const conn = await sseConnect(env.target, '/trace?filter=icmp&rate=50', () => {});
    await until('the tracer', () => env.loop.tap !== null);
    env.run(ping(1));
    conn.close();
    await until('the tap to be removed', () => env.loop.tap === null);
    expect(env.run(ping(2))).toHaveLength(1);
  });

  it('drops and counts for a client that does not read, without ever holding up the loop', async () => {
    let res!: http.IncomingMessage;
    const req = http.get({ socketPath: env.sock, path: '/trace?rate=1000' }, (r) => {
      res = r;
      r.pause();
    });
    await until('the slow client', () => env.loop.tap !== null && res !== undefined);
    const t0 = performance.now();
    for (let round = 0; round < 12; round++) {
      env.advance(1000);
      const pkts = Array.from({ length: 400 }, (_, i) => ping(round * 400 + i));
      expect(env.run(...pkts)).toHaveLength(400);
      await new Promise((r) => setImmediate(r));
    }
    const elapsed = performance.now() - t0;
    expect(env.obs.dropped().trace).toBeGreaterThan(0);
    expect(elapsed).toBeLessThan(20_000);
    // When it reads again it is told how much it missed.
    let text = '';
    res.setEncoding('utf8');
    res.on('data', (c: string) => (text += c));
    res.resume();
    await until('the dropped notice', () => text.includes('event: dropped'), 10_000);
    expect(text).toMatch(/event: dropped\ndata: \{"count":\d+\}/);
    req.destroy();
  }, 30_000);

  it('answers a bad filter with 400 and the reason', async () => {
    expect(await get('/trace?filter=bogus')).toMatchObject({ status: 400, body: expect.stringContaining('unknown word "bogus"') });
    expect(await get('/trace?rate=0')).toMatchObject({ status: 400, body: expect.stringContaining('rate') });
    expect(await get('/events?state=OPEN')).toMatchObject({ status: 400, body: expect.stringContaining('--state') });
    expect(await get('/conntrack?proto=sctp')).toMatchObject({ status: 400 });
    expect(env.loop.tap).toBeNull();
  });
});

describe('tunnat conntrack / stats / trace against a router', () => {
  it('lists flows, filtered, as text and JSON', async () => {
    env.run(ping(1), udpPacket({ src: HOST_B, dst: REMOTE, srcPort: 4242, dstPort: 53, payload: Buffer.from('q') }));
    const io = capture();
    expect(await cmdConntrack(['--http', env.target, '--proto', 'udp'], io)).toBe(0);
    expect(io.stdout).toHaveLength(1);
    expect(io.stdout[0]).toMatch(/^udp .*UNREPLIED .*src=192\.168\.1\.11 dst=203\.0\.113\.2 sport=4242 dport=53/);
    expect(io.stderr).toEqual(['tunnat: 1 flow entries listed (2 in the table)']);
    const js = capture();
    expect(await cmdConntrack(['--http', env.target, '--src', '192.168.1.10', '--json'], js)).toBe(0);
    expect(JSON.parse(js.stdout.join('\n'))).toMatchObject([{ protocol: 'icmp', original: { src: '192.168.1.10' } }]);
  });

  it('exits 2 on an unknown filter and 1 when no router answers, with one clear line', async () => {
    const bad = capture();
    expect(await cmdConntrack(['--http', env.target, '--state', 'open'], bad)).toBe(2);
    expect(bad.stderr[0]).toBe('tunnat: --state: unknown state "open" (known: NONE, SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE, SYN_SENT2, UNREPLIED, REPLIED, ASSURED, COOKIE_WAIT, COOKIE_ECHOED, SHUTDOWN, CLOSED, HEARTBEAT_SENT)');
    const bad2 = capture();
    expect(await cmdTrace(['--http', env.target, 'udp', 'prot', '53'], bad2)).toBe(2);
    expect(bad2.stderr[0]).toMatch(/unknown word "prot"/);
    const bad3 = capture();
    expect(await cmdConntrack(['--count', '2'], bad3)).toBe(2);
    for (const cmd of [cmdConntrack, cmdStats, cmdTrace]) {
      const gone = capture();
      expect(await cmd(['--http', `unix:${join(dir, 'nobody.sock')}`], gone)).toBe(1);
      expect(gone.stderr[0]).toMatch(/^tunnat: no tunnat router reachable at unix:.*nobody\.sock .*is `tunnat run` running/);
    }
    const port = capture();
    expect(await cmdStats(['--http', 'localhost'], port)).toBe(1);
    expect(port.stderr[0]).toMatch(/expected HOST:PORT or unix:PATH/);
  });

  it('prints the counters like conntrack -S', async () => {
    env.run(ping(1), ping(2, HOST_B), Buffer.from([0x45, 0]));
    const io = capture();
    expect(await cmdStats(['--http', env.target], io)).toBe(0);
    const text = io.stdout.join('\n');
    expect(text).toMatch(/^packets +outbound=2 inbound=0 local=0/m);
    expect(text).toMatch(/^drops +malformed=1 /m);
    expect(text).toMatch(/^flows +total=2 max=1024/m);
    expect(text).toMatch(/^host 192\.168\.1\.10 +packets=1\/0 bytes=28\/0 flows=1/m);
    const js = capture();
    expect(await cmdStats(['--http', env.target, '--json'], js)).toBe(0);
    expect(JSON.parse(js.stdout.join('\n'))).toMatchObject({ flowEvents: { created: 2 }, ports: { icmp: { used: 2 } } });
  });

  it('follows events and traces packets until --count', async () => {
    const ev = capture();
    const events = cmdConntrack(['--http', env.target, '--events', '--count', '1', '--proto', 'icmp'], ev);
    const tr = capture();
    const trace = cmdTrace(['--http', env.target, 'icmp', 'and', 'host', '192.168.1.10', '--count', '1', '--rate', '5'], tr);
    await until('both subscriptions', () => env.obs.events.subscribers === 1 && env.obs.tracer.subscribers === 1);
    env.run(icmpEcho({ src: HOST_B, dst: REMOTE, type: 8, identifier: 501, sequence: 1 }), ping(8));
    expect(await events).toBe(0);
    expect(await trace).toBe(0);
    expect(ev.stdout).toHaveLength(1);
    expect(ev.stdout[0]).toMatch(/^ +\[NEW\] icmp .*src=192\.168\.1\.11/);
    const t = tr.stdout.join('\n');
    expect(t).toMatch(/^#1 \S+ OUTBOUND +icmp 192\.168\.1\.10 → 203\.0\.113\.2 id 500 type 8\/0/m);
    expect(t).toContain('identifier 500 was free on 203.0.113.1');
    expect(t).not.toContain('192.168.1.11');
    await until('the streams to close', () => env.obs.events.subscribers === 0 && env.loop.tap === null);
  });
});
