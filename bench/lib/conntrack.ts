/**
 * Connection-tracking lookups: the typed-array FlowTable against the structures a JS programmer
 * would reach for first (a Map keyed by a string or by a BigInt built from the 5-tuple, and the
 * lru-cache package), at several table sizes.
 *
 * Every structure holds each flow twice, once per direction, as FlowTable does, and answers with
 * the same thing (which flow, which direction), so the comparison is like for like. Lookups take
 * their tuple from typed arrays, as the data plane takes it from packet fields: a Map has to build
 * its key for every lookup, and that cost is part of what is measured.
 *
 * Hits look up random present tuples (either direction); misses look up tuples that are absent by
 * construction (see perm32). Every probe's answer is checked before timing, and every timed run's
 * accumulated answers are checked after it.
 *
 * "FlowTable batch" is the same table looked up as the data plane reads packets, BATCH keys at a time
 * through lookupBatch (gathering the keys into a FlowKeys is part of the measured cost); the
 * 1 M / 1 K goal (LOOKUP_RATIO_GOAL) is judged on it. The one-at-a-time FlowTable rows stay, for what a lone lookup costs.
 */
import { LRUCache } from 'lru-cache';
import { DIR_ORIGINAL, DIR_REPLY, FlowKeys, FlowTable } from '../../src/conntrack/table.js';
import type { BenchCase } from './harness.js';
import { cyclicCase } from './cyclic.js';
import { bytesBetween, sampleMemory, type MemoryRecord } from './memory.js';
import { ip4, perm32, PROTO_TCP, PROTO_UDP, Rng32 } from './reference.js';
import { remoteAddress, servicePort } from './packets.js';

export const IMPLS = ['FlowTable', 'FlowTable batch', 'Map<string>', 'Map<bigint>', 'lru-cache'] as const;
export type ImplName = (typeof IMPLS)[number];

/** Packets the data plane reads per batch (src/dataplane/loop.ts), so keys per lookupBatch call. */
export const BATCH = 64;

/** The structure the lookup goal is judged on. */
export const GOAL_IMPL: ImplName = 'FlowTable batch';

/** How reports name a structure. */
export function structureLabel(impl: ImplName): string {
  return impl === 'FlowTable batch' ? `FlowTable, batch of ${BATCH}` : impl;
}

/** The benchmark name of one structure's hit or miss rows. */
export function lookupName(impl: ImplName, kind: 'hit' | 'miss'): string {
  return impl === 'FlowTable batch' ? `lookup ${kind}, batch of ${BATCH} (FlowTable)` : `lookup ${kind} (${impl})`;
}

export interface ConntrackOptions {
  /** Flows in the table (each present in both directions). */
  sizes: readonly number[];
  /** Distinct probe tuples each lookup loop cycles through. */
  probes: number;
  impls: readonly ImplName[];
  /** Full GC for the memory figures; null: report them as unavailable. */
  gc: (() => void) | null;
  /** Receives one record per structure and size. */
  memory: MemoryRecord[];
}

/** The lookup goal: 1 M flows no more than this many times slower than 1 K (docs/benchmarks.md, "Against the performance goals"). */
export const LOOKUP_RATIO_GOAL = 1.5;

const FIXTURE_SEED = 0x51ed270b;
/** Far in the future of the benchmark's clock (0): no flow expires during a lookup. */
const NEVER = 1e15;
const LAN_PREFIX = ip4(192, 168, 0, 0);

/** Original-direction tuples of flows; the reply direction is their inverse. */
export interface Tuples {
  n: number;
  proto: Uint8Array;
  src: Uint32Array;
  dst: Uint32Array;
  sport: Uint16Array;
  dport: Uint16Array;
}

/**
 * Tuples of flows with fixture indices [first, first + n). Index i's LAN endpoint (192.168.x.y, port)
 * is the 32-bit bijection perm32(i ^ seed) split into 16 + 16 bits, so every original tuple is distinct,
 * and every inverse one too (their source is a remote address, never in 192.168/16). Indices beyond
 * the table's flows therefore make tuples that are certainly not in it, in either direction.
 */
