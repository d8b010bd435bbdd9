//! What the panel asks of a running instance. The panel knows nothing of how the stack runs; the
//! instance (`lookit-control`) implements [`ControlPlane`].
//!
//! Methods for parts that may not exist yet (builds, tunnel, dead letters, doctor) have default
//! implementations that answer [`ActionError::NotAvailable`], so the UI can say "not available
//! yet" instead of showing invented data.

use std::ops::Range;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use lookit_contracts::{BuildStatus, Queue};
use lookit_status::{DoctorCheck, StatusReport};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use uuid::Uuid;

/// The instance as the panel sees it.
#[async_trait::async_trait]
pub trait ControlPlane: Send + Sync + 'static {
    /// A fresh snapshot of everything the overview shows.
    async fn status(&self) -> StatusReport;

    /// Live events; every SSE client gets its own receiver.
    fn subscribe(&self) -> broadcast::Receiver<PanelEvent>;

    /// Starts, stops or restarts one managed service (`postgres`, `rabbitmq`, `api`, `worker`, …).
    async fn service_action(
        &self,
        service: &ServiceName,
        action: ServiceAction,
    ) -> Result<(), ActionError>;

    /// Starts or stops the whole stack; the panel itself keeps running.
    async fn stack_action(&self, action: StackAction) -> Result<(), ActionError>;

    /// The last `tail` lines of a service's own log, oldest first.
    async fn logs(&self, service: &ServiceName, tail: usize) -> Result<Vec<String>, ActionError>;

    /// Stops everything the instance runs, the panel included (`lookit-local down`).
    async fn shutdown(&self);

    /// Opens or closes the public tunnel; its state is in [`StatusReport::tunnel`].
    async fn tunnel_action(
        &self,
        _action: TunnelAction,
        _options: TunnelOptions,
    ) -> Result<(), ActionError> {
        Err(ActionError::NotAvailable("the tunnel".into()))
    }

    /// Requests the tunnel received, newest first (the inspector).
    async fn tunnel_requests(&self) -> Result<Vec<InspectedRequest>, ActionError> {
        Err(ActionError::NotAvailable("the tunnel inspector".into()))
    }

    /// Sends a recorded request to the API again.
    async fn replay_request(&self, _id: i64) -> Result<(), ActionError> {
        Err(ActionError::NotAvailable("the tunnel inspector".into()))
    }

    /// Checks the open tunnel end to end now: public URL → proxy → API → database → broker.
    async fn tunnel_check(&self) -> Result<TunnelCheck, ActionError> {
        Err(ActionError::NotAvailable("the tunnel check".into()))
    }

    /// Study builds, newest first.
    async fn builds(&self) -> Result<Vec<BuildSummary>, ActionError> {
        Err(ActionError::NotAvailable("builds".into()))
    }

    /// The log of one build so far; later lines arrive as [`PanelEvent::BuildLog`].
    async fn build_log(&self, _id: Uuid) -> Result<Vec<String>, ActionError> {
        Err(ActionError::NotAvailable("builds".into()))
    }

    /// Rebuilds the build's study or cancels a running build.
    async fn build_action(&self, _id: Uuid, _action: BuildAction) -> Result<(), ActionError> {
        Err(ActionError::NotAvailable("builds".into()))
    }

    /// The messages in a queue's dead-letter queue, read without consuming them.
    async fn dead_letters(&self, _queue: Queue) -> Result<Vec<DeadLetter>, ActionError> {
        Err(ActionError::NotAvailable("dead-letter queues".into()))
    }

    /// Sends a dead letter back to its queue or discards it.
    async fn dead_letter_action(
        &self,
        _queue: Queue,
        _message_id: &str,
        _action: DeadLetterAction,
    ) -> Result<(), ActionError> {
        Err(ActionError::NotAvailable("dead-letter queues".into()))
    }

    /// Every prerequisite with what is wrong and the command that fixes it.
    async fn doctor(&self) -> Result<Vec<DoctorCheck>, ActionError> {
        Err(ActionError::NotAvailable("the doctor".into()))
    }

    /// The studies a build can be started for, newest first.
    async fn studies(&self) -> Result<Vec<StudySummary>, ActionError> {
        Err(ActionError::NotAvailable("studies".into()))
    }

    /// Queues a build of a study (optionally with another player first, as
    /// `lookit-local build --player` does); its progress arrives as events.
    async fn start_build(&self, _request: NewBuild) -> Result<BuildSummary, ActionError> {
        Err(ActionError::NotAvailable("builds".into()))
    }

    /// The email outbox, newest first: every message the instance sent or kept.
    async fn emails(&self) -> Result<Vec<EmailSummary>, ActionError> {
        Err(ActionError::NotAvailable("the email outbox".into()))
    }

    /// One message of the outbox with its headers, text and HTML.
    async fn email(&self, _id: Uuid) -> Result<EmailMessage, ActionError> {
        Err(ActionError::NotAvailable("the email outbox".into()))
    }

    /// Videos the Pipe webhook and the Lambda route recorded, newest first.
    async fn videos(&self) -> Result<Vec<VideoSummary>, ActionError> {
        Err(ActionError::NotAvailable("received videos".into()))
    }

    /// A received video found in the store that holds it (a local folder, S3 or GCS), ready to
    /// be sent whole or in part.
    async fn video_file(&self, _id: Uuid) -> Result<VideoFile, ActionError> {
        Err(ActionError::NotAvailable("received videos".into()))
    }
}

