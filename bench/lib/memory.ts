/**
 * Measured memory of a data structure: the growth of the JS heap plus ArrayBuffer backing stores
 * (where typed arrays live) across its construction, with full garbage collections on both sides so
 * that only what the structure keeps alive is counted.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

let cachedGc: (() => void) | null | undefined;

/**
 * A callable full GC without requiring `node --expose-gc` on the command line (`npm run bench` runs
 * plain node): the flag can still be set at run time, and a fresh context then sees `gc`.
 * Returns null if this V8 refuses, in which case memory figures are reported as unavailable.
 */
export function getGc(): (() => void) | null {
  if (cachedGc !== undefined) return cachedGc;
  const existing = (globalThis as { gc?: unknown }).gc;
  if (typeof existing === 'function') return (cachedGc = existing as () => void);
  try {
    setFlagsFromString('--expose-gc');
    const gc: unknown = runInNewContext('gc');
    cachedGc = typeof gc === 'function' ? (gc as () => void) : null;
  } catch {
    cachedGc = null;
  }
  return cachedGc;
}

export interface MemorySample {
  heapUsed: number;
  arrayBuffers: number;
}

/** Collects twice (weak references and finalizers can need a second pass), then samples. */
export function sampleMemory(gc: (() => void) | null): MemorySample {
  if (gc) {
    gc();
    gc();
  }
  const m = process.memoryUsage();
  return { heapUsed: m.heapUsed, arrayBuffers: m.arrayBuffers };
}

export function bytesBetween(a: MemorySample, b: MemorySample): number {
  return b.heapUsed - a.heapUsed + (b.arrayBuffers - a.arrayBuffers);
}

export interface MemoryRecord {
  structure: string;
  flows: number;
  /** What the structure says of itself (FlowTable.bytesPerFlow()), where it can. */
  declaredBytesPerFlow?: number;
  /** Heap + ArrayBuffer growth per flow; null when no GC could be forced. */
  measuredBytesPerFlow: number | null;
}
