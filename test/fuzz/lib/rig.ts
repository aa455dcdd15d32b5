/**
 * The in-process data-plane fuzzer: a Translator behind a Dataplane on a FakeTun (optionally with
 * virtio-net headers), fed batches from the traffic model, with a packet tap that copies every packet
 * before and after translation. After each batch it checks every forwarded packet (checksums, TTL, no
 * inside address leaving) and the whole state (checkState); at the end it lets every timeout pass and
 * checks that nothing is left (checkDrained). A sentinel TCP connection is exercised after every
 * batch: whatever else happens, an established connection keeps working.
 *
 * Everything is driven by one seed (traffic, port choice, hash seed, clock), so a failure is replayed
 * exactly with the same seed, configuration and packet count.
 */
import { Dataplane } from '../../../src/dataplane/loop.js';
import { FakeTun } from '../../../src/tun/fake.js';
import { VNET_HDR_LEN } from '../../../src/dataplane/vnet.js';
import { Translator, Verdict, DROP_REASON_NAMES, PATH_NAMES, type FilteringName } from '../../../src/nat/translator.js';
import { TCP_STATE_NAMES } from '../../../src/conntrack/tcp.js';
import { seededRng } from '../../../src/nat/ports.js';
import { EgressPolicy, parseEgress, parseForward, type PortForward } from '../../../src/nat/policy.js';
import { DEFAULT_TIMEOUTS, type Timeouts } from '../../../src/conntrack/timeouts.js';
import type { FragmentLimits } from '../../../src/nat/fragments.js';
import { parseCidr, ipToString } from '../../../src/wire/addr.js';
import { tcpPacket } from '../../../src/wire/build.js';
import { TCP_FLAGS } from '../../../src/wire/tcp.js';
import { Rng } from './rng.js';
import { checkDrained, checkForwarded, checkState, leaks } from './invariants.js';
import {
  addr, completePartial, dstOf, hex, ihl, isFragment, makePartial, partialVnet, protoOf, srcOf, withVnet, PROTO_TCP, PROTO_UDP,
} from './packets.js';
import { rd16 } from '../../../src/wire/bytes.js';
import { TrafficModel, type World } from './traffic.js';

export interface FuzzConfig {
  name: string;
  internal: string[];
  maxFlows: number;
  ports: [number, number];
  excludedPorts: [number, number][];
  filtering: FilteringName;
  publicIpOwned: boolean;
  /** `tcp:8080=192.168.1.10:80` */
  forwards: string[];
  maxFlowsPerHost: number;
  /** `--allow-egress` syntax, or null for everything. */
  allowEgress: string | null;
  egressReject: boolean;
  icmpOnExhaustion: boolean;
  fragments: FragmentLimits;
  vnetHdr: boolean;
  batch: number;
  timeouts?: Partial<Timeouts>;
  /** Masquerade over every WAN address: a pool that grows, shrinks and changes its primary while packets flow. */
  dynamicPool?: boolean;
}

