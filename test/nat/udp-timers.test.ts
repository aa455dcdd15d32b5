import { describe, it, expect } from 'vitest';
import { Verdict, DropReason } from '../../src/nat/translator.js';
import { udpPacket } from '../../src/wire/build.js';
import { FLOW_ASSURED } from '../../src/conntrack/table.js';
import { DEFAULT_TIMEOUTS, resolveTimeouts } from '../../src/conntrack/timeouts.js';
import { makeNat, ip, PUB, REMOTE, HOST_A, HOST_B } from './helpers.js';

const payload = Buffer.from('q');
const out = (src: number, sport: number, dport: number) => udpPacket({ src, dst: REMOTE, srcPort: sport, dstPort: dport, payload });
const back = (sport: number, pubPort: number) => udpPacket({ src: REMOTE, dst: PUB, srcPort: sport, dstPort: pubPort, payload });

/** Run one packet through and return the flow's expiry, in seconds from `now`. */
function step(nat: ReturnType<typeof makeNat>, p: Buffer, now: number): number {
  expect(nat.process(p, 0, p.length, now)).toBe(Verdict.FORWARD);
  const flow = nat.lastEntry >> 1;
  return (nat.flows.expires[flow]! - now) / 1000;
}

const assured = (nat: ReturnType<typeof makeNat>) => (nat.flows.flags[nat.lastEntry >> 1]! & FLOW_ASSURED) !== 0;

describe('UDP timers by what the flow has done (RFC 4787 REQ-5, REQ-5a)', () => {
  it('a query to a well-known port: the unanswered timer, then the short one once answered; never assured', () => {
    const nat = makeNat();
    expect(step(nat, out(HOST_A, 40000, 53), 0)).toBe(DEFAULT_TIMEOUTS.udpQueryUnanswered);
    expect(step(nat, back(53, 40000), 10)).toBe(DEFAULT_TIMEOUTS.udpQueryAnswered);
    expect(assured(nat)).toBe(false);
    // The port comes back after the short timer, not five minutes later.
    expect(nat.sweep(10 + DEFAULT_TIMEOUTS.udpQueryAnswered * 1000, 1 << 20)).toBe(1);
    expect(nat.mappings.size).toBe(0);
    expect(nat.mappings.pool(17)!.used).toBe(0);
  });

  it('two queries from one socket (A and AAAA): unanswered until both answers are in', () => {
    const nat = makeNat();
    step(nat, out(HOST_A, 40000, 53), 0);
    step(nat, out(HOST_A, 40000, 53), 1);
    expect(step(nat, back(53, 40000), 5)).toBe(DEFAULT_TIMEOUTS.udpQueryUnanswered);
    expect(step(nat, back(53, 40000), 6)).toBe(DEFAULT_TIMEOUTS.udpQueryAnswered);
    expect(assured(nat)).toBe(false);
  });

  it('traffic 2 s after the first reply makes a stream: long timer, assured', () => {
    const nat = makeNat();
    step(nat, out(HOST_A, 40000, 123), 0);
    step(nat, back(123, 40000), 50);
    expect(step(nat, out(HOST_A, 40000, 123), 2000)).toBe(DEFAULT_TIMEOUTS.udp);
    expect(assured(nat)).toBe(true);
    // From then on the timer stays long, both ways.
    expect(step(nat, back(123, 40000), 2100)).toBe(DEFAULT_TIMEOUTS.udp);
  });

  it('more packets than a query and its answer make a stream, even within 2 s', () => {
    const nat = makeNat();
    for (let i = 0; i < 4; i++) {
      step(nat, out(HOST_A, 40000, 500), i);
      step(nat, back(500, 40000), i);
      expect(assured(nat)).toBe(false);
    }
    expect(step(nat, out(HOST_A, 40000, 500), 10)).toBe(DEFAULT_TIMEOUTS.udp);
    expect(assured(nat)).toBe(true);
    // The same for a port of 1024 or above: its timer was long already, now it is assured too.
    for (let i = 0; i < 4; i++) {
      step(nat, out(HOST_A, 40001, 8080), i);
      step(nat, back(8080, 40001), i);
    }
    expect(assured(nat)).toBe(false);
    step(nat, out(HOST_A, 40001, 8080), 10);
    expect(assured(nat)).toBe(true);
  });

  it('a port of 1024 or above keeps the long timer whatever the flow did (REQ-5), and is assured only as a stream', () => {
    const nat = makeNat();
    expect(step(nat, out(HOST_A, 40000, 5000), 0)).toBe(DEFAULT_TIMEOUTS.udp);
    expect(step(nat, back(5000, 40000), 10)).toBe(DEFAULT_TIMEOUTS.udp);
    expect(assured(nat)).toBe(false);
    expect(step(nat, out(HOST_A, 40000, 5000), 3000)).toBe(DEFAULT_TIMEOUTS.udp);
    expect(assured(nat)).toBe(true);
  });

  it('the new timeouts are configurable and validated like the others', () => {
    expect(resolveTimeouts({ udpQueryAnswered: 2, udpQueryUnanswered: 20 })).toMatchObject({ udpQueryAnswered: 2, udpQueryUnanswered: 20 });
    expect(() => resolveTimeouts({ udpQueryAnswered: 0 })).toThrow(/udpQueryAnswered/);
    const nat = makeNat();
    nat.reconfigure({ timeouts: { ...DEFAULT_TIMEOUTS, udpQueryAnswered: 1 } });
    step(nat, out(HOST_A, 40000, 53), 0);
    expect(step(nat, back(53, 40000), 1)).toBe(1);
  });
});

