/**
 * Renderings of a load report: the stdout table, the markdown section of docs/benchmarks.md and
 * its SVG bar chart (hand-written SVG: two panels, no plotting dependency). Pure functions of the
 * report, so the smoke test can render made-up reports.
 */
import type { RunnerName } from './engines.js';
import { formatRatio, formatValue, goalCell, RUNNER_ORDER, type LoadReport, type SummaryRow } from './summary.js';

export const DOCS_HEADING = '## Load: userspace vs kernel NAT';

export const RUNNER_TITLE: Record<RunnerName, string> = {
  userspace: 'tunnat (userspace)',
  kernel: 'kernel NAT',
  slirp4netns: 'slirp4netns',
  route: 'no NAT (routing)',
  'tun-floor': 'TUN floor (C, no NAT)',
};

const RUNNER_COLOR: Record<RunnerName, string> = {
  userspace: '#2b6cb0',
  kernel: '#718096',
  slirp4netns: '#dd6b20',
  route: '#38a169',
  'tun-floor': '#805ad5',
};

/** Runner columns that any row has a value (or a failed run) for, in a fixed order. */
export function columnsOf(rows: readonly SummaryRow[]): RunnerName[] {
  return RUNNER_ORDER.filter((n) => rows.some((r) => n in r.medians));
}

function cell(row: SummaryRow, n: RunnerName): string {
  if (!(n in row.medians)) return '';
  const v = row.medians[n];
  return v === null || v === undefined ? 'failed' : formatValue(v);
}

