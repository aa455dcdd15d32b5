/**
 * Whole-packet translation through Translator.process, in place, as the data plane calls it:
 *
 * - new flow: each packet is the first of a new outbound UDP flow (a distinct LAN host/port), so each
 *   operation creates a mapping and a flow; the table is emptied between batches (untimed) so it never
 *   fills and every batch starts from the same state.
 * - established: outbound UDP or TCP packets of flows that already exist (TCP past its handshake),
 *   from one flow or spread at random over many. The LAN ports sit inside the gateway's own range,
 *   which the NAT never maps, so every packet gets both its address and its port rewritten: the full
 *   rewrite path.
 *
 * Packets are rewritten in place, so each batch is processed in a working buffer freshly copied (untimed)
 * from pristine packets, a batch about as large as the data plane's buffer, still in cache as it would
 * be right after the TUN read. After every batch each packet is read back with the reference code:
 * source address and port must be the mapping's, everything else unchanged but the TTL (one hop given
 * back), and both checksums right.
 */
import { FlowKeys } from '../../src/conntrack/table.js';
import { collectFlowKeys } from '../../src/dataplane/loop.js';
import { DIR_REPLY } from '../../src/conntrack/table.js';
import { DEFAULT_TIMEOUTS } from '../../src/conntrack/timeouts.js';
import { TcpState } from '../../src/conntrack/tcp.js';
import { TCP_FLAGS } from '../../src/wire/tcp.js';
import { seededRng } from '../../src/nat/ports.js';
import { Path, Translator, Verdict } from '../../src/nat/translator.js';
import { verify, type BenchCase } from './harness.js';
import { countLabel } from './conntrack.js';
import { PacketSet, PUBLIC_IP, remoteAddress, type PacketSpec } from './packets.js';
import { ip4, PROTO_TCP, PROTO_UDP, readPacket, Rng32 } from './reference.js';

export interface TranslateOptions {
  /** New flows per batch (the table is emptied between batches). */
  newFlowBatch: number;
  /** Packets per timed batch of established traffic. */
  batch: number;
  /** Flow counts for the established benchmarks (1 = one flow). */
  flowCounts: readonly number[];
  /** Pristine packets the many-flow variants cycle through (rounded up to whole batches). */
  pristinePackets: number;
}

/** The goal for translating one established packet (docs/benchmarks.md lists the goals). */
export const TRANSLATE_GOAL_NS = 100;

const SLOT = 64;
const PAYLOAD = 20;
const TTL_IN = 63;
/** README defaults: --ports 1024-65535, --gateway-ports 20000-29999. */
const PORTS: readonly [number, number] = [1024, 65535];
const GATEWAY_PORTS: readonly [number, number] = [20000, 29999];

export function makeTranslator(maxFlows: number): Translator {
  return new Translator({
    internal: [{ network: ip4(192, 168, 0, 0), prefixLength: 16 }],
    publicIp: PUBLIC_IP,
    ports: PORTS,
    excludedPorts: [GATEWAY_PORTS],
    maxFlows,
    timeouts: { ...DEFAULT_TIMEOUTS },
    seed: 0x2545f491,
    rng: seededRng(7),
  });
}

/**
 * Checks packet i of `set` after translation of the outbound packet `spec`: source rewritten to
 * the public address and `extPort`, destination untouched, TTL one higher, checksums right.
 * Throws BenchVerifyError naming what is wrong.
 */
