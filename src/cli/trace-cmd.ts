import { PACKET_FILTER_HELP, packetFilterToString, parsePacketFilter } from '../observe/filter.js';
import { sseConnect } from '../observe/sse.js';
import { DEFAULT_TRACE_RATE, MAX_TRACE_RATE, type TraceRecord } from '../observe/trace.js';
import { formatSuppressed, formatTrace } from '../observe/trace-format.js';
import { HELP_FLAG, verbHelp, type Verb } from './flags.js';
import { DEFAULT_TARGET, intOption, parseOptions, processIo, runCommand, untilSignal, type CliIo } from '../observe/cli.js';

/**
 * `tunnat trace [FILTER]`: watch packets go through the running router, each explained before and
 * after translation. At most --rate packets a second are shown (the rest are counted in a "not shown"
 * line); --count N stops after N packets.
 */
export const TRACE_VERB = {
  name: 'trace',
  positionals: '[FILTER]',
  brief: 'explain packets live, before and after translation; rate-bounded; userspace engine only',
  summary:
    'Explain packets live as they go through the running router, before and after translation: the flow,\n' +
    'the port chosen, the fields and checksums rewritten. At most --rate packets a second are shown; a line\n' +
    'counts the others. The kernel engine has no trace: the kernel translates packets without showing them\n' +
    'to tunnat.',
  flags: {
    http: { type: 'string', arg: 'HOST:PORT|unix:PATH', about: `the router to ask (default ${DEFAULT_TARGET})` },
    rate: { type: 'string', arg: 'N', about: `packets shown per second at most (default ${DEFAULT_TRACE_RATE}, at most ${MAX_TRACE_RATE})` },
    count: { type: 'string', arg: 'N', about: 'stop after N packets' },
    json: { type: 'boolean', about: 'one JSON record per packet' },
    help: HELP_FLAG,
  },
  notes: PACKET_FILTER_HELP,
} as const satisfies Verb;

export function cmdTrace(args: string[], io: CliIo = processIo): Promise<number> {
  return runCommand(io, async () => {
    const { values: v, positionals } = parseOptions(args, TRACE_VERB.flags, true);
    if (v.help) {
      io.out(verbHelp(TRACE_VERB));
      return 0;
    }
    const filter = parsePacketFilter(positionals);
    const rate = intOption('rate', v.rate, MAX_TRACE_RATE) ?? DEFAULT_TRACE_RATE;
    const count = intOption('count', v.count, 1_000_000);
    const target = v.http ?? DEFAULT_TARGET;
    const filterText = packetFilterToString(filter);
    const q = new URLSearchParams({ rate: String(rate) });
    if (filterText) q.set('filter', filterText);

    let shown = 0;
    let conn: Awaited<ReturnType<typeof sseConnect>> | null = null;
    const signal = untilSignal();
    try {
      conn = await sseConnect(target, `/trace?${q.toString()}`, (event, data) => {
        if (count !== undefined && shown >= count) return;
        if (event === 'packet') {
          const rec = JSON.parse(data) as TraceRecord;
          if (v.json) io.out(JSON.stringify(rec));
          else {
            for (const l of formatTrace(rec)) io.out(l);
            io.out('');
          }
          if (count !== undefined && ++shown >= count) conn?.close();
        } else if (event === 'suppressed') {
          const n = (JSON.parse(data) as { count: number }).count;
          if (v.json) io.out(JSON.stringify({ suppressed: n }));
          else io.out(formatSuppressed(n, rate));
        } else if (event === 'dropped') {
          const n = (JSON.parse(data) as { count: number }).count;
          io.err(`tunnat: ${n} trace records lost (this reader fell behind; the router never waits for it)`);
        }
      });
      // The last wanted record may have come with the stream's first bytes, before `conn` was set: the
      // callback could not close it then.
      if (count !== undefined && shown >= count) conn?.close();
      io.err(`tunnat: tracing ${filterText || 'every packet'} at ${target}, at most ${rate}/s; Ctrl-C to stop`);
      const ended = await Promise.race([conn.done.then(() => 'ended' as const), signal.promise.then(() => 'signal' as const)]);
      if (ended === 'ended' && (count === undefined || shown < count)) io.err(`tunnat: the router at ${target} closed the stream`);
      return 0;
    } finally {
      signal.release();
      conn?.close();
    }
  });
}
