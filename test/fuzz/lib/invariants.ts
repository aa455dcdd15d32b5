/**
 * What must hold of the translator's state after any input, however hostile, and of every packet it
 * lets through. Checks return lists of violations (strings) rather than throwing, so a fuzzer can
 * report all of them together with the input that led there.
 *
 * The tables and the fragment tracker check their own structure (index, free list, size, held bytes:
 * checkInvariants()); what is checked here is how they agree with one another and with the flows.
 */
import type { Translator } from '../../../src/nat/translator.js';
import { Filtering } from '../../../src/nat/translator.js';
import { FLOW_INBOUND } from '../../../src/conntrack/table.js';
import { ipToString } from '../../../src/wire/addr.js';
import { ICMP_HEADER_LENGTH, isErrorType } from '../../../src/wire/icmp.js';
import {
  IP, PROTO_ICMP, dstOf, ihl, ipChecksumValid, isFragment, l4ChecksumValid, looksLikeIpv4, protoOf, srcOf,
} from './packets.js';
import { rd16, rd32 } from '../../../src/wire/bytes.js';

const NONE = -1;
const PROTOS = [PROTO_ICMP, 6, 17] as const;

const q = ipToString;

/** A predicate over addresses: the --internal prefixes. */
export type IsInternal = (addr: number) => boolean;

/**
 * Everything about the tables at rest (between batches): the flow index, the mappings and their
 * reference counts, the port pools, per-host counts, permissions, fragments and their bounds.
 */
