import { describe, expect, it } from 'vitest';
import { buildAction } from './buildlog';

describe('build actions', () => {
  it('offers Cancel for queued and running builds until they publish, Rebuild once finished', () => {
    expect(buildAction({ status: 'queued', stage: null })).toBe('cancel');
    expect(buildAction({ status: 'running', stage: 'build' })).toBe('cancel');
    expect(buildAction({ status: 'running', stage: 'upload' })).toBeNull();
    for (const status of ['succeeded', 'failed', 'cancelled']) {
      expect(buildAction({ status, stage: null })).toBe('rebuild');
    }
  });
});
