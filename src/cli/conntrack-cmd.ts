import { formatFlow, type FlowRecord } from '../conntrack/listing.js';
import { httpGet } from './client.js';
import { flowFilterToQuery, flowMatches, parseFlowFilter } from '../observe/filter.js';
import { formatEvent, type FlowEvent } from '../observe/events.js';
import { sseConnect } from '../observe/sse.js';
import { HELP_FLAG, verbHelp, type Verb } from './flags.js';
import { CliUsageError, DEFAULT_TARGET, intOption, parseOptions, processIo, runCommand, untilSignal, type CliIo } from '../observe/cli.js';

/**
 * `tunnat conntrack`: the running router's flows, like `conntrack -L`, filtered by --proto, --src
 * (original source), --dst (original destination) and --state; `--events` follows NEW / UPDATE /
 * DESTROY as they happen, like `conntrack -E`, until Ctrl-C (or --count events).
 */
export const CONNTRACK_VERB = {
  name: 'conntrack',
  brief: "the running router's flows, like `conntrack -L`; --events follows them like `conntrack -E`",
  summary:
    "List the running router's flows, like `conntrack -L`, filtered by protocol, original source and\n" +
    'destination and state; --events follows NEW / UPDATE / DESTROY as they happen, like `conntrack -E`.',
  flags: {
    http: { type: 'string', arg: 'HOST:PORT|unix:PATH', about: `the router to ask (default ${DEFAULT_TARGET})` },
    proto: { type: 'string', arg: 'tcp|udp|icmp', about: 'only flows of this protocol' },
    src: { type: 'string', arg: 'ADDR[/LEN]', about: 'only flows from this original source' },
    dst: { type: 'string', arg: 'ADDR[/LEN]', about: 'only flows to this original destination' },
    state: { type: 'string', arg: 'STATE', about: 'only flows in this state (e.g. ESTABLISHED, TIME_WAIT)' },
    json: { type: 'boolean', about: 'JSON instead of conntrack-style lines' },
    events: { type: 'boolean', about: 'follow flow events until Ctrl-C' },
    count: { type: 'string', arg: 'N', about: 'with --events: stop after N events' },
    help: HELP_FLAG,
  },
} as const satisfies Verb;

export function cmdConntrack(args: string[], io: CliIo = processIo): Promise<number> {
  return runCommand(io, async () => {
    const { values: v } = parseOptions(args, CONNTRACK_VERB.flags);
    if (v.help) {
      io.out(verbHelp(CONNTRACK_VERB));
      return 0;
    }
    const filter = parseFlowFilter(v);
    const target = v.http ?? DEFAULT_TARGET;
    const count = intOption('count', v.count, 1_000_000);
    if (count !== undefined && !v.events) throw new CliUsageError('--count goes with --events');

    if (!v.events) {
      const all = JSON.parse(await httpGet(target, '/conntrack')) as FlowRecord[];
      // Filtered here rather than by the router, so the listing works against any engine's /conntrack.
      const flows = all.filter((f) => flowMatches(filter, f));
      if (v.json) io.out(JSON.stringify(flows, null, 2));
      else {
        for (const f of flows) io.out(formatFlow(f));
        io.err(`tunnat: ${flows.length} flow entries listed${flows.length !== all.length ? ` (${all.length} in the table)` : ''}`);
      }
      return 0;
    }

    const query = flowFilterToQuery(filter);
    let seen = 0;
    let conn: Awaited<ReturnType<typeof sseConnect>> | null = null;
    const signal = untilSignal();
    try {
      conn = await sseConnect(target, `/events${query ? `?${query}` : ''}`, (event, data) => {
        if (event === 'dropped') {
          const n = (JSON.parse(data) as { count: number }).count;
          io.err(`tunnat: ${n} events lost (this reader fell behind; the router never waits for it)`);
          return;
        }
        if (event !== 'flow' || (count !== undefined && seen >= count)) return;
        const ev = JSON.parse(data) as FlowEvent;
        io.out(v.json ? JSON.stringify(ev) : formatEvent(ev));
        if (count !== undefined && ++seen >= count) conn?.close();
      });
      // The last wanted record may have come with the stream's first bytes, before `conn` was set: the
      // callback could not close it then.
      if (count !== undefined && seen >= count) conn?.close();
      io.err(`tunnat: following flow events at ${target}${query ? ` (${query})` : ''}; Ctrl-C to stop`);
      const ended = await Promise.race([conn.done.then(() => 'ended' as const), signal.promise.then(() => 'signal' as const)]);
      if (ended === 'ended' && (count === undefined || seen < count)) io.err(`tunnat: the router at ${target} closed the stream`);
      return 0;
    } finally {
      signal.release();
      conn?.close();
    }
  });
}
