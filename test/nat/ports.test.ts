/** PortPool's reasons to keep a port from new mappings (src/nat/ports.ts BLOCK). */
import { describe, it, expect } from 'vitest';
import { BLOCK, PortPool } from '../../src/nat/ports.js';

describe('port blocking reasons', () => {
  it('a port is mappable only when no reason holds: forward, the gateway\'s own socket, the excluded range', () => {
    const pool = new PortPool(1024, 65535, [[20000, 29999]]);
    const size = pool.size;
    pool.setBlocked(8080, BLOCK.FORWARD, true);
    pool.setBlocked(8080, BLOCK.LOCAL, true);
    expect(pool.size).toBe(size - 1);
    pool.setBlocked(8080, BLOCK.FORWARD, false); // the forward went, the gateway still listens there
    expect(pool.isFree(8080)).toBe(false);
    pool.setBlocked(8080, BLOCK.LOCAL, false);
    expect(pool.isFree(8080)).toBe(true);
    expect(pool.size).toBe(size);
    // A forward on a port of the gateway's ephemeral range, removed again, leaves it excluded.
    pool.setBlocked(25000, BLOCK.FORWARD, true);
    pool.setBlocked(25000, BLOCK.FORWARD, false);
    expect(pool.isFree(25000)).toBe(false);
    expect(pool.size).toBe(size);
  });
});
