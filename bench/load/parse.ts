/**
 * Readers for what the load benchmark's tools print: iperf3's JSON, the receiving host's UDP MIB
 * (/proc/net/snmp), ping's per-reply times, /proc/<pid>/status, /proc/slabinfo, `conntrack -C`,
 * Prometheus text and the result lines of the benchmark's own helper programs. Pure; each throws
 * a message that quotes the input when the input is not what the tool prints.
 */

function snippet(text: string): string {
  return JSON.stringify(text.length > 200 ? `${text.slice(0, 200)}…` : text);
}

function parseJsonObject(what: string, text: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw new Error(`${what} is not JSON: ${snippet(text)}`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error(`${what} is not a JSON object: ${snippet(text)}`);
  return v as Record<string, unknown>;
}

function obj(v: unknown): Record<string, unknown> | null {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
}

function num(v: unknown): number | null {
  return typeof v === 'number' && Number.isFinite(v) ? v : null;
}

/** iperf3 puts its failures in an "error" field of the JSON, with the exit code non-zero. */
function iperfError(j: Record<string, unknown>): void {
  if (typeof j.error === 'string') throw new Error(`iperf3: ${j.error}`);
}

export interface IperfTcpResult {
  /** Goodput as the receiver counted it. */
  receivedBitsPerSecond: number;
  sentBitsPerSecond: number;
  seconds: number;
  retransmits: number | null;
  streams: number;
}

/** `iperf3 -c … -J` for TCP: the receiver's bits per second (end.sum_received). */
export function parseIperfTcp(text: string): IperfTcpResult {
  const j = parseJsonObject('iperf3 output', text);
  iperfError(j);
  const end = obj(j.end);
  const recv = obj(end?.sum_received);
  const sent = obj(end?.sum_sent);
  const rbps = num(recv?.bits_per_second);
  const sbps = num(sent?.bits_per_second);
  const seconds = num(recv?.seconds);
  if (rbps === null || sbps === null || seconds === null) throw new Error(`iperf3 TCP output lacks end.sum_received/sum_sent: ${snippet(text)}`);
  const streams = Array.isArray(end?.streams) ? end.streams.length : 0;
  return { receivedBitsPerSecond: rbps, sentBitsPerSecond: sbps, seconds, retransmits: num(sent?.retransmits), streams };
}

export interface IperfUdpResult {
  /** Datagrams the client sent. */
  sentPackets: number;
  /** How long the client sent for. */
  seconds: number;
  /** Datagrams the iperf3 server read from its socket (the sequence span minus the gaps). */
  appReceivedPackets: number;
}

/** `iperf3 -c … -u -J`: sent (end.sum_sent) and what the server application read (end.sum_received). */
export function parseIperfUdp(text: string): IperfUdpResult {
  const j = parseJsonObject('iperf3 output', text);
  iperfError(j);
  const end = obj(j.end);
  // iperf3 ≥ 3.10 splits the sender's and the receiver's view; older ones have only end.sum.
  const sent = obj(end?.sum_sent) ?? obj(end?.sum);
  const recv = obj(end?.sum_received) ?? obj(end?.sum);
  const sentPackets = num(sent?.packets);
  const seconds = num(sent?.seconds);
  const span = num(recv?.packets);
  const lost = num(recv?.lost_packets);
  if (sentPackets === null || seconds === null || span === null || lost === null) {
    throw new Error(`iperf3 UDP output lacks end.sum_sent/sum_received packet counts: ${snippet(text)}`);
  }
  return { sentPackets, seconds, appReceivedPackets: Math.max(0, span - lost) };
}

export interface UdpMib {
  inDatagrams: number;
  noPorts: number;
  inErrors: number;
  rcvbufErrors: number;
}

/**
 * The "Udp:" lines of /proc/net/snmp (per network namespace). A datagram that reached the host's
 * UDP layer is counted in exactly one of InDatagrams, NoPorts or InErrors (RcvbufErrors is a subset
 * of InErrors), so their sum is what crossed the NAT, whether or not the application kept up.
 */
export function parseUdpMib(text: string): UdpMib {
  const lines = text.split('\n').filter((l) => l.startsWith('Udp:'));
  if (lines.length < 2) throw new Error(`no Udp: header and value lines in /proc/net/snmp: ${snippet(text)}`);
  const names = lines[0]!.trim().split(/\s+/).slice(1);
  const values = lines[1]!.trim().split(/\s+/).slice(1).map(Number);
  const get = (name: string): number => {
    const i = names.indexOf(name);
    const v = i >= 0 ? values[i] : undefined;
    if (v === undefined || !Number.isFinite(v)) throw new Error(`/proc/net/snmp has no Udp ${name}: ${snippet(lines.join('\n'))}`);
    return v;
  };
  return { inDatagrams: get('InDatagrams'), noPorts: get('NoPorts'), inErrors: get('InErrors'), rcvbufErrors: get('RcvbufErrors') };
}

/** Datagrams that reached the UDP layer between two readings. */
export function udpArrived(before: UdpMib, after: UdpMib): number {
  return after.inDatagrams - before.inDatagrams + (after.noPorts - before.noPorts) + (after.inErrors - before.inErrors);
}

/** Round-trip times of every reply ping printed ("… time=0.045 ms"), in microseconds. */
export function parsePingRtts(text: string): number[] {
  const out: number[] = [];
  for (const m of text.matchAll(/\btime[=<]([\d.]+) ms\b/g)) out.push(Number(m[1]) * 1000);
  return out;
}

/** VmRSS from /proc/<pid>/status, in bytes. */
export function parseVmRss(text: string): number {
  const m = /^VmRSS:\s+(\d+)\s+kB$/m.exec(text);
  if (!m) throw new Error(`no VmRSS line in /proc/<pid>/status: ${snippet(text)}`);
  return Number(m[1]) * 1024;
}

export interface SlabLine {
  activeObjs: number;
  numObjs: number;
  objSize: number;
}

/** One cache's line of /proc/slabinfo (v2.1: name active_objs num_objs objsize …); null when absent. */
export function parseSlabinfo(text: string, cache: string): SlabLine | null {
  for (const line of text.split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f[0] !== cache) continue;
    const [activeObjs, numObjs, objSize] = [Number(f[1]), Number(f[2]), Number(f[3])];
    if (![activeObjs, numObjs, objSize].every(Number.isFinite)) throw new Error(`unreadable slabinfo line: ${snippet(line)}`);
    return { activeObjs, numObjs, objSize };
  }
  return null;
}

