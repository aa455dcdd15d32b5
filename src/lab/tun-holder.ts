/**
 * A stand-in for tunnat where only its TUN matters: a small child process that opens a TUN in a lab
 * namespace with the repository's native addon and keeps the queue open until it is stopped or killed.
 *
 * keepalived tracks tunnat's TUN (`track_interface`): a TUN is up and running only while some process
 * has a queue of it open, and when that process dies the kernel takes the link down (and, the TUN not
 * being persistent, deletes it) without any help from the process. Killing the holder is therefore the
 * same event, for keepalived, as tunnat crashing — with no NAT engine needed to test the failover.
 */
import { addonPath } from '../tun/native.js';
import type { Cleanup } from './cleanup.js';
import { linkUp } from './netns.js';
import { spawnIn, type NsProcess } from './process.js';

// Runs as `node -e SCRIPT ADDON NAME` (CommonJS, so require works); packets routed into the TUN are
// never read: the kernel's queue fills and drops them, which is all a carrier-only stand-in needs.
const HOLDER_SCRIPT = [
  'const addon = require(process.argv[1]);',
  'const tun = addon.open(process.argv[2], { multiQueue: false, vnetHdr: false });',
  "console.log('holding ' + tun.name);",
  'setInterval(() => {}, 1 << 30);',
].join('\n');

export interface TunHolder {
  proc: NsProcess;
  name: string;
  /** SIGKILL: the queue closes as it would if tunnat crashed. */
  kill(): Promise<number>;
}

/** Open TUN `name` in `netns` from a child process and set it up; the child is stopped by `cleanup`. */
export async function holdTun(netns: string, name: string, cleanup: Cleanup): Promise<TunHolder> {
  const proc = spawnIn(netns, [process.execPath, '-e', HOLDER_SCRIPT, addonPath(), name], { label: `tun holder ${name}`, cleanup });
  await proc.waitForLine(new RegExp(`^holding ${name}$`), 10_000);
  await linkUp(netns, name);
  return {
    proc,
    name,
    kill: async () => {
      proc.signal('SIGKILL');
      return proc.exited;
    },
  };
}
