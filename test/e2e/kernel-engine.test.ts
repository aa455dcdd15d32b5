/**
 * The kernel engine end to end, in a lab of plain `ip` commands: LAN hosts behind a gateway
 * namespace that runs the engine (test/fixtures/kernel-child.mjs, importing the compiled dist/),
 * and an "internet" host that reports the source address it sees. Both backends. After every run
 * the gateway's `nft list ruleset`, `iptables-save`, sysctls and addresses must read exactly as
 * before, with unrelated rules of each kind left in place.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, rmSync, statSync } from 'node:fs';
import { request } from 'node:http';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run, runSync, type RunResult } from '../../src/util/exec.js';
import type { FlowRecord } from '../../src/conntrack/listing.js';

const isRoot = process.getuid?.() === 0;
const REPO = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const CHILD = join(REPO, 'test', 'fixtures', 'kernel-child.mjs');
const CLI = join(REPO, 'test', 'fixtures', 'kernel-cli.mjs');
const SERVER = join(REPO, 'test', 'fixtures', 'kernel-inet-server.mjs');
const PUBLIC = '203.0.113.1';
const INET = '203.0.113.2';
const hasHping3 = runSync(['sh', '-c', 'command -v hping3'], { allowFail: true }).exitCode === 0;

/**
 * Whether dist/ is at least as new as every source file. `npm test` compiles before the tests run;
 * recompiling then would rewrite files that other test files' children may be importing.
 */
function distIsFresh(dir = join(REPO, 'src')): boolean {
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) {
      if (!distIsFresh(path)) return false;
    } else if (name.endsWith('.ts') && !name.endsWith('.d.ts')) {
      const out = join(REPO, 'dist', path.slice(REPO.length + 1)).replace(/\.ts$/, '.js');
      if (!existsSync(out) || statSync(out).mtimeMs < statSync(path).mtimeMs) return false;
    }
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// A lab of our own: gw (lan0 bridge 192.168.1.1/24, wan0 203.0.113.1/24), h0 .10 and h1 .11, inet .2.

class Undo {
  private steps: { sync: () => void }[] = [];
  private readonly onExit = () => this.runSync();
  constructor() {
    process.on('exit', this.onExit);
  }
  add(sync: () => void): void {
    this.steps.push({ sync });
  }
  runSync(): void {
    for (const s of this.steps.reverse()) {
      try {
        s.sync();
      } catch {
        // keep undoing the rest
      }
    }
    this.steps = [];
  }
  done(): void {
    this.runSync();
    process.off('exit', this.onExit);
  }
}

function uid(): string {
  return `${process.pid.toString(36)}${Math.random().toString(36).slice(2, 6)}`;
}

interface Lab {
  id: string;
  gw: string;
  h0: string;
  h1: string;
  inet: string;
  undo: Undo;
}

function sh(ns: string, script: string, allowFail = false): Promise<RunResult> {
  return run(['ip', 'netns', 'exec', ns, 'sh', '-ec', script], { allowFail, timeoutMs: 60_000 });
}