/** Configurations chosen to reach every limit quickly: small tables, small pools, every filtering mode. */
export const FUZZ_CONFIGS: readonly FuzzConfig[] = [
  {
    name: 'small-address',
    internal: ['192.168.1.0/24'],
    maxFlows: 256,
    ports: [40000, 40127],
    excludedPorts: [[40050, 40059]],
    filtering: 'address',
    publicIpOwned: true,
    forwards: ['tcp:8080=192.168.1.10:80', 'udp:5060=192.168.1.11'],
    maxFlowsPerHost: 0,
    allowEgress: null,
    egressReject: false,
    icmpOnExhaustion: true,
    fragments: { maxDatagrams: 32, maxHeldBytes: 16384, timeoutMs: 30_000, maxFragments: 16 },
    vnetHdr: false,
    batch: 64,
  },
  {
    name: 'endpoint-vnet-egress',
    internal: ['192.168.1.0/24', '192.168.2.0/24'],
    maxFlows: 512,
    ports: [1024, 65535],
    excludedPorts: [[20000, 29999]],
    filtering: 'endpoint',
    publicIpOwned: true,
    forwards: ['tcp:2222=192.168.2.10:22'],
    maxFlowsPerHost: 40,
    allowEgress: 'tcp:80,tcp:443,udp:53,udp:3478,udp:5060,icmp',
    egressReject: true,
    icmpOnExhaustion: true,
    fragments: { maxDatagrams: 64, maxHeldBytes: 65536, timeoutMs: 30_000, maxFragments: 64 },
    vnetHdr: true,
    batch: 32,
  },
  {
    name: 'snat-port-restricted',
    internal: ['192.168.1.0/24'],
    maxFlows: 64,
    ports: [50000, 50063],
    excludedPorts: [],
    filtering: 'address-port',
    publicIpOwned: false,
    forwards: ['udp:50010=192.168.1.12:9000'],
    maxFlowsPerHost: 0,
    allowEgress: null,
    egressReject: false,
    icmpOnExhaustion: false,
    fragments: { maxDatagrams: 8, maxHeldBytes: 4096, timeoutMs: 5_000, maxFragments: 8 },
    vnetHdr: false,
    batch: 16,
  },
  {
    name: 'tiny-endpoint',
    internal: ['192.168.1.0/24'],
    maxFlows: 8,
    ports: [60000, 60003],
    excludedPorts: [],
    filtering: 'endpoint',
    publicIpOwned: true,
    forwards: ['tcp:60002=192.168.1.10:80'],
    maxFlowsPerHost: 3,
    allowEgress: null,
    egressReject: false,
    icmpOnExhaustion: true,
    fragments: { maxDatagrams: 4, maxHeldBytes: 2048, timeoutMs: 30_000, maxFragments: 4 },
    vnetHdr: true,
    batch: 8,
    timeouts: { udp: 5, icmp: 5, tcpSynSent: 5, tcpClose: 2 },
  },
  {
    name: 'wan-pool-address',
    internal: ['192.168.1.0/24', '192.168.2.0/24'],
    maxFlows: 128,
    ports: [30000, 30031],
    excludedPorts: [],
    filtering: 'address',
    publicIpOwned: true,
    forwards: ['tcp:30005=192.168.1.10:80', 'udp:203.0.113.21:30007=192.168.1.11', 'sctp:30009=192.168.2.10'],
    maxFlowsPerHost: 0,
    allowEgress: null,
    egressReject: false,
    icmpOnExhaustion: true,
    fragments: { maxDatagrams: 16, maxHeldBytes: 8192, timeoutMs: 30_000, maxFragments: 8 },
    vnetHdr: false,
    batch: 32,
    dynamicPool: true,
  },
];

export function fuzzConfig(name: string): FuzzConfig {
  const c = FUZZ_CONFIGS.find((x) => x.name === name);
  if (!c) throw new Error(`no fuzz config ${name} (have: ${FUZZ_CONFIGS.map((x) => x.name).join(', ')})`);
  return c;
}

export interface Failure {
  batch: number;
  packetIndex: number;
  problems: string[];
  /** The packet the problem is about, as injected (hex, with the vnet header if any). */
  packet: string | null;
  /** Every packet of the failing batch, as injected. */
  batchPackets: string[];
}

export interface RunResult {
  config: string;
  seed: number;
  packets: number;
  batches: number;
  elapsedMs: number;
  verdicts: { forward: number; drop: number; held: number };
  drops: Record<string, number>;
  flowsCreated: number;
  peakFlows: number;
  peakMappings: number;
  peakFragmentBytes: number;
  written: number;
  generated: number;
  sentinelExchanges: number;
  byKind: Record<string, number>;
  loop: { oversize: number; badVnet: number; superpackets: number };
  /** Drops that had evicted a flow first (see RunOptions.tolerateEvictThenRefuse), by drop reason. */
  evictedForRefused: Record<string, number>;
  /**
   * What the run reached, so a test can insist the fuzzer still gets deep (a model change that stops
   * producing replies would otherwise pass quietly): packets per path, ICMP errors translated, TCP
   * states entered, flows removed by reason, fragment events, packets the translator generated.
   */
  coverage: Record<string, number>;
  failure: Failure | null;
}

