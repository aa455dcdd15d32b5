import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { TunDevice } from './device.js';
import { isErrnoError, TunError, tunErrorFrom } from './errors.js';

/** Offload bits for setOffload (linux/if_tun.h); kernel ABI, checked against the addon by tests. */
export const TUN_F = {
  /** Reader accepts packets whose checksum is still to be completed (virtio NEEDS_CSUM). */
  CSUM: 0x01,
  TSO4: 0x02,
  TSO6: 0x04,
  TSO_ECN: 0x08,
  UFO: 0x10,
  /** UDP segmentation offload, Linux 6.2+. */
  USO4: 0x20,
  USO6: 0x40,
} as const;

/** Bytes of struct virtio_net_hdr in front of every packet when vnetHdr is on (the default size). */
export const VNET_HDR_LEN = 10;
/** The header with num_buffers, for setVnetHdrSize(VNET_HDR_MRG_RXBUF_LEN). */
export const VNET_HDR_MRG_RXBUF_LEN = 12;

export interface NativeTunOptions {
  /** IFF_MULTI_QUEUE: every open of the same name adds a queue; all opens must set it. */
  multiQueue?: boolean;
  /** IFF_VNET_HDR: each packet read or written starts with a virtio_net_hdr (VNET_HDR_LEN bytes). */
  vnetHdr?: boolean;
}

export interface NativeTunStats {
  /** Packets returned by readBatch. */
  readPackets: number;
  /** Packets the kernel accepted in writeBatch. */
  writePackets: number;
  /** Packets the kernel refused one by one (EINVAL, EMSGSIZE, ENOBUFS...), skipped. */
  writeErrors: number;
  /** writeBatch entries whose offset + length fell outside the buffer, skipped without a syscall. */
  writeOutOfRange: number;
  /** errno of the most recent refused write, 0 if none. */
  lastWriteErrno: number;
}

/** What the addon's Tun object offers; the shape native/tun.cc defines. */
interface NativeHandle {
  readonly name: string;
  readonly fd: number;
  readBatch(buf: Uint8Array, slotSize: number, lens: Uint32Array): number;
  writeBatch(buf: Uint8Array, offsets: Uint32Array, lens: Uint32Array, count: number): number;
  /** cb() when readable; cb(error) once if libuv reports the fd broken (polling has then stopped). */
  startPoll(cb: (err?: unknown) => void): void;
  stopPoll(): void;
  close(): void;
  stats(): NativeTunStats;
  preemptions(): number;
  setOffload(flags: number): void;
  setVnetHdrSize(size: number): void;
  setPersist(persist: boolean): void;
  setQueue(attach: boolean): void;
  setSteering(program: Uint8Array | null): void;
}

export interface NativeAddon {
  open(name: string, flags: NativeTunOptions): NativeHandle;
  readonly TUN_F_CSUM: number;
  readonly TUN_F_TSO4: number;
  readonly TUN_F_TSO6: number;
  readonly TUN_F_TSO_ECN: number;
  readonly TUN_F_UFO: number;
  readonly TUN_F_USO4: number;
  readonly TUN_F_USO6: number;
  readonly VNET_HDR_LEN: number;
  readonly VNET_HDR_MRG_RXBUF_LEN: number;
}

// This file runs as src/tun/native.ts under vitest and as dist/src/tun/native.js once compiled:
// the nearest directory with a package.json above it is the repository (or installed package).
function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`no package.json above ${fileURLToPath(import.meta.url)}`);
    dir = parent;
  }
}

const requireHere = createRequire(import.meta.url);

/**
 * The addon file, as node-gyp-build picks it in native/: a build from source (native/build/Release,
 * what `npm ci` makes in a checkout) first, else the package's prebuild for this platform and
 * architecture (native/prebuilds/linux-x64, linux-arm64). With neither, the path a build from source
 * would have, for loadAddon to report as not built.
 */