async function labUp(): Promise<Lab> {
  const id = uid();
  const undo = new Undo();
  const lab: Lab = { id, gw: `tk${id}-gw`, h0: `tk${id}-h0`, h1: `tk${id}-h1`, inet: `tk${id}-in`, undo };
  for (const ns of [lab.gw, lab.h0, lab.h1, lab.inet]) {
    await run(['ip', 'netns', 'add', ns]);
    undo.add(() => runSync(['ip', 'netns', 'del', ns], { allowFail: true }));
    await run(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
  }
  // Every link is born inside the gateway namespace with its peer created directly in the other one.
  await sh(lab.gw, 'ip link add lan0 type bridge; ip addr add 192.168.1.1/24 dev lan0; ip link set lan0 up');
  for (const [i, host] of [lab.h0, lab.h1].entries()) {
    await sh(lab.gw, `ip link add l${i} type veth peer name eth0 netns ${host}; ip link set l${i} master lan0 up`);
    await sh(host, `ip addr add 192.168.1.1${i}/24 dev eth0; ip link set eth0 up; ip route add default via 192.168.1.1`);
  }
  await sh(lab.gw, `ip link add wan0 type veth peer name eth0 netns ${lab.inet}; ip addr add ${PUBLIC}/24 dev wan0; ip link set wan0 up`);
  // No route back to 192.168.0.0/16: only translated packets can be answered.
  await sh(lab.inet, `ip addr add ${INET}/24 dev eth0; ip link set eth0 up`);
  const server = spawn('ip', ['netns', 'exec', lab.inet, process.execPath, SERVER], { stdio: ['ignore', 'pipe', 'inherit'] });
  undo.add(() => server.kill('SIGKILL'));
  await new Promise<void>((resolve, reject) => {
    server.stdout!.once('data', () => resolve());
    server.once('exit', (c) => reject(new Error(`inet server exited ${c}`)));
  });
  return lab;
}

// ---------------------------------------------------------------------------------------------
// The engine in the gateway

interface Engine {
  proc: ChildProcess;
  ready: { pid: number; backend: string; stateFile: string } | null;
  error: { error: string; message: string } | null;
  socket: string;
  output(): string;
  stop(): Promise<number | null>;
  exited: Promise<number | null>;
}

async function startEngine(
  lab: Lab,
  flags: Record<string, unknown> = {},
  opts: { noHttp?: boolean; exitWithoutStop?: boolean; onLine?: (line: string, proc: ChildProcess) => void } = {},
): Promise<Engine> {
  const socket = `/run/tunnat/kt-${lab.id}-${uid()}.sock`;
  const all = { internal: '192.168.1.0/24', external: 'wan0', http: 'off', ...(opts.noHttp ? {} : { httpSocket: socket }), ...flags };
  const argv = [process.execPath, CHILD, JSON.stringify(all), ...(opts.exitWithoutStop ? ['--exit-without-stop'] : [])];
  const proc = spawn('ip', ['netns', 'exec', lab.gw, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const onData = (d: Buffer): void => {
    const text = d.toString();
    out += text;
    if (opts.onLine) for (const line of text.split('\n')) opts.onLine(line, proc);
  };
  proc.stdout!.on('data', onData);
  proc.stderr!.on('data', onData);
  const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
  lab.undo.add(() => {
    proc.kill('SIGKILL');
    rmSync(socket, { force: true });
  });
  const first = await new Promise<string>((resolve) => {
    const check = (): void => {
      const line = out.split('\n').find((l) => l.startsWith('{"ready"') || l.startsWith('{"error"'));
      if (line) resolve(line);
    };
    proc.stdout!.on('data', check);
    void exited.then(() => resolve(out.split('\n').find((l) => l.startsWith('{"error"')) ?? '{"error":"EXIT","message":"exited"}'));
  });
  const parsed = JSON.parse(first) as Record<string, unknown>;
  const e: Engine = {
    proc,
    ready: parsed['ready'] ? (parsed as unknown as Engine['ready']) : null,
    error: parsed['error'] ? (parsed as unknown as Engine['error']) : null,
    socket,
    output: () => out,
    exited,
    stop: async () => {
      proc.kill('SIGTERM');
      return exited;
    },
  };
  if (e.ready) lab.undo.add(() => rmSync(e.ready!.stateFile, { force: true }));
  else await exited;
  return e;
}

function unixGet(socketPath: string, path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path, timeout: 5000 }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`${path}: ${res.statusCode} ${body}`))));
    });
    req.on('error', reject);
    req.end();
  });
}

const flowsOf = async (e: Engine): Promise<FlowRecord[]> => JSON.parse(await unixGet(e.socket, '/conntrack')) as FlowRecord[];

async function httpFrom(ns: string, opts: { localPort?: number } = {}): Promise<{ address: string; port: number }> {
  const r = await sh(ns, `curl -sS --fail --noproxy '*' --max-time 5 ${opts.localPort ? `--local-port ${opts.localPort}` : ''} http://${INET}/`);
  return JSON.parse(r.stdout) as { address: string; port: number };
}

