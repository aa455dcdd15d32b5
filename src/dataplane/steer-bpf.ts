import { IPPROTO } from '../wire/ipv4.js';
import { ICMP_TYPE } from '../wire/icmp.js';
import { sliceOwner } from '../nat/ports.js';
import type { PortForward } from '../nat/policy.js';

/**
 * The queue-steering program for a multi-queue TUN (--workers N): a small eBPF socket-filter program that
 * the kernel runs for every packet routed into the device (TUNSETSTEERINGEBPF), returning the queue to put
 * it on. It computes the same owner as Steering.ownerOf (steering.ts) for the packets that make up nearly
 * all traffic: TCP, UDP, SCTP and UDP-Lite by port, ICMP queries by identifier, address-only protocols by
 * remote address. So a packet lands on the queue of the worker that owns its flow and no hand-off is needed.
 * What it leaves alone (ICMP errors, later fragments, the gateway's own packets, anything malformed) goes
 * to queue 0, and userspace steering hands it on as before: the program is a fast path, never the authority.
 *
 * Queue i must be worker i's: the main thread opens the workers' queues in worker order, after detaching
 * its own (workers.ts). The kernel takes the return value modulo the number of attached queues.
 *
 * Written as bytecode here (the same few instructions every classic packet filter uses) rather than
 * compiled C, so that the project needs no clang; steer-bpf.test.ts runs it in a small interpreter against
 * Steering.ownerOf.
 */

// Instruction classes, sizes, modes, operations (linux/bpf_common.h, linux/bpf.h).
const LD = 0x00;
const ALU = 0x04; // 32-bit: results are zero-extended
const JMP = 0x05;
const JMP32 = 0x06;
const ALU64 = 0x07;
const W = 0x00;
const H = 0x08;
const B = 0x10;
const ABS = 0x20;
const IND = 0x40;
const K = 0x00;
const X = 0x08;
export const OP = { ADD: 0x00, MUL: 0x20, AND: 0x50, LSH: 0x60, RSH: 0x70, MOD: 0x90, XOR: 0xa0, MOV: 0xb0 } as const;
export const JOP = { JA: 0x00, JEQ: 0x10, JGT: 0x20, JNE: 0x50, JLT: 0xa0, EXIT: 0x90 } as const;
export const BPF = { LD, ALU, JMP, JMP32, ALU64, W, H, B, ABS, IND, K, X } as const;

/** At most this many forwards are written into the program; the rest are handed off by userspace. */
export const MAX_STEERED_FORWARDS = 512;

/** More instructions than the kernel's unprivileged limit would mean a bug here. */
const MAX_INSNS = 4096;

interface Insn {
  code: number;
  dst: number;
  src: number;
  off: number | string;
  imm: number;
}

class Assembler {
  readonly insns: Insn[] = [];
  private readonly labels = new Map<string, number>();
  private anon = 0;

  emit(code: number, dst: number, src: number, off: number | string, imm: number): void {
    this.insns.push({ code, dst, src, off, imm: imm | 0 });
  }
  label(name: string): void {
    this.labels.set(name, this.insns.length);
  }
  fresh(): string {
    return `.${this.anon++}`;
  }
  /** r0 = the packet's byte/half/word at `off`, in host order (LD_ABS; out of the packet: return 0). */
  ldAbs(size: number, off: number): void {
    this.emit(LD | size | ABS, 0, 0, 0, off);
  }
  /** r0 = the packet's byte/half/word at reg + off (LD_IND). */
  ldInd(size: number, reg: number, off: number): void {
    this.emit(LD | size | IND, 0, reg, 0, off);
  }
  alu32(op: number, dst: number, imm: number): void {
    this.emit(ALU | op | K, dst, 0, 0, imm);
  }
  alu32x(op: number, dst: number, src: number): void {
    this.emit(ALU | op | X, dst, src, 0, 0);
  }
  mov64x(dst: number, src: number): void {
    this.emit(ALU64 | OP.MOV | X, dst, src, 0, 0);
  }
  /** if (reg op imm) goto label; 32-bit compares the low halves (addresses above 2^31 as they are). */
  jmp(op: number, reg: number, imm: number, label: string, wide32 = false): void {
    this.emit((wide32 ? JMP32 : JMP) | op | K, reg, 0, label, imm);
  }
  ja(label: string): void {
    this.emit(JMP | JOP.JA, 0, 0, label, 0);
  }
  ret(imm: number): void {
    this.alu32(OP.MOV, 0, imm);
    this.exit();
  }
  exit(): void {
    this.emit(JMP | JOP.EXIT, 0, 0, 0, 0);
  }

