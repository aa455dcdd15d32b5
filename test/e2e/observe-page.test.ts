/**
 * The live page in a real browser (Debian's chromium, driven by playwright-core), the lab's endpoint
 * on the host's loopback, and bad input that must leave the router running: a pcap file that cannot
 * be written, page clients that vanish mid-stream.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer, type Server } from 'node:net';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { udpEcho } from '../../src/lab/probes.js';
import { startServices } from '../../src/lab/services.js';
import { runLab } from '../../src/lab/demo.js';
import { sseConnect } from '../../src/observe/sse.js';
import { parsePromText, sampleValue } from '../../src/observe/promtext.js';
import { buildTestLab, Cleanup, isRoot, randomId, startTestRouter, waitUntil, type Lab, type TestRouter } from './harness.js';

const CHROMIUM = '/usr/bin/chromium';
const SERVER = '203.0.113.2';

/** Serve a unix socket on 127.0.0.1:<random port> (the page needs TCP; the router is in a namespace). */
async function loopbackProxy(socketPath: string, cleanup: Cleanup): Promise<{ port: number; server: Server }> {
  const server = createServer((client) => {
    const upstream = connect(socketPath);
    client.pipe(upstream).pipe(client);
    const close = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', close);
    upstream.on('error', close);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  cleanup.defer({ label: 'close the loopback proxy', sync: () => server.close(), async: () => new Promise<void>((r) => server.close(() => r())) });
  const addr = server.address();
  return { port: typeof addr === 'object' && addr ? addr.port : 0, server };
}

function get(url: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get(url, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      })
      .on('error', reject);
  });
}

