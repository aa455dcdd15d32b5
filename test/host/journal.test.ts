/**
 * The host journal's undo plans, driven without root: a fake command runner answers the `ip`
 * commands and a map stands in for /proc/sys. The state file is a real file in a temporary
 * directory, read back at every command to see it shrink step by step.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { Cmd, RunResult, Runner } from '../../src/host/commands.js';
import { drive, driveSync, Journal, undoCtx, undoJournal, type HostStep, type JournalRecord } from '../../src/host/journal.js';
import type { SysctlStore } from '../../src/host/sysctl.js';
import { applySteps, type RecipeIo } from '../../src/dataplane/routing-recipe.js';
import type { RoutingConfig } from '../../src/dataplane/routing-record.js';
import { planKernelNat } from '../../src/kernel/plan.js';
import { resolveConfig } from '../../src/config/resolve.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function stateFile(): string {
  const d = mkdtempSync(join(tmpdir(), 'tunnat-journal-'));
  dirs.push(d);
  return join(d, 'state.json');
}

/** /proc/sys as a map; ip_forward rewrites the per-interface switches as devinet.c does. */
class FakeSysctls implements SysctlStore {
  readonly values: Map<string, string>;
  readonly writes: string[] = [];
  constructor(init: Record<string, string>) {
    this.values = new Map(Object.entries(init));
  }
  exists(key: string): boolean {
    return this.values.has(key);
  }
  read(key: string): string {
    const v = this.values.get(key);
    if (v === undefined) throw new Error(`no sysctl ${key}`);
    return v;
  }
  write(key: string, value: string): void {
    this.writes.push(`${key}=${value}`);
    this.values.set(key, value);
    if (key === 'net/ipv4/ip_forward') {
      for (const k of this.values.keys()) if (/^net\/ipv4\/conf\/[^/]+\/forwarding$/.test(k)) this.values.set(k, value);
      this.values.set('net/ipv4/conf/all/accept_redirects', value === '1' ? '0' : '1');
    }
  }
  devices(): string[] {
    return [...this.values.keys()].flatMap((k) => /^net\/ipv4\/conf\/([^/]+)\/forwarding$/.exec(k)?.slice(1) ?? []).filter((d) => d !== 'all' && d !== 'default');
  }
}

const ok: RunResult = { exitCode: 0, stdout: '', stderr: '' };

/** Records every command (and the record's step count on disk at that moment); answers from `answer`. */
class FakeRunner implements Runner {
  readonly seen: string[] = [];
  readonly stepsOnDisk: number[] = [];
  constructor(
    private readonly file: string,
    private readonly answer: (argv: readonly string[]) => RunResult = () => ok,
  ) {}
  private one(cmd: Cmd): RunResult {
    this.seen.push(cmd.argv.join(' '));
    this.stepsOnDisk.push(existsSync(this.file) ? (JSON.parse(readFileSync(this.file, 'utf8')) as JournalRecord).steps.length : -1);
    return this.answer(cmd.argv);
  }
  run(cmd: Cmd): Promise<RunResult> {
    return Promise.resolve(this.one(cmd));
  }
  runSync(cmd: Cmd): RunResult {
    return this.one(cmd);
  }
}

const LAN = { network: 0xc0a80100, prefixLength: 24 };
const CFG: RoutingConfig = {
  tun: 'tun0',
  internal: [LAN],
  externalIface: 'wan0',
  publicIp: 0xcb007101,
  publicIpOwned: true,
  table: 7301,
  gatewayPorts: [20000, 29999],
};

function hostSysctls(): FakeSysctls {
  return new FakeSysctls({
    'net/ipv4/ip_forward': '0',
    'net/ipv4/conf/all/forwarding': '0',
    'net/ipv4/conf/default/forwarding': '0',
    // Forwarding on the LAN side alone (as in the routing e2e test): a naive ip_forward restore would lose it.
    'net/ipv4/conf/lan0/forwarding': '1',
    'net/ipv4/conf/wan0/forwarding': '0',
    'net/ipv4/conf/tun0/forwarding': '0',
    'net/ipv4/conf/all/accept_redirects': '1',
    'net/ipv4/conf/all/rp_filter': '1',
    'net/ipv4/conf/tun0/rp_filter': '1',
    'net/ipv4/conf/tun0/accept_local': '0',
    'net/ipv4/conf/tun0/ignore_routes_with_linkdown': '0',
    'net/ipv4/ip_early_demux': '1',
    'net/ipv4/ip_local_port_range': '32768\t60999',
    'net/ipv4/neigh/wan0/proxy_delay': '80',
  });
}