export function verifyOutbound(set: PacketSet, i: number, spec: PacketSpec, extPort: number): void {
  const p = readPacket(set.buf, set.offset(i));
  const where = (): string => `packet ${i} (${spec.proto === PROTO_UDP ? 'udp' : 'tcp'} ${spec.src}:${spec.sport} → ${spec.dst}:${spec.dport})`;
  verify(p.src === PUBLIC_IP, () => `${where()}: source address ${p.src}, expected the public address ${PUBLIC_IP}`);
  verify(p.sport === extPort, () => `${where()}: source port ${p.sport}, expected the mapping's ${extPort}`);
  verify(p.dst === spec.dst && p.dport === spec.dport && p.proto === spec.proto,
    () => `${where()}: destination became ${p.dst}:${p.dport} (protocol ${p.proto})`);
  verify(p.ttl === spec.ttl + 1, () => `${where()}: TTL ${p.ttl}, expected ${spec.ttl + 1}`);
  verify(p.ipChecksumOk, () => `${where()}: bad IPv4 header checksum`);
  verify(p.l4ChecksumOk, () => `${where()}: bad ${spec.proto === PROTO_UDP ? 'UDP' : 'TCP'} checksum`);
}

/** Sum of verdicts over packets [0, n) of `set`: 0 when every one was forwarded (Verdict.FORWARD). */
function processAll(nat: Translator, set: PacketSet, n: number, now: number): number {
  const { buf, lens, stride } = set;
  let acc = 0;
  for (let i = 0; i < n; i++) acc = (acc + nat.process(buf, i * stride, lens[i]!, now)) | 0;
  return acc;
}

/** Packets per batch the data plane reads, and so warms the flow table for (src/dataplane/loop.ts). */
const LOOP_BATCH = 64;

/** processAll as the data plane runs it on a big table: each 64 packets, warm the table, then translate. */
function processWarmed(nat: Translator, set: PacketSet, n: number, now: number, keys: FlowKeys): number {
  const { buf, lens, stride } = set;
  let acc = 0;
  for (let first = 0; first < n; first += LOOP_BATCH) {
    const count = Math.min(LOOP_BATCH, n - first);
    collectFlowKeys(buf, lens, first, count, stride, 0, keys);
    nat.flows.prefetchBatch(keys);
    for (let i = first; i < first + count; i++) acc = (acc + nat.process(buf, i * stride, lens[i]!, now)) | 0;
  }
  return acc;
}

export function newFlowCase(opts: TranslateOptions): BenchCase {
  const b = opts.newFlowBatch;
  // Room for twice the batch: a busy but not nearly full table, as most of the port pool stays free.
  const nat = makeTranslator(b * 2);
  const rng = new Rng32(0x0f10);
  const pristine = new PacketSet(b, SLOT);
  for (let i = 0; i < b; i++) {
    // 1000 hosts, each with distinct ephemeral ports (a·883 < 28232 for a ≤ 31: no wrap-around);
    // different hosts share ports, so some mappings keep the port and some must remap it.
    const h = i % 1000;
    const a = Math.floor(i / 1000);
    if (a > 31) throw new RangeError('newFlowBatch is limited to 32000 flows');
    pristine.put(i, {
      proto: PROTO_UDP,
      src: ip4(192, 168, 10 + Math.floor(h / 250), 1 + (h % 250)),
      dst: remoteAddress(rng),
      sport: 32768 + ((a * 883 + h * 7) % 28232),
      dport: 53,
      ttl: TTL_IN,
      payloadLength: PAYLOAD,
    }, rng);
  }
  const work = new PacketSet(b, SLOT);
  const now = 1000;
  let createdBefore = 0;
  return {
    group: 'translate',
    name: 'new flow (udp outbound)',
    size: b,
    sizeLabel: `0→${countLabel(b)} flows`,
    batch: b,
    prepare(n) {
      if (nat.flows.size > 0) {
        nat.flows.flush();
        verify(nat.flows.size === 0 && nat.mappings.size === 0,
          () => `flush left ${nat.flows.size} flows and ${nat.mappings.size} mappings`);
      }
      pristine.buf.copy(work.buf, 0, 0, n * SLOT);
      work.lens.set(pristine.lens.subarray(0, n));
      createdBefore = nat.stats.flowsCreated;
    },
    run(n) {
      return processAll(nat, work, n, now);
    },
    check(n, result) {
      verify(result === Verdict.FORWARD * n, () => `new flows: verdict sum ${result}, expected every packet forwarded`);
      verify(nat.stats.flowsCreated - createdBefore === n, () => `new flows: ${nat.stats.flowsCreated - createdBefore} created for ${n} packets`);
      verify(nat.flows.size === n, () => `new flows: table holds ${nat.flows.size} flows after ${n} new ones`);
      for (let i = 0; i < n; i++) {
        const spec = pristine.specs[i]!;
        const m = nat.mappings.lookupInternal(PROTO_UDP, spec.src, spec.sport);
        verify(m >= 0, () => `new flow ${i}: no mapping for ${spec.src}:${spec.sport}`);
        const ext = nat.mappings.extPort[m]!;
        verifyOutbound(work, i, spec, ext);
        // The reply must find the flow that was created for it.
        const e = nat.flows.lookup(PROTO_UDP, spec.dst, PUBLIC_IP, spec.dport, ext, now);
        verify(e >= 0 && (e & 1) === DIR_REPLY, () => `new flow ${i}: its reply tuple is not in the table (lookup gave ${e})`);
      }
    },
  };
}