export function checkState(nat: Translator): string[] {
  const v: string[] = [];
  const flows = nat.flows;
  const cap = flows.capacity;
  const maps = nat.mappings;
  const mcap = maps.capacity;

  // The flow table's own structure: index (every entry once, under its tuple, reachable), free list, size.
  for (const p of flows.checkInvariants()) v.push(`flow table: ${p}`);
  if (flows.size > cap) v.push(`flows.size ${flows.size} > capacity ${cap}`);

  // Every flow is found from both directions, and finds itself. `-Infinity` as the clock: lookup() removes
  // expired flows it meets, and a check must not change what it checks.
  const refs = new Int32Array(mcap);
  for (let f = 0; f < cap; f++) {
    if (!flows.isInUse(f)) continue;
    const proto = flows.proto[f]!;
    for (let dir = 0; dir < 2; dir++) {
      const e = f * 2 + dir;
      if (flows.slotOf(e) < 0) v.push(`flow ${f} dir ${dir} is not in the index`);
      const found = flows.lookup(proto, flows.tSrc[e]!, flows.tDst[e]!, flows.tSport[e]!, flows.tDport[e]!, -Infinity);
      // A host hairpinning to its own mapping has the same tuple both ways: either entry is right.
      if (found !== e && !(found === (e ^ 1) && sameTuple(nat, e, e ^ 1))) {
        v.push(`flow ${f} dir ${dir} ${tupleText(nat, e)}: lookup finds ${found}, not ${e}`);
      }
    }
    const m = flows.mapping[f]!;
    const m2 = flows.mapping2[f]!;
    if (m >= mcap || m2 >= mcap) v.push(`flow ${f} names mapping ${m}/${m2} beyond the table`);
    if (m >= 0 && m < mcap) refs[m]!++;
    if (m2 >= 0 && m2 < mcap) refs[m2]!++;
  }

  // The mapping table's own structure (index, free list, size, pool ownership); then every mapping in use
  // is referenced by exactly its flows and found by its internal endpoint, and no freed one is referenced.
  for (const p of maps.checkInvariants()) v.push(`mapping table: ${p}`);
  const live = maps.liveRows();
  for (let m = 0; m < mcap; m++) {
    if (!live[m]) {
      if (refs[m]! > 0) v.push(`freed mapping ${m} is still used by ${refs[m]} flow reference(s)`);
      continue;
    }
    const proto = maps.proto[m]!;
    const where = `mapping ${m} (${protoName(proto)} ${q(maps.intAddr[m]!)}:${maps.intPort[m]} → ${q(maps.extAddr[m]!)}:${maps.extPort[m]})`;
    if (maps.refs[m] !== refs[m]) v.push(`${where} has refs ${maps.refs[m]} but ${refs[m]} flow reference(s)`);
    if (refs[m] === 0) v.push(`${where} is live with no flow: leaked`);
    if (maps.lookupInternal(proto, maps.intAddr[m]!, maps.intPort[m]!) !== m) v.push(`${where} is not found by its internal endpoint`);
    if (!nat.isPublic(maps.extAddr[m]!)) v.push(`${where} is on an address that is no longer public`);
  }

  // Pools: `used` is exactly the ports owned by live mappings of that protocol.
  for (const proto of PROTOS) for (const address of nat.publicAddresses) {
    const pool = maps.poolAt(proto, address);
    if (!pool) continue;
    let owned = 0;
    for (let port = 0; port < 65536; port++) {
      const m = pool.owner[port]!;
      if (m === NONE) continue;
      owned++;
      if (m < 0 || m >= mcap || !live[m]) v.push(`${protoName(proto)} port ${port} owned by dead mapping ${m}`);
      else if (maps.extPort[m] !== port || maps.proto[m] !== proto || maps.extAddr[m] !== address) v.push(`${protoName(proto)} port ${port} owned by mapping ${m} of another port/protocol/address`);
    }
    if (owned !== pool.used) v.push(`${protoName(proto)} pool: used ${pool.used} but ${owned} ports owned`);
    if (pool.used > pool.size + 65536) v.push(`${protoName(proto)} pool: used ${pool.used} is impossible`);
  }

  // What each flow says about its mappings agrees with the mappings.
  for (let f = 0; f < cap; f++) {
    if (!flows.isInUse(f)) continue;
    const o = f * 2;
    const r = o + 1;
    const m = flows.mapping[f]!;
    const m2 = flows.mapping2[f]!;
    const inbound = (flows.flags[f]! & FLOW_INBOUND) !== 0;
    if (m >= 0 && live[m]) {
      if (inbound) v.push(`inbound flow ${f} holds an own mapping ${m}`);
      if (flows.tSrc[o] !== maps.intAddr[m] || flows.tSport[o] !== maps.intPort[m] || flows.tDst[r] !== maps.extAddr[m] || flows.tDport[r] !== maps.extPort[m]) {
        v.push(`flow ${f} ${tupleText(nat, o)} / ${tupleText(nat, r)} disagrees with its mapping ${m}`);
      }
      if (flows.proto[f] !== maps.proto[m]) v.push(`flow ${f} and its mapping ${m} differ in protocol`);
    }
    if (m2 >= 0 && live[m2]) {
      if (flows.tSrc[r] !== maps.intAddr[m2] || flows.tSport[r] !== maps.intPort[m2] || flows.tDport[o] !== maps.extPort[m2]) {
        v.push(`flow ${f} ${tupleText(nat, o)} / ${tupleText(nat, r)} disagrees with its target mapping ${m2}`);
      }
    }
  }

  // Per-host counts (only kept when --max-flows-per-host is set).
  if (nat.maxPerHost > 0) {
    const want = new Map<number, number>();
    const opened = new Map<number, number>();
    for (let f = 0; f < cap; f++) {
      if (!flows.isInUse(f)) continue;
      // Only the flows a host opened count towards it: senders outside cannot use up its allowance.
      if ((flows.flags[f]! & FLOW_INBOUND) !== 0) continue;
      const host = flows.tSrc[f * 2]!;
      want.set(host, (want.get(host) ?? 0) + 1);
      opened.set(host, (opened.get(host) ?? 0) + 1);
    }
    for (const [host, n] of want) {
      if (nat.flowsOfHost(host) !== n) v.push(`host ${q(host)}: counted ${nat.flowsOfHost(host)} flows, opened ${n}`);
    }
    // The limit governs the flows a host opens.
    for (const [host, n] of opened) {
      if (n > nat.maxPerHost) v.push(`host ${q(host)} opened ${n} flows, over the limit ${nat.maxPerHost}`);
    }
    if (nat.hostFlows.size !== want.size) v.push(`per-host counts cover ${nat.hostFlows.size} hosts, flows belong to ${want.size}`);
  }

  // Address-dependent filtering: every flow's permissions exist, and there are no more than flows can hold.
  if (nat.filtering === Filtering.ADDRESS && nat.permissions) {
    const perm = nat.permissions;
    for (const p of perm.checkInvariants()) v.push(`permission table: ${p}`);
    if (perm.size > 2 * flows.size) v.push(`permissions ${perm.size} > 2 × flows ${flows.size}`);
    for (let f = 0; f < cap; f++) {
      if (!flows.isInUse(f)) continue;
      const peer = flows.flags[f]! & FLOW_INBOUND ? flows.tSrc[f * 2]! : flows.tDst[f * 2]!;
      for (const m of [flows.mapping[f]!, flows.mapping2[f]!]) {
        if (m >= 0 && !perm.has(m, peer)) v.push(`flow ${f}: mapping ${m} lacks the permission for ${q(peer)}`);
      }
    }
  }

  // Fragments: bounded in datagrams, bytes and pieces; the byte count is the sum of what is held.
  for (const p of nat.fragments.checkInvariants()) v.push(`fragments: ${p}`);
  return v;
}

