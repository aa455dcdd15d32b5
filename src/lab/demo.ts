/**
 * `tunnat lab`: build a namespace lab, start a NAT engine in its gateway, send real traffic from
 * the LAN hosts, check what the internet host saw, and show the translation table. With `once` it
 * then cleans up and reports success; otherwise it keeps the lab up and exposes the router's HTTP
 * endpoint on the host's loopback until SIGINT/SIGTERM.
 */
import { createServer as createHttpServer } from 'node:http';
import { connect, createServer, type Server } from 'node:net';
import { formatFlowTable, type FlowJson } from './flows.js';
import { Cleanup, type SignalTrap } from './cleanup.js';
import { httpSeenBy, ping, udpEcho } from './probes.js';
import { startRouter, type LabEngine, type RouterHandle } from './router.js';
import { startServices } from './services.js';
import { buildLab, type Lab } from './topology.js';

export interface RunLabOptions {
  /** Run the demo once, clean up, and resolve with whether every step worked. */
  once?: boolean;
  engine?: LabEngine;
  /** Host loopback port for the router's HTTP endpoint when staying up (default 9100; 0 picks one). */
  httpPort?: number;
  log?: (line: string) => void;
  lanHosts?: number;
  /** Unique id for names (default random). */
  id?: string;
  /** The compiled CLI to run as the router (default: this checkout's dist/src/cli/main.js). */
  cliPath?: string;
  /** Handle SIGINT/SIGTERM (default true); tests that run `once` may turn it off. */
  trapSignals?: boolean;
  /** Called once the lab is up and serving (not with `once`); the URL of the host-side endpoint. */
  onServing?: (url: string) => void;
  /** Stop serving when this resolves (besides SIGINT/SIGTERM). */
  until?: Promise<unknown>;
}

interface StepResult {
  label: string;
  ok: boolean;
  detail: string;
}

const OK = '✓';
const FAIL = '✗';

/** One checked demo step's output line (pure, for tests). */
export function formatCheck(r: StepResult): string {
  return `  ${r.ok ? OK : FAIL} ${r.label.padEnd(48)} ${r.detail}`;
}

