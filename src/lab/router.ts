/**
 * Start a NAT engine inside the lab's gateway namespace and talk to it.
 *
 * - 'userspace': `tunnat run` (the compiled CLI) in the gateway namespace. Its HTTP endpoint listens
 *   on the gateway's own loopback, which the host cannot reach, so it also serves on a unix socket
 *   (`--http-socket`) on the shared filesystem; the lab reads `/conntrack` and `/metrics` there.
 * - 'kernel': `tunnat run --engine kernel`, the same CLI driving the kernel's NAT (same HTTP endpoints).
 * - 'kernel-manual': the kernel's MASQUERADE set by hand with iptables, as a stand-in and a baseline;
 *   its flows come from `conntrack -L` in the same shape.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { run, runSync } from '../util/exec.js';
import { parseFlows, parseKernelConntrack, type FlowJson } from './flows.js';
import { Cleanup } from './cleanup.js';
import { NsProcess, spawnIn } from './process.js';

export type LabEngine = 'userspace' | 'kernel' | 'kernel-manual';
export const LAB_ENGINES: readonly LabEngine[] = ['userspace', 'kernel', 'kernel-manual'];

/** Where lab routers put their unix sockets. */
export const SOCKET_DIR = '/run/tunnat';

export function socketPathFor(id: string): string {
  return join(SOCKET_DIR, `lab-${id}.sock`);
}

/** The repository root (the directory of tunnat's package.json), from this module's location. */
export function repoRoot(from: string = fileURLToPath(import.meta.url)): string {
  let dir = dirname(from);
  for (;;) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg)) {
      try {
        if ((JSON.parse(readFileSync(pkg, 'utf8')) as { name?: unknown }).name === 'tunnat') return dir;
      } catch {
        // not ours; keep looking
      }
    }
    const up = dirname(dir);
    if (up === dir) throw new Error(`cannot find tunnat's package.json above ${from}`);
    dir = up;
  }
}

/** The compiled CLI (`npm run build` makes it). */
export function defaultCliPath(): string {
  return join(repoRoot(), 'dist', 'src', 'cli', 'main.js');
}

export interface RouterArgs {
  cliPath: string;
  internal: string;
  external: string;
  /** `--http` listen address inside the gateway namespace. */
  http?: string;
  httpSocket?: string;
  configFile?: string;
  extraArgs?: readonly string[];
  /** Node binary (default: this process's). */
  node?: string;
}

/** argv that runs `tunnat run` with these settings (pure). */
export function routerArgv(a: RouterArgs): string[] {
  const argv = [a.node ?? process.execPath, a.cliPath, 'run', '--internal', a.internal, '--external', a.external];
  if (a.http) argv.push('--http', a.http);
  if (a.httpSocket) argv.push('--http-socket', a.httpSocket);
  if (a.configFile) argv.push('--config', a.configFile);
  argv.push(...(a.extraArgs ?? []));
  return argv;
}

export interface HttpAnswer {
  status: number;
  body: string;
}

/** GET `path` over a unix socket. */
export function unixGet(socketPath: string, path: string, timeoutMs = 3_000): Promise<HttpAnswer> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path, method: 'GET', timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${path} on ${socketPath} timed out after ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end();
  });
}

async function getOk(socketPath: string, path: string): Promise<string> {
  const r = await unixGet(socketPath, path);
  if (r.status !== 200) throw new Error(`GET ${path} answered ${r.status}: ${r.body.slice(0, 200)}`);
  return r.body;
}

export interface StartRouterOptions {
  engine: LabEngine;
  /** The gateway namespace. */
  netns: string;
  internal: string;
  external: string;
  /** Unique id (names the unix socket). */
  id: string;
  cleanup: Cleanup;
  /** `--http` inside the namespace (default 127.0.0.1:9100). */
  http?: string;
  /** Default: /run/tunnat/lab-<id>.sock. */
  socketPath?: string;
  /** Written to a temporary file and passed as `--config`. */
  config?: unknown;
  extraArgs?: readonly string[];
  cliPath?: string;
  readyTimeoutMs?: number;
  log?: (line: string) => void;
  /** Each line the router prints. */
  onOutput?: (line: string) => void;
}

export interface RouterHandle {
  engine: LabEngine;
  /** The router process (userspace only). */
  process: NsProcess | null;
  /** The unix socket serving the router's HTTP (userspace only). */
  socketPath: string | null;
  /** What the router printed so far. */
  output(): string;
  /** Current flows. */
  flows(): Promise<FlowJson[]>;
  /** Prometheus text (userspace only; the kernel stand-in has none). */
  metrics(): Promise<string>;
  /** Stop the engine and undo what it set; resolves with the router's exit code (0 for the stand-in). */
  stop(): Promise<number>;
}

