import { rd16, rd32, wr16, wr32 } from './bytes.js';

const EMPTY = new Uint8Array(0);

/**
 * What every header view is: a window on caller-owned bytes (`buf` from absolute index `off`), re-pointed
 * by its checked wrap() at each packet and never copying them. Field accessors of the views read and write
 * through the four helpers below, at offsets relative to the header (the views' `*_OFF` tables).
 */
export class HeaderView {
  buf: Uint8Array = EMPTY;
  /** Absolute index of the header's first byte in buf. */
  off = 0;

  protected u16(at: number): number {
    return rd16(this.buf, this.off + at);
  }

  protected setU16(at: number, v: number): void {
    wr16(this.buf, this.off + at, v);
  }

  protected u32(at: number): number {
    return rd32(this.buf, this.off + at);
  }

  protected setU32(at: number, v: number): void {
    wr32(this.buf, this.off + at, v);
  }
}
