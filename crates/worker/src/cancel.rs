//! Cancelling a study build on a user's request, through Postgres: the worker may run in the
//! instance or as a separate `lookit-local worker` process, so the request travels as a row
//! change plus a notification, never as a call into the worker.
//!
//! Invariants:
//! - The row is the truth: [`cancel_build`] sets `cancelled` (with `finished_at` and the reason
//!   in `error`) in one statement, and the worker only ever finishes a build still `running`, so
//!   whichever of the two commits first wins and the other learns it from the row.
//! - A build that has started publishing (`running` at stage `upload`) cannot be cancelled: a
//!   half-replaced study would be neither the previous version nor the new one.
//! - A cancelled build is acknowledged, never retried or dead-lettered, and never published.

use std::time::Duration;

use lookit_contracts::BuildStatus;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::build::{BuildStage, BUILD_NOTIFY_CHANNEL};

/// Postgres channel notified (payload: the build id) when a user cancels a build.
const BUILD_CANCEL_CHANNEL: &str = "lookit_build_cancel";

/// What `builds.error` says of a build the user cancelled.
const CANCELLED_BY_USER: &str = "cancelled by the user";

/// Why a build could not be cancelled.
#[derive(Debug, thiserror::Error)]
pub enum CancelBuildError {
    #[error("there is no build {0}")]
    NotFound(Uuid),
    #[error("the build is already {}: only a queued or running build can be cancelled", .0.as_str())]
    Finished(BuildStatus),
    #[error(
        "the build is already publishing its output and can no longer be cancelled; it ends in a \
         moment (then start a new build if it is not the one you want)"
    )]
    Publishing,
    #[error("the database: {0}")]
    Database(#[from] sqlx::Error),
}

/// Cancels a queued or running build. A queued one is skipped when the worker takes it; a running
/// one is stopped by its worker (builder container killed and removed, nothing published, the job
/// acknowledged), which listens on [`BUILD_CANCEL_CHANNEL`] while it works.
pub async fn cancel_build(pool: &PgPool, build_id: Uuid) -> Result<(), CancelBuildError> {
    let mut tx = pool.begin().await?;
    let cancelled = sqlx::query(
        "UPDATE builds SET status = 'cancelled', error = $2, finished_at = now()
         WHERE id = $1
           AND (status = 'queued' OR (status = 'running' AND stage IS DISTINCT FROM $3))",
    )
    .bind(build_id)
    .bind(CANCELLED_BY_USER)
    .bind(BuildStage::Upload.as_str())
    .execute(&mut *tx)
    .await?;
    if cancelled.rows_affected() == 1 {
        // Sent at commit: the worker running it stops, followers (`build --wait`) see the end.
        for channel in [BUILD_CANCEL_CHANNEL, BUILD_NOTIFY_CHANNEL] {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(channel)
                .bind(build_id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        return Ok(());
    }
    let row: Option<(BuildStatus, Option<String>)> =
        sqlx::query_as("SELECT status, stage FROM builds WHERE id = $1")
            .bind(build_id)
            .fetch_optional(&mut *tx)
            .await?;
    Err(match row {
        None => CancelBuildError::NotFound(build_id),
        Some((status, _)) if status.is_finished() => CancelBuildError::Finished(status),
        // Running at stage `upload` (the update's only other refusal).
        Some(_) => CancelBuildError::Publishing,
    })
}

/// Pause before listening again after the database connection was lost.
const RELISTEN_DELAY: Duration = Duration::from_secs(1);

/// Cancels `stop` once the user has cancelled the build, and never returns otherwise: the caller
/// drops (aborts) it when the build is over. Database trouble only delays the cancel: it listens
/// again and rereads the row. Holds one connection of the pool while it listens.
pub(crate) async fn stop_when_cancelled(pool: PgPool, build_id: Uuid, stop: CancellationToken) {
    loop {
        match wait_for_cancel(&pool, build_id).await {
            Ok(()) => {
                stop.cancel();
                return;
            }
            Err(error) => {
                tracing::warn!(%build_id, error = %format!("{error:#}"), "not listening for a cancel of the build; listening again");
                tokio::time::sleep(RELISTEN_DELAY).await;
            }
        }
    }
}

/// Returns once the build's row says `cancelled`; an error when the connection is lost.
async fn wait_for_cancel(pool: &PgPool, build_id: Uuid) -> anyhow::Result<()> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(BUILD_CANCEL_CHANNEL).await?;
    // Read after LISTEN: a cancel before it is seen here, one after it as a notification.
    let status: Option<BuildStatus> = sqlx::query_scalar("SELECT status FROM builds WHERE id = $1")
        .bind(build_id)
        .fetch_optional(pool)
        .await?;
    if status == Some(BuildStatus::Cancelled) {
        return Ok(());
    }
    let wanted = build_id.to_string();
    loop {
        match listener.try_recv().await? {
            Some(notification) if notification.payload() == wanted => return Ok(()),
            Some(_) => {}
            // Notifications sent until it reconnects are lost: listen anew and reread the row.
            None => anyhow::bail!("the database connection was lost"),
        }
    }
}
