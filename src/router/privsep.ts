import { fork, type ChildProcess } from 'node:child_process';
import type { Server } from 'node:net';
import { readFileSync, chownSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join, parse, sep } from 'node:path';
import type { RouterConfig } from '../config/config.js';
import type { Logger } from '../util/log.js';
import { NativeTun } from '../tun/native.js';
import { setupSystem, logRunning, StartupError, type SystemSetup } from './router.js';
import { bindHttpListeners, closeListeners } from '../observe/http.js';
import { WorkerQueues } from './workers.js';
import { preflight } from '../host/preflight.js';
import { readKey } from '../ha/controller.js';

/**
 * Privilege separation (`tunnat run --user NAME`): the process that parses hostile packets runs as an
 * unprivileged user with no capabilities at all.
 *
 * The parent stays root and keeps only the jobs that need it: the routing set-up and its removal, the
 * TUN (opened here, its fd handed down), following the WAN address (which moves ip rules), and binding
 * the HTTP listeners (handed down as listening sockets). The child, forked with the user's uid and gid,
 * runs the translator, the packet loop and the HTTP endpoint on what it was given. An open TUN queue
 * needs no privilege to read and write.
 *
 * The parent keeps its own copy of the TUN fd for the whole run: if the child dies, the device and its
 * routes stay and what is routed into them is dropped (failed closed) until the parent has removed the
 * set-up. The child never gets a way back to root.
 */
export interface PrivsepUser {
  name: string;
  uid: number;
  gid: number;
}

/** Look a user up in /etc/passwd (no NSS: a gateway's service user is a local account). */
export function lookupUser(name: string): PrivsepUser | null {
  let text: string;
  try {
    text = readFileSync('/etc/passwd', 'utf8');
  } catch {
    return null;
  }
  for (const line of text.split('\n')) {
    const f = line.split(':');
    if (f[0] === name && f.length >= 4) {
      const uid = Number(f[2]);
      const gid = Number(f[3]);
      if (Number.isInteger(uid) && Number.isInteger(gid)) return { name, uid, gid };
    }
  }
  return null;
}

/**
 * Why `user` could not read `file`, from the mode bits of the file and of every directory above it
 * (search permission), or null when it can. The child is forked with the user's uid and gid and no
 * supplementary groups, so those are all that count; a file tunnat cannot stat is left to the fork.
 */
export function unreadableFor(file: string, user: PrivsepUser): string | null {
  const may = (path: string, bit: 4 | 1): boolean | null => {
    let st;
    try {
      st = statSync(path);
    } catch {
      return null;
    }
    const shift = st.uid === user.uid ? 6 : st.gid === user.gid ? 3 : 0;
    return ((st.mode >> shift) & bit) !== 0;
  };
  const mode = (path: string): string => {
    const st = statSync(path);
    return `${(st.mode & 0o7777).toString(8).padStart(4, '0')} owned by uid ${st.uid}, gid ${st.gid}`;
  };
  const { root } = parse(file);
  const parts = file.slice(root.length).split(sep).filter((p) => p !== '');
  let dir = root;
  for (const part of parts.slice(0, -1)) {
    dir = join(dir, part);
    if (may(dir, 1) === false) return `${user.name} may not enter ${dir} (mode ${mode(dir)})`;
  }
  if (may(file, 4) === false) return `${user.name} may not read ${file} (mode ${mode(file)})`;
  return null;
}

/** Messages between the two halves (JSON over the fork IPC channel). */
export type ParentMessage =
  | {
      type: 'start';
      cfg: RouterConfig;
      base: { vnetHdr: boolean; tunMtu: number; publicIp: number; owned: boolean; dynamicPool: boolean; publicPool: number[] };
      /** --workers N: the workers' queues are fds 3 … 3+N-1 (the parent steers them); else one queue on fd 3. */
      queues: number;
      steered: boolean;
      /** A gateway of a pair: the pair's key, read here (the key file is root's, not the child's to read). */
      haKey?: Uint8Array;
    }
  | { type: 'steered'; on: boolean }
  | { type: 'conn' }
  | { type: 'publicIp'; addr: number; all: number[] }
  | { type: 'reload'; cfg: RouterConfig }
  | { type: 'stop'; save: boolean }
  /** The answer to the child's `arp`: done, or why not. */
  | { type: 'arp-done'; id: number; error?: string };
