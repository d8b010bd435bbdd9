// The panel's wire types (crates/status and crates/panel). Fields are only ever added there.

export type ServiceState = 'stopped' | 'starting' | 'ready' | 'failed' | 'stopping';
export type TunnelState = 'off' | 'starting' | 'open' | 'reconnecting' | 'failed';

export interface ServiceStatus {
  name: string;
  state: ServiceState;
  backend: string;
  address: string | null;
  started_at: string | null;
  restarts: number;
  cpu_percent: number | null;
  memory_bytes: number | null;
  message: string | null;
}

export interface QueueDepth {
  name: string;
  ready: number;
  unacked: number;
  consumers: number;
  publish_rate: number | null;
  deliver_rate: number | null;
}

export interface TunnelStatus {
  state: TunnelState;
  provider: string | null;
  public_url: string | null;
  message: string | null;
}

export interface StatusReport {
  ready: boolean;
  running: boolean;
  services: ServiceStatus[];
  queues: QueueDepth[];
  api: { url: string | null };
  panel: { url: string | null };
  tunnel: TunnelStatus;
}

export type NotificationLevel = 'info' | 'success' | 'warning' | 'error';

export type PanelEvent =
  | { type: 'status'; report: StatusReport }
  | { type: 'log'; service: string; line: string }
  | { type: 'build_log'; build: string; line: string }
  | { type: 'progress'; id: string; label: string; fraction: number | null; done: boolean }
  | { type: 'notification'; level: NotificationLevel; title: string; body: string };

export type BuildStatus = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';

export interface BuildSummary {
  id: string;
  study: string;
  status: BuildStatus;
  stage: string | null;
  started_at: string | null;
  finished_at: string | null;
  cache_hits: number | null;
  steps: number | null;
  message: string | null;
}

export interface DeadLetter {
  id: string;
  reason: string | null;
  last_error: string | null;
  attempts: number | null;
  body_preview: string;
}

export interface InspectedRequest {
  id: number;
  received_at: string;
  method: string;
  path: string;
  status: number | null;
  duration_ms: number | null;
}

/** One hop of the tunnel's end-to-end check (`GET /api/tunnel/check`). */
export interface TunnelHop {
  /** `public_url`, `proxy`, `api`, `database` or `broker`. */
  hop: string;
  label: string;
  result: 'ok' | 'failed' | 'not_checked';
  /** Why it failed, when it did. */
  detail: string | null;
}

/** The tunnel's end-to-end check, hops in the order a request from the internet takes them. */
export interface TunnelCheck {
  ok: boolean;
  first_failure: string | null;
  hops: TunnelHop[];
}

export interface DoctorCheck {
  name: string;
  /** `warning`: works, but not as configured or not for every backend. */
  outcome: 'ok' | 'warning' | 'failed';
  /** What was found. */
  detail: string;
  fix: string | null;
}
