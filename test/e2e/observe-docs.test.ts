/**
 * Every command in the README and in docs/how-nat-works.md, architecture.md and operations.md runs as
 * written. The walk-through of how-nat-works.md runs against `tunnat lab` exactly as a reader would
 * start it; the troubleshooting commands of operations.md run in that lab's gateway; `tunnat run` lines
 * run with --dry-run (they would change a real gateway); the systemd block is checked by `bash -n`.
 * The only substitutions: the lab's id and host port (so a reader's own lab on 9100 cannot collide),
 * and `tunnat` for the compiled CLI.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomId } from '../../src/lab/netns.js';
import { NsProcess } from '../../src/lab/process.js';
import { defaultCliPath, repoRoot } from '../../src/lab/router.js';
import { run } from '../../src/util/exec.js';
import { Cleanup, isRoot } from './harness.js';

const ROOT = repoRoot();
const DOCS = ['README.md', 'docs/how-nat-works.md', 'docs/architecture.md', 'docs/operations.md'];

interface Block {
  file: string;
  lang: string;
  text: string;
  /** The nearest heading above the block. */
  heading: string;
}

function blocks(file: string): Block[] {
  const text = readFileSync(join(ROOT, file), 'utf8');
  const out: Block[] = [];
  const re = /^```(\w*)[^\n]*\n([\s\S]*?)^```/gm;
  for (const m of text.matchAll(re)) {
    const before = text.slice(0, m.index);
    const headings = [...before.matchAll(/^#+ (.*)$/gm)];
    out.push({ file, lang: m[1]!, text: m[2]!, heading: headings.at(-1)?.[1] ?? '' });
  }
  return out;
}

function commands(b: Block): string[] {
  return b.text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'));
}

/** A trailing `# comment` (a shell comment after whitespace) removed. */
function stripComment(line: string): string {
  return line.replace(/\s+#\s.*$/, '');
}

const cli = defaultCliPath();
const asShell = (line: string): string => line.replace(/^tunnat /, `${process.execPath} ${cli} `);

describe('the commands in the documentation', () => {
  const all = DOCS.flatMap(blocks);

  it('are all valid shell', async () => {
    const sh = all.filter((b) => b.lang === 'sh');
    expect(sh.length).toBeGreaterThan(10);
    for (const b of sh) {
      const r = await run(['bash', '-n', '-c', b.text], { allowFail: true });
      expect(r.exitCode, `${b.file} (${b.heading}):\n${b.text}\n${r.stderr}`).toBe(0);
    }
  });

  it('accept every `tunnat run` as written (with --dry-run: they would configure a real gateway)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tunnat-docs-'));
    try {
      // operations.md's config file, at the path the docs give it.
      const json = all.find((b) => b.file === 'docs/operations.md' && b.lang === 'json');
      expect(json).toBeDefined();
      const configPath = join(dir, 'config.json');
      writeFileSync(configPath, json!.text);
      const runs = all.flatMap((b) => (b.lang === 'sh' ? commands(b) : [])).filter((l) => l.startsWith('tunnat run '));
      expect(runs.length).toBeGreaterThanOrEqual(3);
      for (const line of runs) {
        const cmd = `${asShell(stripComment(line)).replace('/etc/tunnat/config.json', configPath)} --dry-run`;
        const r = await run(['sh', '-c', cmd], { allowFail: true });
        expect(r.exitCode, `${line}\n${r.stderr}`).toBe(0);
        expect(JSON.parse(r.stdout)).toHaveProperty('internal');
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const addr = s.address();
  await new Promise<void>((r) => s.close(() => r()));
  return typeof addr === 'object' && addr ? addr.port : 0;
}

// Needs root: `tunnat lab` builds network namespaces and runs the router in them.
describe.skipIf(!isRoot)('the walk-through, against `tunnat lab` as the docs start it', () => {
  const cleanup = new Cleanup((l) => console.error(l));
  const id = `d${randomId(5)}`;
  let port: number;
  let lab: NsProcess;
  const sub = (line: string): string => line.replace(/tndemo-/g, `tn${id}-`).replace(/--id demo/g, `--id ${id}`).replace(/127\.0\.0\.1:9100/g, `127.0.0.1:${port}`).replace(/--http-port 9100/g, `--http-port ${port}`);
  const sh = (line: string, netns?: string) =>
    run(netns ? ['ip', 'netns', 'exec', netns, 'sh', '-c', line] : ['sh', '-c', line], { allowFail: true, timeoutMs: 60_000 });

  beforeAll(async () => {
    port = await freePort();
    const start = commands(blocks('docs/how-nat-works.md').find((b) => b.lang === 'sh')!)[0]!;
    expect(start).toBe('npm run tunnat -- lab --id demo --http-port 9100');
    lab = new NsProcess(null, ['sh', '-c', `cd ${ROOT} && exec ${sub(start)}`], { cleanup, label: 'tunnat lab' });
    cleanup.defer({ label: 'stop the lab', sync: () => lab.stopSync('SIGINT', 20_000), async: async () => void (await lab.stop('SIGINT', 20_000)) });
    await lab.waitForLine(/^Live page: http:\/\/127\.0\.0\.1:\d+\//, 60_000);
  }, 90_000);

  afterAll(async () => {
    await cleanup.run();
  }, 60_000);

  it('how-nat-works.md: every command, in order, with the trace and events it promises', async () => {
    const lines = blocks('docs/how-nat-works.md')
      .filter((b) => b.lang === 'sh')
      .flatMap(commands)
      .slice(1);
    let background: NsProcess[] = [];
    const outputs: string[] = [];
    for (const line of lines) {
      const cmd = `cd ${ROOT} && ${sub(line)}`;
      if (/--count/.test(line) && /(trace|--events)/.test(line)) {
        const p = new NsProcess(null, ['sh', '-c', cmd], { cleanup, label: line });
        await p.waitForLine(/^tunnat: (tracing|following)/, 30_000);
        background.push(p);
        continue;
      }
      const r = await sh(cmd);
      expect(r.exitCode, `${line}\n${r.stdout}\n${r.stderr}`).toBe(0);
      outputs.push(r.stdout);
      for (const p of background) {
        expect(await Promise.race([p.exited, new Promise<number>((res) => setTimeout(() => res(-1), 20_000))]), `${p.argv.join(' ')}\n${p.output()}`).toBe(0);
        outputs.push(p.output());
      }
      background = [];
    }
    const text = outputs.join('\n');
    // What the page quotes, now from a live run.
    expect(text).toContain('"remoteAddress":"203.0.113.1","remotePort":40000');
    expect(text).toMatch(/#1 \S+ OUTBOUND +tcp 192\.168\.1\.10:40000 → 203\.0\.113\.2:80 \[S\]/);
    expect(text).toContain('port 40000 (preserved)');
    expect(text).toContain('matched by its reply tuple 203.0.113.2:80 → 203.0.113.1:40000');
    expect(text).toMatch(/state LAST_ACK → TIME_WAIT/);
    expect(text).toMatch(/\[NEW\] tcp +240 SYN_SENT +src=192\.168\.1\.10 dst=203\.0\.113\.2 sport=40000 dport=80/);
    expect(text).toMatch(/\[UPDATE\] tcp +\d+ TIME_WAIT .*\(was LAST_ACK\)/);
    expect(text).toMatch(/^203\.0\.113\.2 from 192\.168\.1\.10 dev tunnat0 table 7301/m);
    expect(text).toMatch(/^tcp +\d+ TIME_WAIT +src=192\.168\.1\.10 dst=203\.0\.113\.2 sport=40000 dport=80/m);
    expect(text).toMatch(/^tunnat_host_bytes_total\{host="192\.168\.1\.10",direction="outbound"\} \d+/m);
  }, 120_000);

  it("README's commands: listings, stats and metrics once; events and trace run until stopped", async () => {
    const lines = blocks('README.md')
      .filter((b) => b.lang === 'sh')
      .flatMap(commands)
      .map(stripComment)
      .filter((l) => (l.startsWith('tunnat ') && !l.startsWith('tunnat run ')) || l.startsWith('curl '));
    expect(lines.length).toBeGreaterThanOrEqual(6);
    for (const line of lines) {
      // The README's commands use the default endpoint; the lab here is on another port.
      const cmd = line.startsWith('tunnat ') ? `${asShell(line)} --http 127.0.0.1:${port}` : sub(line).replace('127.0.0.1:9100', `127.0.0.1:${port}`);
      if (/--events|trace/.test(line)) {
        const p = new NsProcess(null, ['sh', '-c', `exec ${cmd}`], { cleanup, label: line });
        await p.waitForLine(/^tunnat: (tracing|following)/, 20_000);
        expect(await p.stop('SIGINT', 5000), p.output()).toBe(0);
        continue;
      }
      const r = await sh(cmd);
      expect(r.exitCode, `${line}\n${r.stderr}`).toBe(0);
    }
  }, 60_000);

  it('operations.md: the troubleshooting commands, in the gateway, while a LAN host pings', async () => {
    const gw = `tn${id}-gw`;
    const ping = new NsProcess(`tn${id}-h0`, ['ping', '-n', '-i', '0.2', '-c', '300', '203.0.113.2'], { cleanup, label: 'ping' });
    try {
      const section = blocks('docs/operations.md').filter((b) => b.lang === 'sh' && /Troubleshooting/.test(b.heading));
      const lines = section.flatMap(commands);
      expect(lines.length).toBeGreaterThanOrEqual(12);
      for (const line of lines) {
        const r = await sh(asShell(line).replace(/\| *tunnat /g, `| ${process.execPath} ${cli} `), gw);
        expect(r.exitCode, `${line}\n${r.stdout}\n${r.stderr}`).toBe(0);
        if (line.startsWith('ip route get 203.0.113.2')) expect(r.stdout).toContain('dev tunnat0 table 7301');
        if (line.startsWith('ip route get 203.0.113.1')) expect(r.stdout).toContain('dev tunnat0 table 7302');
        if (line.startsWith('tunnat trace')) expect(r.stdout).toMatch(/OUTBOUND +icmp 192\.168\.1\.10 → 203\.0\.113\.2/);
      }
    } finally {
      await ping.stop('SIGINT');
    }
  }, 90_000);
});
