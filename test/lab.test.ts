/** The lab's pure parts: names, argument building, parsers and formatting, and the Cleanup registry. */
import { describe, expect, it } from 'vitest';
import { addressesIn, linesMentioning, parseTcpdumpLine } from '../src/lab/capture.js';
import { formatCheck } from '../src/lab/demo.js';
import {
  describeOriginal,
  describeTranslated,
  flowsFrom,
  formatFlowTable,
  parseFlows,
  parseKernelConntrack,
  parseKernelConntrackLine,
  translatedSource,
  type FlowJson,
} from '../src/lab/flows.js';
import { checkIfName, checkNetnsName, MAX_IFNAME, netnsName, randomId } from '../src/lab/netns.js';
import { Cleanup } from '../src/lab/cleanup.js';
import { curlArgv, parsePing, udpClientArgv } from '../src/lab/probes.js';
import { repoRoot, routerArgv, socketPathFor } from '../src/lab/router.js';
import { parseEcho, parseSeenBy } from '../src/lab/services.js';
import { buildLab, lanHostAddress, transitLink } from '../src/lab/topology.js';

const tcpFlow: FlowJson = {
  protocol: 'tcp',
  original: { src: '192.168.1.10', dst: '203.0.113.2', srcPort: 40000, dstPort: 80 },
  reply: { src: '203.0.113.2', dst: '203.0.113.1', srcPort: 80, dstPort: 45001 },
  state: 'ESTABLISHED',
  secondsLeft: 7439.6,
  packets: { original: 5, reply: 4 },
  bytes: { original: 400, reply: 600 },
};
const icmpFlow: FlowJson = {
  protocol: 'icmp',
  original: { src: '192.168.1.11', dst: '203.0.113.2', srcPort: 7, dstPort: 7 },
  reply: { src: '203.0.113.2', dst: '203.0.113.1', srcPort: 1024, dstPort: 1024 },
  state: 'REPLIED',
  secondsLeft: 59,
  packets: { original: 1, reply: 1 },
  bytes: { original: 84, reply: 84 },
};

describe('names', () => {
  it('randomId uses lowercase letters and digits, of the requested length', () => {
    expect(randomId()).toMatch(/^[a-z0-9]{6}$/);
    expect(randomId(10)).toMatch(/^[a-z0-9]{10}$/);
    expect(randomId(4, () => new Uint8Array([0, 25, 26, 35]))).toBe('az09');
    // Bytes wrap around the 36-letter alphabet: 36 → 'a', 255 % 36 = 3 → 'd'.
    expect(randomId(2, () => new Uint8Array([36, 255]))).toBe('ad');
  });

  it('namespace names carry prefix, id and role', () => {
    expect(netnsName('ab12cd', 'gw')).toBe('tnab12cd-gw');
    expect(netnsName('ab12cd', 'h3', 'bench')).toBe('benchab12cd-h3');
    expect(() => checkNetnsName('../etc')).toThrow(RangeError);
    expect(() => checkNetnsName('-x')).toThrow(RangeError);
    expect(() => checkNetnsName('a'.repeat(65))).toThrow(RangeError);
  });

  it('interface names respect IFNAMSIZ and a safe alphabet', () => {
    expect(MAX_IFNAME).toBe(15);
    expect(checkIfName('br-lan')).toBe('br-lan');
    expect(checkIfName('a'.repeat(15))).toBe('a'.repeat(15));
    expect(() => checkIfName('a'.repeat(16))).toThrow(/IFNAMSIZ/);
    expect(() => checkIfName('')).toThrow(RangeError);
    expect(() => checkIfName('a b')).toThrow(RangeError);
    expect(() => checkIfName('a/b')).toThrow(RangeError);
  });
});

describe('topology addressing', () => {
  it('LAN hosts start at .10', () => {
    expect(lanHostAddress(0)).toBe('192.168.1.10');
    expect(lanHostAddress(5)).toBe('192.168.1.15');
  });

  it('transit links are consecutive /30s that do not overlap the far link', () => {
    expect(transitLink(1)).toEqual({ west: '198.51.100.201', east: '198.51.100.202', prefix: 30 });
    expect(transitLink(2)).toEqual({ west: '198.51.100.205', east: '198.51.100.206', prefix: 30 });
    expect(transitLink(12).east).toBe('198.51.100.246');
  });

  it('rejects bad options before creating anything', async () => {
    await expect(buildLab({ lanHosts: -1 })).rejects.toThrow(/lanHosts/);
    await expect(buildLab({ lanHosts: 201 })).rejects.toThrow(/lanHosts/);
    await expect(buildLab({ extraHops: 13 })).rejects.toThrow(/extraHops/);
    await expect(buildLab({ pathMtu: 9000 })).rejects.toThrow(/pathMtu/);
    await expect(buildLab({ inetExtraAddresses: ['8.8.8.8'] })).rejects.toThrow(/203\.0\.113\.0\/24/);
    await expect(buildLab({ inetExtraAddresses: ['203.0.113.1'] })).rejects.toThrow(/already used/);
  });
});