/** A LAN endpoint's outbound packet of flow f, built the same way for setup and for benchmark slots. */
interface FlowDef {
  src: number;
  dst: number;
  sport: number;
  dport: number;
}

const REMOTE_PORTS = [443, 80, 8080, 993];

/**
 * Flows from ceil(count / 4) LAN endpoints, each talking to up to 4 remote services. LAN ports lie in
 * the gateway's own range, so every mapping remaps the port.
 */
function flowDefs(count: number, rng: Rng32): FlowDef[] {
  const endpoints = Math.ceil(count / REMOTE_PORTS.length);
  const defs: FlowDef[] = [];
  for (let f = 0; f < count; f++) {
    const e = f % endpoints;
    const r = Math.floor(f / endpoints);
    defs.push({
      src: ip4(192, 168, 20 + Math.floor(e / 250), 1 + (e % 250)),
      sport: GATEWAY_PORTS[0] + (e % (GATEWAY_PORTS[1] - GATEWAY_PORTS[0] + 1)),
      dst: remoteAddress(rng),
      dport: REMOTE_PORTS[r]!,
    });
  }
  return defs;
}

/** Creates the flow through the translator (and completes the TCP handshake); returns its public port. */
function openFlow(nat: Translator, proto: PacketSpec['proto'], d: FlowDef, scratch: PacketSet, rng: Rng32, now: number): number {
  const send = (spec: PacketSpec): void => {
    scratch.put(0, spec, rng);
    const v = nat.process(scratch.buf, 0, scratch.lens[0]!, now);
    verify(v === Verdict.FORWARD, () => `setup: packet ${JSON.stringify(spec)} was dropped`);
  };
  const out = (flags: number): void => send({ proto, src: d.src, dst: d.dst, sport: d.sport, dport: d.dport, ttl: TTL_IN, payloadLength: 0, flags });
  out(TCP_FLAGS.SYN);
  const ext = (scratch.buf[20]! << 8) | scratch.buf[21]!;
  verify(ext !== d.sport, () => `setup: port ${d.sport} of the gateway's own range was kept`);
  // The reply (SYN-ACK for TCP), addressed to the mapping, as the remote sends it.
  send({ proto, src: d.dst, dst: PUBLIC_IP, sport: d.dport, dport: ext, ttl: 50, payloadLength: 0, flags: TCP_FLAGS.SYN | TCP_FLAGS.ACK });
  const back = readPacket(scratch.buf, 0);
  verify(back.dst === d.src && back.dport === d.sport, () => `setup: reply went to ${back.dst}:${back.dport}`);
  if (proto === PROTO_TCP) {
    out(TCP_FLAGS.ACK);
    const e = nat.flows.lookup(PROTO_TCP, d.src, d.dst, d.sport, d.dport, now);
    verify(e >= 0 && nat.flows.state[e >> 1] === TcpState.ESTABLISHED, () => `setup: TCP flow not ESTABLISHED after the handshake`);
  }
  return ext;
}

