/**
 * The boundary between tunnat and a TUN device. The data plane sees only this interface, so the
 * whole pipeline runs in unit tests against the in-memory fake (src/tun/fake.ts) and in production
 * against the native addon (src/tun/native.ts).
 *
 * Packets move in batches through one caller-owned buffer: a read fills fixed-size slots
 * (packet i starts at i * slotSize), a write takes explicit offsets so that translated packets
 * can be written back from where they were read and generated packets from anywhere else.
 */
export interface TunDevice {
  /** Interface name as the kernel reports it (e.g. "tunnat0"). */
  readonly name: string;

  /**
   * Read up to `lens.length` packets without blocking; packet i lands at `buf[i * slotSize]`
   * and its length in `lens[i]`. Returns how many were read (0 when none wait).
   * Linux copies at most slotSize bytes of a longer packet and reports slotSize, so truncation
   * shows only as an IP total length greater than lens[i]; size slots to the MTU (+ vnet header).
   * Callers check every length anyway (the fake can report lens[i] > slotSize to exercise that).
   */
  readBatch(buf: Buffer, slotSize: number, lens: Uint32Array): number;

  /**
   * Write `count` packets: packet i is `buf[offsets[i] .. offsets[i] + lens[i])`.
   * Returns how many entries were used up — sent, or refused one by one (counted by the device);
   * fewer than count only when the kernel's queue was full, and the caller may resume from there.
   */
  writeBatch(buf: Buffer, offsets: Uint32Array, lens: Uint32Array, count: number): number;

  /**
   * How many times the calling thread has been switched out while it still wanted to run (a count that
   * only grows; -1 if unknown). The loop compares it across a busy-poll spin to learn whether spinning
   * holds up other work on its core. Optional: without it the spin window stays fixed.
   */
  preemptions?(): number;

  /** Call `cb` whenever packets are waiting to be read (level-triggered); replaces any earlier callback. */
  onReadable(cb: () => void): void;

  /** Stop polling and close the file descriptor. Idempotent. */
  close(): void;
}
