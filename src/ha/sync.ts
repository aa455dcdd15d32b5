import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { encodeMark, REC, recordBytes } from '../nat/replica.js';

/**
 * The flow-state sync between the two gateways of a pair (docs/ha.md, "The sync protocol"). The active
 * sends the records of src/nat/replica.ts in numbered DATA messages; the standby acknowledges them. What
 * it borrows from conntrackd's FTFW mode and from pfsync:
 *
 * - Every DATA message has a sequence number; the receiver delivers in order, keeps a few that come early,
 *   and acknowledges cumulatively ("everything below N"). A gap makes it acknowledge at once, which the
 *   sender takes as a request to send again from N; a timer resends what stays unacknowledged.
 * - Records are batched: into one message until it is full or the next tick (10 ms).
 * - Memory is bounded: at most WINDOW messages in flight, and a limit on what waits behind them. A peer that
 *   is silent for PEER_LOST_MS, or a backlog past the limit, makes the sender drop everything queued and
 *   send a full resync (BEGIN, every flow, END) once the peer answers again, instead of an unbounded
 *   backlog. A standby that (re)starts, or becomes standby, asks for a full resync in its HELLO.
 * - Sessions: each side picks a random 64-bit session at start. Every message carries the sender's session
 *   and the receiver's as the sender knows it; a message for a session of ours that is over (a replay
 *   from before a restart) is dropped. A session not heard before is taken as the peer only after it has
 *   echoed a fresh random challenge (HELLO payload: challenge, echo), so no replayed HELLO, however old,
 *   passes for a restart of the peer.
 * - Authentication: HMAC-SHA256 (cut to 16 bytes) over the whole message with the pair's shared key. A
 *   message with a bad MAC is counted and dropped before anything in it is read.
 *
 * Message (network byte order): magic "TNHA" u32, version u8, type u8 (1 HELLO, 2 DATA, 3 ACK), flags u8,
 * node u8, sender session 8 bytes, receiver session 8 bytes (zero: not known yet), seq u32 (DATA), ack u32
 * (every message: the sender received all DATA below it), the sender's flow count u32, epoch u32 (HELLO:
 * the last resync the sender applied; DATA: the resync it belongs to), payload length u32, message counter
 * u32 (one more in every message a session sends: a message not above the last one heard is a replay),
 * payload (DATA: records; HELLO: the sender's challenge, its echo of ours, and the fingerprint of its
 * configuration, 8 bytes each), MAC 16 bytes.
 */

export const SYNC_MAGIC = 0x544e4841; // "TNHA"
export const SYNC_VERSION = 1;
export const MSG = { HELLO: 1, DATA: 2, ACK: 3 } as const;
/** HELLO flags. */
export const HELLO_ACTIVE = 1;
export const HELLO_WANT_RESYNC = 2;
/** DATA flag: the first message after a gap the sender gave up on (a full resync follows): deliver from here. */
export const DATA_RESTART = 1;

export const HEADER_BYTES = 48;
export const MAC_BYTES = 16;
/** Fits one Ethernet frame with IPv4 and UDP headers. */
export const MAX_MESSAGE = 1472;
export const MAX_PAYLOAD = MAX_MESSAGE - HEADER_BYTES - MAC_BYTES;

export const TICK_MS = 10;
export const HELLO_MS = 100;
export const RTO_MS = 60;
export const PEER_LOST_MS = 1500;
/** How long a session that introduced itself keeps its place before another may take it. */
const CANDIDATE_HOLD_MS = 1000;
export const WINDOW = 256;
/** Messages kept when they come before a gap is filled. */
const REORDER = 256;

export type Role = 'active' | 'standby';

export interface SyncStats {
  sent: number;
  received: number;
  recordsSent: number;
  recordBytesReceived: number;
  retransmits: number;
  badMac: number;
  malformed: number;
  /** Messages of a session that is over, replays and duplicates, or from the wrong pair. */
  stale: number;
  /** HELLOs from a peer whose settings differ from this side's (its fingerprint): no sync with it. */
  mismatched: number;
  /** Full resyncs this side started (as the active) and finished applying (as the standby). */
  resyncsSent: number;
  resyncsApplied: number;
  /** Backlogs dropped because the peer was gone or too slow (a full resync made up for each). */
  backlogsDropped: number;
}

