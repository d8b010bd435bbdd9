import { describe, expect, it } from 'vitest';
import { LiveState } from './live.svelte';
import type { StatusReport } from './types';

function report(overrides: Partial<StatusReport> = {}): StatusReport {
  return {
    ready: true,
    running: true,
    services: [
      { name: 'postgres', state: 'ready', backend: 'native', address: '127.0.0.1:5432', started_at: null, restarts: 0, cpu_percent: null, memory_bytes: null, message: null },
    ],
    queues: [{ name: 'builds', ready: 3, unacked: 0, consumers: 1, publish_rate: null, deliver_rate: null }],
    api: { url: null },
    panel: { url: null },
    tunnel: { state: 'off', provider: null, public_url: null, message: null },
    ...overrides,
  };
}

describe('live state', () => {
  it('keeps the latest status and charts its queues', () => {
    const live = new LiveState();
    live.apply({ type: 'status', report: report() });
    expect(live.status?.ready).toBe(true);
    expect(live.history.columns()[1]).toEqual([3]);
  });

  it('tells the user when a service crashes', () => {
    const live = new LiveState();
    live.apply({ type: 'status', report: report() });
    const crashed = report({ ready: false });
    crashed.services[0] = { ...crashed.services[0], state: 'failed', message: 'exit code 1' };
    live.apply({ type: 'status', report: crashed });
    expect(live.toasts.map((t) => [t.level, t.title, t.body])).toEqual([['error', 'postgres failed', 'exit code 1']]);
  });

  it('tells the user when the public URL changes', () => {
    const live = new LiveState();
    live.apply({ type: 'status', report: report({ tunnel: { state: 'open', provider: 'ssh', public_url: 'https://a.example', message: null } }) });
    live.apply({ type: 'status', report: report({ tunnel: { state: 'open', provider: 'ssh', public_url: 'https://b.example', message: null } }) });
    expect(live.toasts.at(-1)?.title).toBe('The public URL changed');
  });

  it('shows progress until done and appends log lines per service', () => {
    const live = new LiveState();
    live.apply({ type: 'progress', id: 'pull', label: 'Pulling postgres', fraction: 0.5, done: false });
    expect(live.progress).toEqual([{ id: 'pull', label: 'Pulling postgres', fraction: 0.5 }]);
    live.apply({ type: 'progress', id: 'pull', label: 'Pulling postgres', fraction: 1, done: true });
    expect(live.progress).toEqual([]);
    live.apply({ type: 'log', service: 'api', line: 'one' });
    live.apply({ type: 'log', service: 'api', line: 'two' });
    expect(live.logs.api).toEqual(['one', 'two']);
  });
});
