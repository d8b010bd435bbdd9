//! Contracts between the parts of Lookit Local that run apart from each other: the API publishes
//! jobs, the worker consumes them, the stack declares the queues, and all of them share one
//! database schema.
//!
//! Invariants:
//! - Queue names and their arguments are declared in one place ([`Queue`]); a declaration with
//!   other arguments would be refused by RabbitMQ (PRECONDITION_FAILED), so nobody spells them out.
//! - Every job message carries a `job_id`; consumers use it to make handling idempotent.
//! - The schema is only changed through `migrations/` ([`MIGRATOR`]).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The schema of the `lookit` database. Numbering: 0001–0099 API, 0100–0199 worker,
/// 0200–0299 tunnel.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Largest AMQP frame our connections ask for, unless the URL names one (`?frame_max=`). lapin
/// keeps 32 frames of read and 32 of write buffer per connection, zero-filled up front: at
/// RabbitMQ's default of 128 KiB that is 8 MiB of resident memory per connection, most of an
/// idle app's own. Jobs are small JSON documents; a larger message only takes more frames.
const FRAME_MAX: u32 = 8 * 1024;

/// Opens every AMQP connection of ours: named (the broker's connection list says who it is),
/// with small frames ([`FRAME_MAX`]), and run on the caller's tokio runtime (lapin's default
/// executor and reactor start threads of their own that wake on timers of their own, work an
/// idle instance should not do). Call from within a tokio runtime.
pub async fn connect_amqp(url: &str, name: &str) -> lapin::Result<lapin::Connection> {
    let mut uri: lapin::uri::AMQPUri = url
        .parse()
        .map_err(|e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    uri.query.frame_max.get_or_insert(FRAME_MAX);
    let properties = lapin::ConnectionProperties::default()
        .with_connection_name(name.into())
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    lapin::Connection::connect_uri(uri, properties).await
}

/// The work queues Lookit uses (§1 of the domain reference), all durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Queue {
    Builds,
    Email,
    Cleanup,
}

impl Queue {
    pub const ALL: [Queue; 3] = [Queue::Builds, Queue::Email, Queue::Cleanup];

    pub fn name(self) -> &'static str {
        match self {
            Queue::Builds => "builds",
            Queue::Email => "email",
            Queue::Cleanup => "cleanup",
        }
    }

    /// Where messages go that failed for good or could not be parsed (with the reason in the
    /// `x-lookit-reason` header). The broker routes rejected messages there too.
    pub fn dead_letter_name(self) -> String {
        format!("{}.dead", self.name())
    }

    /// Where failed jobs wait out their backoff before returning to the queue (per-message TTL,
    /// dead-lettered back to [`Queue::name`]).
    pub fn retry_name(self) -> String {
        format!("{}.retry", self.name())
    }

    /// Declaration arguments of the work queue: dead-letter through the default exchange to
    /// [`Queue::dead_letter_name`]. Dead-letter and retry queues are declared without arguments,
    /// except the retry queue's `x-dead-letter-*` pair pointing back at the work queue.
    pub fn dead_letter_arguments(self) -> [(&'static str, String); 2] {
        [
            ("x-dead-letter-exchange", String::new()),
            ("x-dead-letter-routing-key", self.dead_letter_name()),
        ]
    }

    pub fn from_name(name: &str) -> Option<Queue> {
        Queue::ALL.into_iter().find(|q| q.name() == name)
    }
}

/// Header carrying why a message was dead-lettered.
pub const REASON_HEADER: &str = "x-lookit-reason";
/// Header carrying the last error of a job that ran out of retries.
pub const LAST_ERROR_HEADER: &str = "x-lookit-last-error";
/// Header counting delivery attempts made through the retry queue.
pub const ATTEMPT_HEADER: &str = "x-lookit-attempt";

/// A message on the `builds` queue: build the row `builds.id = build_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildJob {
    pub job_id: Uuid,
    pub build_id: Uuid,
}

/// A message on the `email` queue: render and send the row `emails.id = email_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailJob {
    pub job_id: Uuid,
    pub email_id: Uuid,
}

/// A message on the `cleanup` queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanupJob {
    pub job_id: Uuid,
    pub task: CleanupTask,
}

/// The scheduled jobs of §1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CleanupTask {
    /// Build outputs and checkouts older than the configured age.
    OldBuildOutputs,
    /// Dangling builder images and stopped builder containers.
    DockerPrune,
    /// Incomplete S3 multipart uploads, where S3 is configured.
    MultipartUploads,
    /// The daily study announcement emails.
    Announcements,
}

/// A build's lifecycle (instead of Lookit's `built` + `is_building` booleans).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum BuildStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl BuildStatus {
    /// The name stored in `builds.status` and shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            BuildStatus::Queued => "queued",
            BuildStatus::Running => "running",
            BuildStatus::Succeeded => "succeeded",
            BuildStatus::Failed => "failed",
            BuildStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(
            self,
            BuildStatus::Succeeded | BuildStatus::Failed | BuildStatus::Cancelled
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_match_lookit() {
        let names: Vec<_> = Queue::ALL.iter().map(|q| q.name()).collect();
        assert_eq!(names, ["builds", "email", "cleanup"]);
        assert_eq!(Queue::Builds.dead_letter_name(), "builds.dead");
        assert_eq!(Queue::from_name("email"), Some(Queue::Email));
        assert_eq!(Queue::from_name("emails"), None);
    }

    #[test]
    fn job_messages_refuse_unknown_fields() {
        let ok: BuildJob = serde_json::from_str(
            r#"{"job_id":"6f1c1a52-9c57-4b8e-9a3f-0d6f4d1c2b3a","build_id":"6f1c1a52-9c57-4b8e-9a3f-0d6f4d1c2b3b"}"#,
        )
        .unwrap();
        assert_eq!(
            ok.build_id.to_string(),
            "6f1c1a52-9c57-4b8e-9a3f-0d6f4d1c2b3b"
        );
        assert!(serde_json::from_str::<BuildJob>(r#"{"job_id":"x","build_id":"y"}"#).is_err());
        assert!(serde_json::from_str::<CleanupJob>(
            r#"{"job_id":"6f1c1a52-9c57-4b8e-9a3f-0d6f4d1c2b3a","task":"format_disk"}"#
        )
        .is_err());
    }

    #[test]
    fn build_status_names_are_the_stored_and_serialized_ones() {
        use BuildStatus::*;
        for status in [Queued, Running, Succeeded, Failed, Cancelled] {
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::json!(status.as_str())
            );
        }
    }
}
