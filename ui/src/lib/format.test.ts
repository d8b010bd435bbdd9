import { describe, expect, it } from 'vitest';
import { formatBytes, formatDuration, formatPercent, untilUptimeChanges, uptime } from './format';

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

  it('shows uptime to the second in the first minute, then to the minute, then to the hour', () => {
    const now = new Date('2026-01-01T12:00:00Z');
    expect(uptime('2026-01-01T11:59:18Z', now)).toBe('42s');
    expect(uptime('2026-01-01T11:58:30Z', now)).toBe('1m');
    expect(uptime('2026-01-01T09:54:59Z', now)).toBe('2h 5m');
    expect(uptime('2025-12-29T07:59:00Z', now)).toBe('3d 4h');
    expect(uptime(null, now)).toBe('–');
  });

  it('knows when the next uptime changes, so the clock ticks only then', () => {
    const now = new Date('2026-01-01T12:00:00.250Z');
    // 41.25 s up: the seconds change in 750 ms.
    expect(untilUptimeChanges(['2026-01-01T11:59:19Z'], now)).toBe(750);
    // 90.25 s up ("1m"): it reads "2m" at 120 s, in 29.75 s; the soonest of several wins.
    expect(untilUptimeChanges(['2026-01-01T11:58:30Z', null], now)).toBe(29_750);
    expect(untilUptimeChanges(['2026-01-01T11:58:30Z', '2026-01-01T11:59:19Z'], now)).toBe(750);
    expect(untilUptimeChanges([null], now)).toBeNull();
    expect(untilUptimeChanges([], now)).toBeNull();
  });

  it('shows percentages with one decimal', () => {
    expect(formatPercent(0.25)).toBe('0.3 %');
    expect(formatPercent(null)).toBe('–');
  });
});
