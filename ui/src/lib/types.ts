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
  | { type: 'build_changed'; build: string; status: BuildStatus; stage: string | null }
  | { type: 'progress'; id: string; label: string; fraction: number | null; done: boolean }
  | { type: 'notification'; level: NotificationLevel; title: string; body: string };

export type BuildStatus = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';

export interface BuildSummary {
  id: string;
  /** The study's name. */
  study: string;
  study_id: string;
  status: BuildStatus;
  /** The current stage, or the one it failed at. */
  stage: string | null;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  /** A succeeded build reused the output of an earlier one with the same inputs. */
  cache_hit: boolean;
  /** Why it failed. */
  message: string | null;
}

/** A study a build can be started for (`GET /api/studies`). */
export interface StudySummary {
  id: string;
  name: string;
  /** The player folder or repository URL of its next build; null is Lookit's default. */
  player: string | null;
}

export type EmailStatus = 'queued' | 'sent' | 'kept' | 'failed';

/** One message of the email outbox (`GET /api/emails`). */
export interface EmailSummary {
  id: string;
  template: string;
  to: string[];
  subject: string | null;
  status: EmailStatus;
  created_at: string;
  sent_at: string | null;
}

/** One message with everything the viewer shows (`GET /api/emails/<id>`). */
export interface EmailMessage extends EmailSummary {
  headers: { name: string; value: string }[];
  text: string | null;
  html: string | null;
  error: string | null;
}

/** A video the Pipe webhook or the Lambda recorded (`GET /api/videos`). */
export interface VideoSummary {
  id: string;
  file_name: string;
  study_id: string;
  study: string;
  response_id: string;
  frame_id: string;
  consent: boolean;
  recorded_at: string;
  /** Where the file is kept: a path, or `s3://…` / `gs://…`. */
  location: string;
  /** Whether the video storage holds the file, as far as it said when listing. */
  stored: StoredState;
  /** As the store reports it; null unless `stored` is `stored`. */
  size_bytes: number | null;
}

/** `unknown`: the video storage did not answer in time when listing (playing may still work). */
export type StoredState = 'stored' | 'missing' | 'unknown';

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