/** Apply the userspace recipe against fakes: the record it leaves and the commands it ran. */
async function recipe(sys: FakeSysctls, file: string): Promise<{ record: JournalRecord; ran: string[] }> {
  const record: JournalRecord = { stateFile: file, steps: [] };
  const ran: string[] = [];
  const io: RecipeIo = {
    run: (argv) => {
      ran.push(argv.join(' '));
      return Promise.resolve(ok);
    },
    proxyNeighbours: () => Promise.resolve([]),
    primaryIpv4: () => Promise.resolve(CFG.publicIp),
  };
  await applySteps(new Journal(record, sys), CFG, { ifindex: 5, mtu: 1500, up: false, address: null }, true, () => {}, io);
  return { record, ran };
}

const label = (s: HostStep): string =>
  s.kind === 'sysctl' ? `sysctl ${s.key}` : s.kind === 'rule' || s.kind === 'route' ? `${s.kind} ${s.args.slice(0, 2).join(' ')}` : s.kind;

describe('the apply order (fail closed)', () => {
  it('userspace recipe: the fail-closed route and every diverting rule before forwarding; ip_forward last', async () => {
    const sys = hostSysctls();
    const { record, ran } = await recipe(sys, stateFile());
    const order = record.steps.map(label);
    const firstForwarding = order.findIndex((l) => /forwarding$|ip_forward$/.test(l));
    expect(order.slice(firstForwarding)).toEqual([
      'sysctl net/ipv4/conf/wan0/forwarding',
      'sysctl net/ipv4/conf/tun0/forwarding',
      'sysctl net/ipv4/ip_forward',
    ]);
    for (const needed of ['route prohibit default', 'rule pref 1000', 'rule pref 998', 'rule pref 5', 'local-rule-moved']) {
      expect(order.indexOf(needed), needed).toBeGreaterThanOrEqual(0);
      expect(order.indexOf(needed), needed).toBeLessThan(firstForwarding);
    }
    // The sysctl store saw ip_forward written after every command had run.
    expect(sys.writes.at(-1)).toBe('net/ipv4/ip_forward=1');
    expect(ran.at(-1)).toBe('ip rule del pref 0 lookup local');
    expect(ran[0]).toBe('ip link set dev tun0 up');
  });

  it('kernel plan: the ruleset first, then addresses and sysctls, ip_forward last', () => {
    const cfg = resolveConfig({ internal: '192.168.1.0/24', external: 'wan0', publicIp: '203.0.113.50' });
    const plan = planKernelNat(cfg, 'nft', { publicIpOwned: false, publicIpOnLink: true });
    const kinds = plan.steps.map((s) => (s.action.kind === 'sysctl' ? s.action.settings.map((x) => x.key).join(',') : s.action.kind));
    expect(kinds[0]).toBe('ruleset');
    expect(kinds[1]).toBe('address');
    expect(kinds.at(-1)).toBe('net/ipv4/ip_forward');
  });

  it('a step added after forwarding (a moved public address, a TUN kept for restart) goes in before it', async () => {
    const sys = hostSysctls();
    const { record } = await recipe(sys, stateFile());
    const j = new Journal(record, sys);
    j.add({ kind: 'rule', args: ['pref', '10', 'iif', 'wan0', 'to', '203.0.113.50', 'lookup', '7302'], inbound: true });
    j.add({ kind: 'tun-persist', dev: 'tun0' });
    expect(record.steps.slice(-5).map(label)).toEqual([
      'rule pref 10',
      'tun-persist',
      'sysctl net/ipv4/conf/wan0/forwarding',
      'sysctl net/ipv4/conf/tun0/forwarding',
      'sysctl net/ipv4/ip_forward',
    ]);
  });

  it('a change that fails is struck from the record again', async () => {
    const file = stateFile();
    const record: JournalRecord = { stateFile: file, steps: [] };
    const j = new Journal(record, hostSysctls());
    await expect(j.step({ kind: 'route', args: ['default', 'dev', 'tun0'] }, () => Promise.reject(new Error('RTNETLINK answers: File exists')))).rejects.toThrow('File exists');
    expect(record.steps).toEqual([]);
    expect((JSON.parse(readFileSync(file, 'utf8')) as JournalRecord).steps).toEqual([]);
  });
});

