// Words for the tunnel's end-to-end check.

import type { TunnelCheck, TunnelHop } from './types';

/** One sentence on the whole check: all good, where it fails, or what could not be checked. */
export function checkHeadline(check: TunnelCheck): string {
  if (check.first_failure !== null) return `Fails at the ${check.first_failure}`;
  if (check.ok && check.hops.every((h) => h.result === 'ok')) return 'Everything answers, from the public address to the broker.';
  if (check.ok) return 'The tunnel works; some parts behind the API could not be checked.';
  return 'The check did not get through.';
}

/** A hop's result as the page shows it. */
export function hopResultText(hop: TunnelHop): string {
  switch (hop.result) {
    case 'ok':
      return 'OK';
    case 'failed':
      return hop.detail === null ? 'Failed' : `Failed: ${hop.detail}`;
    case 'not_checked':
      return 'Not checked';
  }
}