export interface RunOptions {
  config: FuzzConfig;
  seed: number;
  /** Stop after this many injected packets… */
  packets: number;
  /** …or after this much wall time, whichever comes first. */
  timeBudgetMs?: number;
  /**
   * The residual cases of bug 7 (docs/reliability.md): a new flow refused after early drop already evicted
   * a live flow to make room for it (a hairpin that finds no port, a full mapping table, a permission the
   * eviction removed). When true such drops are counted in `evictedForRefused` instead of failing the run.
   */
  tolerateEvictThenRefuse?: boolean;
}

const PUBLIC = addr('203.0.113.1');
const ALT_PUBLIC = addr('203.0.113.9');
/** What the WAN of a dynamic pool may hold: PUBLIC and ALT_PUBLIC come and go beside these. */
const WAN_POOL = [PUBLIC, ALT_PUBLIC, addr('203.0.113.21'), addr('203.0.113.22')];
const SENTINEL_HOST = addr('192.168.1.250');
const SENTINEL_PORT = 45678;
const SENTINEL_REMOTE = addr('198.51.100.200');
const SENTINEL_RPORT = 443;

function makeWorld(cfg: FuzzConfig, internal: { network: number; mask: number }[]): World {
  const lan: number[] = [];
  for (let i = 10; i < 18; i++) lan.push(addr(`192.168.1.${i}`));
  if (cfg.internal.length > 1) for (let i = 10; i < 14; i++) lan.push(addr(`192.168.2.${i}`));
  const [lo, hi] = cfg.ports;
  const ports = [0, 1, 53, 80, 443, 65535, lo, lo + 1, hi, hi - 1, (lo + hi) >> 1];
  for (const [a, b] of cfg.excludedPorts) ports.push(a, b, a - 1, b + 1);
  for (const f of cfg.forwards) ports.push(Number(/:(\d+)=/.exec(f)![1]));
  return {
    lan,
    remotes: ['198.51.100.1', '198.51.100.2', '198.51.100.53', '203.0.113.2', '203.0.113.80'].map(addr),
    publicIp: PUBLIC,
    odd: ['0.0.0.0', '255.255.255.255', '127.0.0.1', '224.0.0.1', '192.168.3.5', '10.0.0.1', '169.254.1.1', '192.168.1.255', '192.168.1.0', '203.0.113.9'].map(addr),
    ports: ports.filter((p) => p >= 0 && p <= 65535),
    lanRouters: ['192.168.1.1', '192.168.1.254'].map(addr),
    wanRouters: ['198.51.100.254', '203.0.113.254'].map(addr),
    isInternal: (a) => internal.some((c) => ((a & c.mask) >>> 0) === c.network),
  };
}

/** The test for "one of the public addresses": a static address, or any address of a pool. */
function publicOf(nat: Translator): number | ((a: number) => boolean) {
  return nat.dynamicPool ? (a) => nat.isPublic(a) : nat.publicAddress;
}

export function makeTranslator(cfg: FuzzConfig, seed: number): Translator {
  const internal = cfg.internal.map((s) => {
    const c = parseCidr(s);
    if (!c) throw new Error(`bad CIDR ${s}`);
    return c;
  });
  const isInternal = (a: number): boolean => internal.some((c) => ((a & c.mask) >>> 0) === c.network);
  const forwards: PortForward[] = cfg.forwards.map((f) => parseForward(f, isInternal));
  return new Translator({
    internal,
    publicIp: PUBLIC,
    ...(cfg.dynamicPool ? { publicPool: WAN_POOL.slice(0, 3), dynamicPool: true } : {}),
    publicIpOwned: cfg.publicIpOwned,
    ports: cfg.ports,
    excludedPorts: cfg.excludedPorts,
    maxFlows: cfg.maxFlows,
    timeouts: { ...DEFAULT_TIMEOUTS, ...cfg.timeouts },
    seed: seed ^ 0x1234567,
    rng: seededRng(seed ^ 0x7654321),
    filtering: cfg.filtering,
    forwards,
    egress: cfg.allowEgress ? new EgressPolicy(parseEgress(cfg.allowEgress)) : null,
    egressReject: cfg.egressReject,
    maxFlowsPerHost: cfg.maxFlowsPerHost,
    icmpOnExhaustion: cfg.icmpOnExhaustion,
    fragments: cfg.fragments,
  });
}

