import { describe, expect, it } from 'vitest';
import { SyncAgent, TICK_MS, PEER_LOST_MS, MAX_PAYLOAD, type Role } from '../../src/ha/sync.js';
import { REC, REMOVE_BYTES, forEachRecord } from '../../src/nat/replica.js';
import { seededRng } from '../../src/nat/ports.js';

const KEY = new TextEncoder().encode('a shared key of the pair, 32 b.');

/** A REMOVE record whose source address carries `n`, so the order of delivery can be read back. */
function record(n: number): Uint8Array {
  const r = new Uint8Array(REMOVE_BYTES);
  r[0] = REC.REMOVE;
  r[1] = 17;
  new DataView(r.buffer).setUint32(2, n);
  return r;
}

interface Side {
  agent: SyncAgent;
  /** Record numbers delivered (REMOVE), and BEGIN/END marks as -epoch / -1000-epoch. */
  got: number[];
  resyncs: number[];
  flows: number;
}

/**
 * Two agents on a simulated link with a fake clock: `loss` of the datagrams (seeded) is lost, `cut`
 * loses everything, and the active answers every resync with `dump` records.
 */
function link(opts: { loss?: number; seed?: number; dump?: number[]; backlogLimit?: number; keyB?: Uint8Array; fingerprintB?: Uint8Array; mismatches?: number[] } = {}) {
  let now = 0;
  const rng = seededRng(opts.seed ?? 1);
  const wire: { to: 0 | 1; msg: Uint8Array }[] = [];
  let cut = false;
  let seq = 0;
  const sides: Side[] = [];
  const sent: Uint8Array[][] = [[], []];
  const make = (i: 0 | 1, key: Uint8Array, fingerprint?: Uint8Array): Side => {
    const side: Side = { agent: null as unknown as SyncAgent, got: [], resyncs: [], flows: 0 };
    side.agent = new SyncAgent({
      key,
      node: i,
      now: () => now,
      send: (msg) => {
        sent[i]!.push(msg);
        if (!cut && rng() >= (opts.loss ?? 0)) wire.push({ to: (1 - i) as 0 | 1, msg });
      },
      deliver: (recs) => {
        const dv = new DataView(recs.buffer, recs.byteOffset, recs.byteLength);
        forEachRecord(recs, (kind, off) => {
          if (kind === REC.REMOVE) side.got.push(dv.getUint32(off + 2));
          else if (kind === REC.BEGIN) side.got.push(-dv.getUint32(off + 1));
          else if (kind === REC.END) {
            side.got.push(-1000 - dv.getUint32(off + 1));
            side.agent.resyncApplied(dv.getUint32(off + 1));
          }
        });
      },
      startResync: (epoch) => {
        side.resyncs.push(epoch);
        for (const n of opts.dump ?? []) side.agent.pushRecords(record(n));
        side.agent.endResync(epoch);
      },
      flowCount: () => side.flows,
      random: (n) => Uint8Array.from({ length: n }, (_, k) => (k === 0 ? i + 1 : k === 1 ? ++seq : 7)),
      ...(fingerprint ? { fingerprint } : {}),
      onMismatch: () => opts.mismatches?.push(i),
      ...(opts.backlogLimit !== undefined ? { backlogLimit: opts.backlogLimit } : {}),
    });
    return side;
  };
  sides.push(make(0, KEY), make(1, opts.keyB ?? KEY, opts.fingerprintB));
  const step = (ms: number) => {
    for (let t = 0; t < ms; t += TICK_MS) {
      now += TICK_MS;
      // Everything on the wire arrives within the tick, in order, before the timers run.
      while (wire.length > 0) {
        const { to, msg } = wire.shift()!;
        sides[to]!.agent.receive(msg);
      }
      for (const s of sides) s.agent.tick();
    }
  };
  return {
    a: sides[0]!,
    b: sides[1]!,
    step,
    sent,
    setCut: (c: boolean) => (cut = c),
    inject: (to: 0 | 1, msg: Uint8Array) => sides[to]!.agent.receive(msg),
    restartB: () => {
      sides[1] = make(1, KEY);
      return sides[1];
    },
    roles: (a: Role, b: Role) => {
      sides[0]!.agent.setRole(a);
      sides[1]!.agent.setRole(b);
    },
  };
}

/** The delivered numbers after the last BEGIN of a resync, without marks. */
function afterLastBegin(got: number[]): number[] {
  let i = got.length - 1;
  while (i >= 0 && !(got[i]! < 0 && got[i]! > -1000)) i--;
  return got.slice(i + 1).filter((n) => n >= 0);
}

