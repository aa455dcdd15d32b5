/**
 * Services on the lab's internet host, so tests can see a translation from the far side:
 * - HTTP on :80 (all addresses): `GET /` answers JSON with the client address and port the server
 *   saw; `GET /files/<name>` serves a file from `filesDir` (large transfers).
 * - UDP echo on :7, one socket per address (so a reply leaves from the address it was sent to):
 *   replies `<address>:<port> <payload>` with the sender as the server saw it.
 *
 * The program is plain JavaScript run with `node -e` inside the namespace, so it needs no build step
 * and no project code; it prints "ready" once every socket listens.
 */
import { Cleanup } from './cleanup.js';
import { NsProcess, spawnIn } from './process.js';

/** What `GET /` on the lab HTTP service answers. */
export interface SeenBy {
  remoteAddress: string;
  remotePort: number;
  localAddress: string;
  localPort: number;
}

export interface ServicesOptions {
  netns: string;
  /** Addresses to bind UDP echo sockets to (HTTP listens on all of them via 0.0.0.0). */
  addresses: string[];
  httpPort?: number;
  udpPort?: number;
  /** Directory whose files `GET /files/<name>` serves. */
  filesDir?: string;
  cleanup?: Cleanup;
  log?: (line: string) => void;
  /** How long to wait for "ready" (default 10 s). */
  readyTimeoutMs?: number;
}

export interface Services {
  httpPort: number;
  udpPort: number;
  process: NsProcess;
  stop(): Promise<void>;
}

const SERVICE_PROGRAM = String.raw`
'use strict';
const http = require('node:http');
const dgram = require('node:dgram');
const fs = require('node:fs');
const path = require('node:path');
const cfg = JSON.parse(process.argv[1]);
let pending = 1 + cfg.addresses.length;
const ready = () => { if (--pending === 0) console.log('ready'); };
const fail = (what) => (err) => { console.error(what + ': ' + err.message); process.exit(1); };

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  if (url.pathname === '/') {
    const body = JSON.stringify({
      remoteAddress: req.socket.remoteAddress.replace(/^::ffff:/, ''),
      remotePort: req.socket.remotePort,
      localAddress: req.socket.localAddress.replace(/^::ffff:/, ''),
      localPort: req.socket.localPort,
    });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
    return;
  }
  const m = /^\/files\/([A-Za-z0-9._-]+)$/.exec(url.pathname);
  if (m && cfg.filesDir) {
    const file = path.join(cfg.filesDir, m[1]);
    fs.stat(file, (err, st) => {
      if (err || !st.isFile()) { res.writeHead(404); res.end('no such file\n'); return; }
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': st.size });
      fs.createReadStream(file).pipe(res);
    });
    return;
  }
  res.writeHead(404);
  res.end('not found\n');
});
server.on('error', fail('http'));
server.listen(cfg.httpPort, '0.0.0.0', ready);

for (const address of cfg.addresses) {
  const sock = dgram.createSocket('udp4');
  sock.on('error', fail('udp ' + address));
  sock.on('message', (msg, rinfo) => {
    const reply = Buffer.concat([Buffer.from(rinfo.address + ':' + rinfo.port + ' '), msg]);
    sock.send(reply, rinfo.port, rinfo.address);
  });
  sock.bind(cfg.udpPort, address, ready);
}
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
`;

/** Start the HTTP and UDP echo services in `netns` and wait until they listen. */
export async function startServices(opts: ServicesOptions): Promise<Services> {
  const httpPort = opts.httpPort ?? 80;
  const udpPort = opts.udpPort ?? 7;
  const cfg = { addresses: opts.addresses, httpPort, udpPort, filesDir: opts.filesDir ?? null };
  const proc = spawnIn(opts.netns, [process.execPath, '-e', SERVICE_PROGRAM, JSON.stringify(cfg)], {
    label: 'lab services',
    ...(opts.cleanup ? { cleanup: opts.cleanup } : {}),
  });
  try {
    await proc.waitForLine(/^ready$/, opts.readyTimeoutMs ?? 10_000);
  } catch (err) {
    await proc.stop('SIGKILL');
    throw err;
  }
  opts.log?.(`services in ${opts.netns}: HTTP :${httpPort}, UDP echo :${udpPort} on ${opts.addresses.join(', ')}`);
  return {
    httpPort,
    udpPort,
    process: proc,
    stop: async () => {
      await proc.stop();
    },
  };
}

/** Parse the HTTP service's answer; throws with the text when it is not what the service sends. */
export function parseSeenBy(text: string): SeenBy {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw new Error(`HTTP service answer is not JSON: ${JSON.stringify(text.slice(0, 200))}`);
  }
  const o = v as Partial<Record<keyof SeenBy, unknown>>;
  if (
    typeof o.remoteAddress !== 'string' ||
    typeof o.remotePort !== 'number' ||
    typeof o.localAddress !== 'string' ||
    typeof o.localPort !== 'number'
  ) {
    throw new Error(`HTTP service answer lacks address fields: ${text.slice(0, 200)}`);
  }
  return { remoteAddress: o.remoteAddress, remotePort: o.remotePort, localAddress: o.localAddress, localPort: o.localPort };
}

/** Parse a UDP echo reply `<address>:<port> <payload>`. */
export function parseEcho(text: string): { address: string; port: number; payload: string } {
  const m = /^(\d{1,3}(?:\.\d{1,3}){3}):(\d{1,5}) ([\s\S]*)$/.exec(text);
  if (!m) throw new Error(`UDP echo reply is not "<address>:<port> <payload>": ${JSON.stringify(text.slice(0, 200))}`);
  return { address: m[1]!, port: Number(m[2]), payload: m[3]! };
}
