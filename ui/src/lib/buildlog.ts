// A build's log on screen: what the panel had when the page asked, then what arrived live.

/**
 * `earlier` is the log as fetched; `live` holds every line pushed for the build since the page
 * loaded, of which the first `offset` were already pushed when the fetch started (and so are in
 * `earlier`).
 */
export function mergeLog(earlier: string[], live: string[] | undefined, offset: number): string[] {
  return [...earlier, ...(live ?? []).slice(offset)];
}

export function isFinished(status: string): boolean {
  return status === 'succeeded' || status === 'failed' || status === 'cancelled';
}
