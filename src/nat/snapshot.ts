import { readFileSync, writeFileSync, renameSync } from 'node:fs';
import { ipToString, parseIpv4 } from '../wire/addr.js';
import { FLOW_IN_USE } from '../conntrack/table.js';
import type { Translator } from './translator.js';
import type { RestoredFlow, SavedMapping } from './restore.js';

/**
 * The flow table across a restart (`tunnat run --state FILE`): written on SIGTERM, read back on the next
 * start, so connections through the gateway survive a restart within their timeouts.
 *
 * JSON with compact arrays (about 150 bytes a flow). Times are stored as "milliseconds left", since the
 * next process has its own monotonic clock. A file that is not ours, is damaged, or was written for
 * another LAN/public address is reported and ignored: restoring wrong mappings would be worse than none.
 */
export const SNAPSHOT_FORMAT = 'tunnat-flows';
export const SNAPSHOT_VERSION = 1;

type SavedMap = [number, number, number, number] | null; // internal addr, internal port, external addr, external port
/** [protocol, flags, state, detail, msLeft, o.src, o.dst, o.sport, o.dport, r.src, r.dst, r.sport, r.dport, pk0, pk1, by0, by1, m, m2] */
type SavedFlow = [
  number, number, number, number, number,
  number, number, number, number, number, number, number, number,
  number, number, number, number, SavedMap, SavedMap,
];

export interface Snapshot {
  format: typeof SNAPSHOT_FORMAT;
  version: number;
  savedAt: string;
  publicIp: string;
  internal: string[];
  flows: SavedFlow[];
}

export class SnapshotError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SnapshotError';
  }
}

function savedMap(nat: Translator, m: number): SavedMap {
  if (m < 0) return null;
  const t = nat.mappings;
  return [t.intAddr[m]!, t.intPort[m]!, t.extAddr[m]!, t.extPort[m]!];
}

export function takeSnapshot(nat: Translator, internal: string[], now: number): Snapshot {
  const t = nat.flows;
  const flows: SavedFlow[] = [];
  for (const f of t.flows()) {
    const left = t.expires[f]! - now;
    if (left <= 0) continue;
    const o = f * 2;
    const r = o + 1;
    flows.push([
      t.proto[f]!, t.flags[f]! & ~FLOW_IN_USE, t.state[f]!, t.detail[f]!, Math.round(left),
      t.tSrc[o]!, t.tDst[o]!, t.tSport[o]!, t.tDport[o]!, t.tSrc[r]!, t.tDst[r]!, t.tSport[r]!, t.tDport[r]!,
      t.packets[o]!, t.packets[r]!, t.bytes[o]!, t.bytes[r]!,
      savedMap(nat, t.mapping[f]!), savedMap(nat, t.mapping2[f]!),
    ]);
  }
  return {
    format: SNAPSHOT_FORMAT,
    version: SNAPSHOT_VERSION,
    savedAt: new Date().toISOString(),
    publicIp: ipToString(nat.publicAddress),
    internal,
    flows,
  };
}

/** Write atomically (a crash mid-write leaves the old file or none, never half a file). */
export function writeSnapshot(path: string, snap: Snapshot): void {
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, JSON.stringify(snap));
  renameSync(tmp, path);
}

const isU32 = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xffffffff;
const isU16 = (v: unknown): v is number => isU32(v) && v <= 0xffff;
const isCount = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v) && v >= 0;

function parseMap(v: unknown): SavedMapping | null | undefined {
  if (v === null) return null;
  if (!Array.isArray(v) || v.length !== 4 || !isU32(v[0]) || !isU16(v[1]) || !isU32(v[2]) || !isU16(v[3])) return undefined;
  return { internalAddress: v[0], internalPort: v[1], externalAddress: v[2], externalPort: v[3] };
}

function parseFlow(v: unknown): RestoredFlow | null {
  if (!Array.isArray(v) || v.length !== 19) return null;
  const [proto, flags, state, detail, left] = v;
  // Any protocol number: SCTP and UDP-Lite flows have mappings like UDP, the rest none (address-only).
  if (!Number.isInteger(proto) || proto < 0 || proto > 255 || !isU16(flags) || !isU16(state) || !isU16(detail) || !isCount(left)) return null;
  for (let i = 5; i < 13; i++) {
    if (!(i === 7 || i === 8 || i === 11 || i === 12 ? isU16(v[i]) : isU32(v[i]))) return null;
  }
  for (let i = 13; i < 17; i++) if (!isCount(v[i])) return null;
  const m = parseMap(v[17]);
  const m2 = parseMap(v[18]);
  if (m === undefined || m2 === undefined) return null;
  return {
    protocol: proto, flags, state, detail, msLeft: left,
    original: [v[5], v[6], v[7], v[8]],
    reply: [v[9], v[10], v[11], v[12]],
    packets: [v[13], v[14]],
    bytes: [v[15], v[16]],
    mapping: m,
    mapping2: m2,
  };
}

/** Read and check a snapshot; throws SnapshotError saying what is wrong with it. */
export function readSnapshot(path: string): { publicIp: number; internal: string[]; flows: RestoredFlow[]; rejected: number } {
  let data: unknown;
  try {
    data = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new SnapshotError(`${path} is not a readable JSON file: ${(err as Error).message}`);
  }
  const d = data as Partial<Snapshot>;
  if (typeof data !== 'object' || data === null || d.format !== SNAPSHOT_FORMAT) {
    throw new SnapshotError(`${path} is not a tunnat flow snapshot`);
  }
  if (d.version !== SNAPSHOT_VERSION) throw new SnapshotError(`${path} has snapshot version ${String(d.version)}; this tunnat reads ${SNAPSHOT_VERSION}`);
  const publicIp = typeof d.publicIp === 'string' ? parseIpv4(d.publicIp) : null;
  if (publicIp === null || !Array.isArray(d.internal) || !Array.isArray(d.flows)) {
    throw new SnapshotError(`${path} is damaged (publicIp, internal or flows missing)`);
  }
  const flows: RestoredFlow[] = [];
  let rejected = 0;
  for (const f of d.flows) {
    const r = parseFlow(f);
    if (r) flows.push(r);
    else rejected++;
  }
  return { publicIp, internal: d.internal.map(String), flows, rejected };
}

/**
 * Restore what fits this run: same LAN prefixes and public address, else nothing. Returns counts for
 * the log line.
 */
export function restoreSnapshot(
  nat: Translator, path: string, internal: string[], now: number,
): { restored: number; skipped: number; reason?: string } {
  const snap = readSnapshot(path);
  if (JSON.stringify([...snap.internal].sort()) !== JSON.stringify([...internal].sort())) {
    return { restored: 0, skipped: snap.flows.length, reason: `it was saved for --internal ${snap.internal.join(',')}` };
  }
  if (snap.publicIp !== nat.publicAddress) {
    return { restored: 0, skipped: snap.flows.length, reason: `it was saved for public address ${ipToString(snap.publicIp)}` };
  }
  let restored = 0;
  for (const f of snap.flows) if (nat.restoreFlow(f, now)) restored++;
  return { restored, skipped: snap.flows.length - restored + snap.rejected };
}
