import { IPPROTO, IPV4_OFF } from '../wire/ipv4.js';
import { rd16, wr16 } from '../wire/bytes.js';
import { internetChecksum, fold16, pseudoHeaderSum } from '../wire/checksum.js';
import { DIR_ORIGINAL, DIR_REPLY, FLOW_ALG, FLOW_INBOUND } from '../conntrack/table.js';
import type { NatContext } from './context.js';
import { mappingFor } from './flow-setup.js';
import { SeqAdjust } from './seqadj.js';

/**
 * The FTP application-level gateway: what makes active FTP (and passive FTP to a server behind a port
 * forward) work through the NAT. Off unless switched on for a port (`--alg ftp[:PORT]`).
 *
 * FTP's control connection names the data connection's endpoint in text: a LAN client in active mode
 * sends `PORT 192,168,1,10,195,80` (or `EPRT |1|192.168.1.10|50000|`) and the server connects back to
 * that address, which nobody outside can reach. A LAN server behind a forward answers PASV with
 * `227 Entering Passive Mode (192,168,1,20,...)` or EPSV with `229 ... (|||port|)`. The ALG rewrites
 * those lines, from the LAN side only, to carry the public address and a public port, gives the LAN
 * endpoint a mapping on that port (the same port where it is free), and *expects* the data connection:
 * the control connection's peer, from any port, may open one TCP connection to that public port, once,
 * within EXPECT_TIMEOUT_MS, whatever the filtering mode says. The expectation then goes away; it also
 * goes with its control connection, and a control connection holds one at a time (a new command
 * replaces the old one, as Linux's ftp helper does with max_expected = 1).
 *
 * As in Linux's helper (nf_conntrack_ftp.c), a command is only looked for at the start of a segment and
 * only when its whole line (up to the LF) is in that segment: a command split across segments is left
 * alone and counted. Anything that does not parse, or names an address other than the LAN endpoint's
 * own, is left alone and counted: the ALG never lets a LAN host open a way in to another host.
 *
 * The rewrite usually changes the payload's length, so the sequence numbers of the rest of the
 * connection are adjusted both ways (seqadj.ts), the packet's length changes (NatContext.lengthDelta
 * tells the data plane), and the checksums are recomputed (rare segments: a full sum is fine).
 *
 * Cost to everything else: the translator tests FLOW_ALG on the flow, nothing more; all of this is here.
 */

/** How long an expectation waits for its data connection (Linux's ftp helper waits 300 s; a client
 *  connects within a second or two of its command, so a shorter wait leaves less open for less time). */
export const EXPECT_TIMEOUT_MS = 120_000;
/** Expectations held at once, over all control connections: each holds a public port. */
export const DEFAULT_MAX_EXPECTATIONS = 256;

export interface FtpAlgStats {
  /** Commands and replies rewritten. */
  rewrites: number;
  /** Expectations set up, used by their data connection, expired unused, and removed with their control connection or replaced. */
  expectations: number;
  expectationsUsed: number;
  expectationsExpired: number;
  expectationsRemoved: number;
  /** Commands left alone: expectation limit reached (or, with workers, alg-redirect.ts full), no public port, line split over segments, malformed
   *  or naming a foreign address, no room in the packet's slot to grow, GSO superpacket. */
  refusedLimit: number;
  refusedNoPort: number;
  split: number;
  malformed: number;
  noRoom: number;
  gso: number;
  /** Segments whose sequence or acknowledgement numbers were moved. */
  seqAdjusted: number;
}

export interface FtpRewrite {
  old: string;
  new: string;
}

interface Expectation {
  control: number;
  peer: number;
  extPort: number;
  mapping: number;
  expires: number;
}

const enum Kind {
  NONE = 0,
  PORT = 1,
  EPRT = 2,
  PASV = 3,
  EPSV = 4,
}

const COMMA = 0x2c;
const LF = 0x0a;
const CR = 0x0d;

export class FtpAlg {
  readonly ports = new Uint8Array(65536);
  readonly seqadj = new SeqAdjust();
  readonly stats: FtpAlgStats = {
    rewrites: 0, expectations: 0, expectationsUsed: 0, expectationsExpired: 0, expectationsRemoved: 0,
    refusedLimit: 0, refusedNoPort: 0, split: 0, malformed: 0, noRoom: 0, gso: 0, seqAdjusted: 0,
  };
  private readonly expects: Expectation[] = [];
  /** The last rewrite (old and new line), for the trace; null when the last ALG segment had none. */
  lastRewrite: FtpRewrite | null = null;
  // Scratch for a parse: the span of the text to replace, the address and port it names.
  private spanStart = 0;
  private spanEnd = 0;
  private addr = 0;
  private port = 0;
  private delim = '|';

