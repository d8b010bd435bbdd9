//! The worker's settings: plain values, so the app builds them from its config and tests build
//! them directly.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use lookit_contracts::{CleanupTask, Queue};
use lookit_storage::StoreLocation;
use secrecy::SecretString;

/// How many messages of one queue the broker hands out ahead (`prefetch`) and how many run at
/// once (`concurrency`). Invariant: `prefetch >= concurrency >= 1` (enforced by [`QueueLimits::new`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    prefetch: u16,
    concurrency: usize,
}

impl QueueLimits {
    /// Refuses zero concurrency; raises a prefetch below the concurrency to it (otherwise the
    /// extra workers would never get a message).
    pub fn new(prefetch: u16, concurrency: usize) -> anyhow::Result<QueueLimits> {
        anyhow::ensure!(concurrency >= 1, "concurrency must be at least 1");
        let concurrency_u16 = u16::try_from(concurrency)
            .map_err(|_| anyhow::anyhow!("concurrency {concurrency} is too large"))?;
        Ok(QueueLimits {
            prefetch: prefetch.max(concurrency_u16),
            concurrency,
        })
    }
    pub fn prefetch(self) -> u16 {
        self.prefetch
    }
    pub fn concurrency(self) -> usize {
        self.concurrency
    }
}

/// The container environment of §2 that a lab configures (Pipe, S3, Sentry). These values change
/// what the frameplayer build contains, so they are part of the output cache key (hashed: the
/// values never appear in the key or the logs).
#[derive(Debug, Clone, Default)]
pub struct BuildEnvironment {
    pub pipe_account_hash: String,
    pub pipe_environment: String,
    pub s3_region: String,
    pub s3_access_key_id: String,
    pub s3_secret_access_key: SecretString,
    pub s3_bucket: String,
    pub sentry_dsn: String,
}

/// The base of Lookit's builder: the frameplayer's ember-cli needs an older Node.
const DEFAULT_BUILDER_BASE_IMAGE: &str = "node:14-bullseye";

/// Everything the worker needs apart from the database pool.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// AMQP URL with credentials (never logged).
    pub amqp_url: SecretString,
    pub limits: HashMap<Queue, QueueLimits>,
    /// Attempts of one job before it goes to `<queue>.dead` (1 = no retry).
    pub max_attempts: u32,
    /// Delay before the first retry; doubled for every further one.
    pub retry_backoff_base: Duration,
    /// Image that honours the §2 build contract (`builds.builder_image`).
    pub builder_image: String,
    /// The Node image the builder image is built on when it is missing
    /// (`builds.builder_base_image`).
    pub builder_base_image: String,
    /// Longest a builder container may run before the build fails as timed out.
    pub build_time_limit: Duration,
    /// Holds `checkouts/`, `deployments/` and `outputs/` (the output cache).
    pub builds_dir: PathBuf,
    pub build_environment: BuildEnvironment,
    /// Where built studies are uploaded for participants (`storage.builds`), at
    /// `experiments/<study_uuid>/`; the folder `<builds_dir>/published` by default.
    pub builds_store: StoreLocation,
    /// Pipe's video storage (`storage.videos`): cleanup aborts its abandoned multipart uploads
    /// too. `None`: the worker does not look there.
    pub videos_store: Option<StoreLocation>,
    /// A multipart upload started longer ago than this is abandoned; cleanup aborts it.
    pub abandoned_upload_age: Duration,
    /// `smtp://host:port` or `smtps://user:pass@host` (lettre URL syntax). Without it emails are
    /// kept in the database outbox (status `kept`) for the dashboard.
    pub smtp_url: Option<SecretString>,
    pub from_address: String,
    /// Cleanup jobs and how often each is published; empty: no schedule.
    pub cleanup_schedule: Vec<(CleanupTask, Duration)>,
    /// Build outputs and checkouts older than this are removed by cleanup.
    pub build_files_max_age: Duration,
}

impl WorkerSettings {
    /// Settings with the documented defaults for everything but the connection, the builder
    /// image and the folders.
    pub fn new(amqp_url: SecretString, builder_image: String, builds_dir: PathBuf) -> Self {
        let builds_store = StoreLocation::Folder(builds_dir.join("published"));
        WorkerSettings {
            amqp_url,
            limits: Queue::ALL
                .into_iter()
                .map(|queue| (queue, QueueLimits::default_for(queue)))
                .collect(),
            max_attempts: 5,
            retry_backoff_base: Duration::from_secs(10),
            builder_image,
            builder_base_image: DEFAULT_BUILDER_BASE_IMAGE.to_string(),
            build_time_limit: Duration::from_secs(30 * 60),
            builds_dir,
            build_environment: BuildEnvironment::default(),
            builds_store,
            videos_store: None,
            abandoned_upload_age: Duration::from_secs(24 * 3600),
            smtp_url: None,
            from_address: "Lookit Local <lookit@localhost>".to_string(),
            cleanup_schedule: vec![
                (CleanupTask::OldBuildOutputs, Duration::from_secs(24 * 3600)),
                (CleanupTask::DockerPrune, Duration::from_secs(24 * 3600)),
                (
                    CleanupTask::MultipartUploads,
                    Duration::from_secs(24 * 3600),
                ),
            ],
            build_files_max_age: Duration::from_secs(24 * 3600),
        }
    }

    pub fn limits(&self, queue: Queue) -> QueueLimits {
        self.limits
            .get(&queue)
            .copied()
            .unwrap_or_else(|| QueueLimits::default_for(queue))
    }

    pub(crate) fn checkouts_dir(&self) -> PathBuf {
        self.builds_dir.join("checkouts")
    }
    pub(crate) fn deployments_dir(&self) -> PathBuf {
        self.builds_dir.join("deployments")
    }
    pub(crate) fn outputs_dir(&self) -> PathBuf {
        self.builds_dir.join("outputs")
    }
    pub(crate) fn output_dir(&self, cache_key: &str) -> PathBuf {
        self.outputs_dir().join(cache_key)
    }
}

impl QueueLimits {
    /// Builds are heavy (one at a time on a 2-core machine); email and cleanup are light.
    fn default_for(queue: Queue) -> QueueLimits {
        match queue {
            Queue::Builds => QueueLimits {
                prefetch: 1,
                concurrency: 1,
            },
            Queue::Email => QueueLimits {
                prefetch: 20,
                concurrency: 8,
            },
            Queue::Cleanup => QueueLimits {
                prefetch: 1,
                concurrency: 1,
            },
        }
    }
}