describe('undo', () => {
  it('runs in reverse: forwarding off before any command, each undone step struck and saved, the file gone at the end', async () => {
    const sys = hostSysctls();
    const file = stateFile();
    const { record } = await recipe(sys, file);
    const total = record.steps.length;
    const runner = new FakeRunner(file, (argv) =>
      argv.includes('-j') && argv.includes('link') ? { exitCode: 0, stdout: '[{"ifindex":5,"mtu":1500,"flags":["UP"]}]', stderr: '' } : argv.includes('pref') && argv.includes('show') ? { exitCode: 0, stdout: '[]', stderr: '' } : ok,
    );
    const writesBefore = sys.writes.length;
    const ctx = undoCtx(() => {}, { sysctls: sys });
    await drive(undoJournal(record, ctx), runner);
    expect(ctx.errors).toEqual([]);

    // ip_forward went off first of all, and the three forwarding steps were undone (and struck)
    // before the first command that removes a diversion ran.
    expect(sys.writes[writesBefore]).toBe('net/ipv4/ip_forward=0');
    expect(runner.stepsOnDisk[0]).toBe(total - 3);
    expect(sys.values.get('net/ipv4/conf/wan0/forwarding')).toBe('0');
    expect(sys.values.get('net/ipv4/conf/tun0/forwarding')).toBe('0');
    expect(sys.values.get('net/ipv4/conf/lan0/forwarding')).toBe('1');
    expect(runner.seen).toEqual([
      'ip -N -j rule show pref 0',
      'ip rule add pref 0 lookup local',
      'ip rule del pref 100 lookup local protocol 84',
      'ip neigh del proxy 203.0.113.1 dev wan0',
      'ip rule del pref 50 from 192.168.1.0/24 to 203.0.113.1 lookup 7301 protocol 84',
      'ip rule del pref 10 iif wan0 to 203.0.113.1 lookup 7302 protocol 84',
      'ip rule del pref 1000 from 192.168.1.0/24 lookup 7301 protocol 84',
      'ip rule del pref 998 iif lo ipproto icmp lookup 7302 protocol 84',
      'ip rule del pref 996 to 192.168.1.0/24 lookup main protocol 84',
      'ip rule del pref 21 iif tun0 lookup main protocol 84',
      'ip rule del pref 20 iif tun0 lookup local protocol 84',
      'ip rule del pref 6 iif wan0 to 192.168.1.0/24 blackhole protocol 84',
      'ip rule del pref 5 iif wan0 from 192.168.1.0/24 blackhole protocol 84',
      'ip route del default dev tun0 table 7302 proto 84 src 203.0.113.1',
      'ip route del default dev tun0 table 7301 proto 84 src 203.0.113.1',
      'ip route del prohibit default table 7301 proto 84 metric 4294967295',
      'ip -j link show dev tun0',
      'ip link set dev tun0 down',
    ]);
    // Shrinking step by step: never growing, one step less per undone command that deletes.
    for (let i = 1; i < runner.stepsOnDisk.length; i++) expect(runner.stepsOnDisk[i]).toBeLessThanOrEqual(runner.stepsOnDisk[i - 1]!);
    expect(runner.stepsOnDisk[3]! - runner.stepsOnDisk[4]!).toBe(1);
    expect(existsSync(file)).toBe(false);
    expect(sys.values.get('net/ipv4/ip_early_demux')).toBe('1');
    expect(sys.values.get('net/ipv4/ip_local_port_range')).toBe('32768\t60999');
    expect(sys.values.get('net/ipv4/conf/all/accept_redirects')).toBe('1');
  });

  it('the synchronous driver makes the same decisions', async () => {
    const plans: string[][] = [];
    for (const sync of [false, true]) {
      const sys = hostSysctls();
      const file = stateFile();
      const { record } = await recipe(sys, file);
      const runner = new FakeRunner(file);
      const ctx = undoCtx(() => {}, { sysctls: sys });
      if (sync) driveSync(undoJournal(record, ctx), runner);
      else await drive(undoJournal(record, ctx), runner);
      plans.push(runner.seen);
    }
    expect(plans[1]).toEqual(plans[0]);
  });

  it('a failing step stays listed (and the file with it); "already gone" counts as undone', async () => {
    const file = stateFile();
    const record: JournalRecord = {
      stateFile: file,
      steps: [
        { kind: 'route', args: ['prohibit', 'default', 'table', '7301'] },
        { kind: 'rule', args: ['pref', '1000', 'from', '192.168.1.0/24', 'lookup', '7301'] },
        { kind: 'proxy-neigh', address: '203.0.113.1', dev: 'wan0' },
      ],
    };
    const runner = new FakeRunner(file, (argv) =>
      argv[1] === 'rule'
        ? { exitCode: 2, stdout: '', stderr: 'RTNETLINK answers: Operation not permitted\n' }
        : argv[1] === 'neigh'
          ? { exitCode: 2, stdout: '', stderr: 'RTNETLINK answers: No such file or directory\n' }
          : ok,
    );
    const ctx = undoCtx(() => {}, { sysctls: hostSysctls() });
    await drive(undoJournal(record, ctx), runner);
    expect(runner.seen).toEqual([
      'ip neigh del proxy 203.0.113.1 dev wan0',
      'ip rule del pref 1000 from 192.168.1.0/24 lookup 7301',
      'ip route del prohibit default table 7301',
    ]);
    expect(ctx.errors).toEqual(['ip rule del pref 1000 from 192.168.1.0/24 lookup 7301 failed (exit 2): RTNETLINK answers: Operation not permitted']);
    expect(record.steps.map(label)).toEqual(['rule pref 1000']);
    expect((JSON.parse(readFileSync(file, 'utf8')) as JournalRecord).steps.map(label)).toEqual(['rule pref 1000']);
  });
});