  constructor(ports: readonly number[], readonly maxExpectations = DEFAULT_MAX_EXPECTATIONS, readonly timeoutMs = EXPECT_TIMEOUT_MS) {
    for (const p of ports) {
      if (!Number.isInteger(p) || p < 1 || p > 65535) throw new RangeError(`ALG port must be in 1..65535, got ${p}`);
      this.ports[p] = 1;
    }
  }

  /** Expectations waiting for their data connection. */
  get pending(): number {
    return this.expects.length;
  }

  /** What `conntrack -L --expect` would show, for the listing and tests. */
  expectations(): readonly Readonly<Expectation>[] {
    return this.expects.map((x) => ({ ...x }));
  }

  // ---- Flows

  /** A new TCP flow: mark it as a control connection if its server port is an ALG port. */
  flowCreated(nat: NatContext, flow: number, dport: number, fromInside: boolean, toPublic: boolean): void {
    if (this.ports[dport] !== 1) return;
    const t = nat.flows;
    // Outbound: the destination port is the server's. Inbound: only through a port forward (a LAN server).
    if (fromInside ? toPublic : !(t.flags[flow]! & FLOW_INBOUND) || nat.forwardAt(IPPROTO.TCP, dport, t.tDst[flow * 2]!) < 0) return;
    t.flags[flow] = t.flags[flow]! | FLOW_ALG;
  }

  /** A control connection went: its expectation and its sequence adjustment go with it. */
  flowRemoved(nat: NatContext, flow: number): void {
    this.seqadj.forget(flow);
    for (let i = this.expects.length - 1; i >= 0; i--) {
      if (this.expects[i]!.control === flow) {
        this.stats.expectationsRemoved++;
        this.drop(nat, i);
      }
    }
  }

  /** A public address left the pool: expectations on it can never be met. */
  forgetAddress(nat: NatContext, addr: number): void {
    for (let i = this.expects.length - 1; i >= 0; i--) {
      if (nat.mappings.extAddr[this.expects[i]!.mapping] === addr >>> 0) {
        this.stats.expectationsRemoved++;
        this.drop(nat, i);
      }
    }
  }

  /** Remove expectations whose time ran out (from the translator's sweep, and before any use). */
  expire(nat: NatContext, now: number): void {
    for (let i = this.expects.length - 1; i >= 0; i--) {
      if (this.expects[i]!.expires <= now) {
        this.stats.expectationsExpired++;
        this.drop(nat, i);
      }
    }
  }

  /**
   * A new TCP connection from outside `from` to public address `to`, port `port`: if it is an expected data connection, the
   * expectation is used up and nat.target names the LAN endpoint (with the mapping the expectation held,
   * whose hold passes to the flow about to be made). False when nothing expects it.
   */
  claim(nat: NatContext, from: number, to: number, port: number, now: number): boolean {
    this.expire(nat, now);
    const xs = this.expects;
    for (let i = 0; i < xs.length; i++) {
      const x = xs[i]!;
      if (x.peer !== from || x.extPort !== port) continue;
      const m = x.mapping;
      const maps = nat.mappings;
      if (maps.extAddr[m] !== to) continue; // the same port on another pool address is another endpoint
      nat.target.addr = maps.intAddr[m]!;
      nat.target.port = maps.intPort[m]!;
      nat.target.mapping = m;
      // The caller holds the mapping while it makes the flow and lets it go if it cannot (inbound.ts).
      maps.unrefKeep(m);
      xs.splice(i, 1);
      this.stats.expectationsUsed++;
      return true;
    }
    return false;
  }

  private drop(nat: NatContext, i: number): void {
    const x = this.expects[i]!;
    this.expects.splice(i, 1);
    nat.mappings.unref(x.mapping);
  }

  // ---- Segments of a control connection