/** After every timeout has passed and a full sweep: nothing may be left (a leak shows up here). */
export function checkDrained(nat: Translator): string[] {
  const v: string[] = [];
  if (nat.flows.size !== 0) v.push(`${nat.flows.size} flows left after every timeout passed`);
  if (nat.mappings.size !== 0) v.push(`${nat.mappings.size} mappings left with no flows`);
  for (const proto of PROTOS) {
    const used = nat.mappings.pool(proto)?.used ?? 0;
    if (used !== 0) v.push(`${protoName(proto)} pool still has ${used} ports in use`);
  }
  if (nat.fragments.size !== 0 || nat.fragments.heldBytes !== 0) {
    v.push(`fragments: ${nat.fragments.size} sets / ${nat.fragments.heldBytes} bytes left after their timeout`);
  }
  if (nat.permissions && nat.permissions.size !== 0) v.push(`${nat.permissions.size} permissions left with no flows`);
  if (nat.hostFlows.size !== 0) v.push(`per-host counts left for ${nat.hostFlows.size} hosts`);
  return v.concat(checkState(nat));
}

export interface PacketCheckInput {
  /** The packet as it went in (a copy taken before translation). */
  before: Uint8Array;
  /** The same bytes after translation (only meaningful when forwarded). */
  after: Uint8Array;
  verdict: number;
  /** The transport checksum is partial (virtio NEEDS_CSUM): compare after completing it. */
  partial: boolean;
  isInternal: IsInternal;
  /** The public address, or for a pool a test for any of its addresses. */
  publicIp: number | ((a: number) => boolean);
}

function publicTest(p: number | ((a: number) => boolean)): (a: number) => boolean {
  return typeof p === 'number' ? (a) => a === p : p;
}