export function addonPath(): string {
  const dir = join(packageRoot(), 'native');
  const nodeGypBuild = requireHere('node-gyp-build') as { path(dir: string): string };
  try {
    return nodeGypBuild.path(dir);
  } catch {
    return join(dir, 'build', 'Release', 'tunnat_native.node');
  }
}

const loaded = new Map<string, NativeAddon>();

/**
 * Load the addon (once per thread). A missing or unloadable file becomes TUN_UNAVAILABLE; loading
 * is deferred to first use so that kernel-NAT mode works on a machine without a compiler.
 */
export function loadAddon(path: string = addonPath()): NativeAddon {
  const cached = loaded.get(path);
  if (cached !== undefined) return cached;
  let addon: NativeAddon;
  try {
    addon = requireHere(path) as NativeAddon;
  } catch (err) {
    const code = typeof err === 'object' && err !== null ? (err as { code?: unknown }).code : undefined;
    const why = code === 'MODULE_NOT_FOUND' ? 'is not built' : 'could not be loaded';
    throw new TunError(
      'TUN_UNAVAILABLE',
      `the native TUN addon ${why} (${path}): run \`npm ci\` (or \`npx node-gyp rebuild --directory native\`)` +
        (err instanceof Error ? ` — ${err.message}` : ''),
      { cause: err },
    );
  }
  loaded.set(path, addon);
  return addon;
}

// Argument errors (TypeError/RangeError) are bugs in the caller and pass through unchanged.
function convert(err: unknown): unknown {
  return isErrnoError(err) ? tunErrorFrom(err) : err;
}

/** A TUN queue opened through the native addon. */
export class NativeTun implements TunDevice {
  readonly multiQueue: boolean;
  readonly vnetHdr: boolean;
  private readonly handle: NativeHandle;
  private readonly ifname: string;
  // Set when libuv reported the fd broken; readBatch throws it until onReadable re-arms.
  private pollError: TunError | undefined;

  private constructor(handle: NativeHandle, opts: NativeTunOptions) {
    this.handle = handle;
    this.ifname = handle.name;
    this.multiQueue = opts.multiQueue === true;
    this.vnetHdr = opts.vnetHdr === true;
  }

  /**
   * Open (creating if needed) the TUN interface `name` in the caller's network namespace, in
   * IFF_TUN | IFF_NO_PI mode, non-blocking. An empty name lets the kernel pick one (tunN).
   * Throws TunError (TUN_PERMISSION, TUN_UNAVAILABLE, TUN_BUSY, TUN_INVALID, TUN_IO).
   */
  static open(name: string, opts: NativeTunOptions = {}): NativeTun {
    const addon = loadAddon();
    const flags: NativeTunOptions = { multiQueue: opts.multiQueue === true, vnetHdr: opts.vnetHdr === true };
    let handle: NativeHandle;
    try {
      handle = addon.open(name, flags);
    } catch (err) {
      throw convert(err);
    }
    return new NativeTun(handle, flags);
  }

  /**
   * Take over a TUN queue fd that a privileged parent opened and handed down (see src/router/privsep.ts):
   * no privilege is needed to read and write an open queue. `vnetHdr` must say how it was opened.
   * `dup`: use a copy of the fd and leave the caller's open (a worker's queue, which the main thread keeps
   * so that it outlives the worker).
   */
  static fromFd(fd: number, opts: { vnetHdr?: boolean; multiQueue?: boolean; dup?: boolean } = {}): NativeTun {
    const addon = loadAddon();
    const flags: NativeTunOptions = { multiQueue: opts.multiQueue === true, vnetHdr: opts.vnetHdr === true };
    let handle: NativeHandle;
    try {
      handle = addon.open('', { ...flags, fd, dup: opts.dup === true } as NativeTunOptions);
    } catch (err) {
      throw convert(err);
    }
    return new NativeTun(handle, flags);
  }

  /** Interface name as the kernel reports it. */
  get name(): string {
    return this.ifname;
  }