export function makeTuples(first: number, n: number): Tuples {
  const t: Tuples = {
    n,
    proto: new Uint8Array(n),
    src: new Uint32Array(n),
    dst: new Uint32Array(n),
    sport: new Uint16Array(n),
    dport: new Uint16Array(n),
  };
  const rng = new Rng32(FIXTURE_SEED + first);
  for (let i = 0; i < n; i++) {
    const k = perm32(((first + i) ^ FIXTURE_SEED) >>> 0);
    t.src[i] = (LAN_PREFIX | (k >>> 16)) >>> 0;
    t.sport[i] = k & 0xffff;
    t.dst[i] = remoteAddress(rng);
    t.dport[i] = servicePort(rng);
    t.proto[i] = rng.u32() & 1 ? PROTO_TCP : PROTO_UDP;
  }
  return t;
}

/** Lookup keys, one direction of one flow each, in the order the loops visit them. */
export interface Probes {
  n: number;
  proto: Uint8Array;
  src: Uint32Array;
  dst: Uint32Array;
  sport: Uint16Array;
  dport: Uint16Array;
  /** Index into the Tuples the probe came from, and the direction it was taken in. */
  flow: Int32Array;
  dir: Uint8Array;
}

/** `count` probes of random flows of `t` in random directions (flows may repeat). */
export function makeProbes(t: Tuples, count: number, seed: number, everyFlowOnce = false): Probes {
  const p: Probes = {
    n: count,
    proto: new Uint8Array(count),
    src: new Uint32Array(count),
    dst: new Uint32Array(count),
    sport: new Uint16Array(count),
    dport: new Uint16Array(count),
    flow: new Int32Array(count),
    dir: new Uint8Array(count),
  };
  const rng = new Rng32(seed);
  for (let j = 0; j < count; j++) {
    const i = everyFlowOnce ? j : rng.below(t.n);
    const d = rng.u32() & 1;
    p.flow[j] = i;
    p.dir[j] = d;
    p.proto[j] = t.proto[i]!;
    p.src[j] = d === DIR_ORIGINAL ? t.src[i]! : t.dst[i]!;
    p.dst[j] = d === DIR_ORIGINAL ? t.dst[i]! : t.src[i]!;
    p.sport[j] = d === DIR_ORIGINAL ? t.sport[i]! : t.dport[i]!;
    p.dport[j] = d === DIR_ORIGINAL ? t.dport[i]! : t.sport[i]!;
  }
  return p;
}

export function countLabel(n: number): string {
  if (n >= 1e6 && n % 1e6 === 0) return `${n / 1e6}M`;
  if (n >= 1e3 && n % 1e3 === 0) return `${n / 1e3}K`;
  return String(n);
}

function describeProbe(p: Probes, j: number): string {
  const what = p.flow[j]! < 0 ? 'absent tuple' : `flow ${p.flow[j]} ${p.dir[j] === DIR_ORIGINAL ? 'original' : 'reply'}`;
  return `probe ${j} (${what}: proto ${p.proto[j]} ${p.src[j]}:${p.sport[j]} → ${p.dst[j]}:${p.dport[j]})`;
}

/** A built structure: its timed loop, and the answer it gives for (flow, direction). */
interface Built {
  loop: (probes: Probes) => (start: number, n: number) => number;
  answer: (flow: number, dir: number) => number;
  declaredBytesPerFlow?: number;
}

// One builder per structure, each with its own timed loop: a shared loop calling through an
// interface would be polymorphic and charge every structure for the dispatch.

function fillFlowTable(t: Tuples, slot: Int32Array): FlowTable {
  const table = new FlowTable(t.n, 0x2545f491);
  for (let i = 0; i < t.n; i++) {
    const f = table.allocate();
    table.setTuple(f, DIR_ORIGINAL, t.src[i]!, t.dst[i]!, t.sport[i]!, t.dport[i]!);
    table.setTuple(f, DIR_REPLY, t.dst[i]!, t.src[i]!, t.dport[i]!, t.sport[i]!);
    table.insert(f, t.proto[i]!, 0, NEVER);
    slot[i] = f;
  }
  return table;
}

