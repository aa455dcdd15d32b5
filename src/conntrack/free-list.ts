/**
 * The free rows of a fixed-capacity table, as a stack in an Int32Array: taking and returning a row is one
 * array access and never allocates. Rows are handed out from 0 up at first, so a fresh table fills its
 * arrays from the start.
 */
const NONE = -1;

export class FreeList {
  private readonly stack: Int32Array;
  private top: number;

  constructor(readonly capacity: number) {
    this.stack = new Int32Array(capacity);
    for (let i = 0; i < capacity; i++) this.stack[i] = capacity - 1 - i;
    this.top = capacity;
  }

  /** Free rows left. */
  get available(): number {
    return this.top;
  }

  /** The row take() would return next, or -1 when none is free; takes nothing. */
  peek(): number {
    return this.top === 0 ? NONE : this.stack[this.top - 1]!;
  }

  /** Take a free row, or -1 when none is free. */
  take(): number {
    return this.top === 0 ? NONE : this.stack[--this.top]!;
  }

  /** Give a row back; the caller guarantees it was taken and is given back once. */
  give(row: number): void {
    this.stack[this.top++] = row;
  }

  /** Bytes per row. */
  get bytesPerRow(): number {
    return this.stack.BYTES_PER_ELEMENT;
  }

  /**
   * 1 for every row on the list. Problems with the list itself (a row out of range or listed twice) go to
   * `problems`. Allocates and walks the list: for checks, not the packet path.
   */
  marks(problems: string[], name: string): Uint8Array {
    const free = new Uint8Array(this.capacity);
    for (let i = 0; i < this.top; i++) {
      const row = this.stack[i]!;
      if (row < 0 || row >= this.capacity) problems.push(`the free list holds ${row}, not a ${name}`);
      else if (free[row]) problems.push(`${name} ${row} is on the free list twice`);
      else free[row] = 1;
    }
    return free;
  }

  /**
   * What is wrong between the free list and the rows in use: `live(row)` says whether a row is in use; a
   * row must be one or the other, never both, never neither. Returns the problems and the free marks.
   */
  audit(name: string, live: (row: number) => boolean): { problems: string[]; free: Uint8Array } {
    const problems: string[] = [];
    const free = this.marks(problems, name);
    for (let row = 0; row < this.capacity; row++) {
      const inUse = live(row);
      if (free[row] && inUse) problems.push(`${name} ${row} is in use and on the free list`);
      else if (!free[row] && !inUse) problems.push(`${name} ${row} is neither in use nor free: lost`);
    }
    return { problems, free };
  }
}