/** `warmed`: translate as the data plane does once the table is big (FlowTable.prefetchBatch per 64 packets). */
export function establishedCase(proto: PacketSpec['proto'], flows: number, opts: TranslateOptions, warmed = false): BenchCase {
  const name = proto === PROTO_UDP ? 'udp' : 'tcp';
  const keys = new FlowKeys(LOOP_BATCH);
  const nat = makeTranslator(Math.max(1024, flows * 2));
  const rng = new Rng32(proto * 1000 + flows);
  const now = 1000;
  const defs = flowDefs(flows, rng);
  const scratch = new PacketSet(1, SLOT);
  const ext = new Uint16Array(flows);
  for (let f = 0; f < flows; f++) ext[f] = openFlow(nat, proto, defs[f]!, scratch, rng, now);
  verify(nat.flows.size === flows, () => `setup: ${nat.flows.size} flows in the table, expected ${flows}`);

  const b = opts.batch;
  const batches = flows === 1 ? 1 : Math.max(1, Math.ceil(opts.pristinePackets / b));
  const pristine = new PacketSet(batches * b, SLOT);
  const slotFlow = new Int32Array(batches * b);
  let seq = rng.u32();
  for (let s = 0; s < pristine.count; s++) {
    const f = flows === 1 ? 0 : rng.below(flows);
    const d = defs[f]!;
    slotFlow[s] = f;
    seq = (seq + PAYLOAD) >>> 0;
    pristine.put(s, {
      proto, src: d.src, dst: d.dst, sport: d.sport, dport: d.dport, ttl: TTL_IN, payloadLength: PAYLOAD,
      flags: TCP_FLAGS.ACK | TCP_FLAGS.PSH, seq, ack: 1,
    }, rng);
  }
  const work = new PacketSet(b, SLOT);
  let nextBatch = 0;
  let base = 0;
  let forwardedBefore = 0;
  return {
    group: 'translate',
    name: `established ${name} outbound${warmed ? ', table warmed per 64' : ''}`,
    size: flows,
    sizeLabel: flows === 1 ? '1 flow' : `${countLabel(flows)} flows`,
    goalNs: TRANSLATE_GOAL_NS,
    batch: b,
    prepare(n) {
      base = nextBatch * b;
      nextBatch = nextBatch + 1 === batches ? 0 : nextBatch + 1;
      pristine.buf.copy(work.buf, 0, base * SLOT, (base + n) * SLOT);
      work.lens.set(pristine.lens.subarray(base, base + n));
      forwardedBefore = nat.stats.packets[Path.OUTBOUND]!;
    },
    run(n) {
      return warmed ? processWarmed(nat, work, n, now, keys) : processAll(nat, work, n, now);
    },
    check(n, result) {
      verify(result === Verdict.FORWARD * n, () => `established ${name}: verdict sum ${result}, expected every packet forwarded`);
      const forwarded = nat.stats.packets[Path.OUTBOUND]! - forwardedBefore;
      verify(forwarded === n, () => `established ${name}: ${forwarded} packets counted outbound for ${n}`);
      verify(nat.flows.size === flows, () => `established ${name}: table holds ${nat.flows.size} flows, expected ${flows}`);
      for (let i = 0; i < n; i++) verifyOutbound(work, i, pristine.specs[base + i]!, ext[slotFlow[base + i]!]!);
    },
  };
}

export function* translateCases(opts: TranslateOptions): Generator<BenchCase> {
  yield newFlowCase(opts);
  for (const flows of opts.flowCounts) {
    yield establishedCase(PROTO_UDP, flows, opts);
    yield establishedCase(PROTO_TCP, flows, opts);
  }
  // The data plane warms the table per batch from 16 K flows on: the same packets that way.
  const big = Math.max(...opts.flowCounts);
  if (big >= 16384) {
    yield establishedCase(PROTO_UDP, big, opts, true);
    yield establishedCase(PROTO_TCP, big, opts, true);
  }
}
