/**
 * The unprivileged half of `tunnat run --user` (see privsep.ts): forked by the root parent with the
 * user's uid and gid, the TUN queue on fd 3 and the HTTP listeners sent over the IPC channel.
 */
import type { Server, Socket } from 'node:net';
import { EventEmitter } from 'node:events';
import { createLogger } from '../util/log.js';
import { NativeTun } from '../tun/native.js';
import { startDataplane, type RunningDataplane } from './router.js';
import { CHILD_TUN_FD, type ChildMessage, type ParentMessage } from './privsep.js';
import { loadWorkerPlane, type WorkerPlane } from './workers.js';

/** Connections the parent accepted arrive here; the HTTP endpoint takes them from this emitter. */
const connections = new EventEmitter() as unknown as Server;
let dp: RunningDataplane | null = null;
/** --workers N: the workers, on the queues the parent handed down. */
let plane: WorkerPlane | null = null;
let stateFile: string | null = null;
const reply = (m: ChildMessage) => process.send?.(m);

/** A gateway of a pair: the parent changes the WAN's ARP answer (the routing is root's); this waits for it. */
let arpId = 0;
const arpWaiting = new Map<number, { resolve: () => void; reject: (e: Error) => void }>();
function askArp(on: boolean): Promise<void> {
  const id = ++arpId;
  return new Promise((resolve, reject) => {
    arpWaiting.set(id, { resolve, reject });
    reply({ type: 'arp', id, on });
  });
}

process.on('message', (m: ParentMessage, handle?: Socket) => {
  void (async () => {
    switch (m.type) {
      case 'arp-done': {
        const w = arpWaiting.get(m.id);
        arpWaiting.delete(m.id);
        if (m.error === undefined) w?.resolve();
        else w?.reject(new Error(m.error));
        return;
      }
      case 'conn':
        if (handle) {
          connections.emit('connection', handle);
          handle.resume(); // the parent accepted it paused
        }
        return;
      case 'start': {
        const log = createLogger(m.cfg.logLevel);
        try {
          if (process.getuid?.() === 0) throw new Error('refusing to run the data plane as root');
          stateFile = m.cfg.stateFile;
          if (m.queues > 1) {
            plane = await loadWorkerPlane(m.cfg, log, [connections]);
            plane.setSteered(m.steered);
            await plane.init({ ...m.base, queueFds: Array.from({ length: m.queues }, (_, i) => CHILD_TUN_FD + i) });
          } else {
            const tun = NativeTun.fromFd(CHILD_TUN_FD, { vnetHdr: m.base.vnetHdr });
            dp = await startDataplane(m.cfg, log, { ...m.base, tun, httpHandles: [connections] });
          }
          // A gateway of a pair: its controller here, with the key the parent read and the ARP answer through it.
          const ha = m.haKey ? { key: m.haKey } : {};
          if (plane) await plane.startHa(askArp, ha);
          else await dp?.startHa(askArp, ha);
          reply({ type: 'ready' });
        } catch (err) {
          reply({ type: 'error', message: (err as Error).message });
          process.exit(1);
        }
        return;
      }
      case 'publicIp':
        dp?.setPublicAddresses(m.addr, m.all);
        plane?.setPublicAddresses(m.addr, m.all);
        return;
      case 'reload':
        dp?.reload(m.cfg);
        plane?.reload(m.cfg);
        return;
      case 'steered':
        plane?.setSteered(m.on);
        return;
      case 'stop': {
        let saved = false;
        try {
          const to = m.save ? stateFile : null;
          if (plane) saved = await plane.stop(to !== null);
          else {
            await dp?.close(to);
            saved = to !== null;
          }
        } catch {
          saved = false;
        }
        reply({ type: 'stopped', saved });
        process.exit(0);
      }
    }
  })();
});

// Without the parent there is nothing to serve: the IPC channel closing means it is gone.
process.on('disconnect', () => process.exit(0));
// Signals go to the parent, which tells this process what to do.
process.on('SIGINT', () => {});
process.on('SIGTERM', () => {});