export interface SyncOptions {
  /** The pair's shared key (at least 16 bytes). */
  key: Uint8Array;
  node: number;
  /** Sends one datagram to the peer. */
  send: (msg: Uint8Array) => void;
  /** A monotonic clock in ms. */
  now: () => number;
  /** The standby's side: records from the active, in order. */
  deliver: (records: Uint8Array) => void;
  /**
   * The active's side: a full resync of `epoch` has begun (its BEGIN is queued): push every flow with
   * pushRecords, then call endResync(epoch).
   */
  startResync: (epoch: number) => void;
  /** Flows this side holds (for HELLO and status). */
  flowCount: () => number;
  /** Bytes waiting behind the window before the backlog is dropped (default 64 MiB). */
  backlogLimit?: number;
  /** Random bytes (tests make sessions predictable). */
  random?: (n: number) => Uint8Array;
  /**
   * 8 bytes that differ when the two gateways' settings would make replication fail (worker count, port
   * ranges, public address…): a peer whose HELLO carries another one is refused.
   */
  fingerprint?: Uint8Array;
  /** Told once per peer session whose fingerprint differs. */
  onMismatch?: () => void;
}

interface Outgoing {
  seq: number;
  flags: number;
  epoch: number;
  payload: Uint8Array;
  sentAt: number;
}

export interface SyncStatus {
  role: Role;
  node: number;
  session: string;
  peer: {
    session: string | null;
    /** Heard from within PEER_LOST_MS. */
    alive: boolean;
    role: Role | null;
    node: number | null;
    lastHeardMsAgo: number | null;
    flows: number | null;
    wantsResync: boolean;
  };
  /** The active's side: messages sent and not acknowledged, the age of the oldest, bytes waiting behind the window. */
  lag: { unacked: number; oldestMs: number; waitingBytes: number };
  resync: { inProgress: boolean; epoch: number; lastStartedMsAgo: number | null; lastAppliedMsAgo: number | null; appliedEpoch: number };
  stats: SyncStats;
}

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

export class SyncError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SyncError';
  }
}

export class SyncAgent {
  role: Role = 'standby';
  readonly stats: SyncStats = {
    sent: 0, received: 0, recordsSent: 0, recordBytesReceived: 0, retransmits: 0, badMac: 0, malformed: 0, stale: 0, mismatched: 0,
    resyncsSent: 0, resyncsApplied: 0, backlogsDropped: 0,
  };
  private readonly key: Buffer;
  private readonly session: Uint8Array;
  private peerSession: Uint8Array | null = null;
  /** A session that introduced itself and has not yet echoed `challenge`. */
  private candidate: Uint8Array | null = null;
  private challenge: Uint8Array | null = null;
  /** The last challenge the other side sent: echoed in every HELLO. */
  private theirChallenge: Uint8Array = new Uint8Array(8);
  private candidateSince = -Infinity;
  private readonly random: (n: number) => Uint8Array;
  private readonly fingerprint: Uint8Array;
  private mismatchTold: Uint8Array | null = null;
  /** This side's message counter, and the last one heard from the peer and from the candidate. */
  private counter = 0;
  private peerCounter = 0;
  private candidateCounter = 0;
  private peerHeard = -Infinity;
  private peerRole: Role | null = null;
  private peerNode: number | null = null;
  private peerFlows: number | null = null;
  private peerWants = false;
  private peerApplied = 0;