function textTable(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string =>
    cells.map((c, i) => (i === 0 || i === cells.length - 1 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ').trimEnd();
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

export function machineLine(r: LoadReport): string {
  const m = r.machine;
  return `${m.cpuModel} × ${m.cores} cores, ${(m.totalMemoryMiB / 1024).toFixed(0)} GiB, Linux ${m.kernel}, node ${m.node}, ` +
    `load average ${m.loadAverageStart.toFixed(2)} → ${m.loadAverageEnd.toFixed(2)}`;
}

function kernelLine(r: LoadReport): string {
  return r.kernel ? `kernel column: ${r.kernel.description} — ${r.kernel.reason}` : 'kernel column: not run';
}

/** The stdout report: header lines, the table with ratio and goal columns, failures. */
export function formatText(r: LoadReport): string {
  const cols = columnsOf(r.summary);
  const floor = cols.includes('tun-floor');
  const header = ['metric', ...cols.map((n) => RUNNER_TITLE[n]), 'user/kernel', ...(floor ? ['user/floor'] : []), 'goal'];
  const rows = r.summary.map((row) => [
    `${row.label} (${row.unit})`,
    ...cols.map((n) => cell(row, n)),
    formatRatio(row.ratio),
    ...(floor ? [formatRatio(row.floorRatio ?? null)] : []),
    goalCell(row),
  ]);
  const out: string[] = [];
  out.push(`tunnat load benchmark (${r.mode}) — ${r.date}`);
  out.push(machineLine(r));
  out.push(kernelLine(r));
  out.push(`medians of ${r.config.rounds} interleaved round(s); ${r.config.restartPolicy}`);
  out.push('');
  out.push(textTable(header, rows));
  const failed = r.runs.filter((x) => x.error !== null);
  if (failed.length > 0) {
    out.push('');
    out.push(`FAILED runs (${failed.length}):`);
    for (const f of failed) out.push(`  ${f.measurement} / ${f.runner} / round ${f.round}: ${f.error}`);
  }
  for (const n of r.notes) out.push(`note: ${n}`);
  out.push('');
  out.push(`${r.runs.length} runs in ${r.durationSeconds.toFixed(0)} s.`);
  return out.join('\n');
}

function mdEscape(s: string): string {
  return s.replace(/\|/g, '\\|');
}

export function markdownTable(r: LoadReport): string {
  const cols = columnsOf(r.summary);
  const floor = cols.includes('tun-floor');
  const header = ['Measurement', ...cols.map((n) => RUNNER_TITLE[n]), 'userspace / kernel', ...(floor ? ['userspace / TUN floor'] : []), 'Goal'];
  const lines = [
    `| ${header.join(' | ')} |`,
    `|${header.map((_, i) => (i === 0 || i === header.length - 1 ? ' --- ' : ' ---: ')).join('|')}|`,
  ];
  for (const row of r.summary) {
    const cells = [
      `${row.label} (${row.unit})`, ...cols.map((n) => cell(row, n) || '—'), formatRatio(row.ratio),
      ...(floor ? [formatRatio(row.floorRatio ?? null)] : []), goalCell(row),
    ];
    lines.push(`| ${cells.map(mdEscape).join(' | ')} |`);
  }
  return lines.join('\n');
}

// ---------------------------------------------------------------------------------------------
// SVG

function xml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

export interface Bar {
  series: RunnerName;
  value: number | null;
  text: string;
}

export interface BarGroup {
  label: string;
  /** A second, smaller line under the label (e.g. the kernel's absolute value). */
  sublabel?: string;
  bars: Bar[];
  /** Goal tick on this group's bars (in the panel's units). */
  goal?: { at: number; label: string };
}

export interface Panel {
  title: string;
  groups: BarGroup[];
  /** A vertical reference line across the panel (e.g. kernel = 1.0). */
  reference?: { at: number; label: string };
}

const W = 760;
const LABEL_W = 190;
const PLOT_X = LABEL_W + 10;
const PLOT_W = 430;
const BAR_H = 14;
const BAR_GAP = 3;
const GROUP_GAP = 12;

/** Text with a white halo, so a reference or goal line behind it does not make it unreadable. */
function label(x: number | string, y: number, text: string, attrs = ''): string {
  return `<text x="${x}" y="${y}" stroke="#ffffff" stroke-width="3" paint-order="stroke"${attrs ? ` ${attrs}` : ''}>${xml(text)}</text>`;
}

function panelSvg(p: Panel, y0: number): { svg: string; height: number } {
  const values = p.groups.flatMap((g) => g.bars.map((b) => b.value ?? 0));
  const max = Math.max(...values, p.reference?.at ?? 0, ...p.groups.map((g) => g.goal?.at ?? 0), 1e-9) * 1.08;
  const x = (v: number): number => PLOT_X + (Math.max(0, v) / max) * PLOT_W;
  const lines: string[] = [];
  const bars: string[] = [];
  const texts: string[] = [];
  texts.push(`<text x="10" y="${y0 + 14}" font-weight="bold">${xml(p.title)}</text>`);
  // Room above the bars for the reference line's label.
  let y = y0 + (p.reference ? 38 : 26);
  const top = y;
  for (const g of p.groups) {
    const gh = g.bars.length * (BAR_H + BAR_GAP) - BAR_GAP;
    const mid = y + gh / 2 + 4;
    texts.push(`<text x="${LABEL_W}" y="${g.sublabel ? mid - 6 : mid}" text-anchor="end">${xml(g.label)}</text>`);
    if (g.sublabel) texts.push(`<text x="${LABEL_W}" y="${mid + 8}" text-anchor="end" font-size="10" fill="#4a5568">${xml(g.sublabel)}</text>`);
    if (g.goal) {
      const gx = x(g.goal.at).toFixed(1);
      lines.push(`<line x1="${gx}" y1="${y - 3}" x2="${gx}" y2="${y + gh + 3}" stroke="#c53030" stroke-width="2" stroke-dasharray="3,2"><title>${xml(g.goal.label)}</title></line>`);
    }
    for (const b of g.bars) {
      if (b.value === null) {
        texts.push(label(PLOT_X + 4, y + BAR_H - 3, `${RUNNER_TITLE[b.series]}: ${b.text}`, 'fill="#718096"'));
      } else {
        const w = Math.max(1, x(b.value) - PLOT_X);
        bars.push(`<rect x="${PLOT_X}" y="${y}" width="${w.toFixed(1)}" height="${BAR_H}" fill="${RUNNER_COLOR[b.series]}"><title>${xml(`${RUNNER_TITLE[b.series]}: ${b.text}`)}</title></rect>`);
        texts.push(label((PLOT_X + w + 4).toFixed(1), y + BAR_H - 3, b.text));
      }
      y += BAR_H + BAR_GAP;
    }
    y += GROUP_GAP - BAR_GAP;
  }
  if (p.reference) {
    const rx = x(p.reference.at).toFixed(1);
    lines.push(`<line x1="${rx}" y1="${top - 6}" x2="${rx}" y2="${y - GROUP_GAP + 4}" stroke="#1a202c" stroke-width="1"/>`);
    texts.push(`<text x="${rx}" y="${top - 9}" text-anchor="middle" font-size="11">${xml(p.reference.label)}</text>`);
  }
  // Lines first, bars over them, labels last: a label is never hidden by a line.
  return { svg: [...lines, ...bars, ...texts].join('\n'), height: y - y0 + 6 };
}

const THROUGHPUT_ROWS = ['tcp1', 'tcp4', 'udp64', 'connrate'] as const;

/** The panels of the chart: throughput relative to the kernel, then RTT in µs. */
export function chartPanels(r: LoadReport): Panel[] {
  const panels: Panel[] = [];
  const rel: BarGroup[] = [];
  for (const id of THROUGHPUT_ROWS) {
    const row = r.summary.find((x) => x.metric === id);
    const k = row?.medians.kernel;
    if (!row || k === undefined || k === null || k <= 0) continue;
    const bars: Bar[] = [];
    for (const n of ['userspace', 'slirp4netns'] as const) {
      if (!(n in row.medians)) continue;
      const v = row.medians[n];
      bars.push(v === null || v === undefined
        ? { series: n, value: null, text: 'failed' }
        : { series: n, value: v / k, text: `${(v / k).toFixed(2)}× (${formatValue(v)} ${row.unit})` });
    }
    if (bars.length === 0) continue;
    const g: BarGroup = { label: row.label, sublabel: `kernel ${formatValue(k)} ${row.unit}`, bars };
    if (row.goal && row.goal.text.startsWith('≥')) {
      const target = Number(/≥ ([\d.]+)×/.exec(row.goal.text)?.[1]);
      if (Number.isFinite(target)) g.goal = { at: target, label: `goal ${row.goal.text}` };
    }
    rel.push(g);
  }
  if (rel.length > 0) {
    panels.push({
      title: 'Throughput relative to kernel NAT (kernel = 1.0, higher is better; dashed red: goal)',
      groups: rel,
      reference: { at: 1, label: 'kernel' },
    });
  }
  const lat: BarGroup[] = [];
  // p50 only: a single p99 of a few milliseconds would flatten every other bar to a sliver.
  for (const id of ['rtt-b2b-p50', 'rtt-p50']) {
    const row = r.summary.find((x) => x.metric === id);
    if (!row) continue;
    const bars: Bar[] = [];
    for (const n of ['route', 'tun-floor', 'kernel', 'userspace', 'slirp4netns'] as const) {
      if (!(n in row.medians)) continue;
      const v = row.medians[n];
      bars.push(v === null || v === undefined ? { series: n, value: null, text: 'failed' } : { series: n, value: v, text: `${formatValue(v)} µs` });
    }
    if (bars.length > 0) lat.push({ label: row.label, bars });
  }
  if (lat.length > 0) panels.push({ title: 'Round-trip time through the gateway, p50 (µs, lower is better; p99 in the table)', groups: lat });
  return panels;
}

export function renderSvg(r: LoadReport): string {
  const panels = chartPanels(r);
  const series = new Set<RunnerName>(panels.flatMap((p) => p.groups.flatMap((g) => g.bars.map((b) => b.series))));
  if (panels.some((p) => p.reference)) series.add('kernel');
  const body: string[] = [];
  let y = 8;
  // Legend.
  let lx = 10;
  for (const n of RUNNER_ORDER) {
    if (!series.has(n)) continue;
    body.push(`<rect x="${lx}" y="${y}" width="12" height="12" fill="${RUNNER_COLOR[n]}"/>`);
    body.push(`<text x="${lx + 16}" y="${y + 10}">${xml(RUNNER_TITLE[n])}</text>`);
    lx += 30 + RUNNER_TITLE[n].length * 7;
  }
  y += 22;
  for (const p of panels) {
    const { svg, height } = panelSvg(p, y);
    body.push(svg);
    y += height + 10;
  }
  body.push(`<text x="10" y="${y + 4}" font-size="11" fill="#4a5568">${xml(`${r.date.slice(0, 10)}, ${r.mode} run, medians of ${r.config.rounds} interleaved round(s); kernel column: ${r.kernel?.variant ?? 'not run'}`)}</text>`);
  body.push(`<text x="10" y="${y + 18}" font-size="11" fill="#4a5568">${xml(machineLine(r))}</text>`);
  y += 28;
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${y}" viewBox="0 0 ${W} ${y}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${y}" fill="#ffffff"/>`,
    ...body,
    '</svg>',
  ].join('\n');
}

// ---------------------------------------------------------------------------------------------
// docs/benchmarks.md

function plural(n: number, one: string, many: string): string {
  return `${n.toLocaleString('en-US')} ${n === 1 ? one : many}`;
}

function bullet(s: string): string {
  return `- ${s}`;
}

/** The whole "## Load: …" section, heading included. */
export function markdownSection(r: LoadReport, resultsFile: string): string {
  const c = r.config;
  const runs = r.runs.length;
  const failed = r.runs.filter((x) => x.error !== null).length;
  const out: string[] = [];
  out.push(DOCS_HEADING);
  out.push('');
  out.push('<!-- Written by `npm run bench:load -- --write-docs` (bench/load.ts, bench/load/render.ts); a new run replaces this section. -->');
  out.push('');
  out.push(`Run ${r.date.slice(0, 16).replace('T', ' ')} UTC, ${r.mode} mode: medians of ${c.rounds} interleaved round(s), ${runs} runs` +
    `${failed > 0 ? ` (${failed} failed)` : ''}, ${r.durationSeconds.toFixed(0)} s. Raw numbers: \`${resultsFile}\`.`);
  out.push('');
  out.push(`Machine: ${machineLine(r)}. ${r.machine.iperf3 ?? 'iperf3 (version unknown)'}${r.machine.slirp4netns ? `, ${r.machine.slirp4netns}` : ''}.`);
  out.push('');
  out.push(`Kernel column: ${r.kernel ? `${r.kernel.description} — ${r.kernel.reason}.` : 'not run.'}`);
  out.push('');
  out.push(markdownTable(r));
  out.push('');
  out.push(renderSvg(r));
  out.push('');
  out.push('### How the load benchmark measures');
  out.push('');
  out.push([
    bullet('Reproduce, as root after building (`npx tsc -p tsconfig.build.json`): `npm run bench:load` (about 6–7 minutes), `npm run bench:load -- --quick` (under a minute), `--only`, `--rounds`, `--engines`, `--kernel auto|tunnat|manual`, `--flows N` (up to 1 M), `--tunnat-args "--busy-poll 50"` (extra flags for the userspace engine, noted in the report), `--write-docs`, and `--render FILE` to publish an earlier JSON report; `node dist/bench/load.js --help` lists them.'),
    bullet('One namespace lab (created and removed by the run; nothing touches the host\'s own network): a LAN host behind a gateway namespace, whose `wan0` (203.0.113.1) links to an "internet" host (203.0.113.2). ' +
      'tunnat and the kernel NAT run in the gateway namespace in turn; slirp4netns runs there too, as a process that owns a TAP device in a guest namespace of its own and re-sends the guest\'s traffic from ordinary sockets out of the same `wan0`.'),
    bullet(`Interleaving: for each measurement, round 1 runs every engine once in the order ${c.engines.join(', ')}, then round 2, and so on; the table shows medians over rounds. ` +
      `${c.restartPolicy.charAt(0).toUpperCase()}${c.restartPolicy.slice(1)}.`),
    bullet(`Before each run a UDP probe must come back from the internet host showing the translated source address (203.0.113.1); servers on the internet host also check every connection and flow came from that address. A run that fails a check is reported and left out of the medians.`),
    bullet('TUN floor: the same path as tunnat\'s, LAN traffic and its replies routed into a TUN device with the same offloads (virtio-net header, checksum, TSO/USO), but read by a minimal C program (bench/floor/tun-floor.c) that writes every packet back unchanged, with one queue and one thread per tunnat worker (`--workers`, one per core by default); no translation, the internet host has a route back to the LAN. It is the limit of any design that reads a TUN on this machine; "user/floor" is tunnat\'s share of it. It runs for every measurement but flows (it keeps no state).'),
    bullet(`TCP bulk: \`iperf3 -t ${c.tcpSeconds}\` from the LAN host to the internet host, 1 stream and \`-P 4\`; the receiver's goodput. ` +
      'CPU per GB forwarded: the whole machine\'s busy CPU time over the transfer (user, nice, system, irq, softirq and steal of /proc/stat, so the kernel\'s softirq work for either engine counts, and so do the iperf3 ends and anything else running) divided by the gigabytes received.'),
    bullet(`UDP 64 B: \`iperf3 -u -l 64 -b 0 -t ${c.udpSeconds}\` (the sender saturates). "Delivered" counts datagrams that reached the internet host's UDP layer (InDatagrams + NoPorts + InErrors of its /proc/net/snmp), so a slow iperf3 server does not count against the NAT; "lost" is 1 − delivered / sent.`),
    bullet(`Connections: a client keeps ${c.connConcurrency} connections in flight for ${c.connSeconds} s (connect, send one line, read the answer, close), from ${plural(c.flowAddresses, 'source address', 'source addresses')}; the server closes first, so the client holds no TIME_WAIT and never runs out of ports, and it listens on a new port each run, so no SYN lands on a TIME_WAIT socket left by an earlier run. Completed connections per second.`),
    bullet(`Flows: ${c.flows.toLocaleString('en-US')} UDP flows (${plural(c.flowAddresses, 'source address', 'source addresses')} × many source ports × ${plural(c.flowDestPorts, 'destination port', 'destination ports')}), one datagram each, paced at ${c.flowRate.toLocaleString('en-US')} datagrams/s, and all of them sent a second time so that a datagram dropped while the engine was busy setting flows up does not count as a flow it cannot hold. "Held" is the engine's own count of the concurrent flows the run added (\`tunnat_flows\`, \`conntrack -C\` in the gateway; slirp4netns keeps none, so it has no figure), never more than were offered: an engine that evicts flows to make room holds fewer than pass through it. "Reached the internet host" counts distinct flow numbers (each datagram carries its flow's) at the internet host. tunnat is started with \`--max-flows\` of 1.1 × the flows when its default would not hold them; an engine whose table is smaller than the flows asked for (the kernel's \`nf_conntrack_max\`, which only the host's first namespace may raise) is refused, not measured at its limit. ` +
      'Memory per flow: for tunnat and slirp4netns the growth of the process\'s RSS (/proc/<pid>/status) divided by the flows held; for the kernel the growth of the `nf_conntrack` slab (/proc/slabinfo, whole objects) divided by the flows held (the growth of `conntrack -C` in the gateway) — the slab is machine-wide, so other namespaces\' traffic can blur it, and NAT extensions allocated elsewhere are not in it. ' +
      'tunnat preallocates its tables for --max-flows, so its RSS growth is the pages those flows touched, not the reservation.'),
    bullet(`Latency: ping from the LAN host to the internet host, p50 and p99 of the per-reply times. First ${c.pingWarmup.toLocaleString('en-US')} echoes back to back, not counted: they set the flow up and let tunnat's JIT-compiled path warm up (a router that has been running, not one starting). ` +
      `Then ${c.pings} echoes "back to back" (\`ping -i 0\`: the next echo leaves when the reply is in, so the engine never sleeps) and ${c.pings} "paced" (\`ping -i ${c.pingIntervalS}\`: every echo finds a userspace engine asleep in poll, so its RTT includes waking it up — on a virtual machine with idle cores that costs far more than the NAT work itself). ` +
      '"No NAT (routing)" is the same path with plain forwarding and a route back, the floor under every engine; "added over kernel NAT" is each engine\'s median p50 minus the kernel\'s.'),
    bullet('The machine is shared and small, so absolute numbers are noisy and the client, server and engine compete for the same cores: the ratios are the point, and they are only as steady as the spread of the runs in the JSON file shows.'),
    ...r.notes.map(bullet),
  ].join('\n'));
  if (r.kernel?.ruleset) {
    out.push('');
    out.push('<details><summary>The gateway\'s ruleset while the kernel column ran (set up by <code>tunnat run --engine kernel</code>)</summary>');
    out.push('');
    out.push('```');
    out.push(r.kernel.ruleset);
    out.push('```');
    out.push('');
    out.push('</details>');
  }
  return out.join('\n');
}

/**
 * Replace the section that starts with `heading` (up to the next level-2 heading) in `doc`, or
 * append it; other sections stay byte for byte. A missing file gets a title first.
 */
export function spliceSection(doc: string | null, heading: string, section: string): string {
  const body = section.endsWith('\n') ? section : `${section}\n`;
  if (doc === null || doc.trim() === '') return `# Benchmarks\n\n${body}`;
  const lines = doc.split('\n');
  const start = lines.findIndex((l) => l.trimEnd() === heading);
  if (start < 0) return `${doc.trimEnd()}\n\n${body}`;
  let end = lines.length;
  let fenced = false;
  for (let i = start + 1; i < lines.length; i++) {
    if (/^\s*(```|~~~)/.test(lines[i]!)) fenced = !fenced;
    if (!fenced && /^## /.test(lines[i]!)) {
      end = i;
      break;
    }
  }
  const before = lines.slice(0, start).join('\n');
  const after = lines.slice(end).join('\n');
  return `${before}${before === '' ? '' : '\n'}${body}${after === '' ? '' : `\n${after}`}`;
}
