import { describe, expect, it } from 'vitest';
import { adoptToken, fragmentWithoutToken, tokenFromFragment } from './token';

function memoryStorage(): { data: Map<string, string>; getItem(k: string): string | null; setItem(k: string, v: string): void } {
  const data = new Map<string, string>();
  return { data, getItem: (k) => data.get(k) ?? null, setItem: (k, v) => void data.set(k, v) };
}

describe('the panel token', () => {
  it('is read from the dashboard link fragment', () => {
    expect(tokenFromFragment('#token=abc123')).toBe('abc123');
    expect(tokenFromFragment('#/queues&token=abc%2B1')).toBe('abc+1');
    expect(tokenFromFragment('#/queues')).toBeNull();
    expect(tokenFromFragment('#token=')).toBeNull();
  });

  it('leaves the address bar without the secret but on the same page', () => {
    expect(fragmentWithoutToken('#token=abc')).toBe('');
    expect(fragmentWithoutToken('#/queues&token=abc')).toBe('#/queues');
  });

  it('survives a reload through session storage', () => {
    const storage = memoryStorage();
    expect(adoptToken('#token=first', storage)).toBe('first');
    expect(adoptToken('', storage)).toBe('first');
    expect(adoptToken('#token=second', storage)).toBe('second');
  });
});
