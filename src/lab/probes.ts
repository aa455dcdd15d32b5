/**
 * Client-side checks run from inside a lab namespace with real programs: curl for HTTP, ping for
 * ICMP, and a few lines of node dgram for a UDP request/response (socat would wait out its
 * half-close timeout on every request).
 */
import { run, type RunResult } from '../util/exec.js';
import { parseEcho, parseSeenBy, type SeenBy } from './services.js';

export interface HttpProbeOptions {
  /** Bind this local port (curl --local-port). */
  localPort?: number;
  timeoutS?: number;
}

/** curl argv for a GET that prints only the body (pure, for tests). */
export function curlArgv(url: string, opts: HttpProbeOptions = {}): string[] {
  const argv = ['curl', '-sS', '--fail', '--noproxy', '*', '--max-time', String(opts.timeoutS ?? 5)];
  if (opts.localPort !== undefined) argv.push('--local-port', String(opts.localPort));
  argv.push(url);
  return argv;
}

/** GET the lab HTTP service's `/` from `netns` and return what the server saw. */
export async function httpSeenBy(netns: string, host: string, opts: HttpProbeOptions & { port?: number } = {}): Promise<SeenBy> {
  const url = `http://${host}${opts.port !== undefined && opts.port !== 80 ? `:${opts.port}` : ''}/`;
  const r = await run(curlArgv(url, opts), { netns, timeoutMs: ((opts.timeoutS ?? 5) + 5) * 1000 });
  return parseSeenBy(r.stdout);
}

const UDP_CLIENT = String.raw`
'use strict';
const dgram = require('node:dgram');
const [host, port, payload, sourcePort, timeoutMs] = process.argv.slice(1);
const sock = dgram.createSocket('udp4');
const timer = setTimeout(() => { console.error('no reply within ' + timeoutMs + ' ms'); process.exit(2); }, Number(timeoutMs));
sock.on('error', (err) => { console.error(err.message); process.exit(1); });
sock.on('message', (msg) => { clearTimeout(timer); process.stdout.write(msg); sock.close(); });
sock.bind(Number(sourcePort), () => sock.send(Buffer.from(payload), Number(port), host));
`;

export interface UdpProbeOptions {
  /** Source port to bind (0: any). */
  sourcePort?: number;
  timeoutMs?: number;
}

/** argv of the UDP request/response client (pure, for tests). */
export function udpClientArgv(host: string, port: number, payload: string, opts: UdpProbeOptions = {}): string[] {
  return [process.execPath, '-e', UDP_CLIENT, host, String(port), payload, String(opts.sourcePort ?? 0), String(opts.timeoutMs ?? 3000)];
}

/** Send one datagram to the lab's UDP echo service from `netns`; returns the sender as the server saw it. */
export async function udpEcho(
  netns: string,
  host: string,
  port: number,
  payload: string,
  opts: UdpProbeOptions = {},
): Promise<{ address: string; port: number; payload: string }> {
  const r = await run(udpClientArgv(host, port, payload, opts), { netns, timeoutMs: (opts.timeoutMs ?? 3000) + 10_000 });
  return parseEcho(r.stdout);
}

export interface PingResult {
  transmitted: number;
  received: number;
  output: string;
}

/** Parse ping's summary line ("3 packets transmitted, 3 received, ..."). */
export function parsePing(output: string): PingResult {
  const m = /(\d+) packets transmitted, (\d+) (?:packets )?received/.exec(output);
  if (!m) return { transmitted: 0, received: 0, output };
  return { transmitted: Number(m[1]), received: Number(m[2]), output };
}

/** ping `host` `count` times from `netns` (does not throw on loss: check `received`). */
export async function ping(netns: string, host: string, count = 3, extra: string[] = []): Promise<PingResult> {
  const r: RunResult = await run(['ping', '-n', '-c', String(count), '-i', '0.2', '-W', '2', ...extra, host], {
    netns,
    allowFail: true,
    timeoutMs: count * 2000 + 5000,
  });
  return parsePing(r.stdout + r.stderr);
}