  /**
   * A segment of a control connection, its addresses and ports already translated: rewrite a command
   * from the LAN side, move its sequence numbers, fix the lengths and checksums. Returns the change in
   * the packet's length (also left in nat.lengthDelta).
   */
  segment(nat: NatContext, buf: Uint8Array, e: number, l4: number, total: number, now: number): number {
    const t = nat.flows;
    const flow = e >> 1;
    const dir = e & 1;
    const tcp = nat.tcp;
    const hlen = tcp.headerLength;
    const pay = l4 + hlen;
    const plen = total - nat.ip.headerLength - hlen;
    const inbound = (t.flags[flow]! & FLOW_INBOUND) !== 0;
    const fromLan = inbound ? dir === DIR_REPLY : dir === DIR_ORIGINAL;
    this.lastRewrite = null;
    let delta = 0;
    if (fromLan && plen > 0) {
      const seq = tcp.sequenceNumber; // the sender's own numbering, before any adjustment
      delta = this.command(nat, buf, flow, e, pay, plen, total, inbound, now);
      if (delta !== 0) this.seqadj.record(flow, dir, seq, delta);
    }
    const moved = this.seqadj.has(flow) && this.seqadj.adjust(flow, dir, buf, l4, hlen);
    if (moved) this.stats.seqAdjusted++;
    if (delta === 0 && !moved && this.lastRewrite === null) return 0;
    const ipOff = nat.ip.off;
    const newTotal = total + delta;
    if (delta !== 0) {
      wr16(buf, ipOff + IPV4_OFF.TOTAL_LENGTH, newTotal);
      wr16(buf, ipOff + IPV4_OFF.CHECKSUM, 0);
      wr16(buf, ipOff + IPV4_OFF.CHECKSUM, internetChecksum(buf, ipOff, nat.ip.headerLength));
    }
    // The transport checksum over the new bytes. A partial one (virtio NEEDS_CSUM) holds only the
    // pseudo-header sum, which the length is part of (and the sequence numbers are not: they are data
    // whoever sends the packet on sums with the rest); so it changes only with the length.
    const l4len = newTotal - nat.ip.headerLength;
    const ps = pseudoHeaderSum(rdAddr(buf, ipOff + IPV4_OFF.SOURCE), rdAddr(buf, ipOff + IPV4_OFF.DESTINATION), IPPROTO.TCP, l4len);
    if (nat.partial) {
      if (delta !== 0) wr16(buf, l4 + 16, fold16(ps));
    } else {
      wr16(buf, l4 + 16, 0);
      wr16(buf, l4 + 16, internetChecksum(buf, l4, l4len, ps));
    }
    nat.lengthDelta = delta;
    return delta;
  }

