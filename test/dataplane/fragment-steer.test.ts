import { describe, expect, it } from 'vitest';
import { FragmentSteering, HELD, isFragment } from '../../src/dataplane/fragment-steer.js';
import { HERE, Steering } from '../../src/dataplane/steering.js';
import { sliceOwner } from '../../src/nat/ports.js';
import { udpPacket } from '../../src/wire/build.js';
import { HOST_A, PUB, REMOTE } from '../nat/helpers.js';

/** A datagram's first fragment (with ports) and a later one (offset 185 × 8, no ports). */
function fragments(id: number, sport: number): { first: Buffer; later: Buffer } {
  const first = udpPacket({ src: HOST_A, dst: REMOTE, srcPort: sport, dstPort: 53, payload: Buffer.alloc(40), id });
  first.writeUInt16BE(0x2000, 6); // MF
  const later = Buffer.from(first);
  later.writeUInt16BE(185, 6);
  return { first, later };
}

describe('FragmentSteering', () => {
  const count = 2;
  const steering = new Steering(count);
  steering.setPublicAddresses([PUB]);

  function pair(clock: () => number = () => 0) {
    const passed: { from: number; to: number; pkt: Buffer }[][] = [[], []];
    const w = [0, 1].map((self) => new FragmentSteering(self, steering, (to, pkt) => passed[self]!.push({ from: self, to, pkt: Buffer.from(pkt) }), clock));
    return { w, passed };
  }

  /** A datagram whose meeting point is `meet` and whose owner (by its source port) is `owner`. */
  function datagram(meet: number, owner: number): { first: Buffer; later: Buffer } {
    const probe = pair().w[0]!;
    for (let id = 1; id < 5000; id++) {
      for (const sport of [40000, 40002]) {
        const f = fragments(id, sport);
        if (probe.meetingPoint(f.first, 0) === meet && sliceOwner(sport, count) === owner) return f;
      }
    }
    throw new Error('no such datagram');
  }

  it('knows a fragment', () => {
    const f = fragments(7, 40000);
    expect(isFragment(f.first, 0, f.first.length)).toBe(true);
    expect(isFragment(f.later, 0, f.later.length)).toBe(true);
    const whole = udpPacket({ src: HOST_A, dst: REMOTE, srcPort: 1, dstPort: 2, payload: Buffer.alloc(4) });
    expect(isFragment(whole, 0, whole.length)).toBe(false);
  });

  it('sends every fragment to its meeting point first, whichever worker read it', () => {
    const { w } = pair();
    const f = datagram(1, 0);
    expect(w[0]!.route(f.later, 0, 0, f.later.length, f.later.length, false)).toBe(1);
    expect(w[0]!.route(f.first, 0, 0, f.first.length, f.first.length, false)).toBe(1);
  });

  it('the meeting point sends the first fragment to its owner, then the later ones', () => {
    const { w } = pair();
    const f = datagram(1, 0);
    expect(w[1]!.route(f.first, 0, 0, f.first.length, f.first.length, true)).toBe(0);
    expect(w[1]!.route(f.later, 0, 0, f.later.length, f.later.length, true)).toBe(0);
    // At the owner (not the meeting point), handed-over fragments are translated.
    expect(w[0]!.route(f.later, 0, 0, f.later.length, f.later.length, true)).toBe(HERE);
  });

  it('holds a later fragment that comes first, and sends it after the first fragment', () => {
    const { w, passed } = pair();
    const f = datagram(1, 0);
    expect(w[1]!.route(f.later, 0, 0, f.later.length, f.later.length, false)).toBe(HELD);
    expect(w[1]!.stats.held).toBe(1);
    expect(w[1]!.route(f.first, 0, 0, f.first.length, f.first.length, false)).toBe(HELD);
    // Both went to the owner, first fragment first.
    expect(passed[1]!.map((p) => [p.to, p.pkt.readUInt16BE(6)])).toEqual([[0, 0x2000], [0, 185]]);
  });

  it('when the meeting point owns the datagram, held fragments go through its own ring', () => {
    const { w, passed } = pair();
    const f = datagram(1, 1);
    expect(w[1]!.route(f.later, 0, 0, f.later.length, f.later.length, false)).toBe(HELD);
    expect(w[1]!.route(f.first, 0, 0, f.first.length, f.first.length, false)).toBe(HERE);
    expect(passed[1]!.map((p) => p.to)).toEqual([1]);
    // Read back from its own ring, the fragment is now translated here.
    expect(w[1]!.route(f.later, 0, 0, f.later.length, f.later.length, true)).toBe(HERE);
  });

  it('drops held fragments whose first never comes, and counts them', () => {
    let now = 0;
    const { w, passed } = pair(() => now);
    const f = datagram(1, 0);
    expect(w[1]!.route(f.later, 0, 0, f.later.length, f.later.length, false)).toBe(HELD);
    now = 2500;
    w[1]!.expireHeld();
    expect(w[1]!.stats.heldDropped).toBe(1);
    expect(passed[1]).toEqual([]);
  });
});