function buildFlowTable(t: Tuples, slot: Int32Array): Built {
  const table = fillFlowTable(t, slot);
  return {
    declaredBytesPerFlow: table.bytesPerFlow(),
    answer: (flow, dir) => slot[flow]! * 2 + dir,
    loop: (p) => (start, n) => {
      const { proto, src, dst, sport, dport } = p;
      const k = p.n;
      let acc = 0;
      let j = start;
      for (let i = 0; i < n; i++) {
        acc = (acc + table.lookup(proto[j]!, src[j]!, dst[j]!, sport[j]!, dport[j]!, 0)) | 0;
        if (++j === k) j = 0;
      }
      return acc;
    },
  };
}

function buildFlowTableBatch(t: Tuples, slot: Int32Array): Built {
  const table = fillFlowTable(t, slot);
  const keys = new FlowKeys(BATCH);
  const out = new Int32Array(BATCH);
  return {
    declaredBytesPerFlow: table.bytesPerFlow(),
    answer: (flow, dir) => slot[flow]! * 2 + dir,
    loop: (p) => (start, n) => {
      const { proto, src, dst, sport, dport } = p;
      const k = p.n;
      let acc = 0;
      let j = start;
      for (let left = n; left > 0; left -= BATCH) {
        const m = left < BATCH ? left : BATCH;
        keys.clear();
        for (let i = 0; i < m; i++) {
          keys.add(proto[j]!, src[j]!, dst[j]!, sport[j]!, dport[j]!);
          if (++j === k) j = 0;
        }
        table.lookupBatch(keys, 0, out);
        for (let i = 0; i < m; i++) acc = (acc + out[i]!) | 0;
      }
      return acc;
    },
  };
}

function stringKey(proto: number, src: number, dst: number, sport: number, dport: number): string {
  return `${proto}|${src}|${dst}|${sport}|${dport}`;
}

function buildStringMap(t: Tuples): Built {
  const m = new Map<string, number>();
  for (let i = 0; i < t.n; i++) {
    m.set(stringKey(t.proto[i]!, t.src[i]!, t.dst[i]!, t.sport[i]!, t.dport[i]!), i * 2 + DIR_ORIGINAL);
    m.set(stringKey(t.proto[i]!, t.dst[i]!, t.src[i]!, t.dport[i]!, t.sport[i]!), i * 2 + DIR_REPLY);
  }
  return {
    answer: (flow, dir) => flow * 2 + dir,
    loop: (p) => (start, n) => {
      const { proto, src, dst, sport, dport } = p;
      const k = p.n;
      let acc = 0;
      let j = start;
      for (let i = 0; i < n; i++) {
        const v = m.get(`${proto[j]!}|${src[j]!}|${dst[j]!}|${sport[j]!}|${dport[j]!}`);
        acc = (acc + (v === undefined ? -1 : v)) | 0;
        if (++j === k) j = 0;
      }
      return acc;
    },
  };
}

/** 104 bits of tuple in one BigInt: proto above address+port (48 bits) above address+port (48 bits). */
function bigintKey(proto: number, src: number, dst: number, sport: number, dport: number): bigint {
  return (BigInt(proto) << 96n) | (BigInt(src * 65536 + sport) << 48n) | BigInt(dst * 65536 + dport);
}

function buildBigintMap(t: Tuples): Built {
  const m = new Map<bigint, number>();
  for (let i = 0; i < t.n; i++) {
    m.set(bigintKey(t.proto[i]!, t.src[i]!, t.dst[i]!, t.sport[i]!, t.dport[i]!), i * 2 + DIR_ORIGINAL);
    m.set(bigintKey(t.proto[i]!, t.dst[i]!, t.src[i]!, t.dport[i]!, t.sport[i]!), i * 2 + DIR_REPLY);
  }
  return {
    answer: (flow, dir) => flow * 2 + dir,
    loop: (p) => (start, n) => {
      const { proto, src, dst, sport, dport } = p;
      const k = p.n;
      let acc = 0;
      let j = start;
      for (let i = 0; i < n; i++) {
        const v = m.get(
          (BigInt(proto[j]!) << 96n) | (BigInt(src[j]! * 65536 + sport[j]!) << 48n) | BigInt(dst[j]! * 65536 + dport[j]!),
        );
        acc = (acc + (v === undefined ? -1 : v)) | 0;
        if (++j === k) j = 0;
      }
      return acc;
    },
  };
}