describe('argument building', () => {
  it('routerArgv puts every flag in place', () => {
    expect(
      routerArgv({
        node: 'node',
        cliPath: '/r/dist/src/cli/main.js',
        internal: '192.168.1.0/24',
        external: 'wan0',
        http: '127.0.0.1:9100',
        httpSocket: '/run/tunnat/lab-x.sock',
        configFile: '/tmp/c.json',
        extraArgs: ['--workers', '2'],
      }),
    ).toEqual([
      'node',
      '/r/dist/src/cli/main.js',
      'run',
      '--internal',
      '192.168.1.0/24',
      '--external',
      'wan0',
      '--http',
      '127.0.0.1:9100',
      '--http-socket',
      '/run/tunnat/lab-x.sock',
      '--config',
      '/tmp/c.json',
      '--workers',
      '2',
    ]);
    expect(routerArgv({ node: 'n', cliPath: 'c', internal: 'i', external: 'e' })).toEqual(['n', 'c', 'run', '--internal', 'i', '--external', 'e']);
  });

  it('socket paths live under /run/tunnat', () => {
    expect(socketPathFor('ab12cd')).toBe('/run/tunnat/lab-ab12cd.sock');
  });

  it('curl and the UDP client', () => {
    expect(curlArgv('http://203.0.113.2/')).toEqual(['curl', '-sS', '--fail', '--noproxy', '*', '--max-time', '5', 'http://203.0.113.2/']);
    expect(curlArgv('http://x/', { localPort: 40001, timeoutS: 9 })).toEqual(
      expect.arrayContaining(['--local-port', '40001', '--max-time', '9']),
    );
    const argv = udpClientArgv('203.0.113.2', 7, 'hi', { sourcePort: 40000 });
    expect(argv[0]).toBe(process.execPath);
    expect(argv[1]).toBe('-e');
    expect(argv.slice(3)).toEqual(['203.0.113.2', '7', 'hi', '40000', '3000']);
  });

  it('finds the repository root', () => {
    expect(repoRoot()).toMatch(/\S/);
  });
});

describe('service answers', () => {
  it('parses what the HTTP service saw', () => {
    expect(parseSeenBy('{"remoteAddress":"203.0.113.1","remotePort":4000,"localAddress":"203.0.113.2","localPort":80}')).toEqual({
      remoteAddress: '203.0.113.1',
      remotePort: 4000,
      localAddress: '203.0.113.2',
      localPort: 80,
    });
    expect(() => parseSeenBy('<html>')).toThrow(/not JSON/);
    expect(() => parseSeenBy('{"remoteAddress":1}')).toThrow(/lacks/);
  });

  it('parses UDP echo replies, payload kept verbatim', () => {
    expect(parseEcho('203.0.113.1:45000 hello world\n')).toEqual({ address: '203.0.113.1', port: 45000, payload: 'hello world\n' });
    expect(parseEcho('203.0.113.1:1 ')).toEqual({ address: '203.0.113.1', port: 1, payload: '' });
    expect(() => parseEcho('garbage')).toThrow(/UDP echo reply/);
  });

  it('parses ping summaries', () => {
    expect(parsePing('--- x ---\n3 packets transmitted, 2 received, 33% packet loss, time 401ms\n')).toMatchObject({ transmitted: 3, received: 2 });
    expect(parsePing('ping: connect: Network is unreachable')).toMatchObject({ transmitted: 0, received: 0 });
  });
});

