import { describe, expect, it } from 'vitest';
import { DepthHistory } from './history';

const q = (name: string, ready: number, unacked = 0) => ({ name, ready, unacked, consumers: 1, publish_rate: null, deliver_rate: null });

describe('queue depth history', () => {
  it('keeps one hour and charts ready + unacknowledged per queue', () => {
    const history = new DepthHistory(3600);
    history.add(1000, [q('builds', 1, 2)]);
    history.add(2000, [q('builds', 0), q('email', 4)]);
    history.add(4700, [q('email', 1)]);
    // The sample at 1000 is more than an hour older than the newest one.
    expect(history.length).toBe(2);
    expect(history.queueNames()).toEqual(['builds', 'email']);
    expect(history.columns()).toEqual([
      [2000, 4700],
      [0, null],
      [4, 1],
    ]);
  });
});