function buildLru(t: Tuples): Built {
  // Room for every entry: the question is lookup speed, not eviction.
  const c = new LRUCache<string, number>({ max: t.n * 2 });
  for (let i = 0; i < t.n; i++) {
    c.set(stringKey(t.proto[i]!, t.src[i]!, t.dst[i]!, t.sport[i]!, t.dport[i]!), i * 2 + DIR_ORIGINAL);
    c.set(stringKey(t.proto[i]!, t.dst[i]!, t.src[i]!, t.dport[i]!, t.sport[i]!), i * 2 + DIR_REPLY);
  }
  return {
    answer: (flow, dir) => flow * 2 + dir,
    loop: (p) => (start, n) => {
      const { proto, src, dst, sport, dport } = p;
      const k = p.n;
      let acc = 0;
      let j = start;
      for (let i = 0; i < n; i++) {
        const v = c.get(`${proto[j]!}|${src[j]!}|${dst[j]!}|${sport[j]!}|${dport[j]!}`);
        acc = (acc + (v === undefined ? -1 : v)) | 0;
        if (++j === k) j = 0;
      }
      return acc;
    },
  };
}

/**
 * `slot` (one per flow) is allocated by the caller, outside the memory measurement, for structures
 * that choose their own slot numbers; the others answer with the flow index and leave it alone.
 */
const BUILDERS: Record<ImplName, (t: Tuples, slot: Int32Array) => Built> = {
  FlowTable: buildFlowTable,
  'FlowTable batch': buildFlowTableBatch,
  'Map<string>': buildStringMap,
  'Map<bigint>': buildBigintMap,
  'lru-cache': buildLru,
};

/**
 * Builds the structure between two memory samples. It is a function of its own so that nothing the
 * caller holds can change between the samples: a generator frame keeps the previous fixture alive
 * in a stale register until it is overwritten, and if that happened in between, the old fixture's
 * release would be subtracted from the new one's size.
 */
function measuredBuild(impl: ImplName, t: Tuples, slot: Int32Array, gc: (() => void) | null): { built: Built; bytes: number | null } {
  // A throwaway small build first, so compiled code and type feedback are not counted as the
  // structure's memory (they would dominate at 1 K flows).
  BUILDERS[impl](makeTuples(0, 64), new Int32Array(64));
  const before = sampleMemory(gc);
  const built = BUILDERS[impl](t, slot);
  const after = sampleMemory(gc);
  return { built, bytes: gc ? bytesBetween(before, after) : null };
}

export function* conntrackCases(opts: ConntrackOptions): Generator<BenchCase> {
  for (const impl of opts.impls) {
    for (const n of opts.sizes) {
      const present = makeTuples(0, n);
      const absent = makeTuples(n, opts.probes);
      const hits = makeProbes(present, opts.probes, 0x1111 + n);
      const misses = makeProbes(absent, opts.probes, 0x2222 + n, true);
      const slot = new Int32Array(n);
      const { built, bytes } = measuredBuild(impl, present, slot, opts.gc);
      const record: MemoryRecord = { structure: structureLabel(impl), flows: n, measuredBytesPerFlow: bytes === null ? null : bytes / n };
      if (built.declaredBytesPerFlow !== undefined) record.declaredBytesPerFlow = built.declaredBytesPerFlow;
      opts.memory.push(record);

      const expectedHits = new Int32Array(hits.n);
      for (let j = 0; j < hits.n; j++) expectedHits[j] = built.answer(hits.flow[j]!, hits.dir[j]!);
      for (let j = 0; j < misses.n; j++) misses.flow[j] = -1;
      const label = countLabel(n);
      yield cyclicCase({
        group: 'conntrack',
        name: lookupName(impl, 'hit'),
        size: n,
        sizeLabel: `${label} flows`,
        expected: expectedHits,
        loop: built.loop(hits),
        describe: (j) => describeProbe(hits, j),
      });
      yield cyclicCase({
        group: 'conntrack',
        name: lookupName(impl, 'miss'),
        size: n,
        sizeLabel: `${label} flows`,
        expected: new Int32Array(misses.n).fill(-1),
        loop: built.loop(misses),
        describe: (j) => describeProbe(misses, j),
      });
    }
  }
}