describe('flows', () => {
  it('checks the /conntrack shape', () => {
    expect(parseFlows(JSON.stringify([tcpFlow, icmpFlow]))).toEqual([tcpFlow, icmpFlow]);
    expect(parseFlows('[]')).toEqual([]);
    expect(() => parseFlows('{}')).toThrow(/array/);
    expect(() => parseFlows('nope')).toThrow(/not JSON/);
    expect(() => parseFlows(JSON.stringify([{ ...tcpFlow, protocol: 'Not A Protocol' }]))).toThrow(/element 0/);
    expect(() => parseFlows(JSON.stringify([tcpFlow, { ...icmpFlow, packets: { original: 1 } }]))).toThrow(/element 1/);
  });

  it('describes both sides of a translation', () => {
    expect(translatedSource(tcpFlow)).toEqual({ address: '203.0.113.1', port: 45001 });
    expect(describeOriginal(tcpFlow)).toBe('192.168.1.10:40000 → 203.0.113.2:80');
    expect(describeTranslated(tcpFlow)).toBe('203.0.113.1:45001 → 203.0.113.2:80');
    expect(describeOriginal(icmpFlow)).toBe('192.168.1.11 → 203.0.113.2 id 7');
    expect(describeTranslated(icmpFlow)).toBe('203.0.113.1 → 203.0.113.2 id 1024');
    expect(flowsFrom([tcpFlow, icmpFlow], '192.168.1.10')).toEqual([tcpFlow]);
    expect(flowsFrom([tcpFlow, icmpFlow], '192.168.1.10', 1)).toEqual([]);
  });

  it('formats an aligned table, sorted by protocol', () => {
    const table = formatFlowTable([tcpFlow, icmpFlow]).split('\n');
    expect(table).toEqual([
      'PROTO  LAN SIDE (original)                  WAN SIDE (translated)               STATE        EXPIRES  PKTS out/in',
      'icmp   192.168.1.11 → 203.0.113.2 id 7      203.0.113.1 → 203.0.113.2 id 1024   REPLIED      59s      1/1',
      'tcp    192.168.1.10:40000 → 203.0.113.2:80  203.0.113.1:45001 → 203.0.113.2:80  ESTABLISHED  7440s    5/4',
    ]);
    expect(formatFlowTable([])).toBe('(no flows)');
  });

  it("reads the kernel's conntrack -L", () => {
    const text = [
      'tcp      6 117 TIME_WAIT src=192.168.1.10 dst=203.0.113.2 sport=39012 dport=80 packets=6 bytes=397 src=203.0.113.2 dst=203.0.113.1 sport=80 dport=39012 packets=4 bytes=439 [ASSURED] mark=0 use=1',
      'udp      17 27 src=192.168.1.11 dst=203.0.113.2 sport=40000 dport=7 packets=1 bytes=33 [UNREPLIED] src=203.0.113.2 dst=203.0.113.1 sport=7 dport=1024 packets=0 bytes=0 mark=0 use=1',
      'icmp     1 29 src=192.168.1.10 dst=203.0.113.2 type=8 code=0 id=7325 packets=3 bytes=252 src=203.0.113.2 dst=203.0.113.1 type=0 code=0 id=7325 packets=3 bytes=252 mark=0 use=1',
      'sctp     132 5 CLOSED src=1.1.1.1 dst=2.2.2.2 sport=1 dport=2 src=2.2.2.2 dst=1.1.1.1 sport=2 dport=1',
      'conntrack v1.4.7 (conntrack-tools): 4 flow entries have been shown.',
    ].join('\n');
    const flows = parseKernelConntrack(text);
    expect(flows).toHaveLength(3);
    expect(flows[0]).toEqual({
      protocol: 'tcp',
      original: { src: '192.168.1.10', dst: '203.0.113.2', srcPort: 39012, dstPort: 80 },
      reply: { src: '203.0.113.2', dst: '203.0.113.1', srcPort: 80, dstPort: 39012 },
      state: 'TIME_WAIT',
      secondsLeft: 117,
      packets: { original: 6, reply: 4 },
      bytes: { original: 397, reply: 439 },
    });
    expect(flows[1]).toMatchObject({ protocol: 'udp', state: 'UNREPLIED', reply: { dstPort: 1024 }, packets: { original: 1, reply: 0 } });
    expect(flows[2]).toMatchObject({ protocol: 'icmp', state: 'REPLIED', original: { srcPort: 7325, dstPort: 7325 } });
    expect(parseKernelConntrackLine('')).toBeNull();
  });
});

