/**
 * The FTP ALG with real programs: vsftpd in the internet namespace with active mode on, curl on a LAN
 * host asking for active mode (`--ftp-port -`, so the client names its own LAN address). With
 * `--alg ftp` a 20 MB file comes through intact over PORT and over EPRT; without it (tunnat's
 * default) the server is told to connect to 192.168.1.10 and the transfer fails. And the other way
 * round: vsftpd on a LAN host behind `--forward tcp:21`, curl outside in passive mode (PASV and EPSV),
 * which works only when the ALG rewrites the 227/229 reply and expects the data connection.
 */
import { writeFileSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnIn } from '../../src/lab/process.js';
import { buildTestLab, captureOn, Cleanup, inNs, isRoot, randomFile, startTestRouter, waitUntil, type Capture, type Lab, type TestRouter } from './harness.js';
import { run } from '../../src/util/exec.js';
import { metricValue, startRfcRouter } from './fixtures/rfc-lab.js';

const SERVER = '203.0.113.2';
const PUBLIC = '203.0.113.1';
const LAN_SERVER = '192.168.1.10';
const FILE_BYTES = 20 * 1024 * 1024;
/** Bounds for one transfer: 20 MB through the lab takes a second or two; a failure must not hang. */
const CURL_TIMEOUT_S = 40;

/** vsftpd in `netns`, anonymous read-only downloads from `dir`, active and passive mode, on `address`:21. */
async function startVsftpd(netns: string, address: string, dir: string, cleanup: Cleanup): Promise<void> {
  const conf = join(dir, `vsftpd-${address}.conf`);
  writeFileSync(conf, [
    'listen=YES', 'listen_ipv6=NO', `listen_address=${address}`, 'background=NO',
    'anonymous_enable=YES', 'local_enable=NO', 'write_enable=NO', `anon_root=${dir}`, 'no_anon_password=YES',
    'port_enable=YES', 'pasv_enable=YES', 'connect_from_port_20=NO', 'seccomp_sandbox=NO',
    'secure_chroot_dir=/var/run/vsftpd/empty', 'xferlog_enable=NO', 'use_localtime=NO',
    // Data connections for a 20 MB file: no bandwidth cap, and the default idle timeouts are long enough.
    'anon_max_rate=0', '',
  ].join('\n'));
  // The anonymous user (ftp) must be able to read the directory and the file, and not write the root.
  chmodSync(dir, 0o755);
  spawnIn(netns, ['/usr/sbin/vsftpd', conf], { label: `vsftpd ${address}`, cleanup });
  await waitUntil('vsftpd listening', async () => {
    const r = await inNs(netns, ['ss', '-Hltn', `src ${address}:21`], { allowFail: true });
    return r.stdout.includes(':21');
  }, 10_000);
}

interface Transfer {
  code: number;
  sha256: string;
  stderr: string;
}

/** curl in active mode from `netns`; the file's sha256 as received (empty if nothing came). */
function activeGet(netns: string, name: string, extra: string[]): Promise<Transfer> {
  return ftpGet(netns, SERVER, name, ['--ftp-port', '-', ...extra]);
}

/** curl fetching ftp://host/name from `netns` with `extra` flags; the sha256 of what arrived. */
async function ftpGet(netns: string, host: string, name: string, extra: string[]): Promise<Transfer> {
  const url = `ftp://${host}/${name}`;
  const r = await inNs(netns, [
    'bash', '-c', 'set -o pipefail; curl -sS --connect-timeout 10 --max-time "$1" "${@:3}" "$2" | sha256sum',
    'curl', String(CURL_TIMEOUT_S), url, ...extra,
  ], { allowFail: true });
  return { code: r.exitCode ?? -1, sha256: r.stdout.split(' ')[0] ?? '', stderr: r.stderr };
}

