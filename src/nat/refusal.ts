import { IPPROTO } from '../wire/ipv4.js';
import { TCP_FLAGS } from '../wire/tcp.js';
import { ICMP_TYPE, ICMP_UNREACH_CODE } from '../wire/icmp.js';
import { emitIpv4IcmpError, emitIpv4Tcp, ipv4IcmpErrorLength } from '../wire/build.js';
import type { NatContext } from './context.js';
import { refused } from './flow-setup.js';
import type { Setup } from './outcome.js';

/**
 * Refusing a new flow from the LAN (egress policy, host limit, table full, no public port): the packet
 * is dropped and counted, and where the operator asked for it the LAN host is told at once instead of
 * timing out — a TCP RST for TCP (what a closed port would say), else ICMP destination unreachable,
 * code 13 "communication administratively prohibited" (RFC 5508 §6 for resource exhaustion; also what an
 * egress reject means). A token bucket bounds what tunnat generates, so a flood never turns into an ICMP
 * flood of its own.
 */

/** Refuse the new flow of the packet in hand for `reason`; tell the LAN host when `tellHost`. */
export function refuse(nat: NatContext, buf: Uint8Array, reason: number, proto: number, tellHost: boolean, now: number): Setup {
  if (tellHost) generateRefusal(nat, buf, proto, now);
  return refused(nat, reason);
}

/** Token bucket: generated packets per second, refilled by elapsed time (now is in milliseconds). */
function mayGenerate(nat: NatContext, now: number): boolean {
  const elapsed = now - nat.genLast;
  nat.genLast = now;
  if (elapsed > 0) nat.genTokens = Math.min(nat.genRate, nat.genTokens + (elapsed * nat.genRate) / 1000);
  if (nat.genTokens < 1) return false;
  nat.genTokens -= 1;
  return true;
}

/**
 * Write the refusal into the data plane's batch. Its source is the destination the host tried to reach,
 * as a firewall's REJECT does, so the host's stack matches it to its socket.
 */
function generateRefusal(nat: NatContext, buf: Uint8Array, proto: number, now: number): void {
  const sink = nat.sink;
  if (!sink || !mayGenerate(nat, now)) {
    nat.stats.generatedSuppressed++;
    return;
  }
  const ip = nat.ip;
  const pkt = buf.subarray(ip.off, ip.off + ip.totalLength);
  let len: number;
  let at: number;
  if (proto === IPPROTO.TCP) {
    at = sink.alloc(40);
    if (at < 0) {
      nat.stats.generatedSuppressed++;
      return;
    }
    const t = nat.tcp;
    len = emitIpv4Tcp(sink.buf, at, {
      src: ip.destinationAddress,
      dst: ip.sourceAddress,
      srcPort: t.destinationPort,
      dstPort: t.sourcePort,
      seq: 0,
      // Only a SYN opens a flow, and it has no ACK: the reset acknowledges the SYN and any data with it
      // (RFC 9293 §3.10.7.1, where SEG.LEN counts the SYN).
      ack: (t.sequenceNumber + t.payloadLength + 1) >>> 0,
      flags: TCP_FLAGS.RST | TCP_FLAGS.ACK,
      window: 0,
    });
  } else {
    at = sink.alloc(ipv4IcmpErrorLength(pkt.length));
    if (at < 0) {
      nat.stats.generatedSuppressed++;
      return;
    }
    len = emitIpv4IcmpError(sink.buf, at, {
      src: ip.destinationAddress,
      dst: ip.sourceAddress,
      type: ICMP_TYPE.DEST_UNREACH,
      code: ICMP_UNREACH_CODE.ADMIN_PROHIBITED,
      quoted: pkt,
    });
  }
  sink.commit(at, len);
  nat.stats.generated++;
}
