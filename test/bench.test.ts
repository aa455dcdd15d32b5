/**
 * Smoke test of the microbenchmarks (bench/): every benchmark runs on tiny sizes and verifies its
 * answers, and the verification really rejects wrong answers. No timing is asserted: this machine's
 * speed is not the test's business.
 */
import { describe, it, expect } from 'vitest';
import { BenchVerifyError, CycleSum, measure, median, type BenchCase, type TimingOptions } from '../bench/lib/harness.js';
import { cyclicCase } from '../bench/lib/cyclic.js';
import { parseCases } from '../bench/lib/parse.js';
import { checksumCases } from '../bench/lib/checksum.js';
import { conntrackCases, IMPLS, makeProbes, makeTuples } from '../bench/lib/conntrack.js';
import { establishedCase, newFlowCase, verifyOutbound, type TranslateOptions } from '../bench/lib/translate.js';
import { PacketSet, PUBLIC_IP } from '../bench/lib/packets.js';
import { PROTO_TCP, PROTO_UDP, perm32, readPacket, refChecksum, Rng32, wr16 } from '../bench/lib/reference.js';
import { DEFAULT_CONFIG, lookupScaling, runAll, type BenchConfig } from '../bench/lib/run.js';
import { formatReport } from '../bench/lib/report.js';
import { internetChecksum } from '../src/wire/checksum.js';
import { TCP_FLAGS } from '../src/wire/tcp.js';
import type { MemoryRecord } from '../bench/lib/memory.js';

/** Five runs (the harness's minimum for a median), each a fraction of a millisecond. */
const TINY: TimingOptions = { runs: 5, minRunMs: 0.05, warmupMs: 0 };
const TINY_TRANSLATE: TranslateOptions = { newFlowBatch: 64, batch: 16, flowCounts: [1, 40], pristinePackets: 48 };

function measureAll(cases: Iterable<BenchCase>): ReturnType<typeof measure>[] {
  return [...cases].map((c) => measure(c, TINY));
}

function expectSane(ms: ReturnType<typeof measure>[]): void {
  for (const m of ms) {
    expect(m.runsNs).toHaveLength(5);
    expect(Number.isFinite(m.medianNs) && m.medianNs > 0).toBe(true);
    expect(m.opsPerSec).toBeCloseTo(1e9 / m.medianNs);
  }
}

describe('bench harness', () => {
  it('CycleSum matches a direct sum from any start, across wrap-arounds and int32 overflow', () => {
    const xs = [5, -1, 0x7fffffff, 3, 0x40000000, -7];
    const s = new CycleSum(xs);
    for (let start = 0; start < xs.length; start++) {
      for (const n of [0, 1, 5, 6, 7, 31]) {
        let direct = 0;
        for (let i = 0; i < n; i++) direct = (direct + xs[(start + i) % xs.length]!) | 0;
        expect(s.expect(start, n)).toBe(direct);
      }
    }
  });

  it('fails a case whose timed loop gives a wrong answer, before and during timing', () => {
    const good = [1, 2, 3, 4];
    // Input 2 answers wrongly: caught input by input before any timing.
    expect(() => measure(cyclicCase({
      group: 'g', name: 'wrong input', size: 1, sizeLabel: '1', expected: good,
      loop: (start, n) => {
        let acc = 0;
        for (let i = 0; i < n; i++) acc = (acc + ((start + i) % 4 === 2 ? 99 : good[(start + i) % 4]!)) | 0;
        return acc;
      },
      describe: (j) => `input ${j}`,
    }), TINY)).toThrow(/input 2: got 99, expected 3/);

    // Right one at a time, wrong once runs get long (what a JIT bug or a stale cache would do).
    const c = cyclicCase({
      group: 'g', name: 'wrong when long', size: 1, sizeLabel: '1', expected: good,
      loop: (start, n) => {
        let acc = 0;
        for (let i = 0; i < n; i++) acc = (acc + good[(start + i) % 4]!) | 0;
        return n > 100 ? acc + 1 : acc;
      },
      describe: (j) => `input ${j}`,
    });
    expect(() => measure(c, TINY)).toThrow(BenchVerifyError);
  });

  it('median of odd and even counts', () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 3, 2])).toBe(2.5);
  });
});