describe('tcpdump lines', () => {
  it('parses TCP, UDP, ICMP and ARP', () => {
    expect(parseTcpdumpLine('17:21:27.760598 IP 203.0.113.1.53808 > 203.0.113.2.80: Flags [S], seq 1, win 64240, length 0')).toMatchObject({
      kind: 'ip',
      protocol: 'tcp',
      src: '203.0.113.1',
      srcPort: 53808,
      dst: '203.0.113.2',
      dstPort: 80,
    });
    expect(parseTcpdumpLine('17:21:27.8 IP 203.0.113.1.45000 > 203.0.113.2.7: UDP, length 5')).toMatchObject({ protocol: 'udp', dstPort: 7 });
    expect(parseTcpdumpLine('17:21:27.9 IP 203.0.113.1 > 203.0.113.2: ICMP echo request, id 5, seq 1, length 64')).toMatchObject({
      protocol: 'icmp',
      src: '203.0.113.1',
      dst: '203.0.113.2',
    });
    expect(parseTcpdumpLine('17:21:27.7 ARP, Request who-has 203.0.113.2 tell 203.0.113.1, length 28')).toMatchObject({ kind: 'arp' });
    expect(parseTcpdumpLine('   ')).toBeNull();
  });

  it('finds private addresses anywhere in a line, including quoted ICMP errors', () => {
    const err = parseTcpdumpLine('1.0 IP 203.0.113.2 > 203.0.113.1: ICMP 192.168.1.10 udp port 9 unreachable, length 36')!;
    const ok = parseTcpdumpLine('1.1 IP 203.0.113.1.1 > 203.0.113.2.80: Flags [S], length 0')!;
    expect(addressesIn(err.line)).toEqual(['203.0.113.2', '203.0.113.1', '192.168.1.10']);
    // The port suffix must not make "203.0.113.1.1" look like a second address.
    expect(addressesIn(ok.line)).toEqual(['203.0.113.1', '203.0.113.2']);
    expect(linesMentioning([err, ok], '192.168.')).toEqual([err.line]);
  });
});

describe('demo output', () => {
  it('marks passed and failed checks', () => {
    expect(formatCheck({ label: 'h0 HTTP', ok: true, detail: 'server saw 203.0.113.1:4000' })).toMatch(/^ {2}✓ h0 HTTP +server saw/);
    expect(formatCheck({ label: 'h0 UDP', ok: false, detail: 'timeout' })).toMatch(/^ {2}✗ h0 UDP +timeout$/);
  });
});

describe('Cleanup', () => {
  it('undoes in reverse order, once, continuing past failures', async () => {
    const done: string[] = [];
    const logged: string[] = [];
    const c = new Cleanup((l) => logged.push(l));
    c.defer({ label: 'a', sync: () => done.push('a') });
    c.defer({
      label: 'b',
      sync: () => {
        throw new Error('boom');
      },
    });
    c.defer({ label: 'c', sync: () => done.push('c-sync'), async: async () => void done.push('c-async') });
    expect(c.labels()).toEqual(['a', 'b', 'c']);
    await c.run();
    expect(done).toEqual(['c-async', 'a']);
    expect(logged).toEqual(['cleanup: b: boom']);
    expect(c.size).toBe(0);
    await c.run();
    expect(done).toEqual(['c-async', 'a']);
  });

  it('the synchronous path uses the sync steps; forgotten steps are skipped', () => {
    const done: string[] = [];
    const c = new Cleanup();
    c.defer({ label: 'a', sync: () => done.push('a'), async: async () => void done.push('a-async') });
    const forget = c.defer({ label: 'b', sync: () => done.push('b') });
    c.defer({ label: 'c', sync: () => done.push('c') });
    forget();
    c.runSync();
    expect(done).toEqual(['c', 'a']);
  });

  it('rollback undoes only the steps after the mark', async () => {
    const done: string[] = [];
    const c = new Cleanup();
    c.defer({ label: 'outer', sync: () => done.push('outer') });
    const mark = c.mark();
    c.defer({ label: 'inner1', sync: () => done.push('inner1') });
    c.defer({ label: 'inner2', sync: () => done.push('inner2') });
    await c.rollback(mark);
    expect(done).toEqual(['inner2', 'inner1']);
    expect(c.labels()).toEqual(['outer']);
    c.runSync();
    expect(done).toEqual(['inner2', 'inner1', 'outer']);
  });

  it('undoOnFailure undoes what a failed build registered and rethrows; a good build keeps its steps', async () => {
    const done: string[] = [];
    const c = new Cleanup();
    c.defer({ label: 'outer', sync: () => done.push('outer') });
    const failing = c.undoOnFailure(async () => {
      c.defer({ label: 'half', sync: () => done.push('half') });
      throw new Error('broke half-way');
    });
    await expect(failing).rejects.toThrow('broke half-way');
    expect(done).toEqual(['half']);
    expect(c.labels()).toEqual(['outer']);
    const value = await c.undoOnFailure(async () => {
      c.defer({ label: 'kept', sync: () => done.push('kept') });
      return 7;
    });
    expect(value).toBe(7);
    expect(c.labels()).toEqual(['outer', 'kept']);
    c.runSync();
  });

  it('concurrent runs share one pass', async () => {
    let n = 0;
    const c = new Cleanup();
    c.defer({ label: 'slow', sync: () => n++, async: () => new Promise<void>((r) => setTimeout(() => (n++, r()), 20)) });
    await Promise.all([c.run(), c.run()]);
    expect(n).toBe(1);
  });
});
