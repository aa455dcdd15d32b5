import { describe, expect, it } from 'vitest';
import {
  createKernelRegistry,
  flowsFromInternal,
  parseConntrackLine,
  parseConntrackListing,
  parseConntrackStats,
  parseProcConntrackStat,
} from '../../src/kernel/conntrack.js';
import { formatFlow } from '../../src/conntrack/listing.js';
import { parseCidr } from '../../src/wire/addr.js';

// Recorded from conntrack-tools 1.4.7 and /proc/net/nf_conntrack on Linux 6.18.
const EXTENDED_ID = `ipv4     2 tcp      6 239 TIME_WAIT src=192.168.1.10 dst=203.0.113.2 sport=36430 dport=80 packets=6 bytes=395 src=203.0.113.2 dst=203.0.113.1 sport=80 dport=36430 packets=4 bytes=429 [ASSURED] mark=0 use=1 id=1896329759
ipv4     2 icmp     1 2 src=192.168.1.10 dst=203.0.113.2 type=8 code=0 id=15041 packets=1 bytes=84 src=203.0.113.2 dst=203.0.113.1 type=0 code=0 id=15041 packets=1 bytes=84 mark=0 use=1 id=4061321166
ipv4     2 udp      17 2 src=192.168.1.10 dst=203.0.113.2 sport=40000 dport=7 packets=1 bytes=31 src=203.0.113.2 dst=203.0.113.1 sport=7 dport=40000 packets=1 bytes=49 mark=0 use=1 id=442134528
ipv4     2 udp      17 25 src=192.168.1.11 dst=203.0.113.2 sport=40001 dport=7 [UNREPLIED] src=203.0.113.2 dst=203.0.113.1 sport=7 dport=40001 mark=0 use=1 id=7
ipv4     2 udp      17 118 src=203.0.113.1 dst=203.0.113.2 sport=5353 dport=53 packets=3 bytes=200 src=203.0.113.2 dst=203.0.113.1 sport=53 dport=5353 packets=3 bytes=300 [ASSURED] mark=0 use=1 id=8
`;
const PROC = `ipv4     2 udp      17 29 src=192.168.1.10 dst=203.0.113.2 sport=40000 dport=7 packets=1 bytes=31 src=203.0.113.2 dst=203.0.113.1 sport=7 dport=40000 packets=1 bytes=31 mark=0 zone=0 use=2
ipv6     10 udp      17 29 src=fd00::1 dst=fd00::2 sport=1 dport=2 src=fd00::2 dst=fd00::1 sport=2 dport=1 mark=0 zone=0 use=2
ipv4     2 gre      47 29 src=192.168.1.10 dst=203.0.113.2 srckey=0x0 dstkey=0x0 src=203.0.113.2 dst=203.0.113.1 srckey=0x0 dstkey=0x0 mark=0 zone=0 use=2
`;

describe('parseConntrackLine', () => {
  it('TCP: the state word, both tuples, counters and the entry id', () => {
    const f = parseConntrackListing(EXTENDED_ID)[0]!;
    expect(f).toEqual({
      id: 1896329759,
      protocol: 'tcp',
      original: { src: '192.168.1.10', dst: '203.0.113.2', srcPort: 36430, dstPort: 80 },
      reply: { src: '203.0.113.2', dst: '203.0.113.1', srcPort: 80, dstPort: 36430 },
      state: 'TIME_WAIT',
      secondsLeft: 239,
      packets: { original: 6, reply: 4 },
      bytes: { original: 395, reply: 429 },
    });
  });

  it('ICMP: the echo identifier on both sides, not confused with the trailing entry id', () => {
    const f = parseConntrackListing(EXTENDED_ID)[1]!;
    expect(f.id).toBe(4061321166);
    expect(f.original).toEqual({ src: '192.168.1.10', dst: '203.0.113.2', srcPort: 15041, dstPort: 15041 });
    expect(f.reply.dst).toBe('203.0.113.1');
    expect(f.state).toBe('REPLIED');
    expect(formatFlow(f)).toContain('id=15041');
  });

  it('UDP states named as the userspace engine names them', () => {
    const flows = parseConntrackListing(EXTENDED_ID);
    expect(flows.map((f) => f.state)).toEqual(['TIME_WAIT', 'REPLIED', 'REPLIED', 'UNREPLIED', 'ASSURED']);
    expect(flows[3]!.packets).toEqual({ original: 0, reply: 0 });
  });

  it('/proc/net/nf_conntrack: IPv4 TCP/UDP/ICMP only; ids numbered when the line has none', () => {
    const flows = parseConntrackListing(PROC);
    expect(flows).toHaveLength(1);
    expect(flows[0]!.id).toBe(1);
    expect(flows[0]!.reply.dstPort).toBe(40000);
  });

  it('plain `conntrack -L` lines (no family prefix) and junk', () => {
    const f = parseConntrackLine('udp      17 29 src=192.168.1.10 dst=203.0.113.2 sport=1 dport=2 src=203.0.113.2 dst=203.0.113.1 sport=2 dport=1 mark=0 use=1');
    expect(f?.original.srcPort).toBe(1);
    expect(parseConntrackLine('conntrack v1.4.7 (conntrack-tools): 2 flow entries have been shown.')).toBeNull();
    expect(parseConntrackLine('')).toBeNull();
    expect(parseConntrackLine('tcp 6 x')).toBeNull();
  });

  it('flowsFromInternal keeps the LAN\'s flows (the gateway\'s own are not translations)', () => {
    const lan = flowsFromInternal(parseConntrackListing(EXTENDED_ID), [parseCidr('192.168.1.0/24')!]);
    expect(lan).toHaveLength(4);
    expect(lan.every((f) => f.original.src.startsWith('192.168.1.'))).toBe(true);
  });
});