describe('reference code', () => {
  it('agrees with the library checksum and rejects a corrupted packet', () => {
    const rng = new Rng32(1);
    const b = Buffer.from(rng.bytes(301));
    expect(refChecksum(b, 0, 301)).toBe(internetChecksum(b, 0, 301));
    const set = new PacketSet(1, 128);
    set.put(0, { proto: PROTO_UDP, src: 0xc0a80102, dst: 0xcb007102, sport: 40000, dport: 53, ttl: 64, payloadLength: 33 }, rng);
    expect(readPacket(set.buf, 0)).toMatchObject({ src: 0xc0a80102, sport: 40000, ttl: 64, ipChecksumOk: true, l4ChecksumOk: true });
    set.buf[40]! ^= 0x01; // a payload byte
    expect(readPacket(set.buf, 0).l4ChecksumOk).toBe(false);
  });

  it('perm32 gives distinct keys (a bijection) on a sample', () => {
    const seen = new Set<number>();
    for (let i = 0; i < 50_000; i++) seen.add(perm32(i));
    expect(seen.size).toBe(50_000);
  });

  it('fixture tuples of disjoint index ranges never meet, in either direction', () => {
    const present = makeTuples(0, 2000);
    const absent = makeTuples(2000, 2000);
    const key = (t: typeof present, i: number, inv: boolean): string => (inv
      ? `${t.proto[i]}|${t.dst[i]}|${t.src[i]}|${t.dport[i]}|${t.sport[i]}`
      : `${t.proto[i]}|${t.src[i]}|${t.dst[i]}|${t.sport[i]}|${t.dport[i]}`);
    const keys = new Set<string>();
    for (let i = 0; i < present.n; i++) keys.add(key(present, i, false)).add(key(present, i, true));
    expect(keys.size).toBe(4000);
    for (let i = 0; i < absent.n; i++) {
      expect(keys.has(key(absent, i, false))).toBe(false);
      expect(keys.has(key(absent, i, true))).toBe(false);
    }
    const p = makeProbes(present, 100, 9);
    for (let j = 0; j < p.n; j++) expect(keys.has(`${p.proto[j]}|${p.src[j]}|${p.dst[j]}|${p.sport[j]}|${p.dport[j]}`)).toBe(true);
  });
});

describe('benchmarks on tiny sizes', () => {
  it('parse and checksum', () => {
    expectSane(measureAll(parseCases({ packets: 8 })));
    const ck = measureAll(checksumCases({ fullBuffers: 2, packets: 16 }));
    expectSane(ck);
    expect(ck.map((m) => m.name)).toEqual([
      'internetChecksum (full)', 'csumUpdate32 (address)', 'csumUpdate16 (port)', 'csumUpdate32+16 (SNAT rewrite)',
    ]);
    expect(ck[0]!.notes).toMatch(/GB\/s/);
  });

  it('conntrack lookups, every structure, hit and miss, with memory records', () => {
    const memory: MemoryRecord[] = [];
    const ms = measureAll(conntrackCases({ sizes: [64, 512], probes: 128, impls: [...IMPLS], gc: null, memory }));
    expectSane(ms);
    expect(ms).toHaveLength(IMPLS.length * 2 * 2);
    expect(memory).toHaveLength(IMPLS.length * 2);
    const ft = memory.find((m) => m.structure === 'FlowTable')!;
    expect(ft.declaredBytesPerFlow).toBeGreaterThan(0);
    expect(ft.measuredBytesPerFlow).toBeNull(); // no gc given
    const scaling = lookupScaling(ms);
    expect(scaling.map((s) => `${s.structure}/${s.kind}`)).toContain('FlowTable/hit');
    expect(scaling.every((s) => s.goal === undefined)).toBe(true); // the goal is for 1M/1K only
  });

  it('translation: new flows and established flows verify every packet', () => {
    const ms = [newFlowCase(TINY_TRANSLATE), establishedCase(PROTO_UDP, 1, TINY_TRANSLATE),
      establishedCase(PROTO_TCP, 40, TINY_TRANSLATE)].map((c) => measure(c, TINY));
    expectSane(ms);
    expect(ms[1]!.goalNs).toBe(100);
  });

  it('translation verification rejects an untranslated or corrupted packet', () => {
    const rng = new Rng32(3);
    const set = new PacketSet(1, 64);
    const spec = { proto: PROTO_TCP, src: 0xc0a80105, dst: 0xc6336405, sport: 25000, dport: 443, ttl: 63, payloadLength: 20, flags: TCP_FLAGS.ACK | TCP_FLAGS.PSH } as const;
    set.put(0, spec, rng);
    expect(() => verifyOutbound(set, 0, spec, 40000)).toThrow(/source address/);
    // Rewrite by hand without fixing the checksums: address and port now right, checksums wrong.
    set.buf.writeUInt32BE(PUBLIC_IP, 12);
    wr16(set.buf, 20, 40000);
    set.buf[8] = 64;
    expect(() => verifyOutbound(set, 0, spec, 40000)).toThrow(/bad IPv4 header checksum/);
  });

  it('runAll: a whole quick-shaped run on tiny sizes, with report text and machine info', () => {
    const cfg: BenchConfig = {
      ...DEFAULT_CONFIG,
      mode: 'test',
      timing: TINY,
      parse: { packets: 4 },
      checksum: { fullBuffers: 1, packets: 8 },
      latency: { sizes: [4096, 8192] },
      conntrack: { sizes: [32, 64], probes: 64, impls: ['FlowTable', 'Map<bigint>'] },
      translate: TINY_TRANSLATE,
      measureMemory: false,
    };
    const r = runAll(cfg);
    expect(r.failures).toEqual([]);
    expect(r.ok).toBe(true);
    expect(r.results.length).toBe(2 + 4 + 2 + 2 * 2 * 2 + 1 + 2 * 2);
    expect(r.machine.node).toBe(process.version);
    expect(r.machine.cpuModel.length).toBeGreaterThan(0);
    const text = formatReport(r);
    expect(text).toContain('established udp outbound');
    expect(text).toContain('verified their results');
    expect(text).toContain('one dependent random read costs');
  });
});
