//! The `builds` queue: Lookit's study build (§2) with a checkout cache, an output cache, a
//! streamed log and exactly one notice per build that succeeds or fails (none for a cancelled
//! one: the user who cancelled it knows).
//!
//! Invariants:
//! - One build id is worked on by one worker at a time (a Postgres advisory lock held on a
//!   dedicated connection: a killed worker's lock goes with its connection).
//! - A build that is finished (succeeded, failed, cancelled) is never run again; a redelivered
//!   job only makes sure its notice was handed to the `email` queue.
//! - A failing builder fails the build at once (no retry: it would fail the same way); trouble
//!   around it (Docker daemon, network, database) is retried through the broker, and only the
//!   final failure writes the study log entry and the notice (Lookit's issue #506).
//! - A full disk fails the build at once too, with a reason that says so: it stays full until
//!   someone frees space. Nothing half written stays (checkouts and publishing go through
//!   hidden folders removed on failure; a deployment folder goes whatever the outcome), and the
//!   published build is untouched.
//! - The worker changes a build's row only while it is `running` (or `queued`, to start it), so
//!   a user's cancel ([`crate::cancel`]) is never overwritten: a build found cancelled is stopped
//!   (builder container killed and removed), never published, and its job is acknowledged.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use bollard::Docker;
use lookit_contracts::{BuildJob, BuildStatus, EmailJob, Queue};
use lookit_storage::{output_files, study_prefix, Storage};
use secrecy::ExposeSecret;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::broker::{JobError, JobHandler, Publisher};
use crate::builder_image::{BuilderImage, BuilderImageError};
use crate::container::{BuilderExit, BuilderRun};
use crate::settings::WorkerSettings;
use crate::source::{is_commit_sha, PlayerSource};
use crate::WorkerEvent;

/// Postgres channel notified (payload: the build id) when a build's log or status changes.
pub const BUILD_NOTIFY_CHANNEL: &str = "lookit_build";

/// Lines of the log quoted in a failure notice and study log entry.
const LOG_TAIL_LINES: usize = 30;

/// What a builder prints when a write failed for lack of space: the C library's words for
/// ENOSPC, which Node's `ENOSPC: no space left on device` contains too (compared in lower case).
const NO_SPACE_MESSAGE: &str = "no space left on device";

/// Stages of §2, as recorded in `builds.stage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildStage {
    ResolveCommit,
    Checkout,
    BuilderImage,
    Build,
    Upload,
}

impl BuildStage {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildStage::ResolveCommit => "resolve_commit",
            BuildStage::Checkout => "checkout",
            BuildStage::BuilderImage => "builder_image",
            BuildStage::Build => "build",
            BuildStage::Upload => "upload",
        }
    }
}

/// Why the stages stopped.
enum StageError {
    /// The build itself failed (builder exit, time-out, no output, unusable source).
    Failed(BuildStage, String),
    /// Something around the build failed; a later attempt may succeed.
    Trouble(BuildStage, anyhow::Error),
    /// Stopped on request: the worker shuts down, or the user cancelled the build (the row says
    /// which).
    Stopped,
}

impl StageError {
    /// Trouble that is a full disk fails the build: a retry would fail the same way until
    /// someone frees space, so the reason says that instead.
    fn failing_when_out_of_space(self) -> StageError {
        match self {
            StageError::Trouble(stage, error)
                if lookit_storage::is_out_of_space(error.as_ref()) =>
            {
                StageError::Failed(
                    stage,
                    format!(
                        "the disk is full: {}; free some space, then build again",
                        said_once(&error)
                    ),
                )
            }
            other => other,
        }
    }
}

/// The error and its causes, each said once: a cause whose words the error before it already
/// contains is left out (many errors repeat their source in their own message).
fn said_once(error: &anyhow::Error) -> String {
    let mut said = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !said.contains(&text) {
            if !said.is_empty() {
                said.push_str(": ");
            }
            said.push_str(&text);
        }
    }
    said
}

/// A successful run of the stages.
struct Built {
    player_sha: String,
    cache_key: String,
    cache_hit: bool,
    location: String,
}

#[derive(sqlx::FromRow)]
struct BuildRow {
    id: Uuid,
    study_id: Uuid,
    player_repo: String,
    player_ref: String,
    player_sha: Option<String>,
    status: BuildStatus,
    stage: Option<String>,
}

