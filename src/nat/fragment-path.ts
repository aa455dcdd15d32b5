import { Ipv4View, Ipv4Verdict } from '../wire/ipv4.js';
import { FragmentTracker, FragDecision, type FragEntry } from './fragments.js';
import type { NatContext } from './context.js';
import { DropReason, Path, Verdict } from './outcome.js';

/**
 * Fragments on the packet path (the tracker itself, and why there is no reassembly, are in fragments.ts).
 * A first fragment is translated like a whole packet by the Translator, between openFirstFragment and
 * settleFirstFragment; every later fragment then gets the same address rewrite, or waits (held) until
 * the first one has decided.
 */

/** The datagram's entry for its first fragment, or null (drop it as FRAGMENT: tracker full, overlap). */
export function openFirstFragment(nat: NatContext, src: number, dst: number, now: number): FragEntry | null {
  const ip = nat.ip;
  const fr = nat.fragments;
  const e = fr.open(FragmentTracker.key(src, dst, ip.protocol, ip.identification), now);
  if (!e || !fr.addRange(e, 0, ip.payloadLength, false)) return null;
  return e;
}

/**
 * The first fragment was translated (or not): remember the decision for the rest of the datagram, send
 * the fragments that were waiting for it, and return the first fragment's own verdict.
 */
export function settleFirstFragment(nat: NatContext, e: FragEntry, verdict: number): number {
  if (verdict === Verdict.FORWARD) {
    e.decision = nat.lastPath === Path.LOCAL ? FragDecision.LOCAL : FragDecision.TRANSLATE;
    e.newSrc = nat.ip.sourceAddress;
    e.newDst = nat.ip.destinationAddress;
    e.entry = nat.lastEntry;
  } else {
    e.decision = FragDecision.DROP;
  }
  if (e.held.length > 0) releaseHeld(nat, e);
  if (nat.fragments.complete(e)) nat.fragments.delete(e.key);
  return verdict;
}

/** A fragment without the transport header: follow its first fragment's decision, or wait for it. */
export function laterFragment(nat: NatContext, buf: Uint8Array, off: number, now: number, src: number, dst: number, fromInside: boolean): number {
  const ip = nat.ip;
  const fr = nat.fragments;
  const e = fr.open(FragmentTracker.key(src, dst, ip.protocol, ip.identification), now);
  if (!e) return nat.drop(DropReason.FRAGMENT);
  const start = ip.fragmentOffset * 8;
  if (!fr.addRange(e, start, start + ip.payloadLength, !ip.moreFragments)) return nat.drop(DropReason.FRAGMENT);
  if (e.decision === FragDecision.PENDING) {
    if (!fr.hold(e, buf.subarray(off, off + ip.totalLength))) return nat.drop(DropReason.FRAGMENT);
    return Verdict.HELD;
  }
  const verdict = e.decision === FragDecision.DROP
    ? nat.drop(DropReason.FRAGMENT)
    : applyDecision(nat, ip, e, pathOf(e, fromInside, nat.isPublic(dst)));
  if (fr.complete(e)) fr.delete(e.key);
  return verdict;
}

function pathOf(e: FragEntry, fromInside: boolean, toPublic: boolean): number {
  if (e.decision === FragDecision.LOCAL) return Path.LOCAL;
  return fromInside ? (toPublic ? Path.HAIRPIN : Path.OUTBOUND) : Path.INBOUND;
}

/** Give a later fragment its first fragment's addresses and the hop back, and count it. */
function applyDecision(nat: NatContext, v: Ipv4View, e: FragEntry, path: number): number {
  const len = v.totalLength;
  if (e.decision === FragDecision.TRANSLATE) {
    if (v.sourceAddress !== e.newSrc) v.setSourceAddressWithChecksum(e.newSrc);
    if (v.destinationAddress !== e.newDst) v.setDestinationAddressWithChecksum(e.newDst);
    // The flow's counters include every fragment, so per-host byte counts stay exact.
    const flows = nat.flows;
    if (e.entry >= 0 && flows.isInUse(e.entry >> 1)) {
      flows.packets[e.entry]!++;
      flows.bytes[e.entry]! += len;
    }
  }
  nat.stats.packets[path]!++;
  nat.stats.bytes[path]! += len;
  const ttl = v.ttl;
  if (ttl < 255) v.setTtlWithChecksum(ttl + 1);
  return Verdict.FORWARD;
}

/** Send the fragments that waited for their first fragment, through the sink. */
function releaseHeld(nat: NatContext, e: FragEntry): void {
  const held = nat.fragments.takeHeld(e);
  if (e.decision === FragDecision.DROP) {
    nat.stats.drops[DropReason.FRAGMENT]! += held.length;
    return;
  }
  const sink = nat.sink;
  const v = nat.innerIp;
  for (const pkt of held) {
    const at = sink ? sink.alloc(pkt.length) : -1;
    if (!sink || at < 0) {
      nat.stats.drops[DropReason.FRAGMENT]!++;
      continue;
    }
    sink.buf.set(pkt, at);
    if (v.wrap(sink.buf, at, pkt.length) !== Ipv4Verdict.OK) continue;
    applyDecision(nat, v, e, pathOf(e, nat.isInternal(v.sourceAddress), nat.isPublic(v.destinationAddress)));
    sink.commit(at, pkt.length);
  }
}
