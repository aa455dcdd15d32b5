/**
 * Packet capture on a lab link with tcpdump: start before the traffic, stop after, then read the
 * file back as text (`tcpdump -nn -r`) and as parsed lines. Tests use it to prove what the WAN saw
 * (for example, that no private address ever left the gateway).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from '../util/exec.js';
import { Cleanup } from './cleanup.js';
import { spawnIn, type NsProcess } from './process.js';

export interface CapturedPacket {
  /** The line as tcpdump printed it. */
  line: string;
  kind: 'ip' | 'arp' | 'other';
  protocol?: 'tcp' | 'udp' | 'icmp' | 'other';
  src?: string;
  dst?: string;
  srcPort?: number;
  dstPort?: number;
}

const QUAD = String.raw`\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}`;
const IP_LINE = new RegExp(String.raw`^\S+ IP (${QUAD})(?:\.(\d+))? > (${QUAD})(?:\.(\d+))?: (.*)$`);

/** Parse one line of `tcpdump -nn -r` (default verbosity, no link-level header). */
export function parseTcpdumpLine(line: string): CapturedPacket | null {
  if (line.trim() === '') return null;
  const m = IP_LINE.exec(line);
  if (m) {
    const rest = m[5]!;
    const hasPorts = m[2] !== undefined && m[4] !== undefined;
    const protocol: CapturedPacket['protocol'] = rest.startsWith('ICMP')
      ? 'icmp'
      : hasPorts && rest.startsWith('Flags')
        ? 'tcp'
        : hasPorts
          ? 'udp'
          : 'other';
    const p: CapturedPacket = { line, kind: 'ip', protocol, src: m[1]!, dst: m[3]! };
    if (hasPorts) {
      p.srcPort = Number(m[2]);
      p.dstPort = Number(m[4]);
    }
    return p;
  }
  if (/^\S+ ARP,/.test(line)) return { line, kind: 'arp' };
  return { line, kind: 'other' };
}

/** Every dotted-quad address a line mentions (outer header, ARP, and addresses quoted in ICMP errors). */
export function addressesIn(line: string): string[] {
  return line.match(new RegExp(`(?<![\\d.])${QUAD}`, 'g')) ?? [];
}

/** Lines that mention any address starting with `prefix` (e.g. "192.168."). */
export function linesMentioning(packets: readonly CapturedPacket[], prefix: string): string[] {
  return packets.filter((p) => addressesIn(p.line).some((a) => a.startsWith(prefix))).map((p) => p.line);
}

export interface Capture {
  file: string;
  process: NsProcess;
  /** Stop tcpdump (it flushes the file on SIGTERM). */
  stop(): Promise<void>;
  /** The capture as `tcpdump -nn -r` prints it (after stop). */
  text(): Promise<string>;
  /** The capture parsed line by line (after stop). */
  packets(): Promise<CapturedPacket[]>;
}

export interface CaptureOptions {
  cleanup: Cleanup;
  /** BPF filter words, e.g. ['not', 'arp']. */
  filter?: string[];
  /** Snap length (default 256: headers are enough). */
  snaplen?: number;
}

/** Start tcpdump on `dev` inside `netns`, writing to a temporary file; resolves once it listens. */
export async function startCapture(netns: string, dev: string, opts: CaptureOptions): Promise<Capture> {
  const dir = mkdtempSync(join(tmpdir(), 'tunnat-cap-'));
  opts.cleanup.defer({ label: `remove ${dir}`, sync: () => rmSync(dir, { recursive: true, force: true }) });
  const file = join(dir, `${netns}-${dev}.pcap`);
  // --immediate-mode: without it libpcap hands packets over in ring-buffer blocks, and whatever
  // sits in an unfinished block when we stop is lost. -U: write each packet as it comes.
  // -Z root: Debian's tcpdump would otherwise drop to a user that cannot write into our private
  // temporary directory.
  const proc = spawnIn(
    netns,
    ['tcpdump', '-i', dev, '-nn', '-U', '--immediate-mode', '-Z', 'root', '-s', String(opts.snaplen ?? 256), '-w', file, ...(opts.filter ?? [])],
    { label: `tcpdump ${netns}/${dev}`, cleanup: opts.cleanup },
  );
  await proc.waitForLine(/listening on/, 10_000);
  const read = async (): Promise<string> => (await run(['tcpdump', '-nn', '-r', file], { allowFail: true })).stdout;
  return {
    file,
    process: proc,
    stop: async () => {
      await proc.stop('SIGTERM', 3_000);
    },
    text: read,
    packets: async () =>
      (await read())
        .split('\n')
        .map(parseTcpdumpLine)
        .filter((p): p is CapturedPacket => p !== null),
  };
}