  // ---- Sending (the active's side)
  private nextSeq = 1;
  /** Sent and not acknowledged, oldest first. */
  private inFlight: Outgoing[] = [];
  /** Whole payloads waiting for room in the window. */
  private waiting: Uint8Array[] = [];
  private waitingBytes = 0;
  /** The message being filled. */
  private filling: Uint8Array[] = [];
  private fillingBytes = 0;
  private nextFlags = 0;
  private resyncEpoch = 0;
  private resyncing = false;
  private resyncStarted = -Infinity;
  /** A backlog was dropped (or the peer is new): the next DATA restarts delivery and a resync must follow. */
  private mustResync = true;
  private lastFastResend = -Infinity;

  // ---- Receiving (the standby's side)
  private expected = 1;
  private early = new Map<number, { flags: number; payload: Uint8Array }>();
  private ackDue = false;
  private wantResync = true;
  private appliedEpoch = 0;
  private resyncAppliedAt = -Infinity;
  private deliveringEpoch = 0;

  private lastHello = -Infinity;
  private readonly backlogLimit: number;

  constructor(private readonly opts: SyncOptions) {
    if (opts.key.length < 16) throw new SyncError('the sync key must be at least 16 bytes');
    this.key = Buffer.from(opts.key);
    this.random = opts.random ?? randomBytes;
    this.session = this.random(8);
    this.fingerprint = opts.fingerprint ?? new Uint8Array(8);
    this.backlogLimit = opts.backlogLimit ?? 64 * 1024 * 1024;
  }

  // ---- Roles

  /** The gateway's role changed (it gained or lost the addresses). */
  setRole(role: Role): void {
    if (role === this.role) return;
    this.role = role;
    if (role === 'standby') {
      // Whatever it held as the active is not the new active's truth: ask for all of it.
      this.wantResync = true;
      this.dropBacklog(false);
    } else {
      // The new standby's table is not this one's: it gets all of it, and the first DATA restarts its delivery.
      this.mustResync = true;
      this.early.clear();
    }
    this.sendHello();
  }

  // ---- The active's side: records out

  /** Queue records (one or more whole records) for the peer. */
  pushRecords(records: Uint8Array): void {
    if (this.role !== 'active' || this.peerSession === null || records.length === 0) return;
    // A full resync is owed (the peer is gone, or was given up on): changes until then would be sent in it
    // anyway, so none is queued, and nothing grows while the peer is away.
    if (this.mustResync && !this.resyncing) return;
    if (this.opts.now() - this.peerHeard >= PEER_LOST_MS) {
      this.dropBacklog(this.inFlight.length > 0 || this.waiting.length > 0);
      return;
    }
    let off = 0;
    while (off < records.length) {
      // Records never straddle messages: cut at a record boundary that fits.
      const room = MAX_PAYLOAD - this.fillingBytes;
      const take = fitRecords(records, off, room);
      if (take === 0) {
        this.closeMessage();
        continue;
      }
      this.filling.push(records.subarray(off, off + take));
      this.fillingBytes += take;
      this.stats.recordsSent += countRecords(records, off, take);
      off += take;
    }
    if (this.waitingBytes > this.backlogLimit) this.dropBacklog(true);
  }

  /** The dump of a resync has been pushed: close it with END. */
  endResync(epoch: number): void {
    if (!this.resyncing || epoch !== this.resyncEpoch) return;
    this.pushRecords(encodeMark(REC.END, epoch));
    this.closeMessage();
    this.resyncing = false;
  }

  private closeMessage(): void {
    if (this.fillingBytes === 0) return;
    const payload = new Uint8Array(this.fillingBytes);
    let o = 0;
    for (const part of this.filling) {
      payload.set(part, o);
      o += part.length;
    }
    this.filling = [];
    this.fillingBytes = 0;
    this.waiting.push(payload);
    this.waitingBytes += payload.length;
  }

  /** Give up on what is queued (peer gone or too slow); a full resync will make up for it. */
  private dropBacklog(count: boolean): void {
    if (count && (this.inFlight.length > 0 || this.waiting.length > 0)) this.stats.backlogsDropped++;
    this.inFlight = [];
    this.waiting = [];
    this.waitingBytes = 0;
    this.filling = [];
    this.fillingBytes = 0;
    this.resyncing = false;
    this.mustResync = true;
  }