async function udpFrom(ns: string, sourcePort: number, payload: string): Promise<string> {
  const r = await sh(ns, `printf '%s' '${payload}' | socat -T3 - UDP4:${INET}:7,sourceport=${sourcePort}`);
  return r.stdout;
}

// ---------------------------------------------------------------------------------------------
// What "left exactly as found" compares

interface Snapshot {
  nft: string;
  iptables: string;
  iptablesLegacy: string;
  sysctls: string;
  addresses: string;
}

/** iptables-save's header and footer carry the time of the call; everything else is compared byte for byte. */
const stripStamp = (s: string): string =>
  s
    .split('\n')
    .filter((l) => !/^# (Generated by|Completed on) /.test(l))
    .join('\n');

async function snapshot(ns: string): Promise<Snapshot> {
  const nft = await sh(ns, 'nft list ruleset');
  const ipt = await sh(ns, 'iptables-save');
  const legacy = await sh(ns, 'iptables-legacy-save 2>/dev/null || true');
  const sys = await sh(ns, 'sysctl -a 2>/dev/null | grep -E "^net\\.(ipv4\\.ip_forward|ipv4\\.conf\\.[^.]+\\.(forwarding|accept_redirects)|netfilter\\.)" | grep -v nf_conntrack_count');
  const addrs = await sh(ns, 'ip -4 -o addr show');
  return { nft: nft.stdout, iptables: stripStamp(ipt.stdout), iptablesLegacy: stripStamp(legacy.stdout), sysctls: sys.stdout, addresses: addrs.stdout };
}

/** Rules of each kind that have nothing to do with tunnat, and one NAT rule for another interface. */
async function addUnrelatedRules(ns: string): Promise<void> {
  await sh(ns, "printf 'table inet unrelated {\\n chain input {\\n  type filter hook input priority 0; policy accept;\\n  tcp dport 9 accept\\n }\\n}\\n' | nft -f -");
  await sh(ns, 'iptables -A INPUT -p tcp --dport 9 -j ACCEPT');
  await sh(ns, 'iptables -t nat -A POSTROUTING -s 10.99.0.0/16 -o lan0 -j MASQUERADE');
}

async function cli(lab: Lab, args: string[]): Promise<RunResult> {
  return run(['ip', 'netns', 'exec', lab.gw, process.execPath, CLI, ...args], { allowFail: true, timeoutMs: 60_000 });
}

// Needs root: network namespaces, veth pairs, nft and iptables inside them. CI runs as root.
describe.skipIf(!isRoot)('kernel engine', () => {
  beforeAll(async () => {
    // The child imports dist/; compile it when stale (type errors elsewhere in the tree do not stop emitting).
    if (!distIsFresh()) await run(['npx', 'tsc', '-p', 'tsconfig.build.json'], { allowFail: true, timeoutMs: 180_000 });
    for (const f of ['dist/src/kernel/engine.js', 'dist/src/cli/kernel-cmd.js']) {
      if (!existsSync(join(REPO, f))) throw new Error(`${f} was not built`);
    }
  }, 200_000);

  describe.each(['nft', 'iptables'] as const)('backend %s', (backend) => {
    let lab: Lab;
    let engine: Engine;
    let before: Snapshot;
    let capture: ChildProcess;
    let capFile: string;

    beforeAll(async () => {
      lab = await labUp();
      await addUnrelatedRules(lab.gw);
      before = await snapshot(lab.gw);
      capFile = `/tmp/tk-${lab.id}.pcap`;
      capture = spawn('ip', ['netns', 'exec', lab.inet, 'tcpdump', '-i', 'eth0', '-n', '-U', '-w', capFile], { stdio: 'ignore' });
      lab.undo.add(() => {
        capture.kill('SIGKILL');
        rmSync(capFile, { force: true });
      });
      await new Promise((r) => setTimeout(r, 500));
      engine = await startEngine(lab, { backend, timeouts: { udp: 3, icmp: 3 } });
      expect(engine.error, engine.output()).toBeNull();
    }, 60_000);

    afterAll(() => lab?.undo.done());

    it('HTTP from a LAN host reaches the internet host, which sees the public address; /conntrack lists the flow', async () => {
      const seen = await httpFrom(lab.h0);
      expect(seen.address).toBe(PUBLIC);
      const tcp = (await flowsOf(engine)).filter((f) => f.protocol === 'tcp' && f.original.src === '192.168.1.10');
      expect(tcp.map((f) => ({ address: f.reply.dst, port: f.reply.dstPort }))).toContainEqual({ address: PUBLIC, port: seen.port });
    });

    it('UDP and ping; two hosts using the same source port get two mappings', async () => {
      const [a, b] = await Promise.all([udpFrom(lab.h0, 40000, 'from h0'), udpFrom(lab.h1, 40000, 'from h1')]);
      const [pa, pb] = [a, b].map((s) => /^203\.0\.113\.1:(\d+) (.*)$/.exec(s));
      expect(pa?.[2]).toBe('from h0');
      expect(pb?.[2]).toBe('from h1');
      expect(pa![1]).not.toBe(pb![1]);
      const udp = (await flowsOf(engine)).filter((f) => f.protocol === 'udp' && f.original.srcPort === 40000);
      expect(udp.map((f) => f.original.src).sort()).toEqual(['192.168.1.10', '192.168.1.11']);
      expect(new Set(udp.map((f) => f.reply.dstPort)).size).toBe(2);

      const ping = await sh(lab.h0, `ping -c 2 -i 0.2 -W 2 ${INET}`);
      expect(ping.stdout).toMatch(/2 received/);
    });

    it('a 20 MB transfer arrives whole', async () => {
      const n = 20 * 1024 * 1024;
      const r = await sh(lab.h0, `curl -sS --fail --noproxy '*' --max-time 30 -o /dev/null -w '%{size_download}' http://${INET}/bytes?n=${n}`);
      expect(Number(r.stdout)).toBe(n);
    }, 40_000);

    it('/metrics serves the shared metric names from the kernel table', async () => {
      await udpFrom(lab.h0, 40200, 'metrics');
      const text = await unixGet(engine.socket, '/metrics');
      expect(text).toContain(`tunnat_engine_info{engine="kernel",backend="${backend}"} 1`);
      expect(text).toMatch(/^tunnat_flows\{protocol="udp"\} [1-9]/m);
      expect(text).toMatch(/^tunnat_flows_max \d+/m);
      expect(text).toMatch(/^tunnat_flows_created_total [1-9]/m);
    });

    it('UDP flows expire after the configured timeout (the kernel sysctls were set)', async () => {
      await udpFrom(lab.h0, 40100, 'expire me');
      const mine = async () => (await flowsOf(engine)).filter((f) => f.protocol === 'udp' && f.original.srcPort === 40100);
      expect(await mine()).toHaveLength(1);
      const start = Date.now();
      while ((await mine()).length > 0) {
        if (Date.now() - start > 12_000) throw new Error('UDP flow did not expire');
        await new Promise((r) => setTimeout(r, 250));
      }
      expect(Date.now() - start).toBeGreaterThanOrEqual(1500);
    }, 20_000);

    it.skipIf(!hasHping3)('an untracked packet (a bare RST, conntrack-INVALID) is dropped, not leaked', async () => {
      await sh(lab.h0, `hping3 -c 2 -i u200000 -R -p 80 ${INET} 2>&1 || true`);
      const text = await unixGet(engine.socket, '/metrics');
      expect(text).toMatch(/^tunnat_drops_total\{reason="conntrack-invalid"\} [1-9]/m);
    });

    it("the gateway's own traffic keeps working", async () => {
      expect((await httpFrom(lab.gw)).address).toBe(PUBLIC);
    });

    it('a second instance in the same namespace is refused', async () => {
      const second = await startEngine(lab, { backend });
      expect(second.error?.error).toBe('ALREADY_RUNNING');
      expect(second.error?.message).toMatch(new RegExp(`pid ${engine.ready!.pid}`));
      expect(await second.exited).toBe(1);
    });

    it('no packet on the WAN carried a 192.168.0.0/16 address', async () => {
      capture.kill('SIGINT');
      await new Promise((r) => capture.once('exit', r));
      const r = await run(['tcpdump', '-n', '-r', capFile], { allowFail: true });
      expect(r.stdout).toMatch(/203\.0\.113\.1\.\d+ > 203\.0\.113\.2\.80/);
      expect(r.stdout.split('\n').filter((l) => l.includes('192.168.'))).toEqual([]);
    });

    it('after SIGTERM the firewall, sysctls and addresses read exactly as before', async () => {
      expect(await engine.stop(), engine.output()).toBe(0);
      const after = await snapshot(lab.gw);
      expect(after.nft).toBe(before.nft);
      expect(after.iptables).toBe(before.iptables);
      expect(after.iptablesLegacy).toBe(before.iptablesLegacy);
      expect(after.sysctls).toBe(before.sysctls);
      expect(after.addresses).toBe(before.addresses);
      expect(after.nft).toContain('table inet unrelated');
      expect(after.iptables).toContain('-A POSTROUTING -s 10.99.0.0/16 -o lan0 -j MASQUERADE');
      expect(existsSync(engine.ready!.stateFile)).toBe(false);
    });
  });

  describe('bad input and recovery', () => {
    let lab: Lab;
    let before: Snapshot;

    beforeAll(async () => {
      lab = await labUp();
      await addUnrelatedRules(lab.gw);
      before = await snapshot(lab.gw);
    }, 60_000);

    afterAll(() => lab?.undo.done());

    const unchanged = async (): Promise<void> => {
      const now = await snapshot(lab.gw);
      expect(now).toEqual(before);
    };

    it('a conflicting NAT rule on the same interface: refused, nothing changed', async () => {
      await sh(lab.gw, 'iptables -t nat -A POSTROUTING -o wan0 -j SNAT --to-source 203.0.113.9');
      const withConflict = await snapshot(lab.gw);
      for (const backend of ['nft', 'iptables']) {
        const e = await startEngine(lab, { backend });
        expect(e.error?.error, e.output()).toBe('CONFLICT');
        expect(e.error?.message).toMatch(/already source-NATs traffic from 192\.168\.1\.0\/24 leaving wan0[\s\S]*chain POSTROUTING/);
        expect(await snapshot(lab.gw)).toEqual(withConflict);
      }
      await sh(lab.gw, 'iptables -t nat -D POSTROUTING -o wan0 -j SNAT --to-source 203.0.113.9');
      await unchanged();
    });

    it('a table of tunnat\'s name without an owner: refused with the remove command, which removes it', async () => {
      await sh(lab.gw, 'nft add table ip tunnat');
      const e = await startEngine(lab, {});
      expect(e.error?.error).toBe('LEFTOVER');
      expect(e.error?.message).toMatch(/tunnat kernel remove/);
      const r = await cli(lab, ['remove']);
      expect(r.exitCode, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/nft delete table ip tunnat/);
      await unchanged();
    });

    it('a SIGKILLed engine leaves its record; the next start cleans it up and runs', async () => {
      const first = await startEngine(lab, { backend: 'iptables' });
      expect(first.error, first.output()).toBeNull();
      first.proc.kill('SIGKILL');
      await first.exited;
      expect(existsSync(first.ready!.stateFile)).toBe(true);
      expect((await sh(lab.gw, 'iptables-save -t nat')).stdout).toContain('TUNNAT-POSTROUTING');
      expect((await sh(lab.gw, 'sysctl -n net.ipv4.ip_forward')).stdout.trim()).toBe('1');

      const second = await startEngine(lab, { backend: 'nft' });
      expect(second.error, second.output()).toBeNull();
      expect(second.output()).toMatch(/exited without removing its kernel NAT; removing it from its record/);
      expect((await httpFrom(lab.h0)).address).toBe(PUBLIC);
      expect((await sh(lab.gw, 'iptables-save -t nat')).stdout).not.toContain('TUNNAT');
      expect(await second.stop()).toBe(0);
      await unchanged();
    });

    it('a crash in the middle of apply (SIGKILL right after the rules went in) is undone exactly by `kernel remove`', async () => {
      let killed = false;
      const e = await startEngine(lab, { backend: 'iptables' }, {
        onLine: (line, proc) => {
          if (!killed && line.includes('ruleset applied')) {
            killed = true;
            proc.kill('SIGKILL');
          }
        },
      });
      await e.exited;
      expect(killed).toBe(true);
      const rm = await cli(lab, ['remove']);
      expect(rm.exitCode, rm.stderr + rm.stdout).toBe(0);
      expect(rm.stdout).toMatch(/kernel NAT removed/);
      await unchanged();
    });

    it('leaving without stop() (process exit) removes everything from the exit handler', async () => {
      const e = await startEngine(lab, {}, { exitWithoutStop: true });
      expect(e.error, e.output()).toBeNull();
      expect(await e.exited).toBe(0);
      expect(existsSync(e.ready!.stateFile)).toBe(false);
      await unchanged();
    });

    it('with no HTTP listener at all the engine stays up (nothing else holds its event loop)', async () => {
      const e = await startEngine(lab, {}, { noHttp: true });
      expect(e.error, e.output()).toBeNull();
      await new Promise((r) => setTimeout(r, 1500));
      expect(e.proc.exitCode).toBeNull();
      expect((await httpFrom(lab.h0)).address).toBe(PUBLIC);
      expect(await e.stop()).toBe(0);
      await unchanged();
    });

    it('static SNAT to an address the gateway lacks: taken on the WAN while running, given back after', async () => {
      const e = await startEngine(lab, { publicIp: '203.0.113.50' });
      expect(e.error, e.output()).toBeNull();
      expect((await sh(lab.gw, 'ip -4 -o addr show dev wan0')).stdout).toContain('203.0.113.50/32');
      expect((await httpFrom(lab.h0)).address).toBe('203.0.113.50');
      expect(await e.stop()).toBe(0);
      await unchanged();
    });

    it('kernel plan prints the recipe; apply persists with no process; the engine then refuses; remove undoes it', async () => {
      const plan = await cli(lab, ['plan', '--internal', '192.168.1.0/24', '--external', 'wan0', '--backend', 'iptables']);
      expect(plan.exitCode, plan.stderr).toBe(0);
      expect(plan.stdout).toContain('-A TUNNAT-POSTROUTING -s 192.168.1.0/24 -o wan0 -j MASQUERADE');
      expect(plan.stdout).toContain('sysctl -w net.ipv4.ip_forward=1');
      expect(plan.stdout).toContain('net.netfilter.nf_conntrack_max=');
      await unchanged();

      const apply = await cli(lab, ['apply', '--internal', '192.168.1.0/24', '--external', 'wan0', '--backend', 'iptables']);
      expect(apply.exitCode, apply.stderr).toBe(0);
      expect(apply.stdout).toMatch(/netfilter-persistent save/);
      expect(apply.stdout).toMatch(/\/etc\/sysctl\.d\/90-tunnat\.conf/);
      expect((await httpFrom(lab.h0)).address).toBe(PUBLIC);

      const e = await startEngine(lab, {});
      expect(e.error?.error).toBe('LEFTOVER');
      expect(e.error?.message).toMatch(/persistent[\s\S]*tunnat kernel remove/);

      const rm = await cli(lab, ['remove']);
      expect(rm.exitCode, rm.stderr).toBe(0);
      expect(rm.stdout).toMatch(/kernel NAT removed/);
      await unchanged();
      const again = await cli(lab, ['remove']);
      expect(again.stdout).toMatch(/nothing to remove/);
    });
  });
});
