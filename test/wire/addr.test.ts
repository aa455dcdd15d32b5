import { describe, expect, it } from 'vitest';
import { cidrToString, inCidr, ipToString, isPrivateIpv4, parseCidr, parseIpv4, prefixMask } from '../../src/wire/addr.js';
import { prng } from '../fixtures/wire/fixtures.js';

describe('parseIpv4 / ipToString', () => {
  it.each([
    ['0.0.0.0', 0],
    ['255.255.255.255', 0xffffffff],
    ['192.168.1.10', 0xc0a8010a],
    ['203.0.113.1', 0xcb007101],
    ['10.0.0.1', 0x0a000001],
    ['128.0.0.0', 0x80000000],
  ])('%s ⇄ %i', (s, n) => {
    expect(parseIpv4(s)).toBe(n);
    expect(ipToString(n)).toBe(s);
  });

  it.each([
    '',
    '1.2.3',
    '1.2.3.4.5',
    '256.0.0.1',
    '1.2.3.-1',
    '01.2.3.4', // leading zero: octal to inet_aton
    '1.2.3.04',
    '00.0.0.0',
    ' 1.2.3.4',
    '1.2.3.4 ',
    '1.2.3.4\n',
    '1..3.4',
    '0x7f.0.0.1',
    '1.2.3.4/32',
    '١.٢.٣.٤', // non-ASCII digits
    '+1.2.3.4',
    '1e2.0.0.1',
  ])('rejects %j', (s) => {
    expect(parseIpv4(s)).toBeNull();
  });

  it('round-trips random addresses, and accepts signed 32-bit input in ipToString', () => {
    const rng = prng(42);
    for (let i = 0; i < 1000; i++) {
      const n = rng.u32();
      expect(parseIpv4(ipToString(n))).toBe(n);
      expect(ipToString(n | 0)).toBe(ipToString(n));
    }
  });
});

describe('parseCidr / inCidr', () => {
  it.each([
    { s: '192.168.1.0/24', network: 0xc0a80100, prefixLength: 24, mask: 0xffffff00, hostBitsSet: false },
    { s: '192.168.1.7/24', network: 0xc0a80100, prefixLength: 24, mask: 0xffffff00, hostBitsSet: true },
    { s: '0.0.0.0/0', network: 0, prefixLength: 0, mask: 0, hostBitsSet: false },
    { s: '1.2.3.4/0', network: 0, prefixLength: 0, mask: 0, hostBitsSet: true },
    { s: '203.0.113.1/32', network: 0xcb007101, prefixLength: 32, mask: 0xffffffff, hostBitsSet: false },
    { s: '172.16.0.0/12', network: 0xac100000, prefixLength: 12, mask: 0xfff00000, hostBitsSet: false },
    { s: '255.255.255.255/1', network: 0x80000000, prefixLength: 1, mask: 0x80000000, hostBitsSet: true },
  ])('$s', ({ s, ...want }) => {
    const c = parseCidr(s);
    expect(c).toEqual(want);
    expect(cidrToString(c!)).toBe(`${ipToString(want.network)}/${want.prefixLength}`);
  });

  it.each(['192.168.1.0', '192.168.1.0/', '192.168.1.0/33', '192.168.1.0/024', '192.168.1.0/-1', '192.168.1.0/8/8', '/24', 'x/24', '192.168.1.0/ 24'])(
    'rejects %j',
    (s) => {
      expect(parseCidr(s)).toBeNull();
    },
  );

  it.each([
    { cidr: '192.168.1.0/24', addr: '192.168.1.0', inside: true },
    { cidr: '192.168.1.0/24', addr: '192.168.1.255', inside: true },
    { cidr: '192.168.1.0/24', addr: '192.168.2.0', inside: false },
    { cidr: '192.168.1.0/24', addr: '192.168.0.255', inside: false },
    { cidr: '0.0.0.0/0', addr: '255.255.255.255', inside: true },
    { cidr: '203.0.113.1/32', addr: '203.0.113.1', inside: true },
    { cidr: '203.0.113.1/32', addr: '203.0.113.2', inside: false },
    { cidr: '128.0.0.0/1', addr: '200.0.0.1', inside: true },
    { cidr: '128.0.0.0/1', addr: '127.255.255.255', inside: false },
  ])('$addr in $cidr: $inside', ({ cidr, addr, inside }) => {
    expect(inCidr(parseIpv4(addr)!, parseCidr(cidr)!)).toBe(inside);
  });

  it('prefixMask covers 0..32', () => {
    // p leading ones: 2^32 - 2^(32-p), computed without 32-bit operators.
    for (let p = 0; p <= 32; p++) expect(prefixMask(p)).toBe(2 ** 32 - 2 ** (32 - p));
  });
});

describe('isPrivateIpv4 (RFC 1918)', () => {
  it.each([
    ['10.0.0.0', true],
    ['10.255.255.255', true],
    ['11.0.0.0', false],
    ['9.255.255.255', false],
    ['172.16.0.0', true],
    ['172.31.255.255', true],
    ['172.15.255.255', false],
    ['172.32.0.0', false],
    ['192.168.0.0', true],
    ['192.168.255.255', true],
    ['192.169.0.0', false],
    ['192.167.255.255', false],
    ['203.0.113.1', false],
    ['100.64.0.1', false], // shared address space (RFC 6598) is not RFC 1918
    ['127.0.0.1', false],
  ] as const)('%s → %s', (s, want) => {
    expect(isPrivateIpv4(parseIpv4(s)!)).toBe(want);
  });
});