  private beginResync(now: number): void {
    this.dropBacklog(false);
    this.resyncEpoch = (this.resyncEpoch + 1) >>> 0 || 1;
    this.resyncing = true;
    this.resyncStarted = now;
    this.mustResync = false;
    this.nextFlags = DATA_RESTART;
    this.stats.resyncsSent++;
    this.pushRecords(encodeMark(REC.BEGIN, this.resyncEpoch));
    this.opts.startResync(this.resyncEpoch);
  }

  // ---- Timers

  /** Call every TICK_MS: batches go out, lost messages are sent again, HELLOs and ACKs are due. */
  tick(): void {
    const now = this.opts.now();
    const alive = now - this.peerHeard < PEER_LOST_MS;
    if (this.role === 'standby' && !alive) this.wantResync = true;
    if (this.role === 'active' && this.peerSession !== null) {
      if (!alive || this.peerRole === 'active') {
        // The peer is gone (nothing queued for it is kept: it gets everything when it is back), or it is
        // active too (split brain: each keeps its own flows; the one that ends up standby gets a resync).
        if (this.inFlight.length > 0 || this.waiting.length > 0 || !this.mustResync) this.dropBacklog(alive === false);
      } else if (!this.resyncing && (this.mustResync || (this.peerWants && this.peerApplied === this.resyncEpoch))) {
        // A resync when this side lost what it owed the peer, or when the peer asks for one after applying
        // the last (it became standby, or restarted): a WANT while the last one is still on its way is not
        // a new request.
        this.beginResync(now);
      }
      if (alive && this.peerRole !== 'active') {
        this.closeMessage();
        this.sendWaiting(now);
        this.resend(now, false);
      }
    }
    if (this.ackDue) this.sendAck();
    if (now - this.lastHello >= HELLO_MS) this.sendHello();
  }

  private sendWaiting(now: number): void {
    while (this.waiting.length > 0 && this.inFlight.length < WINDOW) {
      const payload = this.waiting.shift()!;
      this.waitingBytes -= payload.length;
      const m: Outgoing = { seq: this.nextSeq, flags: this.nextFlags, epoch: this.resyncEpoch, payload, sentAt: now };
      this.nextSeq = (this.nextSeq + 1) >>> 0 || 1;
      this.nextFlags = 0;
      this.inFlight.push(m);
      this.transmit(m);
    }
  }

  /**
   * Send again what the peer has not acknowledged: on the timer, everything in flight (the window may
   * have been lost whole); on an acknowledgement that stops at a gap, only the message it names (the peer
   * keeps what came after it).
   */
  private resend(now: number, fast: boolean): void {
    const first = this.inFlight[0];
    if (!first || (!fast && now - first.sentAt < RTO_MS)) return;
    for (const m of fast ? [first] : this.inFlight) {
      m.sentAt = now;
      this.stats.retransmits++;
      this.transmit(m);
    }
  }

  private transmit(m: Outgoing): void {
    this.emit(MSG.DATA, m.flags, m.seq, m.epoch, m.payload);
  }

  /**
   * A HELLO to the peer, or to a session that just introduced itself (`to`): that one is answered apart, so
   * that a replayed HELLO from an old session cannot turn this side's messages away from the real peer.
   */
  private sendHello(to: Uint8Array | null = this.peerSession): void {
    const flags = (this.role === 'active' ? HELLO_ACTIVE : 0) | (this.role === 'standby' && this.wantResync ? HELLO_WANT_RESYNC : 0);
    const payload = new Uint8Array(24);
    if (to !== null && this.challenge !== null && this.candidate !== null && equal(to, this.candidate)) payload.set(this.challenge, 0);
    payload.set(this.theirChallenge, 8);
    payload.set(this.fingerprint, 16);
    this.emit(MSG.HELLO, flags, 0, this.appliedEpoch, payload, to);
    if (to === this.peerSession) {
      this.lastHello = this.opts.now();
      this.ackDue = false;
    }
  }

