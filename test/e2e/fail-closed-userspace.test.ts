/**
 * Fail closed in every instant: while the router starts and stops, a LAN host keeps sending a UDP
 * datagram every millisecond, and the WAN must never see a private (192.168.0.0/16) address, neither
 * as a source nor quoted in an ICMP error. The gateway forwards only while forwarding is on, so
 * forwarding must go on after every rule that diverts LAN traffic into tunnat (or every NAT rule, for
 * the kernel engine) exists, and off before any of them is removed; while no tunnat runs, the rules
 * that stay (a restart, a kill) must refuse LAN traffic. Each kind of stop is exercised 20 times, with
 * the start that follows it (a restore, an adoption, the cleaning of a stale record). The capture must
 * also hold translated datagrams from the running phases, so that a router that never forwarded
 * anything cannot pass.
 *
 * The userspace engine's kinds of stop (one of them with `--masquerade all`); the kernel engine's are in fail-closed-kernel.test.ts (the
 * suite is test/e2e/fixtures/fail-closed.ts). Needs root (namespaces, veths, a TUN, tcpdump).
 */
import { failClosedSuite } from './fixtures/fail-closed.js';

failClosedSuite('fail closed while starting and stopping: the userspace engine', [
  ['userspace engine, SIGINT', { engine: 'userspace', args: [], stop: 'SIGINT' }, true],
  ['userspace engine, SIGTERM without --state', { engine: 'userspace', args: [], stop: 'SIGTERM' }, true],
  [
    'userspace engine, SIGTERM with --state (the next start restores)',
    { engine: 'userspace', args: ['--state', '@STATE'], stop: 'SIGTERM', nextStart: /adopted the routing/ },
    true,
  ],
  [
    'userspace engine, --masquerade all, SIGTERM with --state (the next start adopts the pool\'s routing and restores)',
    { engine: 'userspace', args: ['--masquerade', 'all', '--state', '@STATE'], stop: 'SIGTERM', nextStart: /adopted the routing/ },
    true,
  ],
  ['userspace engine, kill -9 (the next start adopts)', { engine: 'userspace', args: [], stop: 'SIGKILL', nextStart: /adopted the routing/ }, true],
]);