describe('the sysctl restore rule', () => {
  async function applyThenUndo(meddle: (s: FakeSysctls) => void): Promise<{ sys: FakeSysctls; logs: string[] }> {
    const sys = hostSysctls();
    const file = stateFile();
    const record: JournalRecord = { stateFile: file, steps: [] };
    const j = new Journal(record, sys);
    await j.sysctl('net/ipv4/ip_early_demux', '0');
    await j.sysctl('net/ipv4/ip_forward', '1');
    meddle(sys);
    const logs: string[] = [];
    const ctx = undoCtx((m) => logs.push(m), { sysctls: sys });
    await drive(undoJournal(record, ctx), new FakeRunner(file));
    expect(ctx.errors).toEqual([]);
    return { sys, logs };
  }

  it('unchanged since tunnat set it: the old value goes back, side effects included', async () => {
    const { sys, logs } = await applyThenUndo(() => {});
    expect(sys.values.get('net/ipv4/ip_early_demux')).toBe('1');
    expect(sys.values.get('net/ipv4/ip_forward')).toBe('0');
    expect(sys.values.get('net/ipv4/conf/lan0/forwarding')).toBe('1');
    expect(sys.values.get('net/ipv4/conf/all/accept_redirects')).toBe('1');
    expect(logs).toEqual(['restored sysctl net.ipv4.ip_forward=0', 'restored sysctl net.ipv4.ip_early_demux=1']);
  });

  it('changed by someone else since: theirs is left, and the log says so', async () => {
    const { sys, logs } = await applyThenUndo((s) => {
      s.values.set('net/ipv4/ip_early_demux', '2');
    });
    expect(sys.values.get('net/ipv4/ip_early_demux')).toBe('2');
    expect(logs).toContain('sysctl net.ipv4.ip_early_demux left at 2: changed by someone else since tunnat set 0');
  });

  it('ip_forward turned off by someone else: left off, and its side effects are not touched', async () => {
    const { sys } = await applyThenUndo((s) => {
      s.write('net/ipv4/ip_forward', '0');
      s.values.set('net/ipv4/conf/wan0/forwarding', '1');
    });
    expect(sys.values.get('net/ipv4/conf/wan0/forwarding')).toBe('1');
  });

  it("a side effect someone changed since keeps their value across tunnat's own ip_forward write", async () => {
    const { sys, logs } = await applyThenUndo((s) => {
      s.values.set('net/ipv4/conf/lan0/forwarding', '0');
    });
    expect(sys.values.get('net/ipv4/ip_forward')).toBe('0');
    expect(sys.values.get('net/ipv4/conf/lan0/forwarding')).toBe('0');
    expect(sys.values.get('net/ipv4/conf/wan0/forwarding')).toBe('0');
    expect(logs).toContain('sysctl net.ipv4.conf.lan0.forwarding kept at 0: changed by someone else since');
  });

  it('a per-interface sysctl whose interface vanished counts as restored', async () => {
    const sys = hostSysctls();
    const file = stateFile();
    const record: JournalRecord = { stateFile: file, steps: [] };
    await new Journal(record, sys).sysctl('net/ipv4/conf/tun0/rp_filter', '0');
    sys.values.delete('net/ipv4/conf/tun0/rp_filter');
    const ctx = undoCtx(() => {}, { sysctls: sys });
    await drive(undoJournal(record, ctx), new FakeRunner(file));
    expect(ctx.errors).toEqual([]);
    expect(existsSync(file)).toBe(false);
  });
});
