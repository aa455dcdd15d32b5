import type { Dataplane } from '../dataplane/loop.js';
import { FixedHistogram } from './histogram.js';

/**
 * What the loop does per batch: how many packets it read at once and how long translating and
 * writing them took. Fed from Dataplane.onBatch (once per batch, never per packet).
 */
export const BATCH_SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];
/** Seconds; a batch of 64 small packets takes tens of microseconds when things are well. */
export const LOOP_SECONDS_BUCKETS = [1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1];

export class LoopMetrics {
  readonly batchSize = new FixedHistogram(BATCH_SIZE_BUCKETS);
  readonly loopSeconds = new FixedHistogram(LOOP_SECONDS_BUCKETS);
  /** Packets read from the TUN (forwarded + dropped + oversize). */
  packetsRead = 0;

  /** Install on the loop; `clock` must be the loop's own clock (milliseconds). */
  install(loop: Dataplane, clock: () => number): void {
    loop.onBatch = (packets, startedAt) => {
      this.packetsRead += packets;
      this.batchSize.observe(packets);
      this.loopSeconds.observe((clock() - startedAt) / 1000);
    };
  }
}