  private sendAck(): void {
    this.emit(MSG.ACK, 0, 0, 0, new Uint8Array(0));
    this.ackDue = false;
  }

  private emit(type: number, flags: number, seq: number, epoch: number, payload: Uint8Array, to: Uint8Array | null = this.peerSession): void {
    const msg = new Uint8Array(HEADER_BYTES + payload.length + MAC_BYTES);
    const dv = new DataView(msg.buffer);
    dv.setUint32(0, SYNC_MAGIC);
    dv.setUint8(4, SYNC_VERSION);
    dv.setUint8(5, type);
    dv.setUint8(6, flags);
    dv.setUint8(7, this.opts.node);
    msg.set(this.session, 8);
    if (to) msg.set(to, 16);
    dv.setUint32(24, seq);
    dv.setUint32(28, this.expected);
    dv.setUint32(32, Math.min(0xffffffff, this.opts.flowCount()));
    dv.setUint32(36, epoch);
    dv.setUint32(40, payload.length);
    this.counter = (this.counter + 1) >>> 0;
    dv.setUint32(44, this.counter);
    msg.set(payload, HEADER_BYTES);
    msg.set(this.mac(msg.subarray(0, HEADER_BYTES + payload.length)), HEADER_BYTES + payload.length);
    this.stats.sent++;
    this.opts.send(msg);
  }

  private mac(data: Uint8Array): Uint8Array {
    return createHmac('sha256', this.key).update(data).digest().subarray(0, MAC_BYTES);
  }

  // ---- Receiving

  /** One datagram from the sync socket. */
  receive(msg: Uint8Array): void {
    if (msg.length < HEADER_BYTES + MAC_BYTES) {
      this.stats.malformed++;
      return;
    }
    const dv = new DataView(msg.buffer, msg.byteOffset, msg.byteLength);
    const len = dv.getUint32(40);
    if (dv.getUint32(0) !== SYNC_MAGIC || dv.getUint8(4) !== SYNC_VERSION || HEADER_BYTES + len + MAC_BYTES !== msg.length) {
      this.stats.malformed++;
      return;
    }
    const body = msg.subarray(0, HEADER_BYTES + len);
    const given = msg.subarray(HEADER_BYTES + len);
    if (!timingSafeEqual(Buffer.from(this.mac(body)), Buffer.from(given))) {
      this.stats.badMac++;
      return;
    }
    const type = dv.getUint8(5);
    const flags = dv.getUint8(6);
    const node = dv.getUint8(7);
    const from = msg.slice(8, 16);
    const to = msg.subarray(16, 24);
    const toUs = equal(to, this.session);
    const toNobody = to.every((b) => b === 0);
    if (node === this.opts.node) {
      // Our own node number: a loop, or the other gateway configured as this one.
      this.stats.stale++;
      return;
    }
    if (!toUs && !toNobody) {
      // Meant for a session of ours that is over (we restarted since): a replay or a message in flight.
      this.stats.stale++;
      return;
    }
    const now = this.opts.now();
    const counter = dv.getUint32(44);
    const hello = type === MSG.HELLO && len === 24;
    if (this.peerSession === null || !equal(from, this.peerSession)) {
      // A session not heard before (first contact, or the peer restarted): challenge it, and take it as the
      // peer once it echoes the challenge, which no replay can.
      if (!hello) {
        this.stats.stale++;
        return;
      }
      if (!equal(msg.subarray(HEADER_BYTES + 16, HEADER_BYTES + 24), this.fingerprint)) {
        this.stats.mismatched++;
        if (this.mismatchTold === null || !equal(this.mismatchTold, from)) {
          this.mismatchTold = from;
          this.opts.onMismatch?.();
        }
        return;
      }
      if (this.candidate === null || !equal(from, this.candidate)) {
        // One candidate at a time, kept for a second: replayed HELLOs of old sessions cannot keep a real
        // restart from completing its handshake by taking its place over and over.
        if (this.candidate !== null && now - this.candidateSince < CANDIDATE_HOLD_MS) {
          this.stats.stale++;
          return;
        }
        this.candidate = from;
        this.candidateSince = now;
        this.candidateCounter = counter;
        this.challenge = this.random(8);
        this.theirChallenge = msg.slice(HEADER_BYTES, HEADER_BYTES + 8);
        this.sendHello(from);
        return;
      }
      if (!counterAfter(counter, this.candidateCounter)) {
        this.stats.stale++;
        return;
      }
      this.candidateCounter = counter;
      this.theirChallenge = msg.slice(HEADER_BYTES, HEADER_BYTES + 8);
      if (this.challenge === null || !equal(msg.subarray(HEADER_BYTES + 8, HEADER_BYTES + 16), this.challenge)) {
        this.stats.stale++;
        return;
      }
      this.peerSession = from;
      this.candidate = null;
      this.challenge = null;
      this.peerCounter = counter;
      this.newPeer();
      this.sendHello();
    } else if (!counterAfter(counter, this.peerCounter)) {
      // Not newer than the last message of this session: a replay (or a datagram that overtook it).
      this.stats.stale++;
      return;
    } else {
      this.peerCounter = counter;
      if (hello) this.theirChallenge = msg.slice(HEADER_BYTES, HEADER_BYTES + 8);
    }
    this.stats.received++;
    this.peerHeard = now;
    this.peerNode = node;
    this.peerFlows = dv.getUint32(32);
    this.acknowledged(dv.getUint32(28), now);
    if (type === MSG.HELLO) {
      this.peerRole = flags & HELLO_ACTIVE ? 'active' : 'standby';
      this.peerWants = (flags & HELLO_WANT_RESYNC) !== 0;
      this.peerApplied = dv.getUint32(36);
    } else if (type === MSG.DATA) {
      this.peerRole = 'active';
      this.data(dv.getUint32(24), flags, msg.subarray(HEADER_BYTES, HEADER_BYTES + len));
    } else if (type !== MSG.ACK) {
      this.stats.malformed++;
    }
  }