/// Consumer of the `builds` queue.
pub(crate) struct BuildHandler {
    pub pool: PgPool,
    /// Where outputs are uploaded for participants (`storage.builds`).
    pub builds_store: Storage,
    pub settings: Arc<WorkerSettings>,
    pub docker: Docker,
    pub builder_image: Arc<BuilderImage>,
    pub events: broadcast::Sender<WorkerEvent>,
}

impl JobHandler for BuildHandler {
    const QUEUE: Queue = Queue::Builds;
    type Job = BuildJob;

    fn job_id(job: &BuildJob) -> Uuid {
        job.job_id
    }

    async fn handle(
        &self,
        job: &BuildJob,
        publisher: &Publisher,
        cancel: &CancellationToken,
    ) -> Result<(), JobError> {
        let _lock = tokio::select! {
            lock = lock_build(&self.pool, job.build_id) => lock?,
            _ = cancel.cancelled() => return Err(JobError::Interrupted),
        };
        let build = self.load(job.build_id).await?.ok_or_else(|| {
            JobError::Permanent(anyhow::anyhow!("there is no build {}", job.build_id))
        })?;
        if build.status.is_finished() {
            return self.hand_over_notice(build.id, publisher).await;
        }
        if !self.start(&build).await? {
            // Cancelled since it was loaded: nothing ran, nothing to undo.
            return Ok(());
        }
        // Fires on shutdown and when the user cancels the build.
        let stop = cancel.child_token();
        let cancel_listener = tokio::spawn(crate::cancel::stop_when_cancelled(
            self.pool.clone(),
            build.id,
            stop.clone(),
        ));
        let (lines, log_writer) = self.log_writer(build.id);
        let result = self
            .run_stages(&build, &lines, &stop)
            .await
            .map_err(StageError::failing_when_out_of_space);
        cancel_listener.abort();
        drop(lines);
        // Every line is in the database before the build's status says it is over.
        let _ = log_writer.await;
        // Each update below applies only to a build still running: one that does not apply means
        // the user cancelled it meanwhile.
        match result {
            Ok(built) => {
                if !self.finish(&build, Ok(&built)).await? {
                    return self.cancelled_by_user(&build).await;
                }
                self.hand_over_notice(build.id, publisher).await
            }
            Err(StageError::Failed(stage, error)) => {
                if !self.finish(&build, Err((stage.as_str(), &error))).await? {
                    return self.cancelled_by_user(&build).await;
                }
                self.hand_over_notice(build.id, publisher).await
            }
            Err(StageError::Trouble(stage, error)) => {
                let requeued = sqlx::query(
                    "UPDATE builds SET status = 'queued', stage = $2, error = $3
                     WHERE id = $1 AND status = 'running'",
                )
                .bind(build.id)
                .bind(stage.as_str())
                .bind(format!("{error:#}"))
                .execute(&self.pool)
                .await?;
                if requeued.rows_affected() == 0 {
                    return self.cancelled_by_user(&build).await;
                }
                self.status_changed(&build, BuildStatus::Queued, Some(stage.as_str()), false);
                Err(JobError::Retry(
                    error.context(format!("stage {}", stage.as_str())),
                ))
            }
            Err(StageError::Stopped) => {
                let requeued = sqlx::query(
                    "UPDATE builds SET status = 'queued', stage = NULL
                     WHERE id = $1 AND status = 'running'",
                )
                .bind(build.id)
                .execute(&self.pool)
                .await?;
                if requeued.rows_affected() == 0 {
                    return self.cancelled_by_user(&build).await;
                }
                // Shutdown: the message goes back to the queue for the next worker.
                self.status_changed(&build, BuildStatus::Queued, None, false);
                Err(JobError::Interrupted)
            }
        }
    }

    async fn give_up(
        &self,
        job: &BuildJob,
        publisher: &Publisher,
        error: &str,
    ) -> anyhow::Result<()> {
        let Some(build) = self.load(job.build_id).await? else {
            return Ok(());
        };
        if !build.status.is_finished() {
            let stage = build.stage.clone().unwrap_or_else(|| "queued".to_string());
            self.finish(&build, Err((&stage, error))).await?;
        }
        self.hand_over_notice(build.id, publisher)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    }
}

