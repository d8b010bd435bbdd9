// How numbers and times read on screen.

export function formatBytes(bytes: number | null): string {
  if (bytes === null) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value < 10 && unit > 0 ? value.toFixed(1) : Math.round(value)} ${units[unit]}`;
}

/** `3d 4h`, `2h 5m`, `4m 10s`, `12s`: the two largest units. */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  const parts: [number, string][] = [
    [Math.floor(s / 86400), 'd'],
    [Math.floor((s % 86400) / 3600), 'h'],
    [Math.floor((s % 3600) / 60), 'm'],
    [s % 60, 's'],
  ];
  const first = parts.findIndex(([n]) => n > 0);
  if (first === -1) return '0s';
  return parts
    .slice(first, first + 2)
    .filter(([n], i) => i === 0 || n > 0)
    .map(([n, u]) => `${n}${u}`)
    .join(' ');
}

/**
 * How long a service has been up: to the second in its first minute (`42s`), then to the minute
 * (`4m`, `2h 5m`), then to the hour (`3d 4h`). An idle window whose uptimes change once a minute
 * repaints once a minute, not once a second.
 */
export function uptime(startedAt: string | null, now: Date): string {
  if (!startedAt) return '–';
  const seconds = Math.max(0, Math.floor(elapsedMs(startedAt, now) / 1000));
  const step = uptimeStepMs(seconds * 1000) / 1000;
  return formatDuration(seconds - (seconds % step));
}

/**
 * Milliseconds until the first of these uptimes reads differently, or null when there is none:
 * when the Overview's clock has to tick next.
 */
export function untilUptimeChanges(startedAts: (string | null)[], now: Date): number | null {
  let soonest: number | null = null;
  for (const startedAt of startedAts) {
    if (!startedAt) continue;
    const elapsed = Math.max(0, elapsedMs(startedAt, now));
    const step = uptimeStepMs(elapsed);
    const wait = step - (elapsed % step);
    soonest = soonest === null ? wait : Math.min(soonest, wait);
  }
  return soonest;
}

function elapsedMs(startedAt: string, now: Date): number {
  return now.getTime() - new Date(startedAt).getTime();
}

/** The resolution `uptime` shows at this age: a second, a minute or an hour. */
function uptimeStepMs(elapsedMs: number): number {
  if (elapsedMs < 60_000) return 1000;
  if (elapsedMs < 86_400_000) return 60_000;
  return 3_600_000;
}

export function formatPercent(value: number | null): string {
  return value === null ? '–' : `${value.toFixed(1)} %`;
}

export function formatRate(value: number | null): string {
  return value === null ? '–' : `${value.toFixed(1)}/s`;
}
