import { parseIpv4, ipToString } from '../wire/addr.js';
import { ConfigError } from './config.js';
import type { SnatEntry } from '../nat/context.js';
import { MAX_POOL } from '../nat/mappings.js';

/**
 * The public address pool and the static SNAT entries, as `--public-ip` and `--snat` write them.
 * `--public-ip` takes one address, a list (`203.0.113.10,203.0.113.11`) or a range
 * (`203.0.113.10-203.0.113.12`), or in the config file an array of those. The first address is the one
 * port forwards and the gateway's own traffic use.
 */


export function parsePublicPool(v: unknown): number[] {
  const parts: unknown[] = Array.isArray(v) ? v : [v];
  const out: number[] = [];
  for (const part of parts) {
    if (typeof part !== 'string') throw new ConfigError('publicIp', `not an IPv4 address, list or range: ${JSON.stringify(part)}`);
    for (const item of part.split(',').map((s) => s.trim())) {
      const dash = item.indexOf('-');
      if (dash < 0) {
        const a = parseIpv4(item);
        if (a === null) throw new ConfigError('publicIp', `not an IPv4 address: ${JSON.stringify(item)}`);
        out.push(a);
        continue;
      }
      const lo = parseIpv4(item.slice(0, dash));
      const hi = parseIpv4(item.slice(dash + 1));
      if (lo === null || hi === null || hi < lo) {
        throw new ConfigError('publicIp', `not a range of IPv4 addresses (LOW-HIGH): ${JSON.stringify(item)}`);
      }
      if (hi - lo + 1 > MAX_POOL) throw new ConfigError('publicIp', `${item} holds ${hi - lo + 1} addresses; at most ${MAX_POOL}`);
      for (let a = lo; a <= hi; a++) out.push(a);
    }
  }
  if (out.length === 0) throw new ConfigError('publicIp', 'no address given');
  if (out.length > MAX_POOL) throw new ConfigError('publicIp', `${out.length} addresses; at most ${MAX_POOL}`);
  const seen = new Set<number>();
  for (const a of out) {
    if (seen.has(a)) throw new ConfigError('publicIp', `${ipToString(a)} is named twice`);
    seen.add(a);
  }
  return out;
}

/** `PREFIX=ADDR` entries (repeatable flag, or an array in the config file); ADDR must be in the pool. */
export function parseSnatEntries(v: unknown, pool: readonly number[]): SnatEntry[] {
  if (v === undefined || v === null) return [];
  const items: unknown[] = Array.isArray(v) ? v : [v];
  if (items.length > 0 && pool.length === 0) {
    throw new ConfigError('snat', 'static SNAT entries need --public-ip (masquerade has no pool to name an address of)');
  }
  const out: SnatEntry[] = [];
  for (const it of items) {
    const m = typeof it === 'string' ? /^\s*([0-9.]+)\/(\d{1,2})\s*=\s*([0-9.]+)\s*$/.exec(it) : null;
    const net = m ? parseIpv4(m[1]!) : null;
    const len = m ? Number(m[2]) : NaN;
    const addr = m ? parseIpv4(m[3]!) : null;
    if (!m || net === null || addr === null || len > 32) {
      throw new ConfigError('snat', `expected PREFIX=ADDR, e.g. 192.168.2.0/24=203.0.113.11, got ${JSON.stringify(it)}`);
    }
    const mask = len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0;
    if (((net & mask) >>> 0) !== net) throw new ConfigError('snat', `${String(it)}: the prefix has host bits set`);
    if (!pool.includes(addr)) {
      throw new ConfigError('snat', `${String(it)}: ${ipToString(addr)} is not one of --public-ip (${pool.map(ipToString).join(', ')})`);
    }
    if (out.some((e) => e.network === net && e.prefixLength === len)) throw new ConfigError('snat', `${m[1]}/${len} is given twice`);
    out.push({ network: net, prefixLength: len, address: addr });
  }
  return out;
}
