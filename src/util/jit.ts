import { setFlagsFromString } from 'node:v8';

/**
 * The one V8 setting the packet path depends on: how much bytecode TurboFan may inline into one
 * optimised function in total (V8's default is 920 bytes).
 *
 * The established fast path (Translator.translate) calls a handful of helpers per packet: the flow
 * lookup, the transport and IPv4 rewrites, the view's wrap. Each reads well as a function of its own,
 * but under the default budget V8 stops inlining after the first two or three, and a packet then pays a
 * real call for each of the rest; which ones depends on the order in which V8 happened to optimise
 * them, so the cost moved by 10-20 % between runs and between builds that differ only in how the code is
 * split (measured with `npm run bench:compare`, docs/benchmarks.md). With room for all of them the fast
 * path is one straight piece of machine code again. The price is larger optimised code for the few
 * functions that inline this much.
 */
export const INLINE_BUDGET_BYTES = 3000;

/** The flag as V8 takes it, also recorded in benchmark reports. */
export const JIT_FLAGS = `--max-inlined-bytecode-size-cumulative=${INLINE_BUDGET_BYTES}`;

let tuned = false;

/**
 * Apply JIT_FLAGS to this process (and its worker threads, which share V8's flags). Call it before the
 * packet path runs: V8 reads the budget each time it optimises a function, so code optimised earlier
 * keeps the old one until it is optimised again.
 */
export function tuneJit(): void {
  if (tuned) return;
  setFlagsFromString(JIT_FLAGS);
  tuned = true;
}

/** Whether tuneJit() ran in this process. */
export function jitTuned(): boolean {
  return tuned;
}
