import { describe, expect, it } from 'vitest';
import { BPF, JOP, OP, steeringProgram, type SteeringSpec } from '../../src/dataplane/steer-bpf.js';
import { HERE, Steering } from '../../src/dataplane/steering.js';
import { isErrorType } from '../../src/wire/icmp.js';
import { IPPROTO } from '../../src/wire/ipv4.js';
import { sliceOwner } from '../../src/nat/ports.js';
import { ip } from '../nat/helpers.js';

/**
 * A small eBPF interpreter for the instructions steeringProgram uses, with the kernel's semantics for
 * them: LD_ABS/LD_IND read big-endian from the packet and end the program with 0 when out of bounds; ALU
 * (32-bit) zero-extends; JMP32 compares the low halves.
 */
function run(prog: Buffer, pkt: Uint8Array): number {
  const r = new BigUint64Array(11);
  const M32 = 0xffffffffn;
  const s32 = (v: number) => BigInt.asUintN(64, BigInt(v));
  let pc = 0;
  for (let steps = 0; steps < 100_000; steps++) {
    const at = pc * 8;
    const code = prog[at]!;
    const dst = prog[at + 1]! & 15;
    const src = prog[at + 1]! >> 4;
    const off = prog.readInt16LE(at + 2);
    const imm = prog.readInt32LE(at + 4);
    pc++;
    const cls = code & 7;
    if (cls === BPF.LD) {
      const size = code & 0x18;
      const mode = code & 0xe0;
      const base = mode === BPF.IND ? Number(r[src]! & M32) : 0;
      const o = base + imm;
      const n = size === BPF.B ? 1 : size === BPF.H ? 2 : 4;
      if (o < 0 || o + n > pkt.length) return 0;
      let v = 0;
      for (let i = 0; i < n; i++) v = v * 256 + pkt[o + i]!;
      r[0] = BigInt(v);
      continue;
    }
    if (cls === BPF.ALU || cls === BPF.ALU64) {
      const op = code & 0xf0;
      const b = code & BPF.X ? r[src]! : s32(imm);
      const a = r[dst]!;
      let v: bigint;
      const wide = cls === BPF.ALU64;
      const A = wide ? a : a & M32;
      const Bv = wide ? b : b & M32;
      switch (op) {
        case OP.MOV: v = Bv; break;
        case OP.AND: v = A & Bv; break;
        case OP.XOR: v = A ^ Bv; break;
        case OP.LSH: v = A << Bv; break;
        case OP.RSH: v = A >> Bv; break;
        case OP.MUL: v = A * Bv; break;
        case OP.ADD: v = A + Bv; break;
        case OP.MOD: v = Bv === 0n ? A : A % Bv; break;
        default: throw new Error(`alu op ${op.toString(16)}`);
      }
      r[dst] = wide ? BigInt.asUintN(64, v) : v & M32;
      continue;
    }
    if (cls === BPF.JMP || cls === BPF.JMP32) {
      const op = code & 0xf0;
      if (op === JOP.EXIT) return Number(r[0]! & M32);
      if (op === JOP.JA) {
        pc += off;
        continue;
      }
      const narrow = cls === BPF.JMP32;
      const a = narrow ? r[dst]! & M32 : r[dst]!;
      const bFull = code & BPF.X ? r[src]! : s32(imm);
      const b = narrow ? bFull & M32 : bFull;
      let take: boolean;
      switch (op) {
        case JOP.JEQ: take = a === b; break;
        case JOP.JNE: take = a !== b; break;
        case JOP.JGT: take = a > b; break;
        case JOP.JLT: take = a < b; break;
        default: throw new Error(`jmp op ${op.toString(16)}`);
      }
      if (take) pc += off;
      continue;
    }
    throw new Error(`class ${cls}`);
  }
  throw new Error('no exit');
}

// Deterministic pseudo-random packets.
let seed = 12345;
const rnd = (n: number) => {
  seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
  return (seed >>> 8) % n;
};

const PUB = ip('203.0.113.1');
const PUB2 = ip('203.0.113.200');
const LAN = [ip('192.168.1.10'), ip('192.168.1.11'), ip('10.0.0.5')];
const REMOTES = [ip('198.51.100.7'), ip('203.0.113.99'), ip('198.51.100.254')];
const FORWARDS = [
  { protocol: IPPROTO.TCP, address: LAN[0]!, port: 8080, publicPort: 443 },
  { protocol: IPPROTO.UDP, address: LAN[1]!, port: 5000, publicPort: 6001 },
];

