import { describe, it, expect } from 'vitest';
import { tcpStep, tcpPacketClass, TcpClass, TcpState, TCP_STATE_NAMES, tcpTimeout, type TcpStep } from '../../src/conntrack/tcp.js';
import { DEFAULT_TIMEOUTS, resolveTimeouts } from '../../src/conntrack/timeouts.js';

const F = { FIN: 1, SYN: 2, RST: 4, PSH: 8, ACK: 16 };
type Seg = [0 | 1, number, keyof typeof TcpState];

function play(segs: Seg[]): void {
  const out: TcpStep = { state: 0, detail: 0, valid: true };
  let state = 0;
  let detail = 0;
  segs.forEach(([dir, flags, expected], i) => {
    tcpStep(state, detail, dir, flags, out);
    state = out.state;
    detail = out.detail;
    expect(TCP_STATE_NAMES[state], `segment ${i}`).toBe(expected);
  });
}

describe('TCP state machine', () => {
  it('classifies flag combinations, refusing the ones no stack sends', () => {
    expect(tcpPacketClass(F.SYN)).toBe(TcpClass.SYN);
    expect(tcpPacketClass(F.SYN | F.ACK)).toBe(TcpClass.SYNACK);
    expect(tcpPacketClass(F.FIN | F.ACK)).toBe(TcpClass.FIN);
    expect(tcpPacketClass(F.ACK | F.PSH)).toBe(TcpClass.ACK);
    expect(tcpPacketClass(F.RST)).toBe(TcpClass.RST);
    for (const bad of [0, F.SYN | F.FIN, F.SYN | F.RST, F.FIN, F.PSH, F.FIN | F.PSH | 0x20]) {
      expect(tcpPacketClass(bad), `flags ${bad}`).toBe(TcpClass.INVALID);
    }
  });

  it('opens and closes the ordinary way (client closes first)', () => {
    play([
      [0, F.SYN, 'SYN_SENT'],
      [1, F.SYN | F.ACK, 'SYN_RECV'],
      [0, F.ACK, 'ESTABLISHED'],
      [0, F.ACK | F.PSH, 'ESTABLISHED'],
      [1, F.ACK, 'ESTABLISHED'],
      [0, F.FIN | F.ACK, 'FIN_WAIT'],
      [0, F.FIN | F.ACK, 'FIN_WAIT'], // retransmitted FIN
      [0, F.ACK, 'FIN_WAIT'], // an ACK from the FIN's sender acknowledges nothing of it
      [1, F.ACK, 'CLOSE_WAIT'],
      [1, F.ACK | F.PSH, 'CLOSE_WAIT'], // the other side may still send
      [1, F.FIN | F.ACK, 'LAST_ACK'],
      [0, F.ACK, 'TIME_WAIT'],
    ]);
  });

  it('handles the server closing first and both closing at once', () => {
    play([
      [0, F.SYN, 'SYN_SENT'],
      [1, F.SYN | F.ACK, 'SYN_RECV'],
      [0, F.ACK, 'ESTABLISHED'],
      [1, F.FIN | F.ACK, 'FIN_WAIT'],
      [0, F.FIN | F.ACK, 'LAST_ACK'], // simultaneous close: FIN crosses FIN
      [1, F.ACK, 'TIME_WAIT'],
    ]);
  });

  it('follows a simultaneous open (RFC 5382 REQ-2)', () => {
    play([
      [0, F.SYN, 'SYN_SENT'],
      [1, F.SYN, 'SYN_SENT2'],
      [0, F.SYN | F.ACK, 'SYN_RECV'],
      [1, F.SYN | F.ACK, 'SYN_RECV'],
      [1, F.ACK, 'ESTABLISHED'],
    ]);
  });

  it('closes on RST from either side in any state, and reopens after', () => {
    for (const from of [TcpState.SYN_SENT, TcpState.ESTABLISHED, TcpState.FIN_WAIT, TcpState.TIME_WAIT]) {
      for (const dir of [0, 1] as const) {
        const out = tcpStep(from, 0, dir, F.RST | F.ACK, { state: 0, detail: 0, valid: true });
        expect(out.state).toBe(TcpState.CLOSE);
      }
    }
    expect(tcpStep(TcpState.CLOSE, 0, 0, F.SYN, { state: 0, detail: 0, valid: true }).state).toBe(TcpState.SYN_SENT);
  });

  it('keeps the state on an invalid segment and says so', () => {
    const out = tcpStep(TcpState.ESTABLISHED, 0, 0, F.SYN | F.FIN, { state: 0, detail: 0, valid: true });
    expect(out.valid).toBe(false);
    expect(out.state).toBe(TcpState.ESTABLISHED);
  });

  it('uses timeouts at or above the RFC minimums', () => {
    expect(tcpTimeout(TcpState.ESTABLISHED, DEFAULT_TIMEOUTS)).toBeGreaterThanOrEqual(2 * 3600 + 4 * 60);
    for (const s of [TcpState.SYN_SENT, TcpState.SYN_RECV, TcpState.FIN_WAIT, TcpState.CLOSE_WAIT, TcpState.LAST_ACK, TcpState.TIME_WAIT]) {
      expect(tcpTimeout(s, DEFAULT_TIMEOUTS)).toBeGreaterThanOrEqual(240);
    }
    expect(DEFAULT_TIMEOUTS.udp).toBeGreaterThanOrEqual(120);
    expect(DEFAULT_TIMEOUTS.icmp).toBeGreaterThanOrEqual(60);
  });

  it('validates timeout overrides by name', () => {
    expect(resolveTimeouts({ udp: 5 }).udp).toBe(5);
    expect(() => resolveTimeouts({ udpp: 5 })).toThrow(/timeouts.udpp: unknown/);
    expect(() => resolveTimeouts({ icmp: -1 })).toThrow(/timeouts.icmp: must be a positive/);
  });
});
