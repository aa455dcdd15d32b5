import { createSocket } from 'node:dgram';
import { createConnection, createServer, type Socket } from 'node:net';

/**
 * The two ends of the traffic that a failover test keeps running through a gateway pair
 * (`node failover-peer.js server|client …`, started in the lab's namespaces by ha-pair.ts):
 *
 * - server (the internet host): UDP echo on PORT, TCP line echo on PORT+1. It prints every source it
 *   sees (`udp-source ADDR:PORT`, `tcp-source ADDR:PORT`), so a test can tell how many mappings the
 *   remote saw.
 * - client (a LAN host): a UDP stream from one fixed port (a datagram every 10 ms), one TCP connection
 *   that sends a numbered line every 50 ms, and IDLE TCP connections that say nothing until the end. It
 *   prints `ready` once every connection is up, `recovered GAP_MS` whenever an echo comes after a gap
 *   longer than 100 ms. On SIGUSR2 it checks every idle connection both ways and prints its report as one
 *   JSON line (`report {…}`), then exits: the server speaks first on each (`push` on a fresh connection
 *   makes it write `pushed` on every other one), as a server that pushes data after a failover would,
 *   then the client sends one last line and waits for its echo.
 */

const UDP_EVERY_MS = 10;
const TCP_EVERY_MS = 50;
const GAP_REPORT_MS = 100;

export interface FailoverReport {
  udp: { sent: number; received: number; maxGapMs: number; sourcePort: number };
  active: { sent: number; echoed: number; outOfOrder: number; maxGapMs: number; error: string | null };
  idle: { count: number; ok: number; failed: number; errors: string[] };
  /** Echo gaps over GAP_REPORT_MS, UDP and the active TCP connection: [start epoch ms, length ms]. */
  gaps: { udp: [number, number][]; tcp: [number, number][] };
}

function server(port: number): void {
  const seen = new Set<string>();
  const udp = createSocket('udp4');
  udp.on('message', (msg, from) => {
    const key = `${from.address}:${from.port}`;
    if (!seen.has(`u${key}`)) {
      seen.add(`u${key}`);
      console.log(`udp-source ${key}`);
    }
    udp.send(msg, from.port, from.address);
  });
  udp.bind(port);
  const open = new Set<Socket>();
  const tcp = createServer((sock) => {
    console.log(`tcp-source ${sock.remoteAddress}:${sock.remotePort}`);
    sock.setNoDelay(true);
    open.add(sock);
    sock.on('close', () => open.delete(sock));
    sock.on('data', (d) => {
      sock.write(d);
      if (d.includes('push\n')) for (const other of open) if (other !== sock && other.remoteAddress === sock.remoteAddress) other.write('pushed\n');
    });
    sock.on('error', (err) => console.log(`tcp-error ${sock.remoteAddress}:${sock.remotePort} ${err.message}`));
  });
  tcp.listen(port + 1, () => console.log('listening'));
}

/** Splits a stream into lines, calling `each` with every whole one. */
function lines(sock: Socket, each: (line: string) => void): void {
  let buf = '';
  sock.setEncoding('utf8');
  sock.on('data', (d: string) => {
    buf += d;
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      each(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
  });
}

function connect(host: string, port: number, localPort: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = createConnection({ host, port, localPort }, () => resolve(s));
    s.setNoDelay(true);
    s.once('error', reject);
  });
}