function randomPacket(): Uint8Array {
  const pick = <T>(a: readonly T[]) => a[rnd(a.length)]!;
  const len = rnd(10) === 0 ? rnd(60) : 20 + rnd(60);
  const p = new Uint8Array(len);
  for (let i = 0; i < len; i++) p[i] = rnd(256);
  const ihl = rnd(8) === 0 ? rnd(16) : 5 + (rnd(4) === 0 ? rnd(3) : 0);
  const put = (o: number, v: number, n: number) => {
    for (let i = n - 1; i >= 0; i--, v = Math.floor(v / 256)) if (o + i < len) p[o + i] = v & 255;
  };
  put(0, (rnd(10) === 0 ? rnd(16) : 4) * 16 + ihl, 1);
  put(6, rnd(4) === 0 ? rnd(65536) : rnd(2) * 0x4000, 2);
  put(9, pick([IPPROTO.TCP, IPPROTO.UDP, IPPROTO.SCTP, IPPROTO.UDPLITE, IPPROTO.ICMP, IPPROTO.ICMP, 47, 50, rnd(256)]), 1);
  const out = rnd(2) === 0;
  put(12, out ? pick([...LAN, PUB, rnd(2 ** 32)]) : pick(REMOTES), 4);
  put(16, out ? pick([...REMOTES, PUB, PUB2]) : pick([PUB, PUB2, ...LAN]), 4);
  const t = ihl * 4;
  if (p[9] === IPPROTO.ICMP) put(t, rnd(3) === 0 ? rnd(40) : pick([0, 8, 13, 14, 3, 11]), 1);
  else if (rnd(3) === 0) {
    const f = pick(FORWARDS);
    put(t, f.port, 2);
  }
  return p;
}

function check(spec: SteeringSpec, packets: number): { steered: number } {
  const prog = steeringProgram(spec);
  const s = new Steering(spec.count);
  s.setPublicAddresses([...spec.publicAddrs]);
  s.setForwards(spec.forwards.map((f) => ({ ...f, publicIp: spec.publicAddrs[0]! })) as never);
  let steered = 0;
  for (let i = 0; i < packets; i++) {
    const pkt = randomPacket();
    const want = s.ownerOf(pkt, 0, pkt.length);
    const got = run(prog, pkt);
    expect(got).toBeGreaterThanOrEqual(0);
    expect(got).toBeLessThan(spec.count);
    if (want === HERE) continue;
    const ihl = (pkt[0]! & 15) * 4;
    // ICMP errors are left to userspace (queue 0), which steers them by the flow they quote.
    if (pkt[9] === IPPROTO.ICMP && pkt.length > ihl && isErrorType(pkt[ihl]!)) {
      expect(got).toBe(0);
      continue;
    }
    expect({ got, pkt: Buffer.from(pkt).toString('hex') }).toEqual({ got: want, pkt: Buffer.from(pkt).toString('hex') });
    steered++;
  }
  return { steered };
}

describe('steeringProgram', () => {
  it('puts every packet where Steering.ownerOf says, for 1 to 5 workers and two public addresses', () => {
    for (const count of [1, 2, 3, 4, 5]) {
      const { steered } = check({ count, publicAddrs: [PUB, PUB2], forwards: FORWARDS }, 20_000);
      // Most random packets are well formed enough to have an owner: the comparison covered them (one
      // worker owns everything, and userspace never hands anything off).
      if (count > 1) expect(steered).toBeGreaterThan(5_000);
    }
  });

  it("a forward's LAN side goes with the forward's public port, not its own", () => {
    const prog = steeringProgram({ count: 4, publicAddrs: [PUB], forwards: FORWARDS });
    const pkt = new Uint8Array(40);
    pkt.set([0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, IPPROTO.TCP]);
    new DataView(pkt.buffer).setUint32(12, LAN[0]!);
    new DataView(pkt.buffer).setUint32(16, REMOTES[0]!);
    new DataView(pkt.buffer).setUint16(20, 8080);
    expect(run(prog, pkt)).toBe(sliceOwner(443, 4));
    new DataView(pkt.buffer).setUint32(12, LAN[2]!);
    expect(run(prog, pkt)).toBe(sliceOwner(8080, 4));
  });

  it('without any public address yet (masquerade before the WAN has one), everything goes by the LAN rules', () => {
    check({ count: 3, publicAddrs: [], forwards: [] }, 5_000);
  });

  it('encodes valid instructions and refuses a bad worker count', () => {
    const prog = steeringProgram({ count: 2, publicAddrs: [PUB], forwards: [] });
    expect(prog.length % 8).toBe(0);
    expect(prog.length / 8).toBeLessThan(200);
    expect(() => steeringProgram({ count: 0, publicAddrs: [PUB], forwards: [] })).toThrow(RangeError);
  });
});
