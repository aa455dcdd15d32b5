import { fork, type ChildProcess } from 'node:child_process';
import { createServer, type Server } from 'node:net';
import { readFileSync, rmSync, chownSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import type { RouterConfig } from '../config/config.js';
import type { Logger } from '../util/log.js';
import { NativeTun } from '../tun/native.js';
import { setupSystem, logRunning, StartupError } from './router.js';
import { listenOn } from '../util/listen.js';

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

/** Messages between the two halves (JSON over the fork IPC channel). */
export type ParentMessage =
  | { type: 'start'; cfg: RouterConfig; base: { vnetHdr: boolean; tunMtu: number; publicIp: number; owned: boolean } }
  | { type: 'conn' }
  | { type: 'publicIp'; addr: number }
  | { type: 'reload'; cfg: RouterConfig }
  | { type: 'stop'; save: boolean };
export type ChildMessage = { type: 'ready' } | { type: 'error'; message: string } | { type: 'stopped'; saved: boolean };

const here = dirname(fileURLToPath(import.meta.url));
const CHILD = join(here, 'privsep-child.js');
/** The child's copy of the TUN fd: stdio slot 3 (0-2 inherited, the IPC channel at 4). */
export const CHILD_TUN_FD = 3;

export async function startPrivsep(cfg: RouterConfig, log: Logger, user: PrivsepUser) {
  if (user.uid === 0) throw new StartupError('BAD_USER', `--user ${user.name} is root: nothing would be dropped`);
  const sys = await setupSystem(cfg, log);
  const tun = sys.tun as NativeTun;

  // Listeners are bound here (a port below 1024 needs privilege) and handed down as sockets.
  const servers: Server[] = [];
  let child: ChildProcess | null = null;
  try {
    if (cfg.http) {
      // Paused: the parent must not read a byte of a connection it hands to the child.
      const s = createServer({ pauseOnConnect: true });
      await listenOn(s, cfg.http);
      servers.push(s);
    }
    if (cfg.httpSocket) {
      rmSync(cfg.httpSocket, { force: true });
      // Paused: the parent must not read a byte of a connection it hands to the child.
      const s = createServer({ pauseOnConnect: true });
      await listenOn(s, cfg.httpSocket);
      servers.push(s);
    }
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
      stdio: ['inherit', 'inherit', 'inherit', tun.fd, 'ipc'],
      serialization: 'advanced',
    });
  } catch (err) {
    servers.forEach((s) => s.close());
    await sys.teardown();
    throw new StartupError('PRIVSEP', `cannot start the unprivileged data plane as ${user.name}: ${(err as Error).message}`);
  }
  const kid = child;
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
  send({
    type: 'start',
    cfg,
    base: { vnetHdr: sys.vnetHdr, tunMtu: sys.tunMtu, publicIp: sys.publicIp, owned: sys.owned },
  });
  try {
    await ready;
  } catch (err) {
    kid.kill('SIGKILL');
    servers.forEach((s) => s.close());
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
  const stopFollowing = sys.masquerade ? sys.followAddress((addr) => send({ type: 'publicIp', addr })) : () => {};
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
      return [];
    },
    dataplanePid: kid.pid,
  };
}