  /** Look for a command at the start of the payload and rewrite it; the length change, 0 if none. */
  private command(
    nat: NatContext, buf: Uint8Array, flow: number, e: number, pay: number, plen: number, total: number, inbound: boolean, now: number,
  ): number {
    const kind = inbound ? replyKind(buf, pay, plen) : commandKind(buf, pay, plen);
    if (kind === Kind.NONE) return 0;
    // The whole line must be here (Linux's helper does not look across segments either).
    let eol = -1;
    for (let i = pay; i < pay + plen; i++) {
      if (buf[i] === LF) {
        eol = i;
        break;
      }
    }
    if (eol < 0) {
      this.stats.split++;
      return 0;
    }
    if (nat.gso) {
      // A superpacket's payload is cut into segments by size later: moving bytes in it would move them
      // across segment boundaries the sender chose. Commands never come this big; refuse and count.
      this.stats.gso++;
      return 0;
    }
    const parsed =
      kind === Kind.PORT ? this.parsePort(buf, pay + 5, eol)
        : kind === Kind.EPRT ? this.parseEprt(buf, pay + 5, eol)
          : kind === Kind.PASV ? this.parsePasv(buf, pay + 4, eol)
            : this.parseEpsv(buf, pay + 4, eol);
    // The LAN side's own address, as it sent it: the original source of an outbound flow, the reply
    // source of an inbound one. A command naming any other address is not rewritten.
    const t = nat.flows;
    const lanAddr = t.tSrc[e]!;
    if (!parsed || (kind !== Kind.EPSV && this.addr !== lanAddr)) {
      this.stats.malformed++;
      return 0;
    }
    if (kind === Kind.EPSV) this.addr = lanAddr;
    this.expire(nat, now);
    // The control connection's earlier expectation is replaced by this one (below, once this one is
    // made): it does not count against the limit.
    let mine = 0;
    for (const x of this.expects) if (x.control === flow) mine++;
    if (this.expects.length - mine >= this.maxExpectations) {
      this.stats.refusedLimit++;
      return 0;
    }
    // Looked up while the old expectation still holds its mapping: a retransmitted command finds the
    // same public port, so it gets the same text, the same length and the same sequence offset.
    const choice = nat.lastPortChoice;
    const m = mappingFor(nat, IPPROTO.TCP, this.addr, this.port);
    nat.lastPortChoice = choice;
    if (m < 0) {
      this.stats.refusedNoPort++;
      return 0;
    }
    const maps = nat.mappings;
    const pub = maps.extAddr[m]!;
    const extPort = maps.extPort[m]!;
    const text =
      kind === Kind.PORT || kind === Kind.PASV
        ? `${pub >>> 24},${(pub >>> 16) & 255},${(pub >>> 8) & 255},${pub & 255},${extPort >> 8},${extPort & 255}`
        : kind === Kind.EPRT
          ? `${this.delim}1${this.delim}${ipString(pub)}${this.delim}${extPort}${this.delim}`
          : String(extPort);
    const oldLen = this.spanEnd - this.spanStart;
    const delta = text.length - oldLen;
    const room = nat.packetRoom > 0 ? Math.min(nat.packetRoom, buf.length - nat.ip.off) : buf.length - nat.ip.off;
    if (total + delta > room || total + delta > 65535) {
      maps.releaseIfUnused(m);
      this.stats.noRoom++;
      return 0;
    }
    // With workers, the data connection's LAN side may be steered to another worker: published before the
    // rewritten command leaves, so that worker hands it here (alg-redirect.ts).
    const redirects = nat.algRedirects;
    if (redirects !== null && !redirects.add(this.addr, this.port, m)) {
      maps.releaseIfUnused(m);
      this.stats.refusedLimit++;
      return 0;
    }
    maps.ref(m);
    for (let i = this.expects.length - 1; i >= 0; i--) {
      if (this.expects[i]!.control === flow) {
        this.stats.expectationsRemoved++;
        this.drop(nat, i);
      }
    }
    this.expects.push({ control: flow, peer: nat.peerAddress(flow), extPort, mapping: m, expires: now + this.timeoutMs });
    this.stats.expectations++;
    const oldLine = latin1(buf, pay, eol);
    const end = pay + plen;
    if (delta !== 0) buf.copyWithin(this.spanEnd + delta, this.spanEnd, end);
    for (let i = 0; i < text.length; i++) buf[this.spanStart + i] = text.charCodeAt(i);
    this.lastRewrite = { old: oldLine, new: latin1(buf, pay, eol + delta) };
    this.stats.rewrites++;
    return delta;
  }

  // ---- Parsers: each leaves the address, port and the span to replace, or answers false.

  /** `PORT h1,h2,h3,h4,p1,p2` (RFC 959): six numbers 0..255. */
  private parsePort(buf: Uint8Array, from: number, eol: number): boolean {
    let i = from;
    while (i < eol && buf[i] === 0x20) i++;
    this.spanStart = i;
    const end = this.sixNumbers(buf, i, eol);
    if (end < 0) return false;
    this.spanEnd = end;
    return true;
  }

  /** `EPRT |1|a.b.c.d|port|` (RFC 2428): any printable delimiter, protocol 1 only (2 is IPv6, not ours). */
  private parseEprt(buf: Uint8Array, from: number, eol: number): boolean {
    let i = from;
    while (i < eol && buf[i] === 0x20) i++;
    this.spanStart = i;
    const d = buf[i];
    if (d === undefined || d < 33 || d > 126 || i + 1 >= eol) return false;
    this.delim = String.fromCharCode(d);
    if (buf[i + 1] !== 0x31 || buf[i + 2] !== d) return false;
    i += 3;
    let addr = 0;
    for (let k = 0; k < 4; k++) {
      const [n, next] = readNumber(buf, i, eol, 3);
      if (n < 0 || n > 255) return false;
      addr = addr * 256 + n;
      i = next;
      if (buf[i] !== (k < 3 ? 0x2e : d)) return false;
      i++;
    }
    const [port, next] = readNumber(buf, i, eol, 5);
    if (port < 1 || port > 65535 || buf[next] !== d) return false;
    this.addr = addr >>> 0;
    this.port = port;
    this.spanEnd = next + 1;
    return true;
  }

  /** `227 <text> (h1,h2,h3,h4,p1,p2)` (RFC 959 leaves the text free: the numbers are found where they start). */
  private parsePasv(buf: Uint8Array, from: number, eol: number): boolean {
    for (let i = from; i < eol; i++) {
      const c = buf[i]!;
      if (c >= 0x30 && c <= 0x39) {
        this.spanStart = i;
        const end = this.sixNumbers(buf, i, eol);
        if (end < 0) return false;
        this.spanEnd = end;
        return true;
      }
    }
    return false;
  }