/** Headless chromium with a throwaway profile (removed by `cleanup`). */
async function launchBrowser(cleanup: Cleanup): Promise<BrowserContext> {
  const userDataDir = mkdtempSync(join(tmpdir(), 'tunnat-chromium-'));
  cleanup.defer({ label: `remove ${userDataDir}`, sync: () => rmSync(userDataDir, { recursive: true, force: true }) });
  return chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

/** The live page, once its stream is up. */
async function livePage(browser: BrowserContext, base: string): Promise<Page> {
  const page = await browser.newPage();
  await page.goto(`${base}/`);
  await page.locator('#status', { hasText: 'live' }).waitFor({ timeout: 10_000 });
  return page;
}

// Needs root (namespaces, a TUN device) and Debian's chromium, which .ci/run installs.
describe.skipIf(!isRoot || !existsSync(CHROMIUM))('the live page in headless Chromium', () => {
  const cleanup = new Cleanup((l) => console.error(l));
  let lab: Lab;
  let router: TestRouter;
  let base: string;

  beforeAll(async () => {
    lab = await buildTestLab(cleanup, { lanHosts: 1 });
    await startServices({ netns: lab.inet.netns, addresses: [SERVER], cleanup });
    // A pcap file that cannot be written: the router says so and runs on without it.
    router = await startTestRouter({ gwNetns: lab.gw.netns, id: `page-${lab.id}`, cleanup, args: ['--pcap', `/nonexistent-${lab.id}/x.pcapng`] });
    const { port } = await loopbackProxy(router.socketPath!, cleanup);
    base = `http://127.0.0.1:${port}`;
  }, 60_000);

  afterAll(async () => {
    await cleanup.run();
  }, 60_000);

  it('runs on, with a clear message, when the --pcap file cannot be written', async () => {
    await waitUntil('the pcap error line', async () => router.output().includes('running without --pcap'), 5000);
    expect(router.output()).toMatch(/cannot write the pcap file \/nonexistent-\S+\/x\.pcapng: ENOENT/);
    const echo = await udpEcho(lab.lanHosts[0]!.netns, SERVER, 7, 'still routing');
    expect(echo.payload).toBe('still routing');
  });

  it('shows a flow the test created, its counters and the host, updating live', async () => {
    const h0 = lab.lanHosts[0]!;
    const browser = await launchBrowser(cleanup);
    try {
      const page = await livePage(browser, base);
      // The flow is created after the page is open: it must arrive through the live stream.
      const echo = await udpEcho(h0.netns, SERVER, 7, 'seen in the browser', { sourcePort: 41777 });
      expect(echo.payload).toBe('seen in the browser');
      const row = page.locator('#flows tbody tr', { hasText: `${h0.address}:41777` });
      await row.waitFor({ timeout: 10_000 });
      const cells = await row.locator('td').allInnerTexts();
      expect(cells[0]).toBe('udp');
      expect(cells[3]).toBe(`${SERVER}:7`);
      expect(cells[4]).toBe(`${echo.address}:${echo.port}`);
      // One echo and its answer: replied, not a stream, so not assured (src/nat/udp-timer.ts).
      expect(cells[5]).toBe('REPLIED');
      await page.locator(`#hosts tbody tr[data-host="${h0.address}"]`).waitFor({ timeout: 10_000 });
      expect(await page.locator('#public').innerText()).toBe(lab.gw.wanAddress);
      expect(await page.locator('#legend').innerText()).toContain(h0.address);
      // The filter box narrows the table.
      await page.locator('#filter').fill('no-such-flow');
      expect(await page.locator('#flows tbody tr').count()).toBe(0);
      await page.locator('#filter').fill('41777');
      expect(await page.locator('#flows tbody tr').count()).toBe(1);
    } finally {
      await browser.close();
    }
    // The browser went away mid-stream: the router forgets the client and routes on.
    await waitUntil(
      'the page client to be gone',
      async () => sampleValue(parsePromText(await router.metrics()), 'tunnat_observe_clients', { stream: 'live' }) === 0,
      10_000,
    );
    expect((await udpEcho(h0.netns, SERVER, 7, 'after the browser')).payload).toBe('after the browser');
  }, 90_000);

  it("draws the chart's axes from the first second: distinct rate labels and wall-clock times", async () => {
    const browser = await launchBrowser(cleanup);
    try {
      const page = await livePage(browser, base);
      // The first snapshot: no rate yet (nothing to compare with), the scale of an idle chart.
      const chart = page.locator('#chart');
      expect(await chart.getAttribute('data-y-labels')).toBe('0 B/s|1 B/s|2 B/s|3 B/s|4 B/s');
      const times = (await chart.getAttribute('data-x-labels'))!.split('|');
      expect(times.length).toBeGreaterThanOrEqual(4);
      for (const t of times) expect(t).toMatch(/^\d\d:\d\d:\d\d$/);
      const secs = times.map((t) => t.split(':').map(Number).reduce((a, b) => a * 60 + b, 0));
      for (let i = 1; i < secs.length; i++) expect((secs[i]! - secs[i - 1]! + 86400) % 86400).toBe(30);
      expect(await chart.getAttribute('aria-label')).toMatch(/^bytes per second per inside host, 0 B\/s to 4 B\/s, the last 120 seconds up to \d\d:\d\d:\d\d$/);
      // With traffic the scale grows and stays readable.
      await udpEcho(lab.lanHosts[0]!.netns, SERVER, 7, 'x'.repeat(1000), { sourcePort: 41778 });
      await waitUntil('a rate on the chart', async () => (await chart.getAttribute('data-y-labels')) !== '0 B/s|1 B/s|2 B/s|3 B/s|4 B/s', 10_000, 100);
      const labels = (await chart.getAttribute('data-y-labels'))!.split('|');
      expect(new Set(labels).size).toBe(5);
      expect(labels[0]).toMatch(/^0(\.0+)? (B|kB|MB)\/s$/);
    } finally {
      await browser.close();
    }
  }, 60_000);

  it('survives stream clients that disconnect abruptly, many times over', async () => {
    for (let i = 0; i < 20; i++) {
      const conn = await sseConnect(`unix:${router.socketPath!}`, i % 2 ? '/live' : '/trace?rate=100', () => {});
      conn.close();
    }
    await waitUntil(
      'every stream client to be gone',
      async () => {
        const s = parsePromText(await router.metrics());
        return ['live', 'trace', 'events'].every((stream) => sampleValue(s, 'tunnat_observe_clients', { stream }) === 0);
      },
      10_000,
    );
    expect((await get(`${base}/`)).status).toBe(200);
    expect((await udpEcho(lab.lanHosts[0]!.netns, SERVER, 7, 'still here')).payload).toBe('still here');
    expect(router.process?.code).toBeNull();
  });
});

// Needs root: `tunnat lab` builds namespaces and runs the router in them.
describe.skipIf(!isRoot)('tunnat lab: page and metrics on the host loopback', () => {
  it('serves the page, /metrics and the live stream on 127.0.0.1', async () => {
    const lines: string[] = [];
    let release!: () => void;
    const until = new Promise<void>((r) => (release = r));
    let checked: Promise<void> | null = null;
    const ok = await runLab({
      id: `pg${randomId(5)}`,
      httpPort: 0,
      trapSignals: false,
      lanHosts: 1,
      log: (l) => lines.push(l),
      until,
      onServing: (url) => {
        checked = (async () => {
          try {
            const page = await get(`${url}/`);
            expect(page.status).toBe(200);
            expect(page.body).toContain('<title>tunnat — live</title>');
            const metrics = parsePromText((await get(`${url}/metrics`)).body);
            // The demo's traffic from its LAN host, counted per host.
            expect(sampleValue(metrics, 'tunnat_host_bytes_total', { host: '192.168.1.10', direction: 'outbound' })).toBeGreaterThan(0);
            const snaps: string[] = [];
            const conn = await sseConnect(url.replace(/^http:\/\//, ''), '/live', (ev, data) => ev === 'snapshot' && snaps.push(data));
            await waitUntil('a snapshot', async () => snaps.length > 0, 5000, 50);
            conn.close();
            expect(JSON.parse(snaps[0]!)).toMatchObject({ publicAddress: '203.0.113.1' });
          } finally {
            release();
          }
        })();
      },
    });
    expect(checked).not.toBeNull();
    await checked;
    expect(ok, lines.join('\n')).toBe(true);
    expect(lines.join('\n')).toMatch(/Router endpoint: http:\/\/127\.0\.0\.1:\d+/);
  }, 90_000);
});
