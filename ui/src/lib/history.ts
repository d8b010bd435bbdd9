// Queue depths over the last hour, for the live chart. Samples arrive with each status event.

import type { QueueDepth } from './types';

export const WINDOW_SECONDS = 3600;

export interface Sample {
  /** Unix time in seconds. */
  at: number;
  /** Ready + unacknowledged messages per queue name. */
  depths: Record<string, number>;
}

export class DepthHistory {
  private samples: Sample[] = [];

  constructor(private readonly windowSeconds = WINDOW_SECONDS) {}

  add(at: number, queues: QueueDepth[]): void {
    const depths: Record<string, number> = {};
    for (const q of queues) depths[q.name] = q.ready + q.unacked;
    this.samples.push({ at, depths });
    const oldest = at - this.windowSeconds;
    while (this.samples.length > 0 && this.samples[0].at < oldest) this.samples.shift();
  }

  queueNames(): string[] {
    const names = new Set<string>();
    for (const s of this.samples) for (const name of Object.keys(s.depths)) names.add(name);
    return [...names].sort();
  }

  /** uPlot's column layout: times, then one series per queue (null where a queue was absent). */
  columns(): [number[], ...(number | null)[][]] {
    const names = this.queueNames();
    return [
      this.samples.map((s) => s.at),
      ...names.map((name) => this.samples.map((s) => s.depths[name] ?? null)),
    ];
  }

  get length(): number {
    return this.samples.length;
  }
}
