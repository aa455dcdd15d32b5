/**
 * Flag definitions that serve both parseArgs and the help text, so that usage can never leave out a
 * flag the parser takes. A definition is a parseArgs option (parseArgs ignores the extra fields) with
 * its placeholder and one line saying what it does.
 */
export interface Flag {
  type: 'string' | 'boolean';
  multiple?: boolean;
  short?: string;
  /** The value's placeholder in usage, e.g. `CIDR[,CIDR…]` (string flags only). */
  arg?: string;
  /** Shown without brackets in the synopsis. */
  required?: boolean;
  about: string;
}

export type Flags = Record<string, Flag>;

/** Every verb takes it; it prints the verb's help and exits 0. */
export const HELP_FLAG = { type: 'boolean', short: 'h', about: 'print this help and exit' } as const satisfies Flag;

export interface Verb {
  /** As typed after `tunnat`, e.g. `run` or `kernel plan|apply|remove`. */
  name: string;
  /** Positional words, e.g. `[FILTER]`. */
  positionals?: string;
  /** One line for `tunnat help`. */
  brief: string;
  /** What the verb does, a short paragraph (lines already broken). */
  summary: string;
  flags: Flags;
  /** More lines after the flag list (filter syntax, sub-commands). */
  notes?: string;
}

/** `--name ARG`, or `--name` for a switch. */
export function flagText(name: string, f: Flag): string {
  return f.type === 'string' ? `--${name} ${f.arg ?? 'VALUE'}` : `--${name}`;
}

const WIDTH = 100;

/** `tunnat VERB …` with every flag, required ones first, wrapped under the first flag. */
export function synopsis(v: Verb): string {
  const head = `tunnat ${v.name}`;
  const entries = Object.entries(v.flags).filter(([n]) => n !== 'help');
  const words = [
    ...(v.positionals ? [v.positionals] : []),
    ...entries.filter(([, f]) => f.required).map(([n, f]) => flagText(n, f)),
    ...entries.filter(([, f]) => !f.required).map(([n, f]) => `[${flagText(n, f)}]${f.multiple ? '…' : ''}`),
  ];
  const indent = ' '.repeat(head.length + 1);
  const lines: string[] = [];
  let line = head;
  for (const w of words) {
    if (line.length + 1 + w.length > WIDTH && line.trim() !== '') {
      lines.push(line);
      line = indent + w;
    } else line += ' ' + w;
  }
  lines.push(line);
  return lines.join('\n');
}

/** What `tunnat VERB --help` prints: the synopsis, the summary, and one line per flag. */
export function verbHelp(v: Verb): string {
  const rows = Object.entries(v.flags).map(([n, f]) => [`${f.short ? `-${f.short}, ` : ''}${flagText(n, f)}`, f.about] as const);
  // A long flag takes its own line rather than pushing every description far right.
  const pad = Math.min(Math.max(...rows.map(([t]) => t.length)), 28) + 2;
  const line = ([t, about]: readonly [string, string]) => (t.length + 2 > pad ? `  ${t}\n  ${' '.repeat(pad)}${about}` : `  ${t.padEnd(pad)}${about}`);
  return [
    `Usage: ${synopsis(v)}`,
    '',
    v.summary,
    '',
    'Flags:',
    ...rows.map(line),
    ...(v.notes ? ['', v.notes] : []),
  ].join('\n');
}