/** Start the chosen engine in the gateway namespace and wait until it is ready. */
export async function startRouter(opts: StartRouterOptions): Promise<RouterHandle> {
  if (opts.engine === 'kernel-manual') return startKernelManual(opts);
  if (opts.engine === 'kernel') return startUserspace({ ...opts, extraArgs: [...(opts.extraArgs ?? []), '--engine', 'kernel'] });
  return startUserspace(opts);
}

async function startUserspace(opts: StartRouterOptions): Promise<RouterHandle> {
  const cliPath = opts.cliPath ?? defaultCliPath();
  if (!existsSync(cliPath)) throw new Error(`${cliPath} does not exist: run \`npm run build\` first`);
  const socketPath = opts.socketPath ?? socketPathFor(opts.id);
  mkdirSync(dirname(socketPath), { recursive: true });
  const removeSocket = (): void => {
    try {
      unlinkSync(socketPath);
    } catch {
      // never created, or the router removed it
    }
  };
  removeSocket();
  opts.cleanup.defer({ label: `remove ${socketPath}`, sync: removeSocket });

  let configFile: string | undefined;
  if (opts.config !== undefined) {
    const dir = mkdtempSync(join(tmpdir(), 'tunnat-lab-'));
    opts.cleanup.defer({ label: `remove ${dir}`, sync: () => rmSync(dir, { recursive: true, force: true }) });
    configFile = join(dir, 'config.json');
    writeFileSync(configFile, JSON.stringify(opts.config, null, 2));
  }
  const argv = routerArgv({
    cliPath,
    internal: opts.internal,
    external: opts.external,
    http: opts.http ?? '127.0.0.1:9100',
    httpSocket: socketPath,
    ...(configFile ? { configFile } : {}),
    ...(opts.extraArgs ? { extraArgs: opts.extraArgs } : {}),
  });
  opts.log?.(`starting: ip netns exec ${opts.netns} node ${argv.slice(1).join(' ')}`);
  const proc = spawnIn(opts.netns, argv, {
    label: 'tunnat run',
    cleanup: opts.cleanup,
    ...(opts.onOutput ? { onLine: opts.onOutput } : {}),
  });

  const handle: RouterHandle = {
    engine: opts.engine,
    process: proc,
    socketPath,
    output: () => proc.output(),
    flows: async () => parseFlows(await getOk(socketPath, '/conntrack')),
    metrics: () => getOk(socketPath, '/metrics'),
    stop: () => proc.stop('SIGTERM', 10_000),
  };

  const deadline = Date.now() + (opts.readyTimeoutMs ?? 15_000);
  let lastError = 'no answer yet';
  for (;;) {
    if (proc.code !== null) {
      throw new Error(`tunnat run exited with code ${proc.code} before it was ready; it printed:\n${proc.output()}`);
    }
    try {
      await handle.flows();
      return handle;
    } catch (err) {
      lastError = (err as Error).message;
    }
    if (Date.now() > deadline) {
      await proc.stop();
      throw new Error(`tunnat run did not answer /conntrack on ${socketPath} (${lastError}); it printed:\n${proc.output()}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function startKernelManual(opts: StartRouterOptions): Promise<RouterHandle> {
  const ns = opts.netns;
  const rule = ['POSTROUTING', '-s', opts.internal, '-o', opts.external, '-j', 'MASQUERADE'];
  opts.log?.(`kernel stand-in: ip netns exec ${ns} iptables -t nat -A ${rule.join(' ')}`);
  const oldForward = (await run(['sysctl', '-n', 'net.ipv4.ip_forward'], { netns: ns })).stdout.trim();
  let active = true;
  const undoSync = (): void => {
    if (!active) return;
    active = false;
    runSync(['iptables', '-t', 'nat', '-D', ...rule], { netns: ns, allowFail: true });
    runSync(['sysctl', '-q', '-w', `net.ipv4.ip_forward=${oldForward}`], { netns: ns, allowFail: true });
  };
  const forget = opts.cleanup.defer({ label: `remove kernel NAT in ${ns}`, sync: undoSync });
  await run(['iptables', '-t', 'nat', '-A', ...rule], { netns: ns });
  await run(['sysctl', '-q', '-w', 'net.ipv4.ip_forward=1'], { netns: ns });
  // Byte and packet counters per flow (off by default); the key exists once nf_conntrack is loaded.
  await run(['sysctl', '-q', '-w', 'net.netfilter.nf_conntrack_acct=1'], { netns: ns, allowFail: true });
  return {
    engine: 'kernel-manual',
    process: null,
    socketPath: null,
    output: () => '',
    flows: async () => parseKernelConntrack((await run(['conntrack', '-L'], { netns: ns, allowFail: true })).stdout),
    metrics: () => Promise.reject(new Error('the kernel stand-in has no metrics endpoint')),
    stop: async () => {
      forget();
      undoSync();
      return 0;
    },
  };
}