/// A stored video the panel can send: its name, type and size, and a way to read any part of it.
pub struct VideoFile {
    /// The name to save it under, e.g. `videoStream_…_123.mp4`.
    pub file_name: String,
    /// Its `Content-Type`, e.g. `video/mp4`.
    pub content_type: String,
    /// Its size in bytes, as the store reports it.
    pub size: u64,
    pub content: Box<dyn VideoContent>,
}

/// The bytes of a stored video, read from its store when asked.
#[async_trait::async_trait]
pub trait VideoContent: Send + Sync {
    /// The bytes `range` (non-empty, within the video's size) as they arrive from the store:
    /// never the whole video in memory.
    async fn read(self: Box<Self>, range: Range<u64>) -> Result<ByteStream, ActionError>;
}

/// Chunks of a video as its store delivers them; an error ends the response early.
pub type ByteStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// Why the instance did not do what was asked. Each variant maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ActionError {
    #[error("there is no service named {0:?}")]
    UnknownService(String),
    #[error("{0} not found")]
    NotFound(String),
    /// The part of the instance that would do this is not built yet.
    #[error("{0} not available yet")]
    NotAvailable(String),
    /// The request asks for something that can never work (a bad option value).
    #[error("{0}")]
    Invalid(String),
    /// The request is valid but conflicts with the current state (e.g. cancelling a finished build).
    #[error("{0}")]
    Conflict(String),
    /// The instance tried and failed; the message says why.
    #[error("{0}")]
    Failed(String),
    /// A store or server the instance relies on (e.g. the video storage) failed or did not
    /// answer; the message names it.
    #[error("{0}")]
    Upstream(String),
}

/// A service name as it appears in URLs: lowercase letters, digits and `-`, at most 40 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ServiceName(String);

