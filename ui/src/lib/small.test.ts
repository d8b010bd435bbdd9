import { describe, expect, it } from 'vitest';
import { pipeWebhookUrl } from './links';
import { filterLines, serviceFromHash } from './logfilter';
import { qrPath } from './qr';
import { pageFromHash } from './routes';

describe('pages and links', () => {
  it('routes by fragment and falls back to the overview', () => {
    expect(pageFromHash('#/queues')).toBe('queues');
    expect(pageFromHash('#/logs&service=api')).toBe('logs');
    expect(pageFromHash('#token=abc')).toBe('overview');
    expect(pageFromHash('')).toBe('overview');
  });

  it('derives the Pipe webhook from the public URL', () => {
    expect(pipeWebhookUrl('https://x.example/')).toBe('https://x.example/exp/renamevideo/');
    expect(pipeWebhookUrl('https://x.example')).toBe('https://x.example/exp/renamevideo/');
  });

  it('filters log lines case-insensitively', () => {
    expect(filterLines(['ERROR disk full', 'ok', 'an error'], 'error')).toEqual(['ERROR disk full', 'an error']);
    expect(filterLines(['a', 'b'], '  ')).toEqual(['a', 'b']);
    expect(serviceFromHash('#/logs&service=postgres')).toBe('postgres');
    expect(serviceFromHash('#/logs')).toBeNull();
  });

  it('draws a QR code with a quiet zone', () => {
    const qr = qrPath('https://example.org/');
    // Version 2 at level M is 25 modules, plus 2 on each side.
    expect(qr.size).toBe(29);
    // The top-left finder pattern starts right after the quiet zone.
    expect(qr.d.startsWith('M2 2h1v1h-1z')).toBe(true);
  });
});
