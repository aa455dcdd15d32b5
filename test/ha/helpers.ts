import { expect } from 'vitest';

/**
 * The first `HEAD {` … `}` block of a configuration text (keepalived's, conntrackd's), nested blocks
 * included, so a test can check that a setting sits in the section it belongs to.
 */
export function confBlock(text: string, head: string): string {
  const start = text.indexOf(`${head} {`);
  expect(start, `${head} is in the configuration`).toBeGreaterThanOrEqual(0);
  let depth = 0;
  for (let i = text.indexOf('{', start); i < text.length; i++) {
    if (text[i] === '{') depth++;
    else if (text[i] === '}' && --depth === 0) return text.slice(start, i + 1);
  }
  throw new Error(`${head} is not closed`);
}
