// The instance as the UI knows it: the latest status, recent log lines, progress and
// notifications, kept current by the panel's event stream (`/api/events`).

import { DepthHistory } from './history';
import type { BuildStatus, NotificationLevel, PanelEvent, StatusReport } from './types';

/** Log lines kept per service in memory; the Logs page can fetch more from the API. */
const LOG_LINES_KEPT = 2000;

export interface Progress {
  id: string;
  label: string;
  fraction: number | null;
}

export interface Toast {
  id: number;
  level: NotificationLevel;
  title: string;
  body: string;
}

export type Connection = 'connecting' | 'open' | 'lost';

export class LiveState {
  status = $state<StatusReport | null>(null);
  connection = $state<Connection>('connecting');
  progress = $state<Progress[]>([]);
  toasts = $state<Toast[]>([]);
  logs = $state<Record<string, string[]>>({});
  buildLogs = $state<Record<string, string[]>>({});
  /** The latest change of each build the page may show, by build id. */
  buildChanges = $state<Record<string, { status: BuildStatus; stage: string | null }>>({});
  /** Bumped on each build change so the Builds page reloads its list. */
  buildsVersion = $state(0);
  /** Bumped on each status event so the queue chart redraws. */
  historyVersion = $state(0);
  readonly history = new DepthHistory();
  private nextToast = 1;
  private source: EventSource | null = null;

  connect(url: string): void {
    this.source?.close();
    const source = new EventSource(url);
    this.source = source;
    source.onopen = () => (this.connection = 'open');
    // EventSource reconnects by itself; until it does, the UI says the panel is unreachable.
    source.onerror = () => (this.connection = source.readyState === EventSource.CLOSED ? 'lost' : 'connecting');
    source.onmessage = (message) => {
      try {
        this.apply(JSON.parse(message.data) as PanelEvent);
      } catch (error) {
        console.error('unreadable panel event', error);
      }
    };
  }

  close(): void {
    this.source?.close();
    this.source = null;
  }

  apply(event: PanelEvent): void {
    switch (event.type) {
      case 'status':
        this.noticeChanges(this.status, event.report);
        this.status = event.report;
        this.history.add(Date.now() / 1000, event.report.queues);
        this.historyVersion += 1;
        break;
      case 'log':
        this.logs[event.service] = appendCapped(this.logs[event.service], event.line);
        break;
      case 'build_log':
        this.buildLogs[event.build] = appendCapped(this.buildLogs[event.build], event.line);
        break;
      case 'build_changed':
        this.buildChanges[event.build] = { status: event.status, stage: event.stage };
        this.buildsVersion += 1;
        break;
      case 'progress':
        this.progress = event.done
          ? this.progress.filter((p) => p.id !== event.id)
          : [...this.progress.filter((p) => p.id !== event.id), { id: event.id, label: event.label, fraction: event.fraction }];
        break;
      case 'notification':
        this.notify(event.level, event.title, event.body);
        break;
    }
  }

  notify(level: NotificationLevel, title: string, body: string): void {
    const id = this.nextToast++;
    this.toasts = [...this.toasts, { id, level, title, body }].slice(-5);
    showSystemNotification(title, body);
  }

  dismiss(id: number): void {
    this.toasts = this.toasts.filter((t) => t.id !== id);
  }

  /** Crashes and tunnel changes seen in consecutive snapshots become notifications. */
  private noticeChanges(before: StatusReport | null, after: StatusReport): void {
    if (!before) return;
    for (const service of after.services) {
      const previous = before.services.find((s) => s.name === service.name);
      if (previous && previous.state !== 'failed' && service.state === 'failed') {
        this.notify('error', `${service.name} failed`, service.message ?? 'It stopped unexpectedly.');
      }
    }
    const was = before.tunnel;
    const is = after.tunnel;
    if (was.state === 'open' && is.state !== 'open' && is.state !== 'off') {
      this.notify('warning', 'The tunnel dropped', is.message ?? 'Reconnecting…');
    } else if (is.public_url && was.public_url && is.public_url !== was.public_url) {
      this.notify('warning', 'The public URL changed', is.public_url);
    }
  }
}

function appendCapped(lines: string[] | undefined, line: string): string[] {
  const next = [...(lines ?? []), line];
  return next.length > LOG_LINES_KEPT ? next.slice(next.length - LOG_LINES_KEPT) : next;
}

function showSystemNotification(title: string, body: string): void {
  if (typeof Notification === 'undefined' || Notification.permission !== 'granted') return;
  // Only when the user is looking elsewhere; in-page toasts cover the visible case.
  if (document.visibilityState === 'visible') return;
  new Notification(title, { body, icon: '/favicon.png' });
}
