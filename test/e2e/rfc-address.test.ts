/**
 * The public address: masquerade follows the WAN interface's address when it changes while tunnat
 * runs (what a DHCP renewal or a re-dialled PPP link does), and `--public-ip` translates to a static
 * address the gateway does not own, answering ARP for it on the WAN (proxy neighbour).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { httpSeenBy, ping } from '../../src/lab/probes.js';
import { startServices } from '../../src/lab/services.js';
import { captureOn, Cleanup, buildTestLab, inNs, isRoot, waitUntil, type Capture, type Lab } from './harness.js';
import { re, startRfcRouter, udpProbe, wanLeaks } from './fixtures/rfc-lab.js';

const SERVER = '203.0.113.2';
const OLD_PUBLIC = '203.0.113.1';
const NEW_PUBLIC = '203.0.113.50';
const STATIC_PUBLIC = '203.0.113.9';

// Needs root: namespaces, veth pairs, a TUN device and tcpdump.
describe.skipIf(!isRoot)('the public address', () => {
  const cleanup = new Cleanup((l) => console.error(l));
  let lab: Lab;
  let capture: Capture;
  let h0: string;

  beforeAll(async () => {
    lab = await buildTestLab(cleanup, { prefix: 'rfa', lanHosts: 1 });
    h0 = lab.lanHosts[0]!.netns;
    await startServices({ netns: lab.inet.netns, addresses: [SERVER], cleanup });
    capture = await captureOn(lab.inet.netns, lab.inet.dev, cleanup);
  }, 60_000);

  afterAll(async () => {
    await cleanup.run();
  }, 60_000);

  it('masquerade: after wan0 changes from 203.0.113.1 to 203.0.113.50, new flows leave from 203.0.113.50', async () => {
    const router = await startRfcRouter(lab, cleanup, 'masq');
    try {
      expect((await httpSeenBy(h0, SERVER)).remoteAddress).toBe(OLD_PUBLIC);
      const gw = lab.gw.netns;
      const wan = lab.gw.wanDev;
      // Renumber as DHCP would: new address first, then the old one goes. Without promote_secondaries
      // deleting the primary would take the new (secondary) address of the same /24 with it.
      await inNs(gw, ['sysctl', '-q', '-w', `net.ipv4.conf.${wan}.promote_secondaries=1`]);
      await inNs(gw, ['ip', 'addr', 'add', `${NEW_PUBLIC}/24`, 'dev', wan]);
      await inNs(gw, ['ip', 'addr', 'del', `${OLD_PUBLIC}/24`, 'dev', wan]);
      const routes = await inNs(gw, ['ip', '-4', 'route', 'show', 'default']);
      if (!routes.stdout.includes(`via ${SERVER}`)) await inNs(gw, ['ip', 'route', 'replace', 'default', 'via', SERVER, 'dev', wan]);
      const addrs = await inNs(gw, ['ip', '-4', '-o', 'addr', 'show', 'dev', wan]);
      expect(addrs.stdout).toContain(`inet ${NEW_PUBLIC}/24`);
      expect(addrs.stdout).not.toContain(`inet ${OLD_PUBLIC}/`);

      // tunnat polls the address every 2 s; give it a few polls.
      await waitUntil('the LAN host to appear as 203.0.113.50', async () => {
        try {
          return (await httpSeenBy(h0, SERVER, { timeoutS: 1 })).remoteAddress === NEW_PUBLIC;
        } catch {
          return false;
        }
      }, 10_000, 250);
      const udp = await udpProbe(h0, SERVER, 7, { text: 'after the change' });
      expect(udp.outcome).toBe('reply');
      expect(udp.prefix).toMatch(new RegExp(`^${re(NEW_PUBLIC)}:\\d+ $`));
      expect((await ping(h0, SERVER, 2)).received).toBe(2);
      const flows = await router.conntrack();
      expect(flows.length).toBeGreaterThan(0);
      for (const f of flows) expect(f.reply.dst, JSON.stringify(f)).toBe(NEW_PUBLIC);
      expect(router.output()).toMatch(/external address changed/);
    } finally {
      expect(await router.stop(), router.output()).toBe(0);
    }
    // What tunnat moved to the new address it removed again: no rule or proxy entry names either.
    const rules = await inNs(lab.gw.netns, ['ip', 'rule', 'show']);
    expect(rules.stdout).not.toMatch(/203\.0\.113\.(1|50)\b/);
    const proxies = await inNs(lab.gw.netns, ['ip', 'neigh', 'show', 'proxy']);
    expect(proxies.stdout.trim()).toBe('');
  }, 45_000);

  it('--public-ip 203.0.113.9 (not an address of the gateway): HTTP, UDP and ping leave from it, ARP answered by proxy', async () => {
    const router = await startRfcRouter(lab, cleanup, 'static', ['--public-ip', STATIC_PUBLIC]);
    try {
      expect((await inNs(lab.gw.netns, ['ip', '-4', '-o', 'addr', 'show'])).stdout).not.toContain(STATIC_PUBLIC);
      expect((await httpSeenBy(h0, SERVER)).remoteAddress).toBe(STATIC_PUBLIC);
      const udp = await udpProbe(h0, SERVER, 7, { text: 'static' });
      expect(udp.outcome).toBe('reply');
      expect(udp.prefix).toMatch(new RegExp(`^${re(STATIC_PUBLIC)}:\\d+ $`));
      expect((await ping(h0, SERVER, 2)).received).toBe(2);
      // The internet host resolved 203.0.113.9 to the gateway's WAN MAC.
      const mac = (await inNs(lab.gw.netns, ['cat', `/sys/class/net/${lab.gw.wanDev}/address`])).stdout.trim();
      const neigh = await inNs(lab.inet.netns, ['ip', 'neigh', 'show', STATIC_PUBLIC]);
      expect(neigh.stdout).toContain(`lladdr ${mac}`);
    } finally {
      expect(await router.stop(), router.output()).toBe(0);
    }
  }, 45_000);

  it('no 192.168.0.0/16 address left on the WAN, not even quoted inside an ICMP error', async () => {
    const { text, leaks } = await wanLeaks(capture);
    for (const a of [OLD_PUBLIC, NEW_PUBLIC, STATIC_PUBLIC]) expect(text).toContain(`${a}.`);
    expect(leaks).toEqual([]);
  });
});