/** `conntrack -C`: one number. */
export function parseConntrackCount(text: string): number {
  const t = text.trim();
  if (!/^\d+$/.test(t)) throw new Error(`conntrack -C printed ${snippet(text)}, not a count`);
  return Number(t);
}

/** Sum of every sample of one metric in Prometheus text format (all label sets); null when absent. */
export function sumMetric(text: string, name: string): number | null {
  let total: number | null = null;
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const v = Number(m[3]);
    if (Number.isFinite(v)) total = (total ?? 0) + v;
  }
  return total;
}

/**
 * The benchmark's helper programs end by printing one line `RESULT {json}`; the last such line
 * wins (a program prints nothing else that starts with RESULT).
 */
export function parseResultLine(output: string, program: string): Record<string, unknown> {
  const lines = output.split('\n').filter((l) => l.startsWith('RESULT '));
  const last = lines[lines.length - 1];
  if (last === undefined) throw new Error(`${program} printed no RESULT line; it printed: ${snippet(output)}`);
  return parseJsonObject(`${program}'s RESULT line`, last.slice('RESULT '.length));
}

/** A non-negative finite number field of a helper's result, or a thrown error naming it. */
export function resultNumber(r: Record<string, unknown>, field: string, program: string): number {
  const v = num(r[field]);
  if (v === null || v < 0) throw new Error(`${program}'s result has no number "${field}": ${snippet(JSON.stringify(r))}`);
  return v;
}