  /** The queue's file descriptor, -1 once closed. */
  get fd(): number {
    return this.handle.fd;
  }

  /**
   * One native call: reads until the queue is empty or lens.length packets. Note that Linux
   * reports a packet longer than slotSize as exactly slotSize bytes (it copies what fits and
   * returns that count), so a truncated packet shows up as an IP total length above lens[i].
   */
  readBatch(buf: Buffer, slotSize: number, lens: Uint32Array): number {
    if (this.pollError !== undefined) throw this.pollError;
    try {
      return this.handle.readBatch(buf, slotSize, lens);
    } catch (err) {
      throw convert(err);
    }
  }

  /** Involuntary context switches of the calling thread so far (getrusage RUSAGE_THREAD); -1 if unknown. */
  preemptions(): number {
    return this.handle.preemptions();
  }

  /**
   * One native call. Returns the number of entries consumed: written, or skipped and counted in
   * stats() (kernel refused that packet, or offset + length outside buf). Fewer than count only
   * when the kernel queue is full (EAGAIN); retry from the returned index. Throws TUN_IO when the
   * device is unusable (closed, interface down or deleted).
   */
  writeBatch(buf: Buffer, offsets: Uint32Array, lens: Uint32Array, count: number): number {
    try {
      return this.handle.writeBatch(buf, offsets, lens, count);
    } catch (err) {
      throw convert(err);
    }
  }

  /**
   * Level-triggered readiness through libuv's poll on the fd. If libuv reports the fd broken,
   * polling stops, cb runs once more and the next readBatch throws that error.
   */
  onReadable(cb: () => void): void {
    this.pollError = undefined;
    try {
      this.handle.startPoll((err?: unknown) => {
        if (err !== undefined) this.pollError = tunErrorFrom(err);
        cb();
      });
    } catch (err) {
      throw convert(err);
    }
  }

  /** Stop calling the readable callback (until onReadable again); the device stays open. */
  offReadable(): void {
    this.handle.stopPoll();
  }

  /** TUNSETOFFLOAD with TUN_F bits; only meaningful with vnetHdr. */
  setOffload(flags: number): void {
    try {
      this.handle.setOffload(flags);
    } catch (err) {
      throw convert(err);
    }
  }

  /** TUNSETVNETHDRSZ: VNET_HDR_LEN (default) or VNET_HDR_MRG_RXBUF_LEN; shared by all queues. */
  setVnetHdrSize(size: number): void {
    try {
      this.handle.setVnetHdrSize(size);
    } catch (err) {
      throw convert(err);
    }
  }

  /**
   * TUNSETPERSIST: keep the device (and the routes through it) after this process closes it. Packets
   * routed into a persistent TUN that nobody reads are dropped, never forwarded: tunnat's fail-closed
   * state across a restart. `ip link del NAME` removes such a device.
   */
  setPersist(persist: boolean): void {
    try {
      this.handle.setPersist(persist);
    } catch (err) {
      throw convert(err);
    }
  }

  /**
   * TUNSETQUEUE on a multi-queue device: detach this queue (the kernel steers nothing to it; the fd still
   * holds the device) or attach it again.
   */
  setQueue(attach: boolean): void {
    try {
      this.handle.setQueue(attach);
    } catch (err) {
      throw convert(err);
    }
  }

  /**
   * TUNSETSTEERINGEBPF: the eBPF program (bytecode, 8 bytes per instruction) that picks the queue of every
   * packet routed into the device, or null for the kernel's own flow hashing. Device-wide; needs
   * CAP_SYS_ADMIN or CAP_BPF to load.
   */
  setSteering(program: Uint8Array | null): void {
    try {
      this.handle.setSteering(program);
    } catch (err) {
      throw convert(err);
    }
  }

  /** Counters since open (per queue). */
  stats(): NativeTunStats {
    return this.handle.stats();
  }

  close(): void {
    this.handle.close();
  }
}
