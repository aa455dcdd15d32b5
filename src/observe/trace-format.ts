import type { PacketInfo } from './decode.js';
import type { TraceRecord } from './trace.js';

/**
 * The trace as a person reads it: a header line per packet, then indented lines on the flow, the
 * port decision, the rewritten fields and the checksum check, then the packet as it left.
 */
export const DROP_EXPLANATIONS: Record<string, string> = {
  malformed: 'its headers do not parse (too short, or lengths that do not add up)',
  'no-mapping': 'no flow or mapping matches it (unsolicited from outside, or a TCP segment other than SYN opening a flow)',
  'table-full': 'the flow table is full and no unassured flow could be evicted (raise --max-flows)',
  'ports-exhausted': 'no public port is free for a new mapping (widen --ports)',
  fragment: 'a fragment without ports: tunnat does not reassemble',
  'unsupported-protocol': 'tunnat translates only TCP, UDP and ICMP over IPv4',
  'tcp-flags': 'its TCP flags are not valid (a combination no stack sends, or one the flow state does not allow)',
  checksum: 'an ICMP error whose checksum is wrong',
  'not-ours': 'it is neither from an --internal prefix nor to the public address',
  ttl: 'its TTL ran out',
  'egress-policy': 'the egress policy does not allow this destination',
};

function endpoint(p: { protocol: string; src: string; dst: string; srcPort?: number; dstPort?: number; icmpId?: number }): string {
  if (p.srcPort !== undefined && p.dstPort !== undefined) return `${p.src}:${p.srcPort} → ${p.dst}:${p.dstPort}`;
  return `${p.src} → ${p.dst}${p.icmpId !== undefined ? ` id ${p.icmpId}` : ''}`;
}

export function describePacket(p: PacketInfo): string {
  let s = `${p.protocol} ${endpoint(p)}`;
  if (p.tcpFlags) s += ` [${p.tcpFlags}]`;
  if (p.icmpType !== undefined) s += ` type ${p.icmpType}/${p.icmpCode ?? 0}`;
  if (p.quoted) s += ` (quoting ${p.quoted.protocol} ${endpoint(p.quoted)})`;
  if (p.fragment) s += ' fragment';
  return `${s}  len ${p.length} ttl ${p.ttl}`;
}

/** Protocols whose flows carry ports; every other one is tracked by address only (src/nat/generic.ts). */
const PORTED = ['tcp', 'udp', 'sctp', 'udplite'];

function tuple(t: { src: string; dst: string; srcPort: number; dstPort: number }, proto: string): string {
  if (proto === 'icmp') return `${t.src} → ${t.dst} id ${t.srcPort || t.dstPort}`;
  return PORTED.includes(proto) ? `${t.src}:${t.srcPort} → ${t.dst}:${t.dstPort}` : `${t.src} → ${t.dst}`;
}

function clock(iso: string): string {
  const i = iso.indexOf('T');
  return i >= 0 ? iso.slice(i + 1, iso.length - 1) : iso;
}

export function formatTrace(r: TraceRecord): string[] {
  const lines: string[] = [];
  const what = r.verdict === 'drop' ? `DROP (${r.drop ?? '?'})` : r.verdict === 'held' ? 'HELD' : r.verdict === 'handoff' ? 'HANDOFF' : (r.path ?? 'forward').toUpperCase();
  lines.push(`#${r.seq} ${clock(r.time)} ${what.padEnd(9)} ${r.before ? describePacket(r.before) : '(not an IPv4 packet)'}`);
  const f = r.flow;
  if (f) {
    const p = f.protocol;
    if (f.created) {
      lines.push(`  flow ${f.id} NEW: original ${tuple(f.original, p)}, replies expected as ${tuple(f.reply, p)}`);
    } else if (f.matched === 'reply') {
      lines.push(`  flow ${f.id} matched by its reply tuple ${tuple(f.reply, p)}: this is a reply, it goes back to ${f.original.src}${PORTED.includes(p) ? ':' + f.original.srcPort : ''}`);
    } else {
      lines.push(`  flow ${f.id} matched by its original tuple ${tuple(f.original, p)}`);
    }
    const state = f.stateBefore && f.stateBefore !== f.state ? `${f.stateBefore} → ${f.state}` : f.state;
    lines.push(`  state ${state}; expires in ${f.secondsLeft} s unless more traffic comes; packets ${f.packets.original} out / ${f.packets.reply} back`);
  }
  if (r.port) lines.push(`  port ${r.port.publicPort} (${r.port.decision}): ${r.port.why}`);
  if (r.alg) lines.push(`  ${r.alg.name} ALG rewrote ${JSON.stringify(r.alg.old)} → ${JSON.stringify(r.alg.new)}`);
  if (r.verdict === 'held') {
    lines.push('  held: a fragment that came before its first fragment; it is sent, translated, once the first one arrives');
    return lines;
  }
  if (r.verdict === 'handoff') {
    lines.push('  handed to the worker that holds this FTP data endpoint (its control connection is there); it is translated there');
    return lines;
  }
  if (r.path === 'hairpin') lines.push('  hairpin: LAN to LAN through the public address; both ends see each other as public endpoints');
  if (r.verdict === 'drop') {
    lines.push(`  dropped: ${r.drop ? (DROP_EXPLANATIONS[r.drop] ?? r.drop) : 'unknown reason'}`);
    return lines;
  }
  if (r.path === 'local') lines.push("  no flow claims it: the gateway's own traffic (to it, or its own ICMP to the WAN), written back unchanged");
  if (r.changes.length > 0) {
    const fields = r.changes.filter((c) => !c.field.endsWith('checksum'));
    const sums = r.changes.filter((c) => c.field.endsWith('checksum'));
    if (fields.length > 0) lines.push(`  rewrote   ${fields.map((c) => `${c.field} ${c.from} → ${c.to}`).join(', ')}`);
    if (fields.some((c) => c.field === 'ip.ttl')) {
      lines.push('            (ttl +1: the gateway routes the packet twice, into the TUN and out again, and must count as one hop)');
    }
    if (sums.length > 0) {
      const how = r.checksumPartial ? 'IP: RFC 1624 incremental update; transport: the new addresses added into the partial sum' : 'RFC 1624 incremental updates';
      lines.push(`  checksums ${sums.map((c) => `${c.field} ${c.from} → ${c.to}`).join(', ')} (${how})`);
    }
  }
  if (r.checksumsVerified !== null && r.checksumPartial) {
    const l4 = r.after?.protocol ?? 'transport';
    lines.push(
      r.checksumsVerified
        ? `  verified  IP checksum recomputed in full matches; the ${l4} checksum is partial (TUN offload: it holds the pseudo-header sum, and the kernel completes it on the way out) and that sum is right`
        : `  verified  A CHECKSUM IS WRONG after translation (the ${l4} checksum is partial: it should hold the pseudo-header sum)`,
    );
  } else if (r.checksumsVerified !== null) {
    lines.push(`  verified  ${r.checksumsVerified ? 'every checksum recomputed in full matches' : 'A CHECKSUM IS WRONG after translation'}`);
  }
  if (r.segments > 1) lines.push(`  gso       one superpacket standing for ${r.segments} wire packets (the kernel cuts it up on the way out)`);
  if (r.after) lines.push(`  after     ${describePacket(r.after)}`);
  return lines;
}

export function formatSuppressed(count: number, rate: number): string {
  return `  … ${count} packet${count === 1 ? '' : 's'} not shown (--rate ${rate}/s)`;
}
