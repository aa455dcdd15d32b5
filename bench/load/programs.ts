/**
 * The load benchmark's own traffic programs, plain JavaScript run with `node -e` inside a lab
 * namespace (no build step, no project code, the same program for every engine):
 *
 * - conn server (internet host): answers one line per connection and closes first, so the client
 *   side never holds TIME_WAIT and the run is not limited by the client's ephemeral ports.
 * - conn client (LAN): connect, one request, read the answer, close; a fixed number of these in
 *   flight for a fixed time, spread over several source addresses.
 * - flow sink (internet host): counts the distinct flows that arrived, by the flow number each datagram
 *   carries (so a flow the NAT gave a second public port, after losing its first entry, still counts
 *   once), the distinct (source address, source port, destination port) triples as they left the NAT,
 *   and any source that is not the expected one.
 * - flow opener (LAN): one datagram per flow from many (address, port) endpoints, paced; a second
 *   pass sends every flow's datagram again, so a datagram lost while the engine was busy setting
 *   up flows does not count as a flow it cannot hold.
 *
 * Servers print `ready` once listening; every program ends with one `RESULT {json}` line (servers
 * on SIGTERM). Argument lists are built by the pure *Argv functions so the smoke test sees them.
 */

const CONN_SERVER = String.raw`
'use strict';
const net = require('node:net');
const [host, port, expect] = process.argv.slice(1);
const allowed = expect.split(',');
let accepted = 0, answered = 0, wrongSource = 0, lastWrong = null;
const server = net.createServer((s) => {
  accepted++;
  const src = (s.remoteAddress || '').replace(/^::ffff:/, '');
  if (expect !== '-' && !allowed.includes(src)) { wrongSource++; lastWrong = src; }
  s.setNoDelay(true);
  s.on('error', () => {});
  s.once('data', () => { answered++; s.end('OK\n'); });
});
server.on('error', (e) => { console.error('server: ' + e.message); process.exit(1); });
server.listen({ host, port: Number(port), backlog: 4096 }, () => console.log('ready'));
process.on('SIGTERM', () => {
  console.log('RESULT ' + JSON.stringify({ accepted, answered, wrongSource, lastWrong }));
  process.exit(0);
});
`;

const CONN_CLIENT = String.raw`
'use strict';
const net = require('node:net');
const [host, port, durationMs, concurrency, addrs] = process.argv.slice(1);
const locals = addrs.split(',');
const start = Date.now();
const deadline = start + Number(durationMs);
let completed = 0, late = 0, errors = 0, firstError = null, n = 0, active = Number(concurrency);
const finish = () => {
  console.log('RESULT ' + JSON.stringify({ completed, late, errors, firstError, durationMs: Number(durationMs), elapsedMs: Date.now() - start }));
};
const one = () => {
  if (Date.now() >= deadline) { if (--active === 0) finish(); return; }
  const s = net.connect({ host, port: Number(port), localAddress: locals[n++ % locals.length] });
  let answered = false, failed = false;
  s.setNoDelay(true);
  s.setTimeout(5000, () => s.destroy(new Error('timeout')));
  s.on('connect', () => s.write('GET\n'));
  s.on('data', () => { answered = true; });
  s.on('error', (e) => { failed = true; errors++; if (firstError === null) firstError = e.code || e.message; });
  s.on('close', () => {
    if (answered && !failed) { if (Date.now() <= deadline) completed++; else late++; }
    else if (!failed) { errors++; if (firstError === null) firstError = 'closed without an answer'; }
    setImmediate(one);
  });
};
for (let i = 0; i < active; i++) one();
`;

const FLOW_SINK = String.raw`
'use strict';
const dgram = require('node:dgram');
const [host, portList, expect, endpointCount] = process.argv.slice(1);
const ports = portList.split(',').map(Number);
const endpoints = Number(endpointCount);
const allowed = expect.split(',');
const seen = new Map();
const flowSeen = new Uint8Array(endpoints * ports.length);
let datagrams = 0, distinct = 0, tuples = 0, wrongSource = 0, lastWrong = null, pending = ports.length;
ports.forEach((p, idx) => {
  const s = dgram.createSocket({ type: 'udp4', recvBufferSize: 8 << 20 });
  s.on('error', (e) => { console.error('sink: ' + e.message); process.exit(1); });
  s.on('message', (m, r) => {
    datagrams++;
    if (expect !== '-' && !allowed.includes(r.address)) { wrongSource++; lastWrong = r.address; }
    let bits = seen.get(r.address);
    if (bits === undefined) { bits = new Uint8Array(65536 * ports.length); seen.set(r.address, bits); }
    const k = idx * 65536 + r.port;
    if (bits[k] === 0) { bits[k] = 1; tuples++; }
    const id = m.length >= 4 ? m.readUInt32BE(0) * ports.length + idx : -1;
    if (id >= 0 && id < flowSeen.length && flowSeen[id] === 0) { flowSeen[id] = 1; distinct++; }
  });
  s.bind(p, host, () => { if (--pending === 0) console.log('ready'); });
});
process.on('SIGTERM', () => {
  console.log('RESULT ' + JSON.stringify({ datagrams, distinct, tuples, sources: seen.size, wrongSource, lastWrong }));
  process.exit(0);
});
`;