  /** A peer session we have not talked to: delivery and sending start over, and a resync is due. */
  private newPeer(): void {
    this.expected = 1;
    this.early.clear();
    this.nextSeq = 1;
    this.peerWants = false;
    this.peerRole = null;
    this.dropBacklog(false);
    if (this.role === 'standby') this.wantResync = true;
  }

  /** The peer has everything below `ack`. */
  private acknowledged(ack: number, now: number): void {
    if (this.inFlight.length === 0) return;
    while (this.inFlight.length > 0 && seqBefore(this.inFlight[0]!.seq, ack)) this.inFlight.shift();
    const first = this.inFlight[0];
    // An acknowledgement that stops at a message sent a while ago: it was lost. Send again now, not at the
    // timer, but at most once per half RTO (several ACKs of one gap arrive together).
    if (first && first.seq === ack && now - first.sentAt >= RTO_MS / 4 && now - this.lastFastResend >= RTO_MS / 2) {
      this.lastFastResend = now;
      this.resend(now, true);
    }
    if (this.inFlight.length < WINDOW && this.waiting.length > 0 && this.role === 'active') this.sendWaiting(now);
  }

  private data(seq: number, flags: number, payload: Uint8Array): void {
    if (this.role === 'active') {
      // Split brain: both hold the addresses. Each keeps its own flows; the peer's are not taken in.
      this.stats.stale++;
      return;
    }
    if (flags & DATA_RESTART && !seqBefore(seq, this.expected)) {
      // The sender gave up on what came before (a backlog it dropped): deliver from here.
      this.expected = seq;
      for (const k of [...this.early.keys()]) if (seqBefore(k, seq)) this.early.delete(k);
    }
    this.ackDue = true;
    if (seqBefore(seq, this.expected)) {
      // A message delivered already (resent before our ACK arrived): the ACK tells the sender again.
      this.stats.stale++;
      return;
    }
    if (seq !== this.expected) {
      if (this.early.size < REORDER) this.early.set(seq, { flags, payload: payload.slice() });
      // Acknowledge at once: the sender sees the gap and resends from it.
      this.sendAck();
      return;
    }
    this.consume(payload);
    this.expected = (this.expected + 1) >>> 0 || 1;
    for (let next = this.early.get(this.expected); next; next = this.early.get(this.expected)) {
      this.early.delete(this.expected);
      this.consume(next.payload);
      this.expected = (this.expected + 1) >>> 0 || 1;
    }
  }