  bytes(): Buffer {
    if (this.insns.length > MAX_INSNS) throw new RangeError(`steering program too long: ${this.insns.length} instructions`);
    // The verifier refuses code that no path reaches: find it here, where a test sees it.
    const targets = this.insns.map((ins, pc) => (typeof ins.off === 'string' ? this.labels.get(ins.off) ?? -1 : pc + 1 + ins.off));
    const reached = new Uint8Array(this.insns.length);
    const todo = [0];
    while (todo.length > 0) {
      const pc = todo.pop()!;
      if (pc < 0 || pc >= this.insns.length || reached[pc] === 1) continue;
      reached[pc] = 1;
      const { code } = this.insns[pc]!;
      const cls = code & 7;
      const op = code & 0xf0;
      if (cls === JMP && op === JOP.EXIT) continue;
      if ((cls === JMP || cls === JMP32) && op === JOP.JA) {
        todo.push(targets[pc]!);
        continue;
      }
      if (cls === JMP || cls === JMP32) todo.push(targets[pc]!);
      todo.push(pc + 1);
    }
    const dead = reached.indexOf(0);
    if (dead >= 0) throw new Error(`steering program: instruction ${dead} is unreachable`);
    const out = Buffer.alloc(this.insns.length * 8);
    this.insns.forEach((ins, pc) => {
      let off = ins.off;
      if (typeof off === 'string') {
        const at = this.labels.get(off);
        if (at === undefined) throw new Error(`steering program: no label ${off}`);
        off = at - (pc + 1);
      }
      out[pc * 8] = ins.code;
      out[pc * 8 + 1] = (ins.dst & 15) | ((ins.src & 15) << 4);
      out.writeInt16LE(off, pc * 8 + 2);
      out.writeInt32LE(ins.imm, pc * 8 + 4);
    });
    return out;
  }
}

const QUERY_TYPES = (1 << ICMP_TYPE.ECHO_REPLY) | (1 << ICMP_TYPE.ECHO_REQUEST) | (1 << ICMP_TYPE.TIMESTAMP) | (1 << ICMP_TYPE.TIMESTAMP_REPLY);
const PORTED = [IPPROTO.TCP, IPPROTO.UDP, IPPROTO.SCTP, IPPROTO.UDPLITE];

export interface SteeringSpec {
  count: number;
  publicAddrs: readonly number[];
  forwards: readonly Pick<PortForward, 'protocol' | 'address' | 'port' | 'publicPort'>[];
}

/**
 * Registers: r6 the packet (LD_ABS/LD_IND need it there), r7 the IPv4 header length and then a port, r8
 * the protocol, r9 an address. r0 to r5 are scratch (every packet load overwrites them).
 */