describe('SyncAgent', () => {
  it('meets the peer, sends it a full resync, then every change in order', () => {
    const l = link({ dump: [1, 2, 3] });
    l.roles('active', 'standby');
    l.step(300);
    expect(l.a.resyncs).toEqual([1]);
    expect(l.b.got).toEqual([-1, 1, 2, 3, -1001]);
    for (let n = 10; n < 20; n++) l.a.agent.pushRecords(record(n));
    l.step(50);
    expect(l.b.got.slice(5)).toEqual([10, 11, 12, 13, 14, 15, 16, 17, 18, 19]);
    const st = l.a.agent.status();
    expect(st.peer).toMatchObject({ alive: true, role: 'standby', node: 1 });
    expect(st.lag.unacked).toBe(0);
    expect(l.b.agent.status().resync.appliedEpoch).toBe(1);
    // One resync only: the standby stopped asking once it had applied it.
    l.step(500);
    expect(l.a.resyncs).toEqual([1]);
  });

  it('a lossy link delivers every record once and in order (acknowledgements, resending)', () => {
    const l = link({ loss: 0.3, seed: 7, dump: [] });
    l.roles('active', 'standby');
    l.step(1000);
    expect(l.b.agent.status().resync.appliedEpoch).toBeGreaterThanOrEqual(1);
    const want: number[] = [];
    for (let n = 0; n < 3000; n++) {
      want.push(n);
      l.a.agent.pushRecords(record(n));
      if (n % 100 === 99) l.step(20);
    }
    l.step(3000);
    expect(afterLastBegin(l.b.got)).toEqual(want);
    expect(l.a.agent.stats.retransmits).toBeGreaterThan(0);
    expect(l.a.agent.status().lag.unacked).toBe(0);
  });

  it('batches records into messages that fit one frame', () => {
    const l = link({ dump: [] });
    l.roles('active', 'standby');
    l.step(300);
    const before = l.sent[0]!.length;
    for (let n = 0; n < 1000; n++) l.a.agent.pushRecords(record(n));
    l.step(TICK_MS);
    const data = l.sent[0]!.slice(before).filter((m) => m[5] === 2);
    expect(data.length).toBe(Math.ceil((1000 * REMOVE_BYTES) / (Math.floor(MAX_PAYLOAD / REMOVE_BYTES) * REMOVE_BYTES)));
    for (const m of data) expect(m.length).toBeLessThanOrEqual(1472);
  });

  it('a message with a bad MAC, or from another key, is counted and dropped before it is read', () => {
    const l = link({ keyB: new TextEncoder().encode('not the key of this pair at all') });
    l.roles('active', 'standby');
    l.step(300);
    expect(l.a.agent.stats.badMac).toBeGreaterThan(0);
    expect(l.b.agent.stats.badMac).toBeGreaterThan(0);
    expect(l.a.agent.status().peer.session).toBeNull();
    expect(l.b.got).toEqual([]);
    // One flipped bit in an otherwise good message.
    const g = link({ dump: [5] });
    g.roles('active', 'standby');
    g.step(300);
    const msg = g.sent[0]!.at(-1)!.slice();
    msg[10]! ^= 1; // a bit of the sender's session
    const bad = g.b.agent.stats.badMac;
    g.inject(1, msg);
    expect(g.b.agent.stats.badMac).toBe(bad + 1);
  });

  it('a replay is never applied twice, and a message from before a restart is stale', () => {
    const l = link({ dump: [] });
    l.roles('active', 'standby');
    l.step(300);
    l.a.agent.pushRecords(record(42));
    l.step(50);
    const data = l.sent[0]!.filter((m) => m[5] === 2).at(-1)!;
    l.inject(1, data);
    l.inject(1, data);
    expect(l.b.got.filter((n) => n === 42)).toEqual([42]);
    // The standby restarts: the old DATA names its old session.
    const b2 = l.restartB();
    b2.agent.setRole('standby');
    const stale = b2.agent.stats.stale;
    l.inject(1, data);
    expect(b2.got).toEqual([]);
    expect(b2.agent.stats.stale).toBe(stale + 1);
  });

  it('a HELLO replayed from an old session does not turn the active away from the real peer', () => {
    const l = link({ dump: [] });
    l.roles('active', 'standby');
    l.step(300);
    const oldHello = l.sent[1]!.find((m) => m[5] === 1)!;
    const b2 = l.restartB();
    b2.agent.setRole('standby');
    l.step(500);
    const peer = l.a.agent.status().peer.session;
    l.inject(0, oldHello);
    l.a.agent.pushRecords(record(77));
    l.step(100);
    expect(l.a.agent.status().peer.session).toBe(peer);
    expect(b2.got.at(-1)).toBe(77);
  });

  it('a restarted standby gets a full resync', () => {
    const l = link({ dump: [7, 8] });
    l.roles('active', 'standby');
    l.step(300);
    const b2 = l.restartB();
    b2.agent.setRole('standby');
    l.step(500);
    expect(l.a.resyncs).toEqual([1, 2]);
    expect(b2.got).toEqual([-2, 7, 8, -1002]);
  });

  it('a cut sync link: the backlog is dropped when the peer is lost, and a full resync follows when it is back', () => {
    const l = link({ dump: [100, 101] });
    l.roles('active', 'standby');
    l.step(300);
    l.setCut(true);
    for (let n = 0; n < 50; n++) l.a.agent.pushRecords(record(n));
    l.step(PEER_LOST_MS + 200);
    expect(l.a.agent.status().peer.alive).toBe(false);
    expect(l.a.agent.status().lag).toMatchObject({ unacked: 0, waitingBytes: 0 });
    expect(l.a.agent.stats.backlogsDropped).toBe(1);
    l.setCut(false);
    l.step(500);
    expect(l.a.resyncs).toEqual([1, 2]);
    expect(l.b.got.slice(-4)).toEqual([-2, 100, 101, -1002]);
  });

  it('a backlog past its limit is dropped for a full resync, so memory stays bounded', () => {
    const l = link({ dump: [1], backlogLimit: 10_000 });
    l.roles('active', 'standby');
    l.step(300);
    l.setCut(true);
    for (let n = 0; n < 5000; n++) l.a.agent.pushRecords(record(n));
    expect(l.a.agent.status().lag.waitingBytes).toBeLessThanOrEqual(10_000 + MAX_PAYLOAD);
    expect(l.a.agent.stats.backlogsDropped).toBeGreaterThanOrEqual(1);
    l.setCut(false);
    l.step(1000);
    expect(l.b.got.slice(-3)).toEqual([-l.a.resyncs.at(-1)!, 1, -1000 - l.a.resyncs.at(-1)!]);
  });

  it('split brain: neither takes the other\'s records; the one that goes back to standby is resynced', () => {
    const l = link({ dump: [9] });
    l.roles('active', 'standby');
    l.step(300);
    l.b.agent.setRole('active');
    l.step(300);
    l.a.agent.pushRecords(record(1));
    l.b.agent.pushRecords(record(2));
    l.step(300);
    expect(l.a.got).toEqual([]);
    expect(l.b.got).not.toContain(1);
    // b keeps the addresses; a becomes standby and asks for everything.
    l.a.agent.setRole('standby');
    l.step(500);
    expect(l.b.resyncs.length).toBeGreaterThanOrEqual(1);
    expect(l.a.got.slice(-3)).toEqual([-l.b.resyncs.at(-1)!, 9, -1000 - l.b.resyncs.at(-1)!]);
  });

  it('a message replayed inside a live session is stale: an old HELLO neither revives a dead peer nor starts a resync', () => {
    const l = link({ dump: [3] });
    l.roles('active', 'standby');
    l.step(300);
    const hello = l.sent[1]!.filter((m) => m[5] === 1).at(-1)!;
    l.step(300);
    const stale = l.a.agent.stats.stale;
    const resyncs = l.a.resyncs.length;
    l.setCut(true);
    l.step(PEER_LOST_MS + 100);
    for (let k = 0; k < 5; k++) l.inject(0, hello);
    expect(l.a.agent.stats.stale).toBe(stale + 5);
    expect(l.a.agent.status().peer.alive).toBe(false);
    expect(l.a.resyncs.length).toBe(resyncs);
  });

  it('a peer whose settings differ (its fingerprint) is refused and reported once', () => {
    const mismatches: number[] = [];
    const l = link({ dump: [1], fingerprintB: Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8), mismatches });
    l.roles('active', 'standby');
    l.step(500);
    expect(l.a.agent.status().peer.session).toBeNull();
    expect(l.a.agent.stats.mismatched).toBeGreaterThan(0);
    expect([...mismatches].sort()).toEqual([0, 1]);
    expect(l.b.got).toEqual([]);
  });

  it('refuses a short key', () => {
    expect(() => new SyncAgent({ key: new Uint8Array(8), node: 0, send: () => {}, now: () => 0, deliver: () => {}, startResync: () => {}, flowCount: () => 0 })).toThrow(/16 bytes/);
  });
});
