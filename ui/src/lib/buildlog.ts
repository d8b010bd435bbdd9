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

/**
 * What the Builds page offers for a build: a queued or running one can be cancelled, except
 * while it publishes its output (the panel refuses that: a half-published study would be
 * broken); a finished one can be built again.
 */
export function buildAction(build: { status: string; stage: string | null }): 'cancel' | 'rebuild' | null {
  if (isFinished(build.status)) return 'rebuild';
  if (build.status === 'running' && build.stage === 'upload') return null;
  return 'cancel';
}
