/**
 * The seeded data-plane fuzz, bounded for CI (the long run is scripts/fuzz.ts). Every configuration of
 * test/fuzz/lib/rig.ts runs a few seeds through the whole pipeline (FakeTun → Dataplane → Translator →
 * FakeTun); after each batch the rig checks every forwarded packet and the whole state, and at the end
 * that everything drains. A failure message carries the packet as hex and the command that replays it.
 */
import { describe, expect, it } from 'vitest';
import { FUZZ_CONFIGS, describeFailure, runFuzz, type RunResult } from './lib/rig.js';

const SEEDS = [11, 22, 33];
const PACKETS_PER_SESSION = 15_000;
/** Per session; the whole file stays well under a minute on two shared cores. */
const SESSION_BUDGET_MS = 3_000;

describe('data-plane fuzz (seeded, bounded)', () => {
  const results: RunResult[] = [];

  for (const config of FUZZ_CONFIGS) {
    it.each(SEEDS)(`${config.name}, seed %i: no exception, every invariant holds after every batch`, (seed) => {
      // Residual cases of bug 7 (docs/reliability.md): a refused new flow may already have evicted another.
      // Counted, not failed: with tables of a few slots, making room can still free what the new flow then
      // lacks (a mapping slot, a permission, a port). The common cases are fixed (known-issues.test.ts).
      const r = runFuzz({ config, seed, packets: PACKETS_PER_SESSION, timeBudgetMs: SESSION_BUDGET_MS, tolerateEvictThenRefuse: true });
      results.push(r);
      expect(r.failure, describeFailure(r)).toBeNull();
      expect(r.batches).toBeGreaterThan(50);
      expect(r.sentinelExchanges).toBeGreaterThan(0);
    });
  }

  it('the sessions together reached every deep path (the model still plays both ends)', () => {
    expect(results.length).toBe(FUZZ_CONFIGS.length * SEEDS.length);
    const total = (key: string): number => results.reduce((n, r) => n + (r.coverage[key] ?? 0), 0);
    const drops = (reason: string): number => results.reduce((n, r) => n + (r.drops[reason] ?? 0), 0);
    for (const key of [
      'path-outbound', 'path-inbound', 'path-local', 'path-hairpin', 'icmp-errors-translated', 'generated',
      'removed-expired', 'removed-early-drop', 'removed-flush', 'fragments-held', 'fragments-released',
      'fragments-expired', 'fragments-overlaps', 'tcp-ESTABLISHED', 'tcp-FIN_WAIT', 'tcp-CLOSE', 'gso-superpackets',
    ]) {
      expect(total(key), key).toBeGreaterThan(0);
    }
    for (const reason of [
      'malformed', 'no-mapping', 'ports-exhausted', 'fragment', 'unsupported-protocol', 'tcp-flags', 'checksum',
      'not-ours', 'filtered', 'egress-policy', 'host-limit',
    ]) {
      expect(drops(reason), reason).toBeGreaterThan(0);
    }
    const packets = results.reduce((n, r) => n + r.packets, 0);
    expect(packets).toBeGreaterThan(20_000);
  });
});
