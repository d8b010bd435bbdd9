import { describe, expect, it } from 'vitest';
import { usableLanguage } from './locale';

describe('the UI language', () => {
  it('falls back to en-US when the system locale is POSIX', () => {
    expect(usableLanguage('C')).toBe('en-US');
    expect(usableLanguage('')).toBe('en-US');
    expect(usableLanguage(undefined)).toBe('en-US');
    expect(usableLanguage('de-DE')).toBe('de-DE');
    expect(usableLanguage('en-us')).toBe('en-US');
  });
});
