/**
 * Fail closed in every instant, the kernel engine's kinds of stop (nft and iptables backends, SIGTERM
 * and kill -9 with the next start cleaning the stale record); the userspace engine's are in
 * fail-closed-userspace.test.ts, and the suite itself in test/e2e/fixtures/fail-closed.ts. Needs root
 * (namespaces, veths, tcpdump); the iptables kinds also need iptables-restore.
 */
import { failClosedSuite, hasIptables } from './fixtures/fail-closed.js';

failClosedSuite('fail closed while starting and stopping: the kernel engine', [
  ['kernel engine (nft), SIGTERM', { engine: 'kernel', args: ['--backend', 'nft'], stop: 'SIGTERM' }, true],
  [
    'kernel engine (nft), kill -9 (the next start cleans the stale record)',
    { engine: 'kernel', args: ['--backend', 'nft'], stop: 'SIGKILL', nextStart: /exited without removing its kernel NAT/ },
    true,
  ],
  ['kernel engine (iptables), SIGTERM', { engine: 'kernel', args: ['--backend', 'iptables'], stop: 'SIGTERM' }, hasIptables],
  [
    'kernel engine (iptables), kill -9 (the next start cleans the stale record)',
    { engine: 'kernel', args: ['--backend', 'iptables'], stop: 'SIGKILL', nextStart: /exited without removing its kernel NAT/ },
    hasIptables,
  ],
]);