describe('reclaiming a port when the pool is full', () => {
  it('a new flow takes the port of a finished query; the reclaim is counted', () => {
    const nat = makeNat({ ports: [30000, 30001], excludedPorts: [] });
    step(nat, out(HOST_A, 40000, 53), 0);
    step(nat, out(HOST_A, 40001, 53), 0);
    step(nat, back(53, 30001), 5); // 40001's query is answered
    const c = out(HOST_B, 40002, 53);
    expect(nat.process(c, 0, c.length, 10)).toBe(Verdict.FORWARD);
    expect(nat.stats.portsReclaimed).toBe(1);
    expect(nat.stats.drops[DropReason.PORTS_EXHAUSTED]).toBe(0);
    // The answered query was the one given up; the one still waiting kept its port.
    expect(nat.mappings.lookupInternal(17, HOST_A, 40001)).toBe(-1);
    expect(nat.mappings.lookupInternal(17, HOST_A, 40000)).toBeGreaterThanOrEqual(0);
    expect(nat.flows.checkInvariants()).toEqual([]);
    expect(nat.mappings.checkInvariants()).toEqual([]);
  });

  it('with no finished query, the oldest unanswered one goes', () => {
    const nat = makeNat({ ports: [30000, 30001], excludedPorts: [] });
    step(nat, out(HOST_A, 40000, 53), 5);
    step(nat, out(HOST_A, 40001, 53), 1);
    const c = out(HOST_B, 40002, 53);
    expect(nat.process(c, 0, c.length, 10)).toBe(Verdict.FORWARD);
    expect(nat.mappings.lookupInternal(17, HOST_A, 40001)).toBe(-1);
    expect(nat.stats.flowsRemoved['early-drop']).toBe(1);
  });

  it('never takes a port that several flows share, nor an assured flow\'s', () => {
    const nat = makeNat({ ports: [30000, 30001], excludedPorts: [] });
    // 40000 has two flows on one mapping (two destinations); 40001 is a stream.
    step(nat, out(HOST_A, 40000, 53), 0);
    const other = udpPacket({ src: HOST_A, dst: ip('198.51.100.9'), srcPort: 40000, dstPort: 53, payload });
    step(nat, other, 0);
    step(nat, out(HOST_A, 40001, 5000), 0);
    step(nat, back(5000, 30001), 0);
    step(nat, out(HOST_A, 40001, 5000), 2000);
    const c = out(HOST_B, 40002, 53);
    expect(nat.process(c, 0, c.length, 2001)).toBe(Verdict.DROP);
    expect(nat.stats.drops[DropReason.PORTS_EXHAUSTED]).toBe(1);
    expect(nat.stats.portsReclaimed).toBe(0);
    expect(nat.flows.size).toBe(3);
  });
});