export type ChildMessage =
  | { type: 'ready' }
  | { type: 'error'; message: string }
  | { type: 'stopped'; saved: boolean }
  /** A gateway of a pair changed role: answer ARP for the public address on the WAN, or stop (the routing is the parent's). */
  | { type: 'arp'; id: number; on: boolean };

const here = dirname(fileURLToPath(import.meta.url));
const CHILD = join(here, 'privsep-child.js');
/**
 * The child's copy of the TUN fd: stdio slot 3 (0-2 inherited, the IPC channel after it). With --workers N
 * the N workers' queues take slots 3 … 3+N-1.
 */
export const CHILD_TUN_FD = 3;

export async function startPrivsep(cfg: RouterConfig, log: Logger, user: PrivsepUser) {
  if (user.uid === 0) throw new StartupError('BAD_USER', `--user ${user.name} is root: nothing would be dropped`);
  const unreadable = unreadableFor(CHILD, user);
  if (unreadable !== null) {
    throw new StartupError('BAD_USER', `--user ${user.name} cannot load the data plane (${CHILD}): ${unreadable}; install tunnat where ${user.name} can read it (e.g. under /opt or /usr/local)`);
  }
  await preflight(cfg);
  // Listeners are bound here (a port below 1024 needs privilege), before the host is changed, and handed
  // down as sockets. Paused: the parent must not read a byte of a connection it hands to the child.
  const servers = await bindHttpListeners({ tcp: cfg.http, unixPath: cfg.httpSocket }, { pauseOnConnect: true });
  // --workers N: this side opens and steers the workers' queues (steering needs privilege); the child's
  // workers read them.
  let kidRef: ChildProcess | null = null;
  const queues = cfg.workers > 1 ? new WorkerQueues(cfg, log, (on) => kidRef?.connected && kidRef.send({ type: 'steered', on } satisfies ParentMessage)) : null;
  let sys: SystemSetup;
  try {
    sys = await setupSystem(cfg, log, queues ? { afterTunOpen: async (t) => void queues.open(t) } : {});
  } catch (err) {
    queues?.close();
    await closeListeners(servers);
    throw err;
  }
  const tun = sys.tun as NativeTun;
  const childFds = queues ? queues.queues.map((q) => q.fd) : [tun.fd];

  let child: ChildProcess | null = null;
  try {
    // The pcap's older files too: rotation renames them, which a sticky directory allows only their owner.
    const pcapFiles = cfg.pcap ? Array.from({ length: cfg.pcapFiles }, (_, k) => (k === 0 ? cfg.pcap : `${cfg.pcap}.${k}`)) : [];
    for (const f of [cfg.stateFile, ...pcapFiles]) {
      // Files the child writes must be its own; an existing one is handed over, a missing one it creates.
      if (f) {
        try {
          chownSync(f, user.uid, user.gid);
        } catch {
          // Missing: the child creates it (its directory must be writable by the user; documented).
        }
      }
    }
    child = fork(CHILD, [], {
      uid: user.uid,
      gid: user.gid,
      stdio: ['inherit', 'inherit', 'inherit', ...childFds, 'ipc'],
      serialization: 'advanced',
    });
  } catch (err) {
    servers.forEach((s) => s.close());
    queues?.close();
    await sys.teardown();
    throw new StartupError('PRIVSEP', `cannot start the unprivileged data plane as ${user.name}: ${(err as Error).message}`);
  }
  const kid = child;
  kidRef = kid;
  const send = (m: ParentMessage, handle?: Server) => {
    if (kid.connected) kid.send(m, handle as never);
  };

  const ready = new Promise<void>((resolve, reject) => {
    const onMessage = (m: ChildMessage) => {
      if (m.type === 'ready') resolve();
      else if (m.type === 'error') reject(new StartupError('PRIVSEP', `the data plane (as ${user.name}) failed to start: ${m.message}`));
    };
    kid.on('message', onMessage);
    kid.once('exit', (code) => reject(new StartupError('PRIVSEP', `the data plane (as ${user.name}) exited with code ${code} while starting`)));
  });
  // A gateway of a pair: the child asks for the WAN's ARP answer by role; the routing is the parent's to change.
  kid.on('message', (m: ChildMessage) => {
    if (m.type !== 'arp') return;
    sys.setProxyArp(m.on).then(
      () => send({ type: 'arp-done', id: m.id }),
      (err: Error) => send({ type: 'arp-done', id: m.id, error: err.message }),
    );
  });
  let haKey: Uint8Array | undefined;
  if (cfg.haPeer !== null && cfg.haKey !== null) {
    try {
      haKey = readKey(cfg.haKey);
    } catch (err) {
      kid.kill('SIGKILL');
      servers.forEach((s) => s.close());
      queues?.close();
      await sys.teardown();
      throw new StartupError('HA_UNAVAILABLE', `cannot use --ha-key ${cfg.haKey}: ${(err as Error).message}`);
    }
  }
  send({
    type: 'start',
    cfg,
    base: { vnetHdr: sys.vnetHdr, tunMtu: sys.tunMtu, publicIp: sys.publicIp, owned: sys.owned, dynamicPool: sys.dynamicPool, publicPool: sys.publicPool },
    queues: childFds.length,
    steered: queues?.steered ?? false,
    ...(haKey ? { haKey } : {}),
  });
  try {
    await ready;
  } catch (err) {
    kid.kill('SIGKILL');
    servers.forEach((s) => s.close());
    queues?.close();
    await sys.teardown();
    throw err;
  }
  // The parent keeps the listeners (closing a unix socket's listener would remove its path) and hands
  // each accepted connection to the child, which serves it.
  for (const s of servers) {
    s.on('connection', (sock) => {
      if (kid.connected) kid.send({ type: 'conn' } satisfies ParentMessage, sock);
      else sock.destroy();
    });
  }
  const stopFollowing = sys.masquerade
    ? sys.followAddress((addr, all) => {
        send({ type: 'publicIp', addr, all });
        queues?.setPublicAddresses(addr, all);
      })
    : () => {};
  logRunning(cfg, log, sys, { dataplaneUser: user.name, dataplanePid: kid.pid });

  let resolveDone!: () => void;
  const done = new Promise<void>((r) => (resolveDone = r));
  let stopping: Promise<void> | null = null;
  const stop = (reason = 'stop', o: { keepForRestart?: boolean } = {}) => {
    if (stopping) return stopping;
    stopping = (async () => {
      log.info('tunnat stopping', { reason });
      stopFollowing();
      const keep = o.keepForRestart === true && cfg.stateFile !== null;
      let saved = false;
      if (kid.exitCode === null && kid.connected) {
        saved = await new Promise<boolean>((resolve) => {
          const timer = setTimeout(() => {
            kid.kill('SIGKILL');
            resolve(false);
          }, 10_000);
          kid.on('message', (m: ChildMessage) => {
            if (m.type === 'stopped') {
              clearTimeout(timer);
              resolve(m.saved);
            }
          });
          kid.once('exit', () => {
            clearTimeout(timer);
            resolve(false);
          });
          send({ type: 'stop', save: keep });
        });
      }
      if (keep && saved && sys.keepForRestart()) {
        log.info('the gateway stays failed closed until the next `tunnat run --state` (or `tunnat down`)');
      }
      servers.forEach((s) => s.close());
      queues?.close();
      await sys.teardown();
      log.info('tunnat stopped');
      resolveDone();
    })();
    return stopping;
  };
  kid.once('exit', (code, signal) => {
    if (!stopping) {
      // Failed closed meanwhile: the parent still holds the TUN, so nothing leaves untranslated.
      log.error('the data plane exited; removing the set-up', { code, signal });
      void stop('data plane exited');
    }
  });

  return {
    stop,
    done,
    reload(next: RouterConfig): string[] {
      send({ type: 'reload', cfg: next });
      queues?.steer(next.forwards);
      return [];
    },
    dataplanePid: kid.pid,
  };
}