// Needs root: namespaces, veth pairs, a TUN device, vsftpd and tcpdump.
describe.skipIf(!isRoot)('FTP ALG with vsftpd and curl', () => {
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
    await startVsftpd(lab.inet.netns, SERVER, blob.dir, cleanup);
    await startVsftpd(h0, LAN_SERVER, blob.dir, cleanup);
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
      // Every command was whole in its segment and fitted: nothing left alone.
      expect(metricValue(m, 'tunnat_alg_refused_total', { alg: 'ftp' })).toBe(0);
      // "192,168,1,10" → "203,0,113,1" is a byte shorter: the rest of each control connection was moved.
      expect(metricValue(m, 'tunnat_alg_seq_adjusted_total', { alg: 'ftp' })).toBeGreaterThan(0);
      const conns = await router.conntrack();
      expect(conns.filter((f) => (f as { alg?: string }).alg === 'ftp-control').length).toBeGreaterThanOrEqual(1);
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

  it('with --workers 2, a data port in the other worker\'s slice: its LAN side is handed to the control connection\'s worker', async () => {
    router = await startRfcRouter(lab, cleanup, 'algw', ['--alg', 'ftp', '--workers', '2']);
    try {
      const m0 = await router.metrics();
      // The control connection from port 40000 is worker 0's ((40000 >> 1) % 2); the data port 50002 the
      // client names is worker 1's. The server's connection to the public port reaches worker 0, which made
      // that mapping; the client's side of it is steered to worker 1, which hands it over.
      const t = await activeGet(h0, blob.name, ['--disable-eprt', '--local-port', '40000', '--ftp-port', `${LAN_SERVER}:50002-50002`]);
      expect(t.stderr).toBe('');
      expect(t.code).toBe(0);
      expect(t.sha256).toBe(blob.sha256);
      const m = await router.metrics();
      expect(metricValue(m, 'tunnat_alg_expectations_total', { alg: 'ftp', event: 'used' })).toBe(1);
      const handed = metricValue(m, 'tunnat_worker_handoffs_total', { worker: '1', direction: 'out' }) - metricValue(m0, 'tunnat_worker_handoffs_total', { worker: '1', direction: 'out' });
      // Every packet of the client's side of the data connection (20 MB of ACKs at least) went through the ring.
      expect(handed).toBeGreaterThan(100);
      expect(metricValue(m, 'tunnat_worker_handoff_drops_total', { worker: '1' })).toBe(0);
      const conns = (await router.conntrack()) as { alg?: string }[];
      expect(conns.some((f) => f.alg === 'ftp-data')).toBe(true);
    } finally {
      await router.stop();
      router = null;
    }
  }, 120_000);

  it('passive FTP to a LAN server behind --forward tcp:21: 227 and 229 rewritten, data connection let in', async () => {
    router = await startRfcRouter(lab, cleanup, 'pasv', ['--forward', `tcp:21=${LAN_SERVER}:21`, '--alg', 'ftp']);
    const capture = await captureOn(lab.inet.netns, lab.inet.dev, cleanup, ['tcp', 'port', '21']);
    try {
      // PASV, and the client made to use the address the reply names (curl's default ignores it).
      const pasv = await ftpGet(lab.inet.netns, PUBLIC, blob.name, ['--disable-epsv', '--no-ftp-skip-pasv-ip']);
      expect(pasv.stderr).toBe('');
      expect(pasv.sha256).toBe(blob.sha256);
      const epsv = await ftpGet(lab.inet.netns, PUBLIC, blob.name, []);
      expect(epsv.stderr).toBe('');
      expect(epsv.sha256).toBe(blob.sha256);
    } finally {
      await router.stop();
      router = null;
    }
    const text = await controlText(capture);
    expect(text).toMatch(/227 [^\n]*\(203,0,113,1,\d+,\d+\)/);
    expect(text).toMatch(/229 [^\n]*\(\|\|\|\d+\|\)/);
    expect(text).not.toMatch(/192[.,]168/);
  }, 120_000);

  it('passive FTP to the LAN server without --alg fails: nothing lets the data connection in', async () => {
    router = await startRfcRouter(lab, cleanup, 'pasv-noalg', ['--forward', `tcp:21=${LAN_SERVER}:21`]);
    try {
      const t = await ftpGet(lab.inet.netns, PUBLIC, blob.name, ['--disable-epsv']);
      expect(t.code).not.toBe(0);
      expect(t.sha256).not.toBe(blob.sha256);
    } finally {
      await router.stop();
      router = null;
    }
  }, 90_000);

  // The same flags with --engine kernel: the kernel's own FTP helper, assigned by tunnat's rules.
  const kernelRouter = (tag: string, args: string[]) =>
    startTestRouter({ gwNetns: lab.gw.netns, id: `ftp-${lab.id}-${tag}`, cleanup, engine: 'kernel', args });

  it('the kernel engine without --alg: active FTP fails there too', async () => {
    router = await kernelRouter('knoalg', ['--backend', 'nft']);
    try {
      const t = await activeGet(h0, blob.name, ['--disable-eprt']);
      expect(t.code).not.toBe(0);
    } finally {
      await router.stop();
      router = null;
    }
  }, 90_000);

  for (const backend of ['nft', 'iptables'] as const) {
    it(`the kernel engine with --alg ftp (--backend ${backend}) assigns the kernel's FTP helper: PORT and EPRT work`, async () => {
      router = await kernelRouter(`k${backend}`, ['--backend', backend, '--alg', 'ftp']);
      try {
        for (const extra of [['--disable-eprt'], []]) {
          const t = await activeGet(h0, blob.name, extra);
          expect(t.stderr).toBe('');
          expect(t.sha256).toBe(blob.sha256);
        }
      } finally {
        await router.stop();
        router = null;
      }
      // Nothing of the helper's rules is left behind.
      const nft = await inNs(lab.gw.netns, ['nft', 'list', 'ruleset']);
      expect(nft.stdout).not.toMatch(/tunnat|TUNNAT|helper/);
    }, 120_000);
  }
});
