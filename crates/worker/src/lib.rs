//! The embedded worker (issue 5): Lookit's Celery worker rewritten. It consumes the `builds`,
//! `email` and `cleanup` queues of RabbitMQ, keeps its state in Postgres, runs study builds in
//! Docker, and publishes the scheduled cleanup jobs.
//!
//! Guarantees: a message is acknowledged only after its effects are committed; a redelivered job
//! never repeats an effect; failures are retried with exponential backoff through
//! `<queue>.retry` and end in `<queue>.dead` with the reason; a lost broker is reconnected with
//! backoff and consuming resumes; on shutdown the worker takes no new job and lets the jobs in
//! flight finish (a build in flight is stopped and put back in the queue). A user's cancel of a
//! build ([`cancel_build`]) reaches the worker running it through Postgres, wherever it runs.

mod broker;
mod build;
mod builder_image;
mod cancel;
mod cleanup;
mod container;
mod email;
mod follow;
mod ledger;
mod settings;
mod source;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use lookit_contracts::{BuildStatus, Queue};
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use broker::{
    connect as connect_broker, consume, declare_queues, JobError, JobHandler, Publisher,
    RetryPolicy,
};
pub use build::{BuildStage, BUILD_NOTIFY_CHANNEL};
pub use builder_image::{BuilderImage, BuilderImageError, BuilderImageProgress, ImageReady};
pub use cancel::{cancel_build, CancelBuildError};
pub use email::EmailOutcome;
pub use follow::{follow_build, BuildOutcome};
pub use settings::{BuildEnvironment, QueueLimits, WorkerSettings};
pub use source::{
    PlayerSource, DEFAULT_PLAYER_BRANCH, DEFAULT_PLAYER_REPOSITORY, GENERATED_FOLDERS,
};

/// What the worker reports to the dashboard and the log.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WorkerEvent {
    /// Consuming (again) after a connect.
    BrokerConnected,
    /// The broker connection failed; reconnecting after `retry_in_ms`.
    BrokerLost {
        error: String,
        retry_in_ms: u64,
    },
    BuildStatus {
        build_id: Uuid,
        study_id: Uuid,
        status: BuildStatus,
        stage: Option<String>,
        cache_hit: bool,
    },
    BuildLog {
        build_id: Uuid,
        line: String,
    },
    Email {
        email_id: Uuid,
        outcome: EmailOutcome,
    },
    DeadLettered {
        queue: Queue,
        job_id: Option<Uuid>,
        reason: String,
    },
    /// Progress of building the builder image (at start-up or before a build).
    BuilderImage {
        image: String,
        progress: BuilderImageProgress,
    },
    /// The builder image could not be made ready; builds fail with the same error until it is.
    BuilderImageFailed {
        image: String,
        error: String,
    },
}

/// Makes sure the builder image exists, reporting the progress of its build and its failure.
async fn prepare_builder_image(
    image: Arc<BuilderImage>,
    events: broadcast::Sender<WorkerEvent>,
    shutdown: CancellationToken,
) {
    let name = image.name().to_string();
    let report = |progress| {
        let _ = events.send(WorkerEvent::BuilderImage {
            image: name.clone(),
            progress,
        });
    };
    let result = tokio::select! {
        result = image.ensure(report) => result,
        _ = shutdown.cancelled() => return,
    };
    if let Err(error) = result {
        tracing::warn!(image = %name, %error, "the builder image is not ready");
        let _ = events.send(WorkerEvent::BuilderImageFailed {
            image: name,
            error: error.to_string(),
        });
    }
}

/// Longest wait between two reconnection attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);

/// Runs the worker until `shutdown` fires. Errors only for a configuration that can never work
/// (e.g. a bad SMTP URL or no Docker engine); broker trouble is retried forever.
pub async fn run(
    pool: PgPool,
    settings: WorkerSettings,
    events: broadcast::Sender<WorkerEvent>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let settings = Arc::new(settings);
    let docker =
        bollard::Docker::connect_with_local_defaults().context("connect to the Docker engine")?;
    let mailer = Arc::new(email::Mailer::new(&settings)?);
    let builds_store = settings
        .builds_store
        .open()
        .context("open the storage for built studies")?;
    let mut upload_stores = vec![builds_store.clone()];
    if let Some(videos) = &settings.videos_store {
        upload_stores.push(videos.open().context("open the video storage")?);
    }
    let builder_image = Arc::new(BuilderImage::new(
        docker.clone(),
        settings.builder_image.clone(),
        settings.builder_base_image.clone(),
    ));
    // Its first build takes minutes: started now, so a build request finds it (nearly) ready.
    tokio::spawn(prepare_builder_image(
        builder_image.clone(),
        events.clone(),
        shutdown.clone(),
    ));
    let builds = Arc::new(build::BuildHandler {
        pool: pool.clone(),
        builds_store,
        settings: settings.clone(),
        docker: docker.clone(),
        builder_image,
        events: events.clone(),
    });
    let emails = Arc::new(email::EmailHandler {
        pool: pool.clone(),
        mailer,
        events: events.clone(),
    });
    let cleanups = Arc::new(cleanup::CleanupHandler {
        pool: pool.clone(),
        stores: upload_stores,
        settings: settings.clone(),
        docker,
    });
    let retry = RetryPolicy {
        max_attempts: settings.max_attempts.max(1),
        backoff_base: settings.retry_backoff_base,
    };
    let mut delay = Duration::from_millis(500);
    loop {
        let mut connected = false;
        let session = async {
            let connection = broker::connect(&settings.amqp_url)
                .await
                .context("connect to RabbitMQ")?;
            let channel = connection.create_channel().await?;
            declare_queues(&channel)
                .await
                .context("declare the queues")?;
            let _ = channel.close(200, "declared").await;
            connected = true;
            let _ = events.send(WorkerEvent::BrokerConnected);
            tracing::info!("worker consuming builds, email and cleanup");
            let schedule = Publisher::open(&connection).await?;
            let consumed = tokio::try_join!(
                broker::consume(
                    &connection,
                    builds.clone(),
                    settings.limits(Queue::Builds),
                    retry,
                    events.clone(),
                    shutdown.clone()
                ),
                broker::consume(
                    &connection,
                    emails.clone(),
                    settings.limits(Queue::Email),
                    retry,
                    events.clone(),
                    shutdown.clone()
                ),
                broker::consume(
                    &connection,
                    cleanups.clone(),
                    settings.limits(Queue::Cleanup),
                    retry,
                    events.clone(),
                    shutdown.clone()
                ),
                cleanup::publish_schedule(
                    schedule,
                    settings.cleanup_schedule.clone(),
                    shutdown.clone()
                ),
            );
            if consumed.is_err() {
                // One consumer failed: stop the others (their jobs finish or requeue).
                let _ = connection.close(320, "reconnecting").await;
            } else {
                let _ = connection.close(200, "worker shutting down").await;
            }
            consumed.map(|_| ())
        };
        // Any failure of the session is the broker's (or the network's): reconnect.
        let result = session.await;
        if shutdown.is_cancelled() {
            return Ok(());
        }
        if connected {
            delay = Duration::from_millis(500);
        }
        if let Err(error) = result {
            let error = format!("{error:#}");
            tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "broker connection lost");
            let _ = events.send(WorkerEvent::BrokerLost {
                error,
                retry_in_ms: delay.as_millis() as u64,
            });
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(MAX_RECONNECT_DELAY);
    }
}
