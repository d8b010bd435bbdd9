import { describe, expect, it } from 'vitest';
import { formatBytes, formatDuration, formatPercent, uptime } from './format';

describe('formatting', () => {
  it('shows sizes in binary units', () => {
    expect(formatBytes(null)).toBe('–');
    expect(formatBytes(512)).toBe('512 B');
    expect(formatBytes(1536)).toBe('1.5 KiB');
    expect(formatBytes(250 * 1024 * 1024)).toBe('250 MiB');
  });

  it('shows durations with the two largest units', () => {
    expect(formatDuration(0)).toBe('0s');
    expect(formatDuration(12)).toBe('12s');
    expect(formatDuration(250)).toBe('4m 10s');
    expect(formatDuration(3600 * 2 + 300)).toBe('2h 5m');
    expect(formatDuration(86400 * 3 + 3600 * 4 + 59)).toBe('3d 4h');
    expect(formatDuration(3600)).toBe('1h');
  });

  it('shows uptime from the start time', () => {
    const now = new Date('2026-01-01T12:00:00Z');
    expect(uptime('2026-01-01T11:58:30Z', now)).toBe('1m 30s');
    expect(uptime(null, now)).toBe('–');
  });

  it('shows percentages with one decimal', () => {
    expect(formatPercent(0.25)).toBe('0.3 %');
    expect(formatPercent(null)).toBe('–');
  });
});
