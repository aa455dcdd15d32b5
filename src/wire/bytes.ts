/**
 * Big-endian reads and writes at raw offsets, for the places that work below the header views: a
 * quoted packet inside an ICMP error (usually cut short, so the length-checking views refuse it), a
 * first fragment, and the hot path after a view has validated the bytes once (V8 does not always
 * inline a getter that deep in optimised code). The caller guarantees the bytes are in range.
 */

export function rd16(b: Uint8Array, i: number): number {
  return (b[i]! << 8) | b[i + 1]!;
}

export function rd32(b: Uint8Array, i: number): number {
  return ((b[i]! << 24) | (b[i + 1]! << 16) | (b[i + 2]! << 8) | b[i + 3]!) >>> 0;
}

export function wr16(b: Uint8Array, i: number, v: number): void {
  b[i] = v >>> 8;
  b[i + 1] = v;
}

export function wr32(b: Uint8Array, i: number, v: number): void {
  b[i] = v >>> 24;
  b[i + 1] = v >>> 16;
  b[i + 2] = v >>> 8;
  b[i + 3] = v;
}
