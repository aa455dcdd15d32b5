import { randomBytes } from 'node:crypto';
import { existsSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run, runSync } from '../../src/util/exec.js';

const repo = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const fixture = (name: string): string => join(repo, 'test', 'fixtures', name);
const addon = join(repo, 'native', 'build', 'Release', 'tunnat_native.node');

// Creating TUN devices and namespaces needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN); CI runs as root.
describe.skipIf(process.getuid?.() !== 0)('native TUN device in a private network namespace', () => {
  // Every TUN, address and packet of this file lives in this namespace, never in the root one.
  const ns = `tnt-tun-${process.pid}-${randomBytes(3).toString('hex')}`;
  let created = false;
  const removeNs = (): void => {
    if (created) runSync(['ip', 'netns', 'del', ns], { allowFail: true });
    created = false;
  };

  // Runs a child script inside the namespace and returns the JSON line it prints.
  async function inNamespace(script: string, config?: unknown): Promise<Record<string, unknown>> {
    const argv = ['node', fixture(script)];
    if (config !== undefined) argv.push(JSON.stringify(config));
    const r = await run(argv, { netns: ns, timeoutMs: 90_000, allowFail: true });
    const line = r.stdout.trim().split('\n').pop() ?? '';
    let parsed: Record<string, unknown>;
    try {
      parsed = JSON.parse(line) as Record<string, unknown>;
    } catch {
      throw new Error(`${script} printed no result (exit ${r.exitCode}): ${r.stderr || r.stdout}`);
    }
    expect(parsed.error, `${script} failed: ${String(parsed.error)}\n${r.stderr}`).toBeUndefined();
    expect(r.exitCode, r.stderr).toBe(0);
    return parsed;
  }

  beforeAll(async () => {
    if (!existsSync(addon)) throw new Error(`${addon} is missing: run npm ci (it builds the addon)`);
    // Child processes use the compiled dist/. Others' files may not type-check at the moment;
    // tsc still emits, so judge by the output files, not the exit code.
    const tsc = await run(['npx', 'tsc', '-p', 'tsconfig.build.json'], { allowFail: true, timeoutMs: 120_000 });
    for (const f of ['native', 'errors']) {
      const out = join(repo, 'dist', 'src', 'tun', `${f}.js`);
      const src = join(repo, 'src', 'tun', `${f}.ts`);
      if (!existsSync(out) || statSync(out).mtimeMs < statSync(src).mtimeMs) {
        throw new Error(`tsc did not produce an up-to-date ${out}: ${tsc.stdout}${tsc.stderr}`);
      }
    }
    process.once('exit', removeNs);
    await run(['ip', 'netns', 'add', ns]);
    created = true;
    await run(['ip', 'link', 'set', 'lo', 'up'], { netns: ns });
  }, 180_000);

  afterAll(() => {
    removeNs();
    process.removeListener('exit', removeNs);
  });

  describe('packets through the device', () => {
    const count = 100;
    let r: Record<string, unknown>;

    beforeAll(async () => {
      r = await inNamespace('tun-echo.mjs', {
        name: 'tnt0',
        addr: '192.168.77.1',
        peer: '192.168.77.2',
        count,
        vnetName: 'tnt1',
        vnetAddr: '192.168.78.1',
        vnetPeer: '192.168.78.2',
      });
    });

    it('opens the TUN under the requested name with a real fd', () => {
      expect(r.name).toBe('tnt0');
      expect(r.fdValid).toBe(true);
      expect(r.phases).toEqual(['read', 'truncation', 'write', 'vnet']);
    });

    it('counts the thread\'s preemptions (getrusage), a number that never falls', () => {
      const [before, after, spun] = r.preemptions as [number, number, boolean];
      expect(spun).toBe(true);
      expect(Number.isInteger(before) && before >= 0).toBe(true);
      expect(after).toBeGreaterThanOrEqual(before);
    });

    it('reads every datagram the namespace sent, several per readBatch call', () => {
      const seqs = r.readSeqs as string[];
      expect(seqs).toHaveLength(count);
      expect(new Set(seqs)).toEqual(new Set(Array.from({ length: count }, (_, i) => `seq-${i}`)));
      const perCall = r.readPerCall as number[];
      expect(Math.max(...perCall)).toBeGreaterThan(1);
      expect(Math.max(...perCall)).toBeLessThanOrEqual(64); // never more than lens.length
      expect(r.readLengthsMatchHeader).toBe(true);
    });

    it('reports a packet longer than the slot as slotSize bytes (Linux truncates silently)', () => {
      expect(r.truncated).toEqual({ slotSize: 64, reportedLength: 64, totalLength: 328 });
    });

    it('delivers written packets to a socket in the namespace, skipping and counting bad entries', () => {
      expect(r.writeReturned).toBe(r.writeEntries);
      expect(r.received).toEqual(Array.from({ length: 10 }, (_, i) => `reply-${i}`));
      expect(r.receivedFrom).toEqual(['192.168.77.2:7777']);
      expect(r.stats).toEqual({
        readPackets: expect.any(Number) as number,
        writePackets: 10,
        writeErrors: 1,
        writeOutOfRange: 1,
        lastWriteErrno: 22,
      });
      expect((r.stats as { readPackets: number }).readPackets).toBeGreaterThanOrEqual(count + 1);
    });

    it('frames packets with a virtio_net_hdr when vnetHdr is on, and applies offload/header settings', () => {
      expect(r.vnetRead).toEqual({
        len: 10 + 36,
        ipTotalLength: 36,
        headerFlags: 0,
        headerGsoType: 0,
        payload: 'vnet-out',
      });
      expect(r.vnetWriteReturned).toBe(1);
      expect(r.vnetReceived).toEqual(['vnet-in']);
      expect(r.badOffload).toBe('TUN_INVALID');
      expect(r.badVnetHdrSize).toBe('TUN_INVALID');
    });
  });

  describe('opening, errors, readiness and teardown', () => {
    let r: Record<string, unknown>;

    beforeAll(async () => {
      r = await inNamespace('tun-open-cases.mjs');
    }, 120_000);

    it('lets the kernel pick a name for an empty one', () => {
      expect(r.kernelName).toMatch(/^tun\d+$/);
    });

    it('opens one interface as several queues with multiQueue, and both queues write', () => {
      expect(r.multiQueue).toEqual({ names: ['tmq0', 'tmq0'], distinctFds: true });
      expect(r.multiQueueReceived).toEqual(['queue-0', 'queue-1']);
      expect(r.multiQueueMismatch).toMatchObject({ name: 'TunError', code: 'TUN_INVALID', errnoCode: 'EINVAL' });
    });

    it("steers each packet to the queue a steering program picks, and a queue's fd copy closes alone", () => {
      // Source ports 40000-40001 and 40004-40005 are slice 0 of two, 40002-40003 and 40006 slice 1; every
      // port sent two datagrams, and each queue got exactly its own slice's.
      expect(r.steering).toEqual({
        queue0: [40000, 40000, 40001, 40001, 40004, 40004],
        queue1: [40002, 40002, 40003, 40003, 40006, 40006],
        copyFdDiffers: true,
      });
      // A program the verifier refuses (no exit) is a TunError, with the verifier's log kept.
      expect(r.steeringRefused).toMatchObject({ threw: true, name: 'TunError' });
      expect(r.steeringRefusedLog).toBe(true);
    });

    it('maps errno to stable TunError codes with helpful messages', () => {
      expect(r.busy).toMatchObject({ name: 'TunError', code: 'TUN_BUSY', errno: 16, syscall: 'ioctl(TUNSETIFF)' });
      const bad = r.badNames as Record<string, { code: string; message: string }>;
      for (const k of ['slash', 'tooLong', 'notTun']) {
        expect(bad[k], k).toMatchObject({ code: 'TUN_INVALID', errnoCode: 'EINVAL' });
        expect(bad[k]?.message).toMatch(/not a valid interface name/);
      }
      expect(r.writeWhileDown).toMatchObject({ code: 'TUN_IO', errnoCode: 'EIO', syscall: 'write' });
      expect((r.writeWhileDown as { message: string }).message).toMatch(/ip link set tdown0 up/);
    });

    it('refuses without privilege with TUN_PERMISSION', () => {
      expect(r.unprivileged).toMatchObject({ name: 'TunError', code: 'TUN_PERMISSION' });
      expect(['EACCES', 'EPERM']).toContain((r.unprivileged as { errnoCode: string }).errnoCode);
      expect((r.unprivileged as { message: string }).message).toMatch(/CAP_NET_ADMIN \(run as root\)/);
    });

    it('closes idempotently; afterwards every operation fails with TUN_IO / EBADF', () => {
      const c = r.afterClose as Record<string, unknown>;
      expect(c.fd).toBe(-1);
      expect(c.name).toBe('tclose0');
      for (const op of ['read', 'write', 'onReadable', 'setOffload']) {
        expect(c[op], op).toMatchObject({ name: 'TunError', code: 'TUN_IO', errno: 9, errnoCode: 'EBADF' });
      }
      expect(c.readIsTunError).toBe(true);
    });

    it('rejects caller bugs with TypeError/RangeError rather than TunError', () => {
      const a = r.argErrors as Record<string, { name: string }>;
      expect(a.slotsExceedBuffer?.name).toBe('RangeError');
      expect(a.zeroSlot?.name).toBe('RangeError');
      expect(a.lensNotU32?.name).toBe('TypeError');
      expect(a.countTooLarge?.name).toBe('RangeError');
      expect(a.bufNotBytes?.name).toBe('TypeError');
      expect(a.offloadNotNumber?.name).toBe('TypeError');
      expect(r.emptyBatches).toEqual({ read: 0, write: 0, readNothingWaiting: 0 });
    });

    it('polls only while armed, replaces the callback, and survives close inside it', () => {
      expect(r.poll).toEqual({ stopped: 0, replaced: 0, current: 1, fdAfterClose: -1 });
    });

    it('polls correctly on a reused fd number right after close()', () => {
      // sameFd documents that the scenario happened; the read is what matters.
      expect(r.fdReuse).toMatchObject({ read: true });
      expect(typeof (r.fdReuse as { sameFd: unknown }).sameFd).toBe('boolean');
    });

    it('reports a deleted interface through the callback and the next read', () => {
      expect(r.deleted).toMatchObject({ name: 'TunError', code: 'TUN_IO', errnoCode: 'EBADFD' });
      expect((r.deleted as { message: string }).message).toMatch(/detached/);
    });

    it('runs in worker threads and releases the device when a worker ends without close()', () => {
      expect(r.workerClosedExit).toBe(0);
      expect(r.workerTerminatedExit).toBe(1);
      // twrk1 is not multi-queue: reopening succeeds only if the worker's fd was closed.
      expect(r.reopenAfterWorker).toEqual({ threw: false });
    });
  });
});
