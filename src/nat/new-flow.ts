import type { NatContext } from './context.js';
import { createOutbound } from './outbound.js';
import { createInbound } from './inbound.js';
import { createHairpin } from './hairpin.js';
import type { Setup } from './outcome.js';

/**
 * A packet no flow claims, that may open one: set its flow up by where it came from and where it goes —
 * from outside (inbound.ts), from the LAN to a public address (hairpin.ts), or from the LAN out
 * (outbound.ts). Every protocol with ports takes this one choice (translator.ts, ported.ts).
 */
export function setUpFlow(
  nat: NatContext, buf: Uint8Array, proto: number, src: number, dst: number, sport: number, dport: number,
  fromInside: boolean, toPublic: boolean, now: number,
): Setup {
  if (!fromInside) return createInbound(nat, proto, src, dst, sport, dport, now);
  return toPublic ? createHairpin(nat, buf, proto, src, dst, sport, dport, now) : createOutbound(nat, buf, proto, src, dst, sport, dport, now);
}