  /** `229 <text> (|||port|)` (RFC 2428): the port between the third and fourth delimiter. */
  private parseEpsv(buf: Uint8Array, from: number, eol: number): boolean {
    for (let i = from; i + 3 < eol; i++) {
      if (buf[i] !== 0x28) continue; // '('
      const d = buf[i + 1]!;
      if (d < 33 || d > 126 || buf[i + 2] !== d || buf[i + 3] !== d) return false;
      const [port, next] = readNumber(buf, i + 4, eol, 5);
      if (port < 1 || port > 65535 || buf[next] !== d) return false;
      this.spanStart = i + 4;
      this.spanEnd = next;
      this.port = port;
      return true;
    }
    return false;
  }

  /** h1,h2,h3,h4,p1,p2 from `i`: address and port into the scratch fields; the end, or -1. */
  private sixNumbers(buf: Uint8Array, i: number, eol: number): number {
    let addr = 0;
    let port = 0;
    for (let k = 0; k < 6; k++) {
      const [n, next] = readNumber(buf, i, eol, 3);
      if (n < 0 || n > 255) return -1;
      if (k < 4) addr = addr * 256 + n;
      else port = port * 256 + n;
      i = next;
      if (k < 5) {
        if (buf[i] !== COMMA) return -1;
        i++;
      }
    }
    if (port === 0) return -1;
    this.addr = addr >>> 0;
    this.port = port;
    return i;
  }
}

/** Which client command a payload starts with (case-insensitive, as RFC 959 has it). */
function commandKind(buf: Uint8Array, p: number, len: number): Kind {
  if (len < 5 || buf[p + 4] !== 0x20) return Kind.NONE;
  const w = ((buf[p]! | 0x20) << 24) | ((buf[p + 1]! | 0x20) << 16) | ((buf[p + 2]! | 0x20) << 8) | (buf[p + 3]! | 0x20);
  if (w === 0x706f7274) return Kind.PORT; // "port"
  if (w === 0x65707274) return Kind.EPRT; // "eprt"
  return Kind.NONE;
}

/** Which server reply a payload starts with: 227 (PASV) or 229 (EPSV). */
function replyKind(buf: Uint8Array, p: number, len: number): Kind {
  if (len < 4 || buf[p] !== 0x32 || buf[p + 1] !== 0x32 || buf[p + 3] !== 0x20) return Kind.NONE;
  if (buf[p + 2] === 0x37) return Kind.PASV;
  if (buf[p + 2] === 0x39) return Kind.EPSV;
  return Kind.NONE;
}

/** A decimal number of at most `max` digits at `i` (before `end`): [value or -1, index after it]. */
function readNumber(buf: Uint8Array, i: number, end: number, max: number): [number, number] {
  let n = 0;
  let k = 0;
  while (i < end && k < max) {
    const c = buf[i]!;
    if (c < 0x30 || c > 0x39) break;
    n = n * 10 + (c - 0x30);
    i++;
    k++;
  }
  if (k === 0 || (i < end && buf[i]! >= 0x30 && buf[i]! <= 0x39)) return [-1, i];
  return [n, i];
}

function rdAddr(buf: Uint8Array, i: number): number {
  return ((rd16(buf, i) << 16) | rd16(buf, i + 2)) >>> 0;
}

function ipString(a: number): string {
  return `${a >>> 24}.${(a >>> 16) & 255}.${(a >>> 8) & 255}.${a & 255}`;
}

/** A line as text for the trace, without its CR LF. */
function latin1(buf: Uint8Array, from: number, eol: number): string {
  let end = eol;
  if (end > from && buf[end - 1] === CR) end--;
  let s = '';
  for (let i = from; i < end; i++) s += String.fromCharCode(buf[i]!);
  return s;
}

/**
 * Switch the FTP ALG on for a translator on these server ports: control connections on them are
 * watched from then on, and their removal takes their expectations along.
 */
export function enableFtpAlg(nat: NatContext, ports: readonly number[], maxExpectations?: number, timeoutMs?: number): FtpAlg {
  const alg = new FtpAlg(ports, maxExpectations, timeoutMs);
  nat.alg = alg;
  nat.observers.push({
    removed(flow: number): void {
      if (nat.flows.flags[flow]! & FLOW_ALG) alg.flowRemoved(nat, flow);
    },
  });
  return alg;
}

