import { describe, expect, it } from 'vitest';
import { Registry } from 'prom-client';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { HaController, readKey, type HaPlane } from '../../src/ha/controller.js';
import { newApplyCounts } from '../../src/nat/replica.js';
import { resolveConfig } from '../../src/config/resolve.js';
import { createLogger } from '../../src/util/log.js';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A data plane that records what the controller asks of it. */
function fakePlane(healthy = true): HaPlane & { calls: string[] } {
  const calls: string[] = [];
  return {
    calls,
    onChanges: null,
    onLost: null,
    setStandby: (s) => void calls.push(s ? 'standby' : 'translate'),
    apply: () => void calls.push('apply'),
    dump: async () => true,
    flowCount: () => 7,
    applied: () => newApplyCounts(),
    healthy: async () => healthy,
  };
}

function answer(): { res: ServerResponse; done: Promise<{ code: number; body: string }> } {
  let resolve!: (v: { code: number; body: string }) => void;
  const done = new Promise<{ code: number; body: string }>((r) => (resolve = r));
  let code = 0;
  const res = {
    writeHead: (c: number) => void (code = c),
    end: (body: string) => resolve({ code, body }),
  } as unknown as ServerResponse;
  return { res, done };
}

const log = createLogger('error');

describe('HaController', () => {
  // The role is read from the host: a gateway that has --public-ip on --external is active. The loopback
  // interface has 127.0.0.1 on every machine, so a "pair" on lo with that address is always active.
  it('a gateway that holds the public address translates first, then answers ARP for it; a standby stops first', async () => {
    const cfg = resolveConfig({ internal: '192.168.1.0/24', external: 'lo', publicIp: '127.0.0.1', haNode: '0' });
    const plane = fakePlane();
    const arp: string[] = [];
    const c = await HaController.start(cfg, log, plane, async (on) => void arp.push(on ? 'arp on' : 'arp off'));
    try {
      expect(c.role).toBe('active');
      // Standby at start (fail closed), then translating once the address is seen.
      expect(plane.calls).toEqual(['standby', 'translate']);
      await new Promise((r) => setTimeout(r, 10));
      expect(arp).toEqual(['arp on']);
      const { res, done } = answer();
      await c.handler({} as IncomingMessage, res, new URL('http://x/ha'));
      const got = await done;
      expect(got.code).toBe(200);
      expect(JSON.parse(got.body)).toMatchObject({ node: 0, role: 'active', publicIp: '127.0.0.1', flows: 7, healthy: true, sync: null });
      const reg = new Registry();
      c.register(reg);
      expect(await reg.metrics()).toMatch(/tunnat_ha_role\{role="active"\} 1/);
    } finally {
      await c.close();
    }
    const other = resolveConfig({ internal: '192.168.1.0/24', external: 'lo', publicIp: '203.0.113.1', haNode: '1' });
    const p2 = fakePlane();
    const arp2: string[] = [];
    const s = await HaController.start(other, log, p2, async (on) => void arp2.push(on ? 'arp on' : 'arp off'));
    try {
      expect(s.role).toBe('standby');
      expect(p2.calls).toEqual(['standby']);
      await new Promise((r) => setTimeout(r, 10));
      // Whatever an earlier run left, a standby does not answer ARP for the address.
      expect(arp2).toEqual(['arp off']);
    } finally {
      await s.close();
    }
  });

  it('GET /ha answers 503 while a data-plane worker does not answer (what `tunnat ha check` and keepalived read)', async () => {
    const cfg = resolveConfig({ internal: '192.168.1.0/24', external: 'lo', publicIp: '203.0.113.1', haNode: '0' });
    const c = await HaController.start(cfg, log, fakePlane(false), async () => {});
    try {
      const { res, done } = answer();
      await c.handler({} as IncomingMessage, res, new URL('http://x/ha'));
      const got = await done;
      expect(got.code).toBe(503);
      expect(JSON.parse(got.body).healthy).toBe(false);
    } finally {
      await c.close();
    }
  });

  it('reads the pair key from a file, refusing a short one', () => {
    const dir = mkdtempSync(join(tmpdir(), 'tunnat-key-'));
    writeFileSync(join(dir, 'good'), 'a key of thirty-two bytes, long.\n');
    writeFileSync(join(dir, 'short'), 'too short\n');
    expect(Buffer.from(readKey(join(dir, 'good'))).toString()).toBe('a key of thirty-two bytes, long.');
    expect(() => readKey(join(dir, 'short'))).toThrow(/at least 16/);
    rmSync(dir, { recursive: true, force: true });
  });
});
