import { existsSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { TunError } from '../src/tun/errors.js';
import { addonPath, loadAddon, TUN_F, VNET_HDR_LEN, VNET_HDR_MRG_RXBUF_LEN } from '../src/tun/native.js';

// Loading the addon needs neither root nor a TUN; `npm ci` builds it.
describe('native addon loading', () => {
  it('is found under native/build/Release from the source tree', () => {
    expect(addonPath()).toMatch(/\/native\/build\/Release\/tunnat_native\.node$/);
    expect(existsSync(addonPath()), `${addonPath()} missing: run npm ci`).toBe(true);
  });

  it("exports open, and constants equal to the TypeScript copies of the kernel's", () => {
    const addon = loadAddon();
    expect(typeof addon.open).toBe('function');
    expect({
      CSUM: addon.TUN_F_CSUM,
      TSO4: addon.TUN_F_TSO4,
      TSO6: addon.TUN_F_TSO6,
      TSO_ECN: addon.TUN_F_TSO_ECN,
      UFO: addon.TUN_F_UFO,
      USO4: addon.TUN_F_USO4,
      USO6: addon.TUN_F_USO6,
    }).toEqual(TUN_F);
    expect(addon.VNET_HDR_LEN).toBe(VNET_HDR_LEN);
    expect(addon.VNET_HDR_MRG_RXBUF_LEN).toBe(VNET_HDR_MRG_RXBUF_LEN);
  });

  it('loads in worker threads too (context-aware), concurrently with the main thread', async () => {
    loadAddon();
    const code = `
      const { parentPort, workerData } = require('node:worker_threads');
      const addon = require(workerData);
      parentPort.postMessage([typeof addon.open, addon.TUN_F_CSUM]);
    `;
    const results = await Promise.all(
      [0, 1].map(
        () =>
          new Promise<unknown>((resolve, reject) => {
            const w = new Worker(code, { eval: true, workerData: addonPath() });
            w.once('message', resolve);
            w.once('error', reject);
          }),
      ),
    );
    expect(results).toEqual([
      ['function', 1],
      ['function', 1],
    ]);
  });

  it('reports a missing addon as TUN_UNAVAILABLE telling to run npm ci', () => {
    let caught: unknown;
    try {
      loadAddon('/nonexistent/tunnat_native.node');
    } catch (e) {
      caught = e;
    }
    expect(caught).toBeInstanceOf(TunError);
    expect(caught).toMatchObject({ code: 'TUN_UNAVAILABLE' });
    expect((caught as Error).message).toMatch(/is not built .*npm ci/);
  });
});