/** Run the lab demo; resolves true when every check passed (and, without `once`, after the signal). */
export async function runLab(opts: RunLabOptions = {}): Promise<boolean> {
  const log = opts.log ?? ((line: string) => console.log(line));
  const engine = opts.engine ?? 'userspace';
  const cleanup = new Cleanup(log);
  const trap: SignalTrap | null = opts.trapSignals === false ? null : cleanup.trapSignals();
  const results: StepResult[] = [];
  let server: Server | null = null;
  let router: RouterHandle | null = null;

  const check = async (label: string, fn: () => Promise<string>): Promise<boolean> => {
    let r: StepResult;
    try {
      r = { label, ok: true, detail: await fn() };
    } catch (err) {
      r = { label, ok: false, detail: (err as Error).message.split('\n')[0] ?? 'failed' };
    }
    results.push(r);
    log(formatCheck(r));
    return r.ok;
  };

  try {
    log(`tunnat lab — engine: ${engine}`);
    log('');
    log('[1/5] Building the network-namespace lab (nothing is changed outside these namespaces)');
    const lab: Lab = await buildLab({
      ...(opts.id ? { id: opts.id } : {}),
      lanHosts: opts.lanHosts ?? 2,
      cleanup,
      log: (l) => log(`  ${l}`),
    });

    log('');
    log(`[2/5] Starting services on the internet host ${lab.inet.address}`);
    const services = await startServices({ netns: lab.inet.netns, addresses: lab.inet.addresses, cleanup, log: (l) => log(`  ${l}`) });

    log('');
    log(`[3/5] Starting the NAT engine in ${lab.gw.netns} (${lab.gw.lanSubnet} → ${lab.gw.wanDev} ${lab.gw.wanAddress})`);
    router = await startRouter({
      engine,
      netns: lab.gw.netns,
      internal: lab.gw.lanSubnet,
      external: lab.gw.wanDev,
      id: lab.id,
      cleanup,
      log: (l) => log(`  ${l}`),
      ...(opts.cliPath ? { cliPath: opts.cliPath } : {}),
    });
    log(`  ${OK} ready${router.socketPath ? ` (answering on ${router.socketPath})` : ''}`);

    log('');
    log('[4/5] Traffic from the LAN hosts, checked at the internet host');
    const pub = lab.gw.wanAddress;
    for (const h of lab.lanHosts) {
      const who = `${h.netns.replace(/^.*-/, '')} ${h.address}`;
      await check(`${who}  HTTP GET http://${lab.inet.address}/`, async () => {
        const seen = await httpSeenBy(h.netns, lab.inet.address);
        if (seen.remoteAddress !== pub) throw new Error(`server saw ${seen.remoteAddress}, expected ${pub}`);
        return `server saw ${seen.remoteAddress}:${seen.remotePort}`;
      });
      await check(`${who}  UDP  → ${lab.inet.address}:${services.udpPort}`, async () => {
        const payload = `hello from ${h.address}`;
        const echo = await udpEcho(h.netns, lab.inet.address, services.udpPort, payload);
        if (echo.address !== pub) throw new Error(`server saw ${echo.address}, expected ${pub}`);
        if (echo.payload !== payload) throw new Error(`echo came back as ${JSON.stringify(echo.payload)}`);
        return `server saw ${echo.address}:${echo.port}, echo came back`;
      });
      await check(`${who}  ICMP ping ${lab.inet.address}`, async () => {
        const p = await ping(h.netns, lab.inet.address, 3);
        if (p.received !== p.transmitted || p.transmitted === 0) throw new Error(`${p.received}/${p.transmitted} replies`);
        return `${p.received}/${p.transmitted} replies`;
      });
    }

    log('');
    log(`[5/5] Translations in the ${engine === 'userspace' ? "router's table (GET /conntrack)" : "kernel's table (conntrack -L)"}`);
    let flows: FlowJson[] = [];
    await check('read the flow table', async () => {
      flows = await (router as RouterHandle).flows();
      const fromLan = flows.filter((f) => f.original.src.startsWith('192.168.'));
      const bad = fromLan.filter((f) => f.reply.dst !== pub);
      if (fromLan.length === 0) throw new Error('no flows from the LAN');
      if (bad.length > 0) throw new Error(`${bad.length} flow(s) not translated to ${pub}`);
      return `${fromLan.length} LAN flow(s), all translated to ${pub}`;
    });
    for (const line of formatFlowTable(flows).split('\n')) log(`  ${line}`);

    const failed = results.filter((r) => !r.ok);
    log('');
    log(failed.length === 0 ? `All ${results.length} checks passed.` : `${failed.length} of ${results.length} checks FAILED.`);
    if (failed.length > 0 && router.process) {
      const tail = router.output().trimEnd().split('\n').slice(-20);
      if (tail.join('').length > 0) {
        log('Last lines from the router:');
        for (const l of tail) log(`  | ${l}`);
      }
    }

    if (opts.once) return failed.length === 0;

    server = await exposeOnLoopback(router, opts.httpPort ?? 9100);
    const addr = server.address();
    const url = `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : opts.httpPort ?? 9100}`;
    log('');
    log(`The lab stays up. Router endpoint: ${url}/conntrack${router.engine === 'userspace' ? ` and ${url}/metrics` : ''}`);
    log(`Try: ip netns exec ${lab.lanHosts[0]?.netns ?? lab.gw.netns} curl http://${lab.inet.address}/`);
    log('Press Ctrl-C to remove everything.');
    opts.onServing?.(url);
    const waits: Promise<unknown>[] = [];
    if (trap) waits.push(trap.wait());
    if (opts.until) waits.push(opts.until);
    if (waits.length > 0) await Promise.race(waits);
    return failed.length === 0;
  } catch (err) {
    log('');
    log(`${FAIL} ${(err as Error).message}`);
    return false;
  } finally {
    log('');
    log('Cleaning up: stopping the router and services, deleting the namespaces.');
    if (server) await new Promise<void>((resolve) => server!.close(() => resolve()));
    if (router) {
      const code = await router.stop().catch(() => -1);
      if (code !== 0 && router.process) log(`  the router exited with code ${code}`);
    }
    await cleanup.run();
    trap?.release();
    log('Done.');
  }
}

/**
 * Serve the router's HTTP endpoint on the host's 127.0.0.1:<port>, from this process: the router's
 * own listener is on the gateway namespace's loopback, which the host cannot reach.
 */
async function exposeOnLoopback(router: RouterHandle, port: number): Promise<Server> {
  let server: Server;
  const socketPath = router.socketPath;
  if (socketPath) {
    server = createServer((client) => {
      const upstream = connect(socketPath);
      client.pipe(upstream).pipe(client);
      const close = (): void => {
        client.destroy();
        upstream.destroy();
      };
      client.on('error', close);
      upstream.on('error', close);
    });
  } else {
    // The kernel stand-in has no endpoint of its own: answer /conntrack from `conntrack -L`.
    server = createHttpServer((req, res) => {
      if (req.url !== '/conntrack') {
        res.writeHead(404).end('the kernel stand-in serves only /conntrack\n');
        return;
      }
      router.flows().then(
        (flows) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(flows)),
        (err: Error) => res.writeHead(500).end(`${err.message}\n`),
      );
    });
  }
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
  return server;
}