async function client(host: string, port: number, idleCount: number, udpPort: number, tcpBase: number): Promise<void> {
  const report: FailoverReport = {
    udp: { sent: 0, received: 0, maxGapMs: 0, sourcePort: udpPort },
    active: { sent: 0, echoed: 0, outOfOrder: 0, maxGapMs: 0, error: null },
    idle: { count: idleCount, ok: 0, failed: 0, errors: [] },
    gaps: { udp: [], tcp: [] },
  };
  const idle: Socket[] = [];
  for (let k = 0; k < idleCount; k++) {
    const s = await connect(host, port + 1, tcpBase + 1 + k);
    s.on('error', (err) => report.idle.errors.push(`${tcpBase + 1 + k}: ${err.message}`));
    idle.push(s);
  }
  const active = await connect(host, port + 1, tcpBase);
  active.on('error', (err) => (report.active.error = err.message));
  active.on('close', () => (report.active.error ??= 'closed by the other side'));
  let lastTcp = Date.now();
  lines(active, (line) => {
    if (!line.startsWith('line ')) return;
    const n = Number(line.split(' ')[1]);
    if (n !== report.active.echoed) report.active.outOfOrder++;
    report.active.echoed++;
    const t = Date.now();
    const gap = t - lastTcp;
    if (gap > report.active.maxGapMs) report.active.maxGapMs = gap;
    if (gap > GAP_REPORT_MS) report.gaps.tcp.push([lastTcp, gap]);
    lastTcp = t;
  });

  const udp = createSocket('udp4');
  await new Promise<void>((r) => udp.bind(udpPort, () => r()));
  let lastUdp = Date.now();
  udp.on('message', () => {
    report.udp.received++;
    const t = Date.now();
    const gap = t - lastUdp;
    if (gap > report.udp.maxGapMs) report.udp.maxGapMs = gap;
    if (gap > GAP_REPORT_MS) {
      report.gaps.udp.push([lastUdp, gap]);
      console.log(`recovered ${gap}`);
    }
    lastUdp = t;
  });
  const timers = [
    setInterval(() => {
      udp.send(String(report.udp.sent++), port, host);
    }, UDP_EVERY_MS),
    setInterval(() => {
      if (!active.destroyed) active.write(`line ${report.active.sent++}\n`);
    }, TCP_EVERY_MS),
  ];
  lastUdp = lastTcp = Date.now();
  console.log('ready');

  process.on('SIGUSR2', () => {
    timers.forEach((t) => clearInterval(t));
    // Every idle connection says one last line; it lived through the failover if that line comes back.
    let pending = idle.length;
    const done = () => {
      // The busy connection's last lines may still be on their way back: up to 2 s for them.
      const until = Date.now() + 2000;
      const finish = () => {
        if (report.active.echoed < report.active.sent && report.active.error === null && Date.now() < until) return void setTimeout(finish, 20);
        for (const s of [...idle, active]) s.destroy();
        udp.close();
        console.log(`report ${JSON.stringify(report)}`);
        process.exit(0);
      };
      finish();
    };
    if (pending === 0) return done();
    const deadline = setTimeout(() => {
      report.idle.failed += pending;
      pending = 0;
      done();
    }, 5000);
    const settle = (ok: boolean) => {
      if (ok) report.idle.ok++;
      else report.idle.failed++;
      if (--pending === 0) {
        clearTimeout(deadline);
        done();
      }
    };
    idle.forEach((s, k) => {
      let step = 0;
      lines(s, (line) => {
        if (step === 0 && line === 'pushed') {
          step = 1;
          s.write(`final ${k}\n`);
        } else if (step === 1) {
          step = 2;
          settle(line === `final ${k}`);
        } else if (step === 0) {
          step = 2;
          settle(false);
        }
      });
      if (s.destroyed) {
        step = 2;
        settle(false);
      }
    });
    // The server speaks first on every idle connection, asked over a connection of its own (the busy one
    // may be broken, and that must not count against the idle ones).
    // From a port of its own range too: an ephemeral port could be one a later round binds.
    const ask = createConnection({ host, port: port + 1, localPort: tcpBase + idleCount + 1 }, () => ask.write('push\n'));
    ask.on('error', (err) => report.idle.errors.push(`asking the server to push: ${err.message}`));
    ask.on('data', () => ask.destroy());
  });
}

const [mode, ...args] = process.argv.slice(2);
if (mode === 'server') server(Number(args[0] ?? 7000));
else if (mode === 'client') {
  void client(args[0] ?? '203.0.113.2', Number(args[1] ?? 7000), Number(args[2] ?? 200), Number(args[3] ?? 41000), Number(args[4] ?? 42000)).catch((err: Error) => {
    console.log(`error ${err.message}`);
    process.exit(1);
  });
} else if (mode !== undefined) {
  console.error('usage: failover-peer server PORT | client HOST PORT IDLE UDPPORT TCPBASE');
  process.exit(2);
}
