import { IPV4_FRAG, IPV4_OFF } from '../wire/ipv4.js';
import { rd16, rd32 } from '../wire/bytes.js';
import { HERE, type Steering } from './steering.js';

/** The packet was kept, to be passed on once its datagram's owner is known. */
export const HELD = -2;

const MAX_DATAGRAMS = 4096;
const MAX_HELD = 256;
const KNOWN_MS = 30_000;
const HOLD_MS = 2_000;

/** Whether the IPv4 packet at buf[off…] is a fragment (more fragments, or an offset). */
export function isFragment(buf: Uint8Array, off: number, len: number): boolean {
  return len >= 20 && (rd16(buf, off + IPV4_OFF.FLAGS_FRAGMENT) & (IPV4_FRAG.OFFSET_MASK | IPV4_FRAG.MORE_FRAGMENTS)) !== 0;
}

/**
 * Fragments with several workers. Only the first fragment carries the ports that name a flow's owner, and
 * the kernel may put the fragments of one datagram on different queues. So every fragment first goes to
 * one meeting point, the worker chosen by a hash of (source, destination, protocol, identification): it
 * learns the owner from the first fragment, passes that on, and sends every other fragment of the
 * datagram after it, holding those that came before it (bounded: past 256 held, a fragment goes to the translator here,
 * which holds or drops it as usual; held ones whose first does not come within 2 s are dropped, counted). The owner's translator
 * sees the fragments of a datagram in an order it already handles (fragment-path.ts).
 */
export class FragmentSteering {
  /** datagram key → [owner, time seen] */
  private readonly owners = new Map<string, [number, number]>();
  /** datagram key → fragments waiting for their first, each with its virtio-net header */
  private readonly held = new Map<string, { since: number; packets: Buffer[] }>();
  private heldCount = 0;
  readonly stats = { held: 0, released: 0, heldDropped: 0 };

  constructor(
    private readonly self: number,
    private readonly steering: Steering,
    /** Pass a packet (slot bytes, header included) to a worker, this one too (through its own ring). */
    private readonly pass: (owner: number, pkt: Buffer) => void,
    private readonly clock: () => number = () => performance.now(),
  ) {}

  /** The meeting point of a fragment's datagram. */
  meetingPoint(buf: Uint8Array, off: number): number {
    const count = this.steering.count;
    let h = rd32(buf, off + IPV4_OFF.SOURCE) ^ Math.imul(rd32(buf, off + IPV4_OFF.DESTINATION), 0x9e3779b1);
    h ^= Math.imul(rd16(buf, off + IPV4_OFF.IDENTIFICATION) | (buf[off + IPV4_OFF.PROTOCOL]! << 16), 0x85ebca6b);
    h = Math.imul(h ^ (h >>> 15), 0xc2b2ae35);
    return ((h ^ (h >>> 13)) >>> 0) % count;
  }

  /**
   * Where a fragment goes: a worker index, HERE (translate it now) or HELD. `fromRing`: it was handed
   * over; if this worker is not its meeting point, the meeting point sent it here to translate.
   */
  route(buf: Buffer, slot: number, off: number, len: number, slotLen: number, fromRing: boolean): number {
    const meet = this.meetingPoint(buf, off);
    if (meet !== this.self) return fromRing ? HERE : meet;
    const key = `${rd32(buf, off + IPV4_OFF.SOURCE)}/${rd32(buf, off + IPV4_OFF.DESTINATION)}/${buf[off + IPV4_OFF.PROTOCOL]}/${rd16(buf, off + IPV4_OFF.IDENTIFICATION)}`;
    const now = this.clock();
    const first = (rd16(buf, off + IPV4_OFF.FLAGS_FRAGMENT) & IPV4_FRAG.OFFSET_MASK) === 0;
    if (first) {
      const o = this.steering.ownerOf(buf, off, len);
      const owner = o === HERE ? this.self : o;
      this.remember(key, owner, now);
      const waiting = this.held.get(key);
      if (waiting) {
        this.held.delete(key);
        this.heldCount -= waiting.packets.length;
        // After the first: through the owner's ring (this worker's own, when it is the owner), which the
        // owner reads after the batch the first fragment is in.
        if (owner !== this.self) {
          this.pass(owner, buf.subarray(slot, slot + slotLen));
          for (const p of waiting.packets) this.pass(owner, p);
          this.stats.released += waiting.packets.length;
          return HELD; // sent with its followers, in order
        }
        for (const p of waiting.packets) this.pass(owner, p);
        this.stats.released += waiting.packets.length;
      }
      return owner === this.self ? HERE : owner;
    }
    const known = this.owners.get(key);
    if (known) return known[0] === this.self ? HERE : known[0];
    this.expireHeld(now);
    if (this.heldCount >= MAX_HELD) return HERE; // the translator holds or drops it, counted there
    let w = this.held.get(key);
    if (!w) this.held.set(key, (w = { since: now, packets: [] }));
    w.packets.push(Buffer.from(buf.subarray(slot, slot + slotLen)));
    this.heldCount++;
    this.stats.held++;
    return HELD;
  }

  /** Fragments whose first never came within 2 s: dropped and counted (heldDropped). */
  expireHeld(now: number = this.clock()): void {
    for (const [key, w] of this.held) {
      if (now - w.since < HOLD_MS) break; // insertion order: the rest are younger
      this.held.delete(key);
      this.heldCount -= w.packets.length;
      this.stats.heldDropped += w.packets.length;
    }
  }

  private remember(key: string, owner: number, now: number): void {
    this.owners.delete(key);
    this.owners.set(key, [owner, now]);
    for (const [k, v] of this.owners) {
      if (this.owners.size <= MAX_DATAGRAMS && now - v[1] < KNOWN_MS) break;
      this.owners.delete(k);
    }
  }
}