const FLOW_OPENER = String.raw`
'use strict';
const dgram = require('node:dgram');
const [dst, portList, addrs, firstPort, perAddress, rate, passes] = process.argv.slice(1);
const dports = portList.split(',').map(Number);
const locals = addrs.split(',');
const endpoints = locals.length * Number(perAddress);
const total = endpoints * Number(passes);
// Never more in flight than half a pass, so pass 2 cannot meet an endpoint pass 1 still holds.
const WINDOW = Math.max(1, Math.min(64, Math.floor(endpoints / 2)));
const start = Date.now();
let next = 0, done = 0, datagrams = 0, bindErrors = 0, sendErrors = 0, firstError = null;
const note = (e) => { if (firstError === null) firstError = e.code || e.message; };
const finish = () => {
  console.log('RESULT ' + JSON.stringify({ endpoints, passes: Number(passes), datagrams, bindErrors, sendErrors, firstError, elapsedMs: Date.now() - start }));
  process.exit(0);
};
const one = () => {
  if (next >= total) { if (done === total) finish(); return; }
  // Paced in datagrams per second: a burst far above what a NAT sets up per second would
  // measure queue overflow, not how many flows it can hold.
  const due = start + (datagrams / Number(rate)) * 1000;
  const wait = due - Date.now();
  if (wait > 1) { setTimeout(one, wait); return; }
  const i = next++ % endpoints;
  const address = locals[i % locals.length];
  const port = Number(firstPort) + Math.floor(i / locals.length);
  const s = dgram.createSocket('udp4');
  // The flow number (endpoint, and the sink adds the destination port) leads the payload.
  const payload = Buffer.alloc(16, 0x61);
  payload.writeUInt32BE(i, 0);
  let left = dports.length;
  const closeOne = () => { s.close(); done++; one(); };
  s.on('error', (e) => { bindErrors++; note(e); try { s.close(); } catch {} done++; one(); });
  s.bind({ address, port, exclusive: true }, () => {
    for (const d of dports) {
      datagrams++;
      s.send(payload, d, dst, (err) => {
        if (err) { sendErrors++; note(err); }
        if (--left === 0) closeOne();
      });
    }
  });
};
for (let i = 0; i < WINDOW; i++) one();
`;

/** `node -e <conn server> <host> <port> <expected sources, comma-separated, or ->`. */
export function connServerArgv(host: string, port: number, expectSource: string | null): string[] {
  return [process.execPath, '-e', CONN_SERVER, host, String(port), expectSource ?? '-'];
}

export function connClientArgv(host: string, port: number, durationMs: number, concurrency: number, localAddresses: readonly string[]): string[] {
  if (localAddresses.length === 0) throw new RangeError('the conn client needs at least one local address');
  if (!(Number.isInteger(concurrency) && concurrency >= 1 && concurrency <= 4096)) throw new RangeError(`concurrency must be 1..4096, got ${concurrency}`);
  return [process.execPath, '-e', CONN_CLIENT, host, String(port), String(Math.round(durationMs)), String(concurrency), localAddresses.join(',')];
}

/** The sink for a plan's flows: `endpoints` is the opener's source endpoints (flows / destination ports). */
export function flowSinkArgv(host: string, ports: readonly number[], expectSource: string | null, endpoints: number): string[] {
  if (ports.length === 0) throw new RangeError('the flow sink needs at least one port');
  if (!(Number.isInteger(endpoints) && endpoints >= 1)) throw new RangeError(`endpoints must be a positive integer, got ${endpoints}`);
  return [process.execPath, '-e', FLOW_SINK, host, ports.join(','), expectSource ?? '-', String(endpoints)];
}

export interface FlowPlan {
  /** Source addresses on the client. */
  addresses: string[];
  /** Ports firstPort … firstPort+portsPerAddress-1 on every address. */
  firstPort: number;
  portsPerAddress: number;
  /** Destination ports on the internet host; every endpoint sends one datagram to each. */
  destPorts: number[];
  /** Flows: addresses × portsPerAddress × destPorts. */
  flows: number;
}

/** Highest source port the opener may bind: below Linux's default ephemeral range's top and within 16 bits. */
export const FLOW_PORT_CEILING = 65000;
/** First source port the flows measurement uses on each address. */
export const FLOW_FIRST_PORT = 30000;

/**
 * Spread `flows` over the client's addresses and the destination ports, rounding up so at least
 * `flows` are attempted. Throws when the ports per address would not fit under FLOW_PORT_CEILING.
 */
export function planFlows(flows: number, addresses: readonly string[], destPorts: readonly number[], firstPort = FLOW_FIRST_PORT): FlowPlan {
  if (!(Number.isInteger(flows) && flows >= 1)) throw new RangeError(`flows must be a positive integer, got ${flows}`);
  if (addresses.length === 0 || destPorts.length === 0) throw new RangeError('planFlows needs addresses and destination ports');
  const portsPerAddress = Math.ceil(flows / (addresses.length * destPorts.length));
  if (firstPort + portsPerAddress - 1 > FLOW_PORT_CEILING) {
    throw new RangeError(
      `${flows} flows need ${portsPerAddress} source ports on each of ${addresses.length} addresses × ${destPorts.length} destination ports; ` +
        `ports ${firstPort}-${FLOW_PORT_CEILING} hold ${FLOW_PORT_CEILING - firstPort + 1}: add addresses or destination ports`,
    );
  }
  return {
    addresses: [...addresses],
    firstPort,
    portsPerAddress,
    destPorts: [...destPorts],
    flows: addresses.length * portsPerAddress * destPorts.length,
  };
}

export function flowOpenerArgv(dst: string, plan: FlowPlan, datagramsPerSecond: number, passes = 2): string[] {
  if (!(datagramsPerSecond > 0)) throw new RangeError('the opener needs a positive rate');
  if (!(Number.isInteger(passes) && passes >= 1)) throw new RangeError('passes must be a positive integer');
  return [
    process.execPath, '-e', FLOW_OPENER, dst, plan.destPorts.join(','), plan.addresses.join(','),
    String(plan.firstPort), String(plan.portsPerAddress), String(Math.round(datagramsPerSecond)), String(passes),
  ];
}
