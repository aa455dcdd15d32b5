import type { TunDevice } from './device.js';
import { TunError } from './errors.js';
import type { NativeTunStats } from './native.js';

export interface FakeTunOptions {
  /** Interface name to report (default "faketun0"). */
  name?: string;
  /** Accept at most this many packets per writeBatch call, as if the kernel queue were full (default: no limit). */
  writeCapacity?: number;
  /**
   * What readBatch puts in lens[i] for a queued packet longer than slotSize (only slotSize bytes
   * are copied either way):
   * - 'actual' (default): the packet's real length, so lens[i] > slotSize and callers' defensive
   *   length checks get exercised;
   * - 'slot': slotSize, which is what Linux does; the truncation then shows only as an IP total
   *   length larger than lens[i].
   */
  truncatedLength?: 'actual' | 'slot';
  /** Packets carry a 10-byte virtio-net header first (like a TUN opened with IFF_VNET_HDR). */
  vnetHdr?: boolean;
}

export interface FakeTunStats extends NativeTunStats {
  /** Packets that did not fit their slot. */
  truncatedReads: number;
}

const EBADF = 9;
const EINVAL = 22;

/**
 * An in-memory TunDevice for unit tests: `inject` plays the kernel handing a packet to the
 * reader, `written`/`takeWritten` show what the code under test wrote. It mirrors the native
 * device's contract: same argument checks, level-triggered readiness (the callback keeps being
 * scheduled while packets wait), the kernel's refusal of packets that are neither IPv4 nor IPv6
 * (EINVAL, skipped and counted), out-of-range entries skipped and counted, and TunError
 * (TUN_IO, EBADF) after close.
 */
export class FakeTun implements TunDevice {
  readonly name: string;
  /** Packets accepted by writeBatch, each copied out of the caller's buffer, oldest first. */
  readonly written: Buffer[] = [];
  /** Per-call write limit; may be changed between calls to fill and drain the "queue". */
  writeCapacity: number;
  /** Unset: the fake cannot count preemptions (the busy-poll window stays fixed). Tests set it to play a shared core. */
  preemptions?: () => number;

  private readonly truncatedLength: 'actual' | 'slot';
  private readonly queue: Buffer[] = [];
  private callback: (() => void) | undefined;
  private immediate: NodeJS.Immediate | undefined;
  private closed = false;
  private readonly counters: FakeTunStats = {
    readPackets: 0,
    writePackets: 0,
    writeErrors: 0,
    writeOutOfRange: 0,
    lastWriteErrno: 0,
    truncatedReads: 0,
  };

  constructor(opts: FakeTunOptions = {}) {
    this.name = opts.name ?? 'faketun0';
    this.writeCapacity = opts.writeCapacity ?? Number.POSITIVE_INFINITY;
    this.truncatedLength = opts.truncatedLength ?? 'actual';
    this.ipOffset = opts.vnetHdr ? 10 : 0;
  }

  /** Where the IP header starts in each packet (after the virtio-net header, if any). */
  private readonly ipOffset: number;

  /** Queue a copy of `packet` as if the kernel routed it into the TUN; schedules the readable callback. */
  inject(packet: Uint8Array): void {
    if (this.closed) throw this.closedError('inject');
    this.queue.push(Buffer.from(packet));
    this.schedule();
  }

  /** Packets injected and not yet read. */
  get pending(): number {
    return this.queue.length;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  readBatch(buf: Buffer, slotSize: number, lens: Uint32Array): number {
    checkBytes(buf, 'buf');
    checkInteger(slotSize, 1, 0xffffffff, 'slotSize');
    if (!(lens instanceof Uint32Array)) throw new TypeError('lens must be a Uint32Array');
    if (slotSize * lens.length > buf.length) throw new RangeError('slotSize * lens.length exceeds buf.length');
    if (this.closed) throw this.closedError('read');

    const count = Math.min(lens.length, this.queue.length);
    for (let i = 0; i < count; i++) {
      const packet = this.queue.shift() as Buffer;
      const copied = packet.copy(buf, i * slotSize, 0, Math.min(packet.length, slotSize));
      if (packet.length > slotSize) {
        this.counters.truncatedReads++;
        lens[i] = this.truncatedLength === 'actual' ? packet.length : copied;
      } else {
        lens[i] = copied;
      }
    }
    this.counters.readPackets += count;
    return count;
  }

  writeBatch(buf: Buffer, offsets: Uint32Array, lens: Uint32Array, count: number): number {
    checkBytes(buf, 'buf');
    if (!(offsets instanceof Uint32Array)) throw new TypeError('offsets must be a Uint32Array');
    if (!(lens instanceof Uint32Array)) throw new TypeError('lens must be a Uint32Array');
    checkInteger(count, 0, Math.min(offsets.length, lens.length), 'count');
    if (this.closed) throw this.closedError('write');

    let accepted = 0;
    let i = 0;
    for (; i < count; i++) {
      const offset = offsets[i] as number;
      const length = lens[i] as number;
      // Same order as the native loop: range check first, then the (possibly full) queue.
      if (offset + length > buf.length) {
        this.counters.writeOutOfRange++;
        continue;
      }
      if (accepted >= this.writeCapacity) break;
      const version = length > this.ipOffset ? (buf[offset + this.ipOffset] as number) >> 4 : 0;
      if (version !== 4 && version !== 6) {
        // What tun_get_user does with IFF_NO_PI when it cannot tell the protocol.
        this.counters.writeErrors++;
        this.counters.lastWriteErrno = EINVAL;
        continue;
      }
      this.written.push(Buffer.from(buf.subarray(offset, offset + length)));
      this.counters.writePackets++;
      accepted++;
    }
    return i;
  }

  /** Return the packets written so far and forget them. */
  takeWritten(): Buffer[] {
    return this.written.splice(0, this.written.length);
  }

  onReadable(cb: () => void): void {
    if (this.closed) throw this.closedError('poll');
    this.callback = cb;
    this.schedule();
  }

  offReadable(): void {
    this.callback = undefined;
    this.cancel();
  }

  stats(): FakeTunStats {
    return { ...this.counters };
  }

  /** Drops queued packets and the callback; `written` stays readable. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.callback = undefined;
    this.queue.length = 0;
    this.cancel();
  }

  // One pending immediate at a time, however many packets arrive before it runs.
  private schedule(): void {
    if (this.immediate !== undefined || this.callback === undefined || this.queue.length === 0) return;
    this.immediate = setImmediate(() => {
      this.immediate = undefined;
      const cb = this.callback;
      if (cb === undefined || this.closed || this.queue.length === 0) return;
      cb();
      // Level-triggered, like uv_poll: whatever the callback left unread asks again next turn.
      this.schedule();
    });
  }

  private cancel(): void {
    if (this.immediate !== undefined) {
      clearImmediate(this.immediate);
      this.immediate = undefined;
    }
  }

  private closedError(syscall: string): TunError {
    return new TunError('TUN_IO', `TUN device '${this.name}' is closed`, {
      errno: EBADF,
      errnoCode: 'EBADF',
      syscall,
      device: this.name,
    });
  }
}

// The native addon's checks, with its error types and messages.
function checkInteger(value: unknown, min: number, max: number, what: string): void {
  if (typeof value !== 'number') throw new TypeError(`${what} must be a number`);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new RangeError(`${what} must be an integer in [${min}, ${max}]`);
  }
}

function checkBytes(buf: unknown, what: string): void {
  if (!(buf instanceof Uint8Array)) throw new TypeError(`${what} must be a Buffer or Uint8Array`);
}
