/**
 * The FTP ALG with real programs: vsftpd in the internet namespace with active mode on, curl on a LAN
 * host asking for active mode (`--ftp-port -`, so the client names its own LAN address). With
 * `--alg ftp` a 20 MB file comes through intact over PORT and over EPRT; without it (tunnat's
 * default) the server is told to connect to 192.168.1.10 and the transfer fails.
 */
import { writeFileSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnIn } from '../../src/lab/process.js';
import { buildTestLab, captureOn, Cleanup, inNs, isRoot, randomFile, waitUntil, type Capture, type Lab, type TestRouter } from './harness.js';
import { run } from '../../src/util/exec.js';
import { metricValue, startRfcRouter } from './fixtures/rfc-lab.js';

const SERVER = '203.0.113.2';
const FILE_BYTES = 20 * 1024 * 1024;
/** Bounds for one transfer: 20 MB through the lab takes a second or two; a failure must not hang. */
const CURL_TIMEOUT_S = 40;

/** vsftpd, anonymous read-only downloads from `dir`, active mode allowed, listening on SERVER:21. */
async function startVsftpd(lab: Lab, dir: string, cleanup: Cleanup): Promise<void> {
  const conf = join(dir, 'vsftpd.conf');
  writeFileSync(conf, [
    'listen=YES', 'listen_ipv6=NO', `listen_address=${SERVER}`, 'background=NO',
    'anonymous_enable=YES', 'local_enable=NO', 'write_enable=NO', `anon_root=${dir}`, 'no_anon_password=YES',
    'port_enable=YES', 'pasv_enable=YES', 'connect_from_port_20=NO', 'seccomp_sandbox=NO',
    'secure_chroot_dir=/var/run/vsftpd/empty', 'xferlog_enable=NO', 'use_localtime=NO',
    // Data connections for a 20 MB file: no bandwidth cap, and the default idle timeouts are long enough.
    'anon_max_rate=0', '',
  ].join('\n'));
  // The anonymous user (ftp) must be able to read the directory and the file, and not write the root.
  chmodSync(dir, 0o755);
  spawnIn(lab.inet.netns, ['/usr/sbin/vsftpd', conf], { label: 'vsftpd', cleanup });
  await waitUntil('vsftpd listening', async () => {
    const r = await inNs(lab.inet.netns, ['ss', '-Hltn', `src ${SERVER}:21`], { allowFail: true });
    return r.stdout.includes(':21');
  }, 10_000);
}

interface Transfer {
  code: number;
  sha256: string;
  stderr: string;
}

/** curl in active mode from `netns`; the file's sha256 as received (empty if nothing came). */
async function activeGet(netns: string, name: string, extra: string[]): Promise<Transfer> {
  const url = `ftp://${SERVER}/${name}`;
  const r = await inNs(netns, [
    'bash', '-c', 'set -o pipefail; curl -sS --ftp-port - --connect-timeout 10 --max-time "$1" "${@:3}" "$2" | sha256sum',
    'curl', String(CURL_TIMEOUT_S), url, ...extra,
  ], { allowFail: true });
  return { code: r.exitCode ?? -1, sha256: r.stdout.split(' ')[0] ?? '', stderr: r.stderr };
}

// Needs root: namespaces, veth pairs, a TUN device, vsftpd and tcpdump.
describe.skipIf(!isRoot)('FTP ALG: active FTP from a LAN client', () => {
  const cleanup = new Cleanup((l) => console.error(l));
  let lab: Lab;
  let blob: { dir: string; name: string; sha256: string };
  let h0: string;
  let router: TestRouter | null = null;

  /** The control connections' packets as the server's side of the WAN saw them, payloads printed. */
  async function controlText(capture: Capture): Promise<string> {
    await capture.stop();
    return (await run(['tcpdump', '-nn', '-A', '-r', capture.file], { allowFail: true })).stdout;
  }

  beforeAll(async () => {
    lab = await buildTestLab(cleanup, { prefix: 'ftp', lanHosts: 1 });
    h0 = lab.lanHosts[0]!.netns;
    blob = await randomFile(cleanup, FILE_BYTES);
    await startVsftpd(lab, blob.dir, cleanup);
  }, 60_000);

  afterAll(async () => {
    await cleanup.run();
  }, 60_000);

  it('without --alg (the default), active FTP fails: the server is told a LAN address', async () => {
    router = await startRfcRouter(lab, cleanup, 'noalg');
    const capture = await captureOn(lab.inet.netns, lab.inet.dev, cleanup, ['tcp', 'port', '21']);
    try {
      const t = await activeGet(h0, blob.name, ['--disable-eprt']);
      expect(t.code).not.toBe(0);
      expect(t.sha256).not.toBe(blob.sha256);
    } finally {
      await router.stop();
      router = null;
    }
    expect(await controlText(capture)).toMatch(/PORT 192,168,1,10,\d+,\d+/);
  }, 90_000);

  it('with --alg ftp, PORT and EPRT are rewritten and a 20 MB file arrives intact both ways', async () => {
    router = await startRfcRouter(lab, cleanup, 'alg', ['--alg', 'ftp']);
    const capture = await captureOn(lab.inet.netns, lab.inet.dev, cleanup, ['tcp', 'port', '21']);
    try {
      const port = await activeGet(h0, blob.name, ['--disable-eprt']);
      expect(port.stderr).toBe('');
      expect(port.code).toBe(0);
      expect(port.sha256).toBe(blob.sha256);
      const eprt = await activeGet(h0, blob.name, []);
      expect(eprt.stderr).toBe('');
      expect(eprt.code).toBe(0);
      expect(eprt.sha256).toBe(blob.sha256);
      const m = await router.metrics();
      expect(metricValue(m, 'tunnat_alg_rewrites_total', { alg: 'ftp' })).toBeGreaterThanOrEqual(2);
      expect(metricValue(m, 'tunnat_alg_expectations_total', { alg: 'ftp', event: 'used' })).toBeGreaterThanOrEqual(2);
    } finally {
      await router.stop();
      router = null;
    }
    // What the server was told: the public address in both commands, the LAN address nowhere.
    const text = await controlText(capture);
    expect(text).toMatch(/PORT 203,0,113,1,\d+,\d+/);
    expect(text).toMatch(/EPRT \|1\|203\.0\.113\.1\|\d+\|/);
    expect(text).not.toMatch(/192[.,]168/);
  }, 120_000);
});
