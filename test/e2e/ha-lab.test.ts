/**
 * The gateway-pair lab and keepalived in it, with no NAT engine: a child process holding each
 * gateway's TUN open stands in for tunnat (what keepalived tracks is the TUN's carrier). Checks the
 * topology, that keepalived's 100 ms advertisements work in namespaces, who holds and answers for the
 * shared addresses, the takeover times after the TUN or a whole gateway goes, no preemption, and that
 * nothing is left behind.
 */
import { existsSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { keepalivedConf } from '../../src/ha/keepalived.js';
import { startCapture } from '../../src/lab/capture.js';
import { buildHaLab, type GwInfo, type HaLab } from '../../src/lab/ha-topology.js';
import { checkKeepalivedConf, commonState, parseInstanceStates, startKeepalived, type KeepalivedHandle } from '../../src/lab/keepalived.js';
import { getSysctl, listNetns } from '../../src/lab/netns.js';
import { ping } from '../../src/lab/probes.js';
import { isAlive } from '../../src/lab/process.js';
import { holdTun, type TunHolder } from '../../src/lab/tun-holder.js';
import { run } from '../../src/util/exec.js';
import { Cleanup, inNs, isRoot, waitUntil } from './harness.js';

const KEEPALIVED = '/usr/sbin/keepalived';
const TUN = 'tunha0';
const VRID = 51;

describe('keepalived log lines', () => {
  it('give each instance its last state, and the pair one state only when the instances agree', () => {
    const text = [
      'Sun Dec  6 23:32:37 2026: (tunnat_lan) Entering BACKUP STATE (init)',
      'Sun Dec  6 23:32:37 2026: (tunnat_wan) Entering BACKUP STATE (init)',
      'Sun Dec  6 23:32:38 2026: (tunnat_wan) Entering MASTER STATE',
    ].join('\n');
    expect(parseInstanceStates(text)).toEqual({ tunnat_lan: 'BACKUP', tunnat_wan: 'MASTER' });
    expect(commonState(parseInstanceStates(text))).toBe('unknown');
    const synced = `${text}\nSun Dec  6 23:32:38 2026: (tunnat_lan) Entering MASTER STATE\n`;
    expect(commonState(parseInstanceStates(synced))).toBe('MASTER');
    expect(commonState({})).toBe('unknown');
  });
});

if (!isRoot) console.warn('ha-lab.test.ts: the gateway-pair lab tests are skipped: they need root (namespaces, veth, TUN, keepalived)');

// Needs root: namespaces, veth pairs, TUN devices, keepalived and tcpdump inside them. CI runs as root.
// keepalived is required, not optional: without it the suite fails saying what to install.
describe.skipIf(!isRoot)('a gateway pair in a namespace lab, keepalived moving the shared addresses', () => {
  const cleanup = new Cleanup((l) => console.error(l));
  let lab: HaLab;
  let gwa: GwInfo;
  let gwb: GwInfo;
  const holders: TunHolder[] = [];
  const keepalived: KeepalivedHandle[] = [];
  /** Every pid the test started (keepalived parents and children, TUN holders), for the leak check. */
  const pids = new Set<number>();
  /** keepalived's lines with the time they arrived, for takeover timings finer than its 1 s log stamps. */
  const events: { t: number; gw: string; line: string }[] = [];
  const log = (l: string): void => console.log(`[ha-lab] ${l}`);

  const confs: string[] = [];
  const startOn = (i: 0 | 1): KeepalivedHandle => {
    const g = lab.gateways[i];
    const k = startKeepalived({
      netns: g.netns,
      conf: confs[i]!,
      label: `${lab.id}-${g.name}`,
      cleanup: lab.cleanup,
      onLine: (line) => events.push({ t: performance.now(), gw: g.name, line }),
    });
    keepalived[i] = k;
    pids.add(k.pid);
    return k;
  };
  const hold = async (g: GwInfo): Promise<TunHolder> => {
    const h = await holdTun(g.netns, TUN, lab.cleanup);
    pids.add(h.proc.pid);
    return h;
  };
  const eventAfter = (t0: number, gw: string, re: RegExp): number | null => {
    const e = events.find((x) => x.t >= t0 && x.gw === gw && re.test(x.line));
    return e ? Math.round(e.t - t0) : null;
  };
  /** Poll until `want` holds both shared addresses and the other gateway none; the elapsed ms. */
  const waitForHolder = async (want: 0 | 1, timeoutMs: number): Promise<number> => {
    const t0 = performance.now();
    for (;;) {
      const [a, b] = await Promise.all([lab.vipsOf(0), lab.vipsOf(1)]);
      const [mine, other] = want === 0 ? [a, b] : [b, a];
      if (mine.lan && mine.wan && !other.lan && !other.wan) return performance.now() - t0;
      if (performance.now() - t0 > timeoutMs) {
        throw new Error(`gateway ${want === 0 ? 'A' : 'B'} does not hold both addresses alone after ${timeoutMs} ms: A ${JSON.stringify(a)}, B ${JSON.stringify(b)}`);
      }
      await new Promise((r) => setTimeout(r, 5));
    }
  };
  const macOf = async (netns: string, dev: string): Promise<string> => {
    const r = await inNs(netns, ['ip', '-j', 'link', 'show', 'dev', dev]);
    return (JSON.parse(r.stdout) as { address: string }[])[0]!.address;
  };
  const neighMac = async (netns: string, dev: string, address: string): Promise<string | null> => {
    const r = await inNs(netns, ['ip', '-j', 'neigh', 'show', address, 'dev', dev]);
    return (JSON.parse(r.stdout || '[]') as { lladdr?: string }[])[0]?.lladdr ?? null;
  };
  /**
   * From `netns`, forget the neighbours, ping `vip` once, and return the MAC of every ARP reply for
   * it: a BACKUP that answered too would show up as a second reply.
   */
  const arpAnswers = async (netns: string, dev: string, vip: string): Promise<string[]> => {
    await inNs(netns, ['ip', 'neigh', 'flush', 'dev', dev]);
    const cap = await startCapture(netns, dev, { cleanup: lab.cleanup, filter: ['arp'] });
    const p = await ping(netns, vip, 1);
    expect(p.received, p.output).toBe(1);
    await new Promise((r) => setTimeout(r, 200));
    await cap.stop();
    const text = await cap.text();
    return [...text.matchAll(new RegExp(`Reply ${vip.replace(/\./g, '\\.')} is-at ([0-9a-f:]{17})`, 'g'))].map((m) => m[1]!);
  };

  beforeAll(async () => {
    if (!existsSync(KEEPALIVED)) throw new Error(`${KEEPALIVED} is missing: install the Debian package keepalived (apt-get install keepalived)`);
    lab = await buildHaLab({ cleanup, prefix: 'tha', lanHosts: 1, log });
    [gwa, gwb] = lab.gateways;
  });

  afterAll(async () => {
    await cleanup.run();
    expect((await listNetns()).filter((n) => lab && lab.namespaces.includes(n))).toEqual([]);
  });

  it('cables LAN, WAN and sync link as documented, with the shared addresses left unconfigured', async () => {
    const h0 = lab.lanHosts[0]!;
    for (const g of lab.gateways) {
      expect((await ping(h0.netns, g.lanAddress, 2)).received, `h0 → ${g.name} ${g.lanAddress}`).toBe(2);
      expect((await ping(g.netns, g.peerSyncAddress, 2, ['-I', g.syncDev])).received, `${g.name} → peer over sync0`).toBe(2);
      expect((await ping(g.netns, lab.inet.address, 2)).received, `${g.name} → internet host`).toBe(2);
      const addrs = (await inNs(g.netns, ['ip', '-o', '-4', 'addr', 'show'])).stdout;
      expect(addrs).not.toContain(`inet ${lab.lanVip}/`);
      expect(addrs).not.toContain(`inet ${lab.wanVip}/`);
      expect(await getSysctl(g.netns, 'net.ipv4.ip_forward')).toBe('0');
      expect((await inNs(g.netns, ['ip', 'route', 'show', 'default'])).stdout).toContain(`via ${lab.inet.address}`);
    }
    expect((await inNs(h0.netns, ['ip', 'route', 'show', 'default'])).stdout).toContain(`via ${lab.lanVip}`);
    expect(await lab.vipHolder()).toEqual([]);
    // The sync link really is a separate wire: cut, A and B no longer reach each other over it.
    await lab.cutSync(true);
    expect((await ping(gwa.netns, gwb.syncAddress, 1, ['-I', 'sync0', '-W', '1'])).received).toBe(0);
    expect((await ping(gwb.netns, gwa.syncAddress, 1, ['-I', 'sync0', '-W', '1'])).received).toBe(0);
    await lab.cutSync(false);
    await waitUntil('the sync link back', async () => (await ping(gwa.netns, gwb.syncAddress, 1, ['-W', '1'])).received === 1, 5_000, 50);
  });

  it('runs keepalived before the TUNs exist (FAULT), accepts advert_int 0.10, and makes the first gateway up MASTER', async () => {
    for (const [i, g] of ([[0, gwa], [1, gwb]] as const)) {
      const conf = keepalivedConf({
        name: `gw-${g.name}`,
        lanIf: g.lanDev,
        wanIf: g.wanDev,
        lanVip: lab.lanVipCidr,
        wanVip: lab.wanVipCidr,
        vrid: VRID,
        priority: i === 0 ? 150 : 100,
        trackInterface: TUN,
        checkScript: null,
      });
      expect(conf).toContain('advert_int 0.10');
      // keepalived's own configuration check, inside the gateway's namespace like everything else.
      expect(await checkKeepalivedConf(g.netns, conf)).toEqual({ ok: true, output: '' });
      confs[i] = conf;
      const k = startOn(i);
      // keepalived starts before tunnat on a booting gateway. Without `dynamic_interfaces` it exits at
      // once ("Non-existent interface specified in configuration"); with it, both instances wait in FAULT.
      await k.waitForState('FAULT', 5_000);
      for (const p of k.livePids()) pids.add(p);
    }
    expect(await lab.vipHolder()).toEqual([]);

    // A's TUN first, B's once A is MASTER. With nopreempt, the gateway whose TUN comes up first wins:
    // priority only decides between two BACKUPs whose master-down timers (3 × 100 ms + skew) run out
    // together, and the skew gives 150 over 100 a head start of only 20 ms.
    let t0 = performance.now();
    holders[0] = await hold(gwa);
    await keepalived[0]!.waitForState('MASTER', 5_000);
    log(`A's TUN up: A MASTER after ${Math.round(performance.now() - t0)} ms (BACKUP after ${eventAfter(t0, 'a', /Entering BACKUP STATE/)} ms)`);
    t0 = performance.now();
    holders[1] = await hold(gwb);
    await keepalived[1]!.waitForState('BACKUP', 5_000);
    log(`B's TUN up: B BACKUP after ${Math.round(performance.now() - t0)} ms`);
    await waitForHolder(0, 2_000);
    expect(await lab.vipHolder()).toEqual(['a']);
    for (const k of keepalived) {
      expect(k.output()).not.toMatch(/unknown keyword|invalid|error|not supported|truncat/i);
      for (const p of k.livePids()) pids.add(p);
    }
  });

  it('advertises every 100 ms on the wire (fractional intervals work in namespaces)', async () => {
    const cap = await startCapture(lab.inet.netns, lab.inet.dev, { cleanup: lab.cleanup, filter: ['ip', 'proto', '112'] });
    await new Promise((r) => setTimeout(r, 1_000));
    await cap.stop();
    const lines = (await run(['tcpdump', '-tt', '-nn', '-r', cap.file], { allowFail: true })).stdout.split('\n');
    const fromA = lines.filter((l) => l.includes(`IP ${gwa.wanAddress} > 224.0.0.18`));
    expect(lines.filter((l) => l.includes(`IP ${gwb.wanAddress} >`)), 'a BACKUP does not advertise').toEqual([]);
    expect(fromA.length, lines.join('\n')).toBeGreaterThanOrEqual(7);
    expect(fromA.length).toBeLessThanOrEqual(13);
    expect(fromA[0]).toMatch(new RegExp(`VRRPv3, Advertisement, vrid ${VRID + 1}, prio 150, intvl 10cs`));
    const times = fromA.map((l) => Number(l.split(' ')[0]));
    const gaps = times.slice(1).map((t, i) => (t - times[i]!) * 1000).sort((x, y) => x - y);
    const median = gaps[Math.floor(gaps.length / 2)]!;
    log(`WAN advertisements from A in 1 s: ${fromA.length}, median gap ${median.toFixed(1)} ms`);
    expect(median).toBeGreaterThan(80);
    expect(median).toBeLessThan(130);
  });

  it('only the holder answers ARP for the shared addresses', async () => {
    const macA = { lan: await macOf(gwa.netns, 'lan0'), wan: await macOf(gwa.netns, 'wan0') };
    expect(await arpAnswers(lab.inet.netns, lab.inet.dev, lab.wanVip)).toEqual([macA.wan]);
    expect(await neighMac(lab.inet.netns, lab.inet.dev, lab.wanVip)).toBe(macA.wan);
    const h0 = lab.lanHosts[0]!;
    expect(await arpAnswers(h0.netns, h0.dev, lab.lanVip)).toEqual([macA.lan]);
    expect(await neighMac(h0.netns, h0.dev, lab.lanVip)).toBe(macA.lan);
  });

  it("moves both addresses to B within 1 s of A's TUN closing, and the neighbours follow by gratuitous ARP", async () => {
    const macB = { lan: await macOf(gwb.netns, 'lan0'), wan: await macOf(gwb.netns, 'wan0') };
    const h0 = lab.lanHosts[0]!;
    // Both neighbours know A's MAC for the addresses from the previous test.
    const t0 = performance.now();
    await holders[0]!.kill();
    const took = await waitForHolder(1, 1_000);
    const fault = eventAfter(t0, 'a', /Entering FAULT STATE/);
    const master = eventAfter(t0, 'b', /\(tunnat_wan\) Entering MASTER STATE/);
    log(`A's TUN closed: A in FAULT after ${fault} ms, B MASTER after ${master} ms, B holds both addresses after ${Math.round(took)} ms`);
    expect(took).toBeLessThan(1_000);
    expect(keepalived[0]!.state()).toBe('FAULT');
    await keepalived[1]!.waitForState('MASTER', 1_000);
    expect(await lab.vipHolder()).toEqual(['b']);
    // No traffic: only B's gratuitous ARPs can have changed what the neighbours believe.
    const wanGarp = await waitUntil('the internet host to learn B for the public address', async () => (await neighMac(lab.inet.netns, lab.inet.dev, lab.wanVip)) === macB.wan, 2_000, 10);
    const lanGarp = await waitUntil('the LAN host to learn B for its gateway address', async () => (await neighMac(h0.netns, h0.dev, lab.lanVip)) === macB.lan, 2_000, 10);
    log(`neighbours updated by gratuitous ARP: internet host within ${wanGarp} ms, LAN host within ${lanGarp} ms of B holding`);
  });

  it("keeps the addresses on B when A's TUN comes back (nopreempt)", async () => {
    const t0 = performance.now();
    holders[0] = await hold(gwa);
    await keepalived[0]!.waitForState('BACKUP', 3_000);
    log(`A's TUN back: A BACKUP after ${Math.round(performance.now() - t0)} ms (${eventAfter(t0, 'a', /Interface tunha0 added/)} ms to see the new interface)`);
    // Several advertisement rounds: a preempting A would have taken over by now.
    await new Promise((r) => setTimeout(r, 1_000));
    expect(keepalived[0]!.state()).toBe('BACKUP');
    expect(keepalived[1]!.state()).toBe('MASTER');
    await waitForHolder(1, 0);
    expect(await arpAnswers(lab.inet.netns, lab.inet.dev, lab.wanVip)).toEqual([await macOf(gwb.netns, 'wan0')]);
  });

  it('moves both addresses back to A within 2 s when B is gone as a whole, and B stays BACKUP when back', async () => {
    const t0 = performance.now();
    await lab.gatewayGone(1, true);
    const took = await waitForHolder(0, 2_000);
    log(
      `B's cables pulled: B in FAULT after ${eventAfter(t0, 'b', /Entering FAULT STATE/)} ms, ` +
        `A MASTER after ${eventAfter(t0, 'a', /\(tunnat_wan\) Entering MASTER STATE/)} ms, A holds both after ${Math.round(took)} ms`,
    );
    expect(took).toBeLessThan(2_000);
    expect(keepalived[1]!.state()).toBe('FAULT');
    const t1 = performance.now();
    await lab.gatewayGone(1, false);
    await keepalived[1]!.waitForState('BACKUP', 3_000);
    log(`B back: BACKUP after ${Math.round(performance.now() - t1)} ms`);
    await new Promise((r) => setTimeout(r, 1_000));
    expect(keepalived[0]!.state()).toBe('MASTER');
    expect(keepalived[1]!.state()).toBe('BACKUP');
    await waitForHolder(0, 0);
    expect((await ping(lab.lanHosts[0]!.netns, gwb.lanAddress, 1)).received, 'B reachable again').toBe(1);
  });

  it('a keepalived killed with SIGKILL leaves its addresses behind: both gateways hold them until it restarts', async () => {
    await keepalived[0]!.kill();
    expect(keepalived[0]!.livePids(), 'the VRRP child died with the parent').toEqual([]);
    // B hears no more advertisements and takes over after the master-down time; nobody removes A's copies.
    const took = await waitUntil('B to hold both addresses', async () => { const v = await lab.vipsOf(1); return v.lan && v.wan; }, 2_000, 5);
    log(`A's keepalived killed: B holds both addresses after ${took} ms, while A still holds ${JSON.stringify(await lab.vipsOf(0))}`);
    expect(await lab.vipsOf(0)).toEqual({ lan: true, wan: true });
    expect(await lab.vipHolder()).toEqual(['a', 'b']);
    // A new keepalived clears its addresses from the interfaces as it starts, then stays BACKUP.
    const k = startOn(0);
    await k.waitForState('BACKUP', 5_000);
    for (const p of k.livePids()) pids.add(p);
    await waitForHolder(1, 1_000);
    expect(keepalived[1]!.state()).toBe('MASTER');
  });

  it('a keepalived stopped with SIGTERM gives the addresses up at once', async () => {
    const t0 = performance.now();
    const stopping = keepalived[1]!.stop();
    const took = await waitForHolder(0, 1_000);
    const code = await stopping;
    log(`B's keepalived stopped: A holds both addresses after ${Math.round(took)} ms; B's keepalived exited (${code}) after ${Math.round(performance.now() - t0)} ms`);
    expect(code).toBe(0);
    expect(keepalived[1]!.livePids()).toEqual([]);
    expect(await lab.vipsOf(1)).toEqual({ lan: false, wan: false });
  });

  it('destroy leaves no namespace, keepalived or TUN holder behind', async () => {
    for (const k of keepalived) for (const p of k.livePids()) pids.add(p);
    expect(pids.size).toBeGreaterThanOrEqual(6);
    await lab.destroy();
    const left = (await listNetns()).filter((n) => lab.namespaces.includes(n));
    expect(left).toEqual([]);
    expect([...pids].filter(isAlive)).toEqual([]);
    const dirs = keepalived.map((k) => k.dir).filter((d) => existsSync(d));
    expect(dirs).toEqual([]);
  });
});