export function steeringProgram(spec: SteeringSpec): Buffer {
  const { count } = spec;
  if (!Number.isInteger(count) || count < 1 || count > 64) throw new RangeError(`workers must be 1..64, got ${count}`);
  const a = new Assembler();
  a.mov64x(6, 1);
  // IPv4, not a later fragment, a sane header length.
  a.ldAbs(B, 0);
  a.alu32(OP.AND, 0, 0xf0);
  a.jmp(JOP.JNE, 0, 0x40, 'other');
  a.ldAbs(H, 6);
  a.alu32(OP.AND, 0, 0x1fff);
  a.jmp(JOP.JNE, 0, 0, 'other');
  a.ldAbs(B, 0);
  a.alu32(OP.AND, 0, 0x0f);
  a.alu32(OP.LSH, 0, 2);
  a.mov64x(7, 0);
  a.jmp(JOP.JLT, 7, 20, 'other');
  a.ldAbs(B, 9);
  a.mov64x(8, 0);
  // From a public address: the gateway's own packets (userspace picks out its ICMP errors).
  a.ldAbs(W, 12);
  a.mov64x(9, 0);
  for (const p of spec.publicAddrs) a.jmp(JOP.JEQ, 9, p, 'other', true);
  // To a public address: inbound.
  a.ldAbs(W, 16);
  for (const p of spec.publicAddrs) a.jmp(JOP.JEQ, 0, p, 'inbound', true);

  // Outbound (from the LAN, or LAN to LAN): r9 = source address, r0 = destination address.
  for (const p of PORTED) a.jmp(JOP.JEQ, 8, p, 'out-ported');
  a.jmp(JOP.JEQ, 8, IPPROTO.ICMP, 'out-icmp');
  a.ja('hash'); // address-only protocols: the remote (destination) address
  a.label('out-ported');
  a.ldInd(H, 7, 0); // the inside port
  // A forward's LAN target goes with the forward's public port.
  for (const f of spec.forwards.slice(0, MAX_STEERED_FORWARDS)) {
    const next = a.fresh();
    a.jmp(JOP.JNE, 8, f.protocol, next);
    a.jmp(JOP.JNE, 0, f.port, next);
    a.jmp(JOP.JNE, 9, f.address, next, true);
    a.ret(sliceOwner(f.publicPort, count));
    a.label(next);
  }
  a.ja('slice');
  a.label('out-icmp');
  queryId(a, false);

  // Inbound: r9 = source (remote) address. (No public address yet: no inbound code, which the verifier
  // would refuse as unreachable.)
  if (spec.publicAddrs.length > 0) {
    a.label('inbound');
    for (const p of PORTED) a.jmp(JOP.JEQ, 8, p, 'in-ported');
    a.jmp(JOP.JEQ, 8, IPPROTO.ICMP, 'in-icmp');
    a.mov64x(0, 9);
    a.ja('hash');
    a.label('in-ported');
    a.ldInd(H, 7, 2); // the public port
    a.ja('slice');
    a.label('in-icmp');
    queryId(a, true);
  }

  // sliceOwner(r0) = (port >>> 1) % count
  a.label('slice');
  a.alu32(OP.RSH, 0, 1);
  a.alu32(OP.MOD, 0, count);
  a.exit();

  // hashAddress(r0) in steering.ts: two multiply-xorshift rounds.
  a.label('hash');
  for (let round = 0; round < 3; round++) {
    a.mov64x(1, 0);
    a.alu32(OP.RSH, 1, 16);
    a.alu32x(OP.XOR, 0, 1);
    if (round < 2) a.alu32(OP.MUL, 0, 0x45d9f3b);
  }
  a.alu32(OP.MOD, 0, count);
  a.exit();

  a.label('other');
  a.ret(0);
  return a.bytes();
}

/**
 * ICMP: a query (echo, timestamp) goes by its identifier; an error is left to userspace (queue 0), which
 * steers it by the flow it quotes. Inbound, a request is for the gateway itself: any queue.
 */
function queryId(a: Assembler, inbound: boolean): void {
  a.ldInd(B, 7, 0);
  a.jmp(JOP.JGT, 0, 31, 'other');
  if (inbound) {
    a.jmp(JOP.JEQ, 0, ICMP_TYPE.ECHO_REQUEST, 'other');
    a.jmp(JOP.JEQ, 0, ICMP_TYPE.TIMESTAMP, 'other');
  }
  a.alu32(OP.MOV, 1, QUERY_TYPES);
  a.alu32x(OP.RSH, 1, 0);
  a.alu32(OP.AND, 1, 1);
  a.jmp(JOP.JEQ, 1, 0, 'other');
  a.ldInd(H, 7, 4);
  a.ja('slice');
}