impl BuildHandler {
    async fn load(&self, build_id: Uuid) -> Result<Option<BuildRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, study_id, player_repo, player_ref, player_sha, status, stage
             FROM builds WHERE id = $1",
        )
        .bind(build_id)
        .fetch_optional(&self.pool)
        .await
    }

    /// Marks the build running; `false` when it was cancelled since it was loaded.
    async fn start(&self, build: &BuildRow) -> Result<bool, sqlx::Error> {
        // A new attempt starts a new log: a half log of an interrupted attempt would mislead.
        // `running` too: the attempt of a worker that died is taken over.
        let started = sqlx::query(
            "UPDATE builds SET status = 'running', attempts = attempts + 1, log = '', error = NULL,
                    stage = $2, started_at = now(), finished_at = NULL
             WHERE id = $1 AND status IN ('queued', 'running')",
        )
        .bind(build.id)
        .bind(BuildStage::ResolveCommit.as_str())
        .execute(&self.pool)
        .await?;
        if started.rows_affected() == 0 {
            return Ok(false);
        }
        self.notify(build.id).await?;
        self.status_changed(
            build,
            BuildStatus::Running,
            Some(BuildStage::ResolveCommit.as_str()),
            false,
        );
        Ok(true)
    }

    async fn run_stages(
        &self,
        build: &BuildRow,
        log: &mpsc::UnboundedSender<String>,
        cancel: &CancellationToken,
    ) -> Result<Built, StageError> {
        let settings = &self.settings;
        let say = |line: String| {
            let _ = log.send(format!("[lookit-local] {line}"));
        };

        self.enter(build, BuildStage::ResolveCommit).await?;
        let source = PlayerSource::parse(&build.player_repo, &build.player_ref)
            .await
            .map_err(|e| StageError::Failed(BuildStage::ResolveCommit, format!("{e:#}")))?;
        let player_sha = match &build.player_sha {
            Some(sha) if is_commit_sha(sha) => sha.clone(),
            _ => source
                .resolve_commit()
                .await
                .map_err(|e| StageError::Trouble(BuildStage::ResolveCommit, e))?,
        };
        sqlx::query("UPDATE builds SET player_sha = $2 WHERE id = $1")
            .bind(build.id)
            .bind(&player_sha)
            .execute(&self.pool)
            .await
            .map_err(|e| StageError::Trouble(BuildStage::ResolveCommit, e.into()))?;
        say(format!("frameplayer {} at {player_sha}", build.player_repo));

        self.enter(build, BuildStage::Checkout).await?;
        source
            .ensure_checkout(&settings.checkouts_dir(), &player_sha)
            .await
            .map_err(|e| StageError::Trouble(BuildStage::Checkout, e))?;

        self.enter(build, BuildStage::BuilderImage).await?;
        let ensure = self.builder_image.ensure(|progress| {
            say(format!("builder image: {progress}"));
            let _ = self.events.send(WorkerEvent::BuilderImage {
                image: settings.builder_image.clone(),
                progress,
            });
        });
        let image_id = tokio::select! {
            ready = ensure => match ready {
                Ok(ready) => ready.id,
                // The engine may come back; a failing image build or pull fails the same way again.
                Err(BuilderImageError::Engine(error)) => {
                    return Err(StageError::Trouble(BuildStage::BuilderImage, anyhow::anyhow!(error)))
                }
                Err(error) => return Err(StageError::Failed(BuildStage::BuilderImage, error.to_string())),
            },
            _ = cancel.cancelled() => return Err(StageError::Stopped),
        };
        let env = self.container_env(build.study_id, &player_sha);
        let cache_key = cache_key(&player_sha, &image_id, &env);
        let output = settings.output_dir(&cache_key);

        let cache_hit = self
            .has_good_output(&cache_key, &output)
            .await
            .map_err(|e| StageError::Trouble(BuildStage::BuilderImage, e.into()))?;
        if cache_hit {
            say(format!(
                "reusing the output of an identical build ({cache_key})"
            ));
        } else {
            self.enter(build, BuildStage::Build).await?;
            say(format!("running {} ({image_id})", settings.builder_image));
            self.run_builder(build, env, &output, log, cancel).await?;
        }

        // The point of no return: once the row says `upload`, a cancel is refused (see
        // `cancel_build`), so a cancelled build never publishes and a published one is never
        // reported cancelled.
        self.enter(build, BuildStage::Upload).await?;
        let uploaded = self
            .builds_store
            .upload_folder(&output, &study_prefix(build.study_id))
            .await
            .map_err(|e| StageError::Trouble(BuildStage::Upload, e.into()))?;
        say(format!(
            "uploaded {} files to {}",
            uploaded.files, uploaded.location
        ));
        let location = uploaded.location;
        Ok(Built {
            player_sha,
            cache_key,
            cache_hit,
            location,
        })
    }

    /// Runs the builder into a fresh deployment folder and moves a good result into the output
    /// cache at `output`. The deployment folder is removed whatever the outcome: a failed
    /// build's half output would only take space (and a full disk is one way to fail).
    async fn run_builder(
        &self,
        build: &BuildRow,
        env: Vec<(String, String)>,
        output: &Path,
        log: &mpsc::UnboundedSender<String>,
        cancel: &CancellationToken,
    ) -> Result<(), StageError> {
        let deployment = self.settings.deployments_dir().join(build.id.to_string());
        if deployment.exists() {
            tokio::fs::remove_dir_all(&deployment)
                .await
                .map_err(|e| StageError::Trouble(BuildStage::Build, e.into()))?;
        }
        let result = self
            .build_in(&deployment, build, env, output, log, cancel)
            .await;
        let _ = tokio::fs::remove_dir_all(&deployment).await;
        result
    }

    /// [`Self::run_builder`] in its deployment folder.
    async fn build_in(
        &self,
        deployment: &Path,
        build: &BuildRow,
        env: Vec<(String, String)>,
        output: &Path,
        log: &mpsc::UnboundedSender<String>,
        cancel: &CancellationToken,
    ) -> Result<(), StageError> {
        let settings = &self.settings;
        let trouble = |e: anyhow::Error| StageError::Trouble(BuildStage::Build, e);
        let cache = settings.builds_dir.join("cache");
        let outputs = settings.outputs_dir();
        for dir in [deployment, cache.as_path(), outputs.as_path()] {
            tokio::fs::create_dir_all(dir)
                .await
                .with_context(|| format!("create {}", dir.display()))
                .map_err(trouble)?;
        }
        let run = BuilderRun {
            image: settings.builder_image.clone(),
            name: format!("lookit-build-{}", build.id),
            env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
            binds: vec![
                format!("{}:/checkouts:ro", settings.checkouts_dir().display()),
                format!("{}:/deployments", deployment.display()),
                format!("{}:/cache", cache.display()),
            ],
            time_limit: settings.build_time_limit,
        };
        // The builder's lines go to the log through here, watched for a full disk.
        let (lines, mut builder_lines) = mpsc::unbounded_channel::<String>();
        let watcher = {
            let log = log.clone();
            tokio::spawn(async move {
                let mut out_of_space = false;
                while let Some(line) = builder_lines.recv().await {
                    out_of_space |= line.to_ascii_lowercase().contains(NO_SPACE_MESSAGE);
                    let _ = log.send(line);
                }
                out_of_space
            })
        };
        let exit = run.run(&self.docker, lines, cancel).await;
        let out_of_space = watcher.await.unwrap_or(false);
        let exit = exit.map_err(trouble)?;
        let failed = |message: String| Err(StageError::Failed(BuildStage::Build, message));
        match exit {
            BuilderExit::Exited(0) => {}
            BuilderExit::Exited(code) if out_of_space => {
                return failed(format!(
                    "the builder exited with code {code}: the disk is full (\"No space left on \
                     device\" in the log); free some space, then build again"
                ))
            }
            BuilderExit::Exited(code) => {
                return failed(format!("the builder exited with code {code}"))
            }
            BuilderExit::TimedOut => {
                return failed(format!(
                    "the builder did not finish within {} s",
                    settings.build_time_limit.as_secs()
                ))
            }
            BuilderExit::Cancelled => return Err(StageError::Stopped),
        }
        let produced = deployment.join(build.study_id.to_string());
        let files = {
            let produced = produced.clone();
            tokio::task::spawn_blocking(move || output_files(&produced).unwrap_or_default())
                .await
                .map_err(|e| trouble(e.into()))?
        };
        if files.is_empty() {
            return failed("the builder produced no files in STUDY_OUTPUT_DIR".to_string());
        }
        if output.exists() {
            tokio::fs::remove_dir_all(output)
                .await
                .map_err(|e| trouble(e.into()))?;
        }
        tokio::fs::rename(&produced, output)
            .await
            .with_context(|| format!("move the output to {}", output.display()))
            .map_err(trouble)?;
        Ok(())
    }

    /// The §2 container environment. `BUILD_CACHE_DIR` is ours: a folder kept between builds for
    /// package caches (Lookit reinstalls everything every time).
    fn container_env(&self, study_id: Uuid, player_sha: &str) -> Vec<(String, String)> {
        let e = &self.settings.build_environment;
        [
            ("CHECKOUT_DIR", format!("/checkouts/{player_sha}")),
            ("STUDY_OUTPUT_DIR", format!("/deployments/{study_id}")),
            ("PREPEND_FINGERPRINT", format!("/studies/{study_id}/")),
            ("PIPE_ACCOUNT_HASH", e.pipe_account_hash.clone()),
            ("PIPE_ENVIRONMENT", e.pipe_environment.clone()),
            ("S3_REGION", e.s3_region.clone()),
            ("S3_ACCESS_KEY_ID", e.s3_access_key_id.clone()),
            (
                "S3_SECRET_ACCESS_KEY",
                e.s3_secret_access_key.expose_secret().to_string(),
            ),
            ("S3_BUCKET", e.s3_bucket.clone()),
            ("SENTRY_DSN", e.sentry_dsn.clone()),
            ("BUILD_CACHE_DIR", "/cache".to_string()),
            ("HOME", "/tmp".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// An earlier build with this key succeeded and its output is still in the cache.
    async fn has_good_output(&self, cache_key: &str, output: &Path) -> Result<bool, sqlx::Error> {
        if !output.is_dir() {
            return Ok(false);
        }
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM builds WHERE cache_key = $1 AND status = 'succeeded')",
        )
        .bind(cache_key)
        .fetch_one(&self.pool)
        .await
    }

    /// Records the stage the build enters; [`StageError::Stopped`] when the build is no longer
    /// running (the user cancelled it).
    async fn enter(&self, build: &BuildRow, stage: BuildStage) -> Result<(), StageError> {
        let entered =
            sqlx::query("UPDATE builds SET stage = $2 WHERE id = $1 AND status = 'running'")
                .bind(build.id)
                .bind(stage.as_str())
                .execute(&self.pool)
                .await
                .map_err(|e| StageError::Trouble(stage, e.into()))?;
        if entered.rows_affected() == 0 {
            return Err(StageError::Stopped);
        }
        self.status_changed(build, BuildStatus::Running, Some(stage.as_str()), false);
        Ok(())
    }

    /// Ends the build (if it is not over yet) with its study log entry and its one notice, all in
    /// one transaction. `false` when it was already over (the user cancelled it): nothing written.
    async fn finish(
        &self,
        build: &BuildRow,
        result: Result<&Built, (&str, &str)>,
    ) -> Result<bool, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let log: Option<String> = match result {
            Ok(built) => sqlx::query_scalar(
                "UPDATE builds SET status = 'succeeded', stage = NULL, error = NULL, player_sha = $2,
                        cache_key = $3, cache_hit = $4, output_location = $5, finished_at = now()
                 WHERE id = $1 AND status = 'running' RETURNING log",
            )
            .bind(build.id)
            .bind(&built.player_sha)
            .bind(&built.cache_key)
            .bind(built.cache_hit)
            .bind(&built.location)
            .fetch_optional(&mut *tx)
            .await?,
            // `queued` too: a build given up on between two attempts.
            Err((stage, error)) => sqlx::query_scalar(
                "UPDATE builds SET status = 'failed', stage = $2, error = $3, finished_at = now()
                 WHERE id = $1 AND status IN ('queued', 'running') RETURNING log",
            )
            .bind(build.id)
            .bind(stage)
            .bind(error)
            .fetch_optional(&mut *tx)
            .await?,
        };
        let Some(log) = log else {
            return Ok(false);
        };
        let log_tail = tail(&log, LOG_TAIL_LINES);
        let study_name: String = sqlx::query_scalar("SELECT name FROM studies WHERE id = $1")
            .bind(build.study_id)
            .fetch_one(&mut *tx)
            .await?;
        let (action, template, context) = match result {
            Ok(built) => (
                "deployed",
                "build_succeeded",
                serde_json::json!({
                    "study_name": study_name, "study_id": build.study_id, "build_id": build.id,
                    "player_sha": built.player_sha, "output_location": built.location,
                    "cache_hit": built.cache_hit,
                }),
            ),
            Err((stage, error)) => (
                "failed to build",
                "build_failed",
                serde_json::json!({
                    "study_name": study_name, "study_id": build.study_id, "build_id": build.id,
                    "stage": stage, "error": error, "log_tail": log_tail,
                }),
            ),
        };
        sqlx::query("INSERT INTO study_logs (study_id, action, extra) VALUES ($1, $2, $3)")
            .bind(build.study_id)
            .bind(action)
            .bind(serde_json::json!({ "build_id": build.id, "details": context, "log_tail": log_tail }))
            .execute(&mut *tx)
            .await?;
        // The study's admins; the requester when the study has none.
        sqlx::query(
            "INSERT INTO emails (id, template, context, to_addresses, build_id)
             SELECT $1, $2, $3, array_agg(DISTINCT u.username), $4
             FROM users u
             WHERE u.id IN (SELECT user_id FROM study_admins WHERE study_id = $5)
                OR (u.id = (SELECT requested_by FROM builds WHERE id = $4)
                    AND NOT EXISTS (SELECT 1 FROM study_admins WHERE study_id = $5))
             HAVING count(*) > 0
             ON CONFLICT DO NOTHING",
        )
        .bind(Uuid::new_v4())
        .bind(template)
        .bind(&context)
        .bind(build.id)
        .bind(build.study_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(BUILD_NOTIFY_CHANNEL)
            .bind(build.id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let (status, stage, cache_hit) = match result {
            Ok(built) => (BuildStatus::Succeeded, None, built.cache_hit),
            Err((stage, _)) => (BuildStatus::Failed, Some(stage), false),
        };
        self.status_changed(build, status, stage, cache_hit);
        Ok(true)
    }

    /// Ends the handling of a running build the user cancelled: its row already says so (with
    /// the reason), its builder container is gone and nothing was published; the log and the
    /// panel hear of it, and the job is done (acknowledged, not retried).
    async fn cancelled_by_user(&self, build: &BuildRow) -> Result<(), JobError> {
        tracing::info!(build_id = %build.id, "build cancelled by the user");
        let line = "[lookit-local] cancelled by the user: stopped before publishing, the study's \
                    published version is unchanged"
            .to_string();
        append_log(&self.pool, build.id, &format!("{line}\n")).await?;
        let _ = self.events.send(WorkerEvent::BuildLog {
            build_id: build.id,
            line,
        });
        let stage: Option<String> = sqlx::query_scalar("SELECT stage FROM builds WHERE id = $1")
            .bind(build.id)
            .fetch_one(&self.pool)
            .await?;
        self.status_changed(build, BuildStatus::Cancelled, stage.as_deref(), false);
        Ok(())
    }

    /// Publishes the build's notice to the `email` queue while it is still unsent (again after a
    /// redelivery: the email handler sends a row once, however many jobs name it).
    async fn hand_over_notice(
        &self,
        build_id: Uuid,
        publisher: &Publisher,
    ) -> Result<(), JobError> {
        let pending: Vec<Uuid> =
            sqlx::query_scalar("SELECT id FROM emails WHERE build_id = $1 AND status = 'queued'")
                .bind(build_id)
                .fetch_all(&self.pool)
                .await?;
        for email_id in pending {
            let job = EmailJob {
                job_id: Uuid::new_v4(),
                email_id,
            };
            publisher
                .publish_job(Queue::Email, &job)
                .await
                .map_err(JobError::Retry)?;
        }
        Ok(())
    }

    /// A task appending the builder's lines to `builds.log` (in batches of what has arrived)
    /// and to subscribers.
    fn log_writer(
        &self,
        build_id: Uuid,
    ) -> (mpsc::UnboundedSender<String>, tokio::task::JoinHandle<()>) {
        let (sender, mut receiver) = mpsc::unbounded_channel::<String>();
        let pool = self.pool.clone();
        let events = self.events.clone();
        let task = tokio::spawn(async move {
            while let Some(first) = receiver.recv().await {
                let mut chunk = String::new();
                let mut line = Some(first);
                while let Some(text) = line {
                    chunk.push_str(&text);
                    chunk.push('\n');
                    let _ = events.send(WorkerEvent::BuildLog {
                        build_id,
                        line: text,
                    });
                    line = receiver.try_recv().ok();
                }
                if let Err(error) = append_log(&pool, build_id, &chunk).await {
                    tracing::warn!(%build_id, %error, "could not store build log lines");
                }
            }
        });
        (sender, task)
    }

    async fn notify(&self, build_id: Uuid) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(BUILD_NOTIFY_CHANNEL)
            .bind(build_id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    fn status_changed(
        &self,
        build: &BuildRow,
        status: BuildStatus,
        stage: Option<&str>,
        cache_hit: bool,
    ) {
        let _ = self.events.send(WorkerEvent::BuildStatus {
            build_id: build.id,
            study_id: build.study_id,
            status,
            stage: stage.map(str::to_string),
            cache_hit,
        });
    }
}

/// Appends `chunk` (whole lines) to the build's log and tells followers.
async fn append_log(pool: &PgPool, build_id: Uuid, chunk: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH appended AS (UPDATE builds SET log = log || $2 WHERE id = $1)
         SELECT pg_notify($3, $1::text)",
    )
    .bind(build_id)
    .bind(chunk)
    .bind(BUILD_NOTIFY_CHANNEL)
    .execute(pool)
    .await?;
    Ok(())
}

/// Takes the build's advisory lock on a connection of its own (waiting while another worker
/// holds it). Dropping the connection releases the lock, also when the process dies.
async fn lock_build(pool: &PgPool, build_id: Uuid) -> Result<PgConnection, sqlx::Error> {
    let mut connection = pool.acquire().await?.detach();
    sqlx::query("SELECT pg_advisory_lock(hashtextextended($1::text, 5))")
        .bind(build_id)
        .execute(&mut connection)
        .await?;
    Ok(connection)
}

/// Output cache key: what decides the output (commit, builder image, environment), hashed so
/// no secret value shows.
fn cache_key(player_sha: &str, image_id: &str, env: &[(String, String)]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(player_sha.as_bytes());
    hasher.update([0]);
    hasher.update(image_id.as_bytes());
    for (name, value) in env {
        hasher.update([0]);
        hasher.update(name.as_bytes());
        hasher.update(b"=");
        hasher.update(value.as_bytes());
    }
    hex::encode(hasher.finalize())
}

fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_key_changes_with_commit_image_and_environment() {
        let env = vec![("PIPE_ENVIRONMENT".to_string(), "dev".to_string())];
        let base = cache_key("a".repeat(40).as_str(), "sha256:1", &env);
        assert_eq!(base, cache_key("a".repeat(40).as_str(), "sha256:1", &env));
        assert_ne!(base, cache_key("b".repeat(40).as_str(), "sha256:1", &env));
        assert_ne!(base, cache_key("a".repeat(40).as_str(), "sha256:2", &env));
        let other_env = vec![("PIPE_ENVIRONMENT".to_string(), "prod".to_string())];
        assert_ne!(
            base,
            cache_key("a".repeat(40).as_str(), "sha256:1", &other_env)
        );
    }

    #[test]
    fn the_log_tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }

    #[test]
    fn a_cause_its_error_already_says_is_said_once() {
        let full = || std::io::Error::from_raw_os_error(28);
        let repeating = anyhow::Error::new(full()).context(format!("cannot publish x: {}", full()));
        assert_eq!(
            said_once(&repeating),
            "cannot publish x: No space left on device (os error 28)"
        );
        let plain = anyhow::Error::new(full()).context("create /builds/checkouts/.staging");
        assert_eq!(
            said_once(&plain),
            "create /builds/checkouts/.staging: No space left on device (os error 28)"
        );
    }
}