  private consume(payload: Uint8Array): void {
    this.stats.recordBytesReceived += payload.length;
    this.opts.deliver(payload);
  }

  /** The standby applied a resync's END (the data plane says so: its records are its own business). */
  resyncApplied(epoch: number): void {
    this.appliedEpoch = epoch;
    this.wantResync = false;
    this.resyncAppliedAt = this.opts.now();
    this.stats.resyncsApplied++;
    this.sendHello();
  }

  /** The dump of a resync could not be read whole: give it up; a new one starts at the next tick. */
  abortResync(epoch: number): void {
    if (this.resyncing && epoch === this.resyncEpoch) this.dropBacklog(true);
  }

  /** Whether the active has flows it could not replicate (the data plane's change log overflowed): resync. */
  requestResync(): void {
    if (this.role === 'active') this.dropBacklog(true);
    else this.wantResync = true;
  }

  status(): SyncStatus {
    const now = this.opts.now();
    const heard = Number.isFinite(this.peerHeard) ? now - this.peerHeard : null;
    const oldest = this.inFlight[0];
    return {
      role: this.role,
      node: this.opts.node,
      session: hex(this.session),
      peer: {
        session: this.peerSession ? hex(this.peerSession) : null,
        alive: heard !== null && heard < PEER_LOST_MS,
        role: this.peerRole,
        node: this.peerNode,
        lastHeardMsAgo: heard === null ? null : Math.round(heard),
        flows: this.peerFlows,
        wantsResync: this.peerWants,
      },
      lag: { unacked: this.inFlight.length, oldestMs: oldest ? Math.round(now - oldest.sentAt) : 0, waitingBytes: this.waitingBytes + this.fillingBytes },
      resync: {
        inProgress: this.resyncing,
        epoch: this.resyncEpoch,
        lastStartedMsAgo: Number.isFinite(this.resyncStarted) ? Math.round(now - this.resyncStarted) : null,
        lastAppliedMsAgo: Number.isFinite(this.resyncAppliedAt) ? Math.round(now - this.resyncAppliedAt) : null,
        appliedEpoch: this.appliedEpoch,
      },
      stats: { ...this.stats },
    };
  }

  /** The epoch of the resync the peer last applied, as its HELLO said (the active's view). */
  get peerAppliedEpoch(): number {
    return this.peerApplied;
  }
}

/** Whether message counter a comes after b (it wraps, like the sequence numbers). */
function counterAfter(a: number, b: number): boolean {
  return ((a - b) | 0) > 0;
}

/** Sequence numbers wrap: a is before b when b - a, as a signed 32-bit number, is positive. */
function seqBefore(a: number, b: number): boolean {
  return ((b - a) | 0) > 0;
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Bytes of whole records from `off` that fit in `room` (0 if not even the first does). */
function fitRecords(buf: Uint8Array, off: number, room: number): number {
  let n = 0;
  while (off + n < buf.length) {
    const size = recordBytes(buf[off + n]!);
    // Not a record: the data plane never makes one, so take the rest whole if it fits, to be dropped by the peer.
    if (size === 0) return buf.length - off <= room ? buf.length - off : n;
    if (n + size > room) break;
    n += size;
  }
  return n;
}

function countRecords(buf: Uint8Array, off: number, len: number): number {
  let n = 0;
  for (let o = off; o < off + len; n++) o += recordBytes(buf[o]!) || len;
  return n;
}