describe('statistics', () => {
  it('conntrack -S: summed over CPUs', () => {
    const text =
      'cpu=0   \tfound=0 invalid=3 insert=0 insert_failed=0 drop=1 early_drop=2 error=0 search_restart=0 clash_resolve=0 chaintoolong=0 \n' +
      'cpu=1   \tfound=1 invalid=4 insert=0 insert_failed=0 drop=0 early_drop=5 error=0 search_restart=0 clash_resolve=0 chaintoolong=0 \n';
    const s = parseConntrackStats(text);
    expect(s['invalid']).toBe(7);
    expect(s['early_drop']).toBe(7);
    expect(s['drop']).toBe(1);
    expect(s['cpu']).toBeUndefined();
  });
  it('/proc/net/stat/nf_conntrack: hex per CPU, entries not summed', () => {
    const text =
      'entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart\n' +
      '00000002  00000000 00000000 00000000 0000000a 00000000 00000000 00000000 00000000 00000000 00000001 00000000 00000000  00000000 00000000 00000000 00000000\n' +
      '00000002  00000000 00000000 00000000 00000001 00000000 00000000 00000000 00000000 00000000 00000000 00000003 00000000  00000000 00000000 00000000 00000000\n';
    const s = parseProcConntrackStat(text);
    expect(s['invalid']).toBe(11);
    expect(s['early_drop']).toBe(3);
    expect(s['drop']).toBe(1);
    expect(s['entries']).toBeUndefined();
  });
});

describe('createKernelRegistry', () => {
  it('serves the userspace engine\'s metric names from kernel sources', async () => {
    const registry = createKernelRegistry(
      {
        backend: 'nft',
        internal: [parseCidr('192.168.1.0/24')!],
        ruleCounters: () => Promise.resolve({ natPackets: 12, invalidDrops: 3 }),
        listFlows: () => Promise.resolve(parseConntrackListing(EXTENDED_ID)),
        stats: () => Promise.resolve({ drop: 4, early_drop: 5, invalid: 6 }),
      },
      { defaultMetrics: false },
    );
    const text = await registry.metrics();
    expect(text).toContain('tunnat_engine_info{engine="kernel",backend="nft"} 1');
    expect(text).toContain('tunnat_flows{protocol="tcp"} 1');
    expect(text).toContain('tunnat_flows{protocol="udp"} 2');
    expect(text).toContain('tunnat_flows{protocol="icmp"} 1');
    expect(text).toContain('tunnat_flows_created_total 12');
    expect(text).toContain('tunnat_flows_removed_total{reason="early-drop"} 5');
    expect(text).toContain('tunnat_drops_total{reason="table-full"} 4');
    expect(text).toContain('tunnat_drops_total{reason="conntrack-invalid"} 3');
    expect(text).toContain('tunnat_kernel_conntrack_stat_total{stat="invalid"} 6');
    // A second scrape reports the same totals (mirrored, not accumulated).
    expect(await registry.metrics()).toContain('tunnat_flows_created_total 12');
  });
});