interface TapRecord {
  before: Buffer;
  partial: boolean;
  dropsBefore: number;
  forwardedBefore: number;
  earlyDropsBefore: number;
  verdict: number;
  earlyDropsAfter: number;
  /** The translator's drop reason for this packet (-1 if not dropped). */
  dropReason: number;
  after: Buffer | null;
}

const sum = (a: Float64Array): number => a.reduce((x, y) => x + y, 0);

/** Run one seeded fuzz session; never throws for what it finds (see `failure`). */
export function runFuzz(o: RunOptions): RunResult {
  const cfg = o.config;
  const rng = new Rng(o.seed);
  const nat = makeTranslator(cfg, o.seed);
  const internal = cfg.internal.map((s) => parseCidr(s)!);
  const world = makeWorld(cfg, internal);
  const isInternal = world.isInternal;
  const tun = new FakeTun({ vnetHdr: cfg.vnetHdr });
  let now = 1_000_000;
  const loop = new Dataplane(tun, nat, {
    batch: cfg.batch,
    // Room for the biggest packet the model makes (1460 payload + headers) plus a vnet header; GSO
    // superpackets are not made bigger than that either.
    slotSize: 2048,
    clock: () => now,
    vnetHdr: cfg.vnetHdr,
    // Warm the table for every batch whatever its size, so the prefetch pass meets hostile bytes too
    // (it only loads: everything else the fuzzer checks is unchanged by it).
    prefetchMinFlows: 0,
  });
  const forwardPorts = cfg.forwards.map((f) => Number(/:(\d+)=/.exec(f)![1]));
  const model = new TrafficModel(rng.fork(), world, forwardPorts);
  const hdr = cfg.vnetHdr ? VNET_HDR_LEN : 0;

  const records: TapRecord[] = [];
  loop.tap = {
    before(buf, off, len) {
      records.push({
        before: Buffer.from(buf.subarray(off, off + len)),
        partial: hdr > 0 && (buf[off - hdr]! & 1) === 1,
        dropsBefore: sum(nat.stats.drops),
        forwardedBefore: sum(nat.stats.packets),
        earlyDropsBefore: nat.stats.flowsRemoved['early-drop'],
        verdict: -1,
        earlyDropsAfter: -1,
        dropReason: -1,
        after: null,
      });
      return true;
    },
    after(buf, off, len, verdict) {
      const r = records[records.length - 1]!;
      r.verdict = verdict;
      r.earlyDropsAfter = nat.stats.flowsRemoved['early-drop'];
      r.dropReason = nat.lastDrop;
      r.after = Buffer.from(buf.subarray(off, off + len));
    },
  };

  const result: RunResult = {
    config: cfg.name,
    seed: o.seed,
    packets: 0,
    batches: 0,
    elapsedMs: 0,
    verdicts: { forward: 0, drop: 0, held: 0 },
    drops: {},
    flowsCreated: 0,
    peakFlows: 0,
    peakMappings: 0,
    peakFragmentBytes: 0,
    written: 0,
    generated: 0,
    sentinelExchanges: 0,
    byKind: {},
    loop: { oversize: 0, badVnet: 0, superpackets: 0 },
    coverage: {},
    evictedForRefused: {},
    failure: null,
  };
  const tcpStates = new Map<string, number>();
  nat.observers.push({
    updated(flow) {
      const name = nat.flows.proto[flow] === PROTO_TCP ? `tcp-${TCP_STATE_NAMES[nat.flows.state[flow]!] ?? nat.flows.state[flow]}` : 'udp-icmp-replied';
      tcpStates.set(name, (tcpStates.get(name) ?? 0) + 1);
    },
  });

  const started = Date.now();
  const budget = o.timeBudgetMs ?? Number.POSITIVE_INFINITY;
  let pending: Buffer[] = [];
  let injected: Buffer[] = [];
  let sentinelPublicPort = -1;
  /** The public address the sentinel's host is paired with (one of a pool's). */
  let sentinelPublicAddr = 0;

  /** Put one packet on the fake TUN, with a vnet header when the config uses them. */
  const inject = (p: Buffer, clean = false): void => {
    let wire: Buffer = p;
    if (hdr && clean) wire = withVnet(p, {});
    else if (hdr) {
      const roll = rng.next();
      const l4ok = (protoOf(p) === PROTO_TCP || protoOf(p) === PROTO_UDP) && !isFragment(p) && p.length >= 20;
      if (l4ok && roll < 0.3) {
        const partial = Buffer.from(p);
        if (makePartial(partial)) {
          const gso = rng.chance(0.3) && partial.length > 200;
          const spec = partialVnet(partial);
          wire = withVnet(partial, gso
            ? { ...spec, gsoType: protoOf(p) === PROTO_TCP ? 1 : 5, gsoSize: rng.pick([100, 536, 1448]), hdrLen: ihl(p) + (protoOf(p) === PROTO_TCP ? 20 : 8) }
            : spec);
        } else wire = withVnet(p, {});
      } else if (roll > 0.97) {
        wire = Buffer.concat([rng.bytes(hdr), p]); // a header that describes nothing
      } else wire = withVnet(p, {});
    }
    tun.inject(wire);
    injected.push(wire);
  };

  const fail = (problems: string[], index: number): void => {
    const rec = index >= 0 ? records[index] : undefined;
    result.failure = {
      batch: result.batches,
      packetIndex: index,
      problems,
      packet: rec ? hex(rec.before) : null,
      batchPackets: injected.map(hex),
    };
  };

  /**
   * Drain the TUN through the loop and check every packet of it. Returns false on a failure. The model
   * learns from what was forwarded, except for the sentinel's packets: it must not answer those (a
   * stray RST would close the sentinel's flow, which tcp.ts allows by design).
   */
  const runAndCheck = (learn = true): boolean => {
    records.length = 0;
    try {
      while (tun.pending > 0) loop.runBatch();
    } catch (err) {
      const e = err as Error;
      fail([`exception: ${e.stack ?? e.message}`], records.length - 1);
      return false;
    }
    for (let i = 0; i < records.length; i++) {
      const r = records[i]!;
      const problems: string[] = [];
      if (r.verdict === Verdict.FORWARD && r.after) {
        result.verdicts.forward++;
        let before = r.before;
        let after = r.after;
        if (r.partial) {
          // Finish both checksums the way the sender would; the translated one must verify if the input did.
          before = Buffer.from(before);
          after = Buffer.from(after);
          completePartial(before);
          completePartial(after);
        }
        problems.push(...checkForwarded({ before, after, verdict: r.verdict, partial: false, isInternal, publicIp: publicOf(nat) }));
        if (sum(nat.stats.packets) <= r.forwardedBefore && !isFragment(r.before)) problems.push('forwarded without being counted');
        if (learn) model.observe(r.after);
      } else if (r.verdict === Verdict.DROP) {
        result.verdicts.drop++;
        // Making room for a flow that is then refused throws a live flow away for nothing.
        if (r.earlyDropsAfter > r.earlyDropsBefore) {
          const reason = DROP_REASON_NAMES[r.dropReason] ?? String(r.dropReason);
          if (o.tolerateEvictThenRefuse) result.evictedForRefused[reason] = (result.evictedForRefused[reason] ?? 0) + 1;
          else problems.push(`dropped (${reason}) after evicting a flow to make room`);
        }
      } else if (r.verdict === Verdict.HELD) {
        result.verdicts.held++;
        if (!isFragment(r.before)) problems.push('a packet that is not a fragment was held');
      } else {
        problems.push(`verdict ${r.verdict}`);
      }
      if (problems.length) {
        fail(problems, i);
        return false;
      }
    }
    // Drop accounting over the whole batch: each DROP verdict is one count at least (held fragments
    // that are later refused add counts of their own, so more is fine, fewer is not).
    const first = records[0];
    if (first) {
      const dropped = records.filter((r) => r.verdict === Verdict.DROP).length;
      const counted = sum(nat.stats.drops) - first.dropsBefore;
      if (counted < dropped) {
        fail([`${dropped} packets dropped but only ${counted} drops counted`], -1);
        return false;
      }
    }
    // Everything written back, generated packets and released fragments included, obeys the leak rule.
    for (const w of tun.takeWritten()) {
      result.written++;
      const p = w.subarray(hdr);
      const l = leaks(p, isInternal, publicOf(nat));
      if (l.length) {
        fail([...l, `written: ${hex(p)}`], -1);
        return false;
      }
    }
    const st = checkState(nat);
    if (st.length) {
      fail(st, records.length - 1);
      return false;
    }
    return true;
  };

  /** The sentinel connection: one ACK each way must cross, on the same public port every time. */
  const sentinel = (): boolean => {
    injected = [];
    const mk = (src: number, dst: number, sp: number, dp: number, flags: number): Buffer =>
      tcpPacket({ src, dst, srcPort: sp, dstPort: dp, seq: rng.u32(), ack: rng.u32(), flags, payload: Buffer.from('sentinel') });
    if (sentinelPublicPort < 0) {
      // (Re)open: SYN out, SYN-ACK back, ACK out.
      inject(mk(SENTINEL_HOST, SENTINEL_REMOTE, SENTINEL_PORT, SENTINEL_RPORT, TCP_FLAGS.SYN), true);
      if (!runAndCheck(false)) return false;
      const syn = records[0];
      if (!syn || syn.verdict !== Verdict.FORWARD || !syn.after) {
        // A full table or pool may refuse a new connection: that is allowed, try again next batch.
        return true;
      }
      sentinelPublicPort = rd16(syn.after, ihl(syn.after));
      sentinelPublicAddr = srcOf(syn.after);
      injected = [];
      inject(mk(SENTINEL_REMOTE, PUBLIC_NOW(), SENTINEL_RPORT, sentinelPublicPort, TCP_FLAGS.SYN | TCP_FLAGS.ACK), true);
      inject(mk(SENTINEL_HOST, SENTINEL_REMOTE, SENTINEL_PORT, SENTINEL_RPORT, TCP_FLAGS.ACK), true);
      if (!runAndCheck(false)) return false;
      if (records.some((r) => r.verdict !== Verdict.FORWARD)) {
        fail([`sentinel handshake not forwarded: verdicts ${records.map((r) => r.verdict).join(',')}, drops ${nat.lastDrop}`], 0);
        return false;
      }
      return true;
    }
    inject(mk(SENTINEL_HOST, SENTINEL_REMOTE, SENTINEL_PORT, SENTINEL_RPORT, TCP_FLAGS.ACK | TCP_FLAGS.PSH), true);
    inject(mk(SENTINEL_REMOTE, PUBLIC_NOW(), SENTINEL_RPORT, sentinelPublicPort, TCP_FLAGS.ACK | TCP_FLAGS.PSH), true);
    if (!runAndCheck(false)) return false;
    const [out, back] = records;
    const backDrop = DROP_REASON_NAMES[nat.lastDrop] ?? String(nat.lastDrop);
    const problems: string[] = [];
    if (!out || out.verdict !== Verdict.FORWARD || !out.after) problems.push(`sentinel outbound not forwarded (drop reason ${DROP_REASON_NAMES[nat.lastDrop] ?? nat.lastDrop})`);
    else if (srcOf(out.after) !== sentinelPublicAddr || rd16(out.after, ihl(out.after)) !== sentinelPublicPort) {
      problems.push(`sentinel left as ${ipToString(srcOf(out.after))}:${rd16(out.after, ihl(out.after))}, was :${sentinelPublicPort}`);
    }
    if (!back || back.verdict !== Verdict.FORWARD || !back.after) problems.push(`sentinel reply not forwarded (verdict ${back?.verdict}, drop reason ${backDrop})`);
    else if (dstOf(back.after) !== SENTINEL_HOST || rd16(back.after, ihl(back.after) + 2) !== SENTINEL_PORT) problems.push('sentinel reply reached the wrong host');
    if (problems.length) {
      fail(problems, 0);
      return false;
    }
    result.sentinelExchanges++;
    return true;
  };
  const PUBLIC_NOW = (): number => sentinelPublicAddr;

  while (result.packets < o.packets && Date.now() - started < budget) {
    // One batch: up to `batch` packets, often fewer (the loop also runs partial batches).
    injected = [];
    const n = 1 + rng.int(cfg.batch);
    while (pending.length < n) pending.push(...model.next());
    const take = pending.splice(0, rng.chance(0.1) ? pending.length : n);
    for (const p of take) inject(p);
    result.packets += take.length;
    if (!runAndCheck()) break;
    result.batches++;
    if (!sentinel()) break;
    result.peakFlows = Math.max(result.peakFlows, nat.flows.size);
    result.peakMappings = Math.max(result.peakMappings, nat.mappings.size);
    result.peakFragmentBytes = Math.max(result.peakFragmentBytes, nat.fragments.heldBytes);

    // Time passes: mostly little, sometimes past the UDP/ICMP/fragment timeouts, rarely past TCP's.
    now += rng.weighted<number>([
      [80, rng.int(2_000)],
      [15, 1_000 + rng.int(60_000)],
      [4, 60_000 + rng.int(400_000)],
      [1, 1_000_000 + rng.int(6_000_000)],
    ]);
    if (rng.chance(0.3)) nat.sweep(now, rng.pick([1, 16, 256, nat.flows.capacity]));
    if (rng.chance(cfg.dynamicPool ? 0.02 : 0.003)) {
      // The WAN address changes (masquerade): every flow on the old one goes; later the old one returns.
      // A dynamic pool gets some subset of WAN_POOL, with any of it as the primary.
      if (cfg.dynamicPool) {
        const next = WAN_POOL.filter(() => rng.chance(0.5));
        if (next.length === 0) next.push(rng.pick(WAN_POOL));
        nat.setPublicAddresses(rng.pick(next), next);
      } else nat.setPublicAddress(nat.publicAddress === PUBLIC ? ALT_PUBLIC : PUBLIC);
      world.publicIp = nat.publicAddress;
      // The sentinel's connection went with its address; on an address that stayed it goes on.
      if (!nat.isPublic(sentinelPublicAddr)) sentinelPublicPort = -1;
      const st = checkState(nat);
      if (st.length) {
        fail(['after a public address change:', ...st], -1);
        break;
      }
    }
  }

  if (!result.failure) {
    // Every timeout passes: nothing may be left behind.
    now += 1e10;
    nat.sweep(now, nat.flows.capacity);
    const left = checkDrained(nat);
    if (left.length) fail(['after every timeout:', ...left], -1);
  }

  result.elapsedMs = Date.now() - started;
  DROP_REASON_NAMES.forEach((name, i) => {
    const n = nat.stats.drops[i]!;
    if (n > 0) result.drops[name] = n;
  });
  result.flowsCreated = nat.stats.flowsCreated;
  result.generated = nat.stats.generated;
  result.byKind = model.stats.byKind;
  result.loop = { oversize: loop.stats.oversize, badVnet: loop.stats.badVnet, superpackets: loop.stats.superpackets };
  const cov: Record<string, number> = {};
  PATH_NAMES.forEach((name, i) => (cov[`path-${name}`] = nat.stats.packets[i]!));
  cov['icmp-errors-translated'] = nat.stats.icmpErrorsTranslated;
  cov['generated'] = nat.stats.generated;
  for (const [k, n] of Object.entries(nat.stats.flowsRemoved)) cov[`removed-${k}`] = n;
  for (const [k, n] of Object.entries(nat.fragments.stats)) cov[`fragments-${k}`] = n;
  for (const [k, n] of tcpStates) cov[k] = n;
  cov['gso-superpackets'] = loop.stats.superpackets;
  result.coverage = cov;
  return result;
}

/** A failure as text: what broke, the packet, the batch, and how to replay it. */
export function describeFailure(r: RunResult): string {
  const f = r.failure;
  if (!f) return 'no failure';
  const lines = [
    `fuzz failure: config ${r.config}, seed ${r.seed}, batch ${f.batch}, after ${r.packets} packets`,
    ...f.problems.slice(0, 30).map((p) => `  - ${p}`),
  ];
  if (f.packet) lines.push(`  packet (as seen by the translator): ${f.packet}`);
  lines.push(`  batch as injected (${f.batchPackets.length} packets${r.config.includes('vnet') ? ', 10-byte vnet header first' : ''}):`);
  for (const p of f.batchPackets.slice(0, 80)) lines.push(`    ${p}`);
  lines.push(`  replay: npx vite-node scripts/fuzz.ts -- --config ${r.config} --seed ${r.seed} --packets ${r.packets}`);
  return lines.join('\n');
}