/** Per forwarded packet: checksums kept valid, TTL given back, nothing leaves with an inside address. */
export function checkForwarded(c: PacketCheckInput): string[] {
  const v: string[] = [];
  const { before, after } = c;
  if (!looksLikeIpv4(after)) return ['forwarded a packet that is not IPv4'];
  if (after.length !== before.length) v.push(`length changed ${before.length} → ${after.length}`);
  if (ipChecksumValid(before) && !ipChecksumValid(after)) v.push('IP header checksum broken by translation');
  const ttlIn = before[IP.TTL]!;
  const ttlOut = after[IP.TTL]!;
  if (ttlOut !== Math.min(255, ttlIn + 1)) v.push(`TTL ${ttlIn} → ${ttlOut}, expected one hop given back`);
  if (!c.partial && l4ChecksumValid(before) === true && l4ChecksumValid(after) !== true) {
    v.push(`${protoName(protoOf(after))} checksum broken by translation`);
  }
  if (protoOf(after) === PROTO_ICMP && !isFragment(after)) {
    const qb = quotedHeader(before);
    const qa = quotedHeader(after);
    if (qb && qa && quotedIpChecksumValid(before, qb) && !quotedIpChecksumValid(after, qa)) v.push('quoted IP header checksum broken');
  }
  v.push(...leaks(after, c.isInternal, c.publicIp));
  const isPublic = publicTest(c.publicIp);
  const fromInside = c.isInternal(srcOf(before));
  const outDst = dstOf(after);
  if (fromInside && !c.isInternal(outDst) && !isPublic(outDst) && !isPublic(srcOf(after))) {
    v.push(`a LAN packet left for ${q(outDst)} with source ${q(srcOf(after))}, not the public address`);
  }
  return v;
}

/**
 * The leak rule, for any packet written back to the TUN: if it is headed out (its destination is neither
 * inside nor the public address), neither its source nor any address quoted in an ICMP error is inside.
 */
export function leaks(p: Uint8Array, isInternal: IsInternal, publicIp: number | ((a: number) => boolean)): string[] {
  if (!looksLikeIpv4(p)) return [];
  const dst = dstOf(p);
  if (isInternal(dst) || publicTest(publicIp)(dst)) return [];
  const v: string[] = [];
  if (isInternal(srcOf(p))) v.push(`LEAK: packet to ${q(dst)} leaves with inside source ${q(srcOf(p))}`);
  const qh = quotedHeader(p);
  if (qh !== null) {
    const qs = rd32(p, qh + IP.SRC);
    const qd = rd32(p, qh + IP.DST);
    if (isInternal(qs) || isInternal(qd)) v.push(`LEAK: ICMP error to ${q(dst)} quotes inside address ${q(isInternal(qs) ? qs : qd)}`);
  }
  return v;
}

/** Offset of the quoted IP header inside an ICMP error, or null. */
function quotedHeader(p: Uint8Array): number | null {
  if (protoOf(p) !== PROTO_ICMP || isFragment(p)) return null;
  const h = ihl(p);
  const total = rd16(p, IP.TOTAL_LENGTH);
  const type = p[h] ?? 255;
  if (!isErrorType(type)) return null;
  const at = h + ICMP_HEADER_LENGTH;
  return at + 20 <= total && (p[at]! >>> 4) === 4 ? at : null;
}

function quotedIpChecksumValid(p: Uint8Array, at: number): boolean {
  const qhl = (p[at]! & 0x0f) * 4;
  if (qhl < 20 || at + qhl > p.length) return false;
  let sum = 0;
  for (let i = 0; i < qhl; i += 2) sum += (p[at + i]! << 8) | p[at + i + 1]!;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return sum === 0xffff;
}

function sameTuple(nat: Translator, a: number, b: number): boolean {
  const t = nat.flows;
  return t.tSrc[a] === t.tSrc[b] && t.tDst[a] === t.tDst[b] && t.tSport[a] === t.tSport[b] && t.tDport[a] === t.tDport[b];
}

function protoName(p: number): string {
  return p === 6 ? 'tcp' : p === 17 ? 'udp' : p === 1 ? 'icmp' : `proto ${p}`;
}

function tupleText(nat: Translator, e: number): string {
  const t = nat.flows;
  return `${protoName(t.proto[e >> 1]!)} ${q(t.tSrc[e]!)}:${t.tSport[e]} → ${q(t.tDst[e]!)}:${t.tDport[e]}`;
}
