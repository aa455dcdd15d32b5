/**
 * A yardstick for the conntrack numbers: what one dependent random memory read costs on this machine,
 * in a working set that fits the caches and in one that does not. A hash-table lookup in a table much
 * larger than the caches pays at least one such read (the bucket), so this is the floor under any
 * "1 M flows against 1 K flows" ratio.
 *
 * The loop chases pointers around one random cycle through every 64-byte line of the buffer (Sattolo's
 * shuffle makes a single cycle), so each read's address depends on the previous read and neither the
 * prefetcher nor out-of-order execution can hide the latency. The line indices visited are summed and
 * checked like every other benchmark's results.
 */
import type { BenchCase } from './harness.js';
import { cyclicCase } from './cyclic.js';
import { Rng32 } from './reference.js';

export interface LatencyOptions {
  /** Working-set sizes in bytes (multiples of 64). */
  sizes: readonly number[];
}

const LINE_INTS = 16;

export function sizeLabel(bytes: number): string {
  if (bytes >= 2 ** 20) return `${bytes / 2 ** 20} MiB`;
  return `${bytes / 2 ** 10} KiB`;
}

export function* latencyCases(opts: LatencyOptions): Generator<BenchCase> {
  for (const bytes of opts.sizes) {
    const lines = Math.floor(bytes / 64);
    const rng = new Rng32(0x1a7e + lines);
    const order = new Int32Array(lines);
    for (let i = 0; i < lines; i++) order[i] = i;
    for (let i = lines - 1; i > 0; i--) {
      const j = rng.below(i); // j < i: Sattolo's variant, one cycle through every line
      const t = order[i]!;
      order[i] = order[j]!;
      order[j] = t;
    }
    const data = new Int32Array(lines * LINE_INTS);
    const expected = new Int32Array(lines);
    for (let i = 0; i < lines; i++) {
      const next = order[(i + 1) % lines]!;
      data[order[i]! * LINE_INTS] = next * LINE_INTS;
      expected[i] = next;
    }
    yield cyclicCase({
      group: 'latency',
      name: 'dependent random read (64-B line)',
      size: bytes,
      sizeLabel: sizeLabel(bytes),
      expected,
      loop(start, n) {
        let p = order[start]! * LINE_INTS;
        let acc = 0;
        for (let i = 0; i < n; i++) {
          p = data[p]!;
          acc = (acc + (p >> 4)) | 0;
        }
        return acc;
      },
      describe: (j) => `step ${j} of the cycle`,
    });
  }
}