impl ServiceName {
    pub fn parse(name: &str) -> Result<Self, InvalidServiceName> {
        let valid = !name.is_empty()
            && name.len() <= 40
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if valid {
            Ok(Self(name.to_owned()))
        } else {
            Err(InvalidServiceName(name.chars().take(60).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ServiceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a service name: expected lowercase letters, digits and '-'")]
pub struct InvalidServiceName(String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceAction {
    Start,
    Stop,
    Restart,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StackAction {
    Start,
    Stop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TunnelAction {
    Start,
    Stop,
}

/// Choices for one sharing session that override the `[tunnel]` configuration (the CLI's
/// `--provider` and `--server`). Empty: use the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelOptions {
    /// `ngrok` or `bore`.
    pub provider: Option<String>,
    /// The bore server, `host[:port]`.
    pub server: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildAction {
    Rebuild,
    Cancel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterAction {
    Requeue,
    Discard,
}

/// Something the UI should learn without asking. Serialized with a `type` tag, e.g.
/// `{"type":"status","report":{…}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PanelEvent {
    /// The full current status; sent first to every new client and on every change.
    Status { report: StatusReport },
    /// One line of a managed service's own output.
    Log { service: String, line: String },
    /// One line of a build's log.
    BuildLog { build: Uuid, line: String },
    /// A build was queued, started, or finished; the Builds page reloads its list.
    BuildChanged {
        build: Uuid,
        status: BuildStatus,
        stage: Option<String>,
    },
    /// Progress of a long task (an image pull, a build), `fraction` in 0..=1 when known.
    Progress {
        id: String,
        label: String,
        fraction: Option<f64>,
        done: bool,
    },
    /// Something the user should be told about: a crash, a finished build, a tunnel change.
    Notification {
        level: NotificationLevel,
        title: String,
        body: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationLevel {
    Info,
    Success,
    Warning,
    Error,
}

/// One study build as the Builds page lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildSummary {
    pub id: Uuid,
    /// The study's name.
    pub study: String,
    pub study_id: Uuid,
    pub status: BuildStatus,
    /// What the build is doing now, or the stage it failed at, e.g. `build_image`.
    pub stage: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// A succeeded build reused the output of an earlier one with the same inputs.
    pub cache_hit: bool,
    /// Why it failed, when it did.
    pub message: Option<String>,
}

/// A study as the Builds page offers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudySummary {
    pub id: Uuid,
    pub name: String,
    /// The player the next build uses: a folder or repository URL; `None` is Lookit's default.
    pub player: Option<String>,
}

/// `POST /api/builds`: which study to build, and optionally a player to set on it first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewBuild {
    pub study: Uuid,
    /// A folder on this machine or a repository URL, optionally pinned with `@<40-hex sha>`.
    #[serde(default)]
    pub player: Option<String>,
}

/// One message of the email outbox (the list).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmailSummary {
    pub id: Uuid,
    /// What kind of email, e.g. `build_succeeded`.
    pub template: String,
    pub to: Vec<String>,
    /// `None` until the worker rendered it.
    pub subject: Option<String>,
    /// `queued`, `sent` (through SMTP), `kept` (no SMTP server: kept here only) or `failed`.
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

/// One message of the email outbox with everything the viewer shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmailMessage {
    #[serde(flatten)]
    pub summary: EmailSummary,
    /// `From`, `To`, `Subject`, `Date` and the message's own extra headers, in that order.
    pub headers: Vec<EmailHeader>,
    pub text: Option<String>,
    /// Shown only inside a sandboxed frame: it is content from templates and user data.
    pub html: Option<String>,
    /// Why sending failed, when it did.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailHeader {
    pub name: String,
    pub value: String,
}

/// A video the Pipe webhook or the Lambda route recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VideoSummary {
    pub id: Uuid,
    /// The stored name, `videoStream_<study>_<frame>_<response>_<timestamp>_<random>`.
    pub file_name: String,
    pub study_id: Uuid,
    pub study: String,
    pub response_id: Uuid,
    pub frame_id: String,
    pub consent: bool,
    /// When it was recorded (the storage timestamp Pipe or Lambda reported).
    pub recorded_at: DateTime<Utc>,
    /// Where the video is kept: a file path, or `s3://…`/`gs://…` for a bucket.
    pub location: String,
    /// Whether the store holds it, as far as the store said when listing.
    pub stored: StoredState,
    /// Size of the stored object, as the store reports it; `None` unless `stored` is
    /// [`StoredState::Stored`].
    pub size_bytes: Option<u64>,
}

/// Whether a video's store holds its file: what decides if the Videos page offers to play it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoredState {
    /// The store holds it; [`ControlPlane::video_file`] can send it.
    Stored,
    /// The store has no such object (not uploaded yet, or deleted).
    Missing,
    /// The store did not say in time or failed; playing it may still work.
    Unknown,
}

/// A message in a dead-letter queue, with why it landed there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The message id (AMQP `message_id`, the job id).
    pub id: String,
    pub reason: Option<String>,
    pub last_error: Option<String>,
    pub attempts: Option<u32>,
    /// The start of the body, as text.
    pub body_preview: String,
}

/// A request that came in through the tunnel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InspectedRequest {
    pub id: i64,
    pub received_at: DateTime<Utc>,
    pub method: String,
    pub path: String,
    pub status: Option<u16>,
    pub duration_ms: Option<u64>,
}

/// The tunnel's end-to-end check, one hop after the other along the path a request from the
/// internet takes (public URL, inspector proxy, Lookit API, database, broker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelCheck {
    /// No hop failed and the tunnel's own hops answered.
    pub ok: bool,
    /// The first failing hop and why, as the user should read it.
    pub first_failure: Option<String>,
    pub hops: Vec<TunnelHop>,
}

/// One hop of [`TunnelCheck`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelHop {
    /// Stable key: `public_url`, `proxy`, `api`, `database` or `broker`.
    pub hop: String,
    /// The hop's name for the user, e.g. `public URL`.
    pub label: String,
    pub result: HopOutcome,
    /// Why it failed, when it did.
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HopOutcome {
    Ok,
    Failed,
    /// An earlier hop failed, or there is nothing to check there.
    NotChecked,
}
