//! The `cleanup` queue and its schedule (§1 "scheduled jobs").

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use bollard::container::{ListContainersOptions, RemoveContainerOptions};
use bollard::image::PruneImagesOptions;
use bollard::Docker;
use lookit_contracts::{CleanupJob, CleanupTask, Queue};
use lookit_storage::Storage;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::broker::{JobError, JobHandler, Publisher};
use crate::container::BUILDER_LABEL;
use crate::ledger;
use crate::settings::WorkerSettings;

/// Consumer of the `cleanup` queue.
pub(crate) struct CleanupHandler {
    pub pool: PgPool,
    /// Where multipart uploads may be abandoned: the builds and the video storage.
    pub stores: Vec<Storage>,
    pub settings: Arc<WorkerSettings>,
    pub docker: Docker,
}

impl JobHandler for CleanupHandler {
    const QUEUE: Queue = Queue::Cleanup;
    type Job = CleanupJob;

    fn job_id(job: &CleanupJob) -> Uuid {
        job.job_id
    }

    async fn handle(
        &self,
        job: &CleanupJob,
        _publisher: &Publisher,
        _cancel: &CancellationToken,
    ) -> Result<(), JobError> {
        let mut connection = self.pool.acquire().await?;
        if ledger::is_processed(&mut connection, job.job_id).await? {
            return Ok(());
        }
        drop(connection);
        match job.task {
            CleanupTask::OldBuildOutputs => self.remove_old_build_files().await,
            CleanupTask::DockerPrune => self.prune_docker().await,
            CleanupTask::MultipartUploads => self.abort_abandoned_uploads().await,
            CleanupTask::Announcements => {
                return Err(JobError::Permanent(anyhow::anyhow!(
                    "study announcement emails are not supported by this worker"
                )))
            }
        }
        .map_err(JobError::Retry)?;
        let mut tx = self.pool.begin().await?;
        ledger::mark_processed(&mut tx, job.job_id, Queue::Cleanup).await?;
        tx.commit().await?;
        tracing::info!(task = ?job.task, "cleanup done");
        Ok(())
    }

    async fn give_up(
        &self,
        job: &CleanupJob,
        _publisher: &Publisher,
        error: &str,
    ) -> anyhow::Result<()> {
        tracing::warn!(task = ?job.task, error, "cleanup gave up");
        Ok(())
    }
}

impl CleanupHandler {
    /// Checkouts, unfinished deployments and cached outputs older than the configured age;
    /// never the checkout of a build that is running.
    async fn remove_old_build_files(&self) -> anyhow::Result<()> {
        let in_use: Vec<String> = sqlx::query_scalar(
            "SELECT player_sha FROM builds WHERE status = 'running' AND player_sha IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        let max_age = self.settings.build_files_max_age;
        for dir in [
            self.settings.checkouts_dir(),
            self.settings.deployments_dir(),
            self.settings.outputs_dir(),
        ] {
            remove_older_than(&dir, max_age, &in_use).await?;
        }
        Ok(())
    }

    /// Multipart uploads nobody finished in the S3 stores (a participant who closed the page
    /// during a direct video upload, a worker killed mid-upload): their parts cost money forever.
    async fn abort_abandoned_uploads(&self) -> anyhow::Result<()> {
        for store in &self.stores {
            let aborted = store
                .abort_abandoned_uploads(self.settings.abandoned_upload_age)
                .await
                .with_context(|| format!("clean the multipart uploads of {}", store.root()))?;
            if let Some(aborted) = aborted {
                tracing::info!(
                    store = store.root(),
                    aborted,
                    "abandoned multipart uploads aborted"
                );
            }
        }
        Ok(())
    }

    /// Stopped builder containers and dangling images.
    async fn prune_docker(&self) -> anyhow::Result<()> {
        let filters = std::collections::HashMap::from([
            ("label".to_string(), vec![BUILDER_LABEL.to_string()]),
            (
                "status".to_string(),
                vec![
                    "exited".to_string(),
                    "created".to_string(),
                    "dead".to_string(),
                ],
            ),
        ]);
        let stopped = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters,
                ..ListContainersOptions::default()
            }))
            .await
            .context("list stopped builder containers")?;
        for container in stopped {
            if let Some(id) = container.id {
                self.docker
                    .remove_container(
                        &id,
                        Some(RemoveContainerOptions {
                            force: true,
                            ..RemoveContainerOptions::default()
                        }),
                    )
                    .await
                    .with_context(|| format!("remove container {id}"))?;
            }
        }
        self.docker
            .prune_images(Some(PruneImagesOptions {
                filters: std::collections::HashMap::from([("dangling", vec!["true"])]),
            }))
            .await
            .context("prune dangling images")?;
        Ok(())
    }
}

async fn remove_older_than(dir: &Path, max_age: Duration, keep: &[String]) -> anyhow::Result<()> {
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error).with_context(|| format!("read {}", dir.display())),
    };
    let now = SystemTime::now();
    while let Some(entry) = entries.next_entry().await? {
        let name = entry.file_name().to_string_lossy().into_owned();
        if keep.contains(&name) {
            continue;
        }
        let modified = entry.metadata().await?.modified()?;
        if now.duration_since(modified).unwrap_or_default() > max_age {
            let path = entry.path();
            let removed = if path.is_dir() {
                tokio::fs::remove_dir_all(&path).await
            } else {
                tokio::fs::remove_file(&path).await
            };
            removed.with_context(|| format!("remove {}", path.display()))?;
        }
    }
    Ok(())
}

/// Publishes each scheduled cleanup job at its interval (first one interval after the start)
/// until the connection fails or `shutdown` fires.
pub(crate) async fn publish_schedule(
    publisher: Publisher,
    schedule: Vec<(CleanupTask, Duration)>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (sender, mut due) = tokio::sync::mpsc::channel(schedule.len().max(1));
    let mut timers = tokio::task::JoinSet::new();
    for (task, every) in schedule {
        let sender = sender.clone();
        timers.spawn(async move {
            let start = tokio::time::Instant::now() + every;
            let mut ticks = tokio::time::interval_at(start, every);
            loop {
                ticks.tick().await;
                if sender.send(task).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(sender);
    loop {
        let task = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            task = due.recv() => match task {
                Some(task) => task,
                None => {
                    shutdown.cancelled().await;
                    return Ok(());
                }
            },
        };
        let job = CleanupJob {
            job_id: Uuid::new_v4(),
            task,
        };
        publisher.publish_job(Queue::Cleanup, &job).await?;
    }
}
