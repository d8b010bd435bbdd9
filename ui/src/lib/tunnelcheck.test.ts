import { describe, expect, it } from 'vitest';
import { checkHeadline, hopResultText } from './tunnelcheck';
import type { TunnelCheck, TunnelHop } from './types';

const hop = (key: string, result: TunnelHop['result'], detail: string | null = null): TunnelHop => ({
  hop: key,
  label: key,
  result,
  detail,
});

describe('the tunnel check', () => {
  it('names the hop that fails and why', () => {
    const check: TunnelCheck = {
      ok: false,
      first_failure: 'database: unreachable: connection refused',
      hops: [hop('api', 'ok'), hop('database', 'failed', 'unreachable: connection refused'), hop('broker', 'not_checked')],
    };
    expect(checkHeadline(check)).toBe('Fails at the database: unreachable: connection refused');
    expect(check.hops.map(hopResultText)).toEqual(['OK', 'Failed: unreachable: connection refused', 'Not checked']);
  });

  it('says when everything answers, and when parts behind the API were not checked', () => {
    expect(checkHeadline({ ok: true, first_failure: null, hops: [hop('api', 'ok'), hop('broker', 'ok')] })).toContain('Everything answers');
    expect(checkHeadline({ ok: true, first_failure: null, hops: [hop('api', 'ok'), hop('broker', 'not_checked')] })).toContain('could not be checked');
  });
});
