import { describe, it, expect } from 'vitest';
import {
  FilterError, flowFilterFromQuery, flowFilterToQuery, flowMatches, packetFilterToString, packetMatches, parseFlowFilter,
  parsePacketFilter, type PacketKey,
} from '../../src/observe/filter.js';
import { ip } from '../nat/helpers.js';

const flow = (protocol: string, src: string, dst: string, state: string) => ({ protocol, original: { src, dst }, state });

describe('flow filters (tunnat conntrack --proto/--src/--dst/--state)', () => {
  it('matches protocol, original source and destination (address or prefix) and state', () => {
    const f = parseFlowFilter({ proto: 'UDP', src: '192.168.1.0/24', dst: '203.0.113.2', state: 'assured' });
    expect(f.proto).toBe('udp');
    expect(f.state).toBe('ASSURED');
    expect(flowMatches(f, flow('udp', '192.168.1.10', '203.0.113.2', 'ASSURED'))).toBe(true);
    expect(flowMatches(f, flow('tcp', '192.168.1.10', '203.0.113.2', 'ASSURED'))).toBe(false);
    expect(flowMatches(f, flow('udp', '192.168.2.10', '203.0.113.2', 'ASSURED'))).toBe(false);
    expect(flowMatches(f, flow('udp', '192.168.1.10', '203.0.113.3', 'ASSURED'))).toBe(false);
    expect(flowMatches(f, flow('udp', '192.168.1.10', '203.0.113.2', 'UNREPLIED'))).toBe(false);
    expect(flowMatches({}, flow('icmp', '1.2.3.4', '5.6.7.8', 'REPLIED'))).toBe(true);
  });

  it.each([
    [{ proto: 'sctp' }, /--proto: unknown protocol "sctp" \(known: tcp, udp, icmp\)/],
    [{ src: '192.168.1' }, /--src: expected an IPv4 address or prefix/],
    [{ dst: '10.0.0.0/33' }, /--dst/],
    [{ state: 'OPEN' }, /--state: unknown state "OPEN" \(known: NONE, SYN_SENT/],
  ])('rejects %j with a message naming the option', (v, msg) => {
    expect(() => parseFlowFilter(v)).toThrow(FilterError);
    expect(() => parseFlowFilter(v)).toThrow(msg);
  });

  it('round-trips through a query string and refuses unknown parameters', () => {
    const f = parseFlowFilter({ proto: 'tcp', src: '192.168.1.10', state: 'ESTABLISHED' });
    const q = flowFilterToQuery(f);
    expect(flowFilterFromQuery(new URLSearchParams(q))).toEqual(f);
    expect(() => flowFilterFromQuery(new URLSearchParams('port=80'))).toThrow(/unknown filter "port"/);
  });
});

describe('packet filters (tunnat trace FILTER)', () => {
  const key = (proto: number, src: string, dst: string, sport = -1, dport = -1): PacketKey => ({ proto, src: ip(src), dst: ip(dst), sport, dport });

  it('parses protocol, host and port words joined by an optional "and"', () => {
    const f = parsePacketFilter(['udp', 'and', 'host', '192.168.1.10', 'port', '53']);
    expect(f.proto).toBe(17);
    expect(f.ports).toEqual([53]);
    expect(packetFilterToString(f)).toBe('udp and host 192.168.1.10 and port 53');
    // One string with spaces (the query parameter) parses the same.
    expect(parsePacketFilter(['udp and host 192.168.1.10 and port 53'])).toEqual(f);
    expect(parsePacketFilter([])).toEqual({ proto: -1, hosts: [], ports: [] });
  });

  it.each([
    [['sctp'], /unknown word "sctp"/],
    [['host'], /"host" needs an address/],
    [['host', 'gateway'], /not an IPv4 address/],
    [['port', '70000'], /expected a port number/],
    [['tcp', 'udp'], /both/],
  ])('rejects %j', (words, msg) => {
    expect(() => parsePacketFilter(words)).toThrow(msg);
  });

  it('matches a packet by its header before or after translation', () => {
    const f = parsePacketFilter(['udp', 'host', '203.0.113.1', 'port', '40000']);
    const before = key(17, '192.168.1.10', '203.0.113.2', 40000, 7);
    const after = key(17, '203.0.113.1', '203.0.113.2', 40000, 7);
    expect(packetMatches(f, before, after)).toBe(true);
    // Dropped (no "after"): the public address never appeared.
    expect(packetMatches(f, before, null)).toBe(false);
    expect(packetMatches(parsePacketFilter(['tcp']), before, after)).toBe(false);
    expect(packetMatches(parsePacketFilter(['host', '192.168.1.0/24']), before, after)).toBe(true);
    expect(packetMatches(parsePacketFilter(['port', '8']), before, after)).toBe(false);
  });
});
