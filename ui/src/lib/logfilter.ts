// Filtering log lines on the Logs page: case-insensitive substring match.

export function filterLines(lines: string[], filter: string): string[] {
  const needle = filter.trim().toLowerCase();
  if (!needle) return lines;
  return lines.filter((line) => line.toLowerCase().includes(needle));
}

/** `#/logs&service=postgres` → `postgres`. */
export function serviceFromHash(hash: string): string | null {
  const match = /[&?]service=([a-z0-9-]+)/.exec(hash);
  return match ? match[1] : null;
}
