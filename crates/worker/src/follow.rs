//! Following a build from another process (`lookit-local build --wait`): its log as it grows
//! and its end, woken by the worker's Postgres notifications instead of polling.

use anyhow::Context as _;
use lookit_contracts::BuildStatus;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use uuid::Uuid;

use crate::build::BUILD_NOTIFY_CHANNEL;

/// How a followed build ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOutcome {
    pub status: BuildStatus,
    /// The failing stage of a failed build.
    pub stage: Option<String>,
    pub error: Option<String>,
}

/// Calls `on_line` with every log line of the build, as it is written, and returns once the build
/// is finished. A restarted attempt (new log) is announced by a marker line.
pub async fn follow_build(
    pool: &PgPool,
    build_id: Uuid,
    mut on_line: impl FnMut(&str),
) -> anyhow::Result<BuildOutcome> {
    let mut listener = PgListener::connect_with(pool)
        .await
        .context("listen for build changes")?;
    listener.listen(BUILD_NOTIFY_CHANNEL).await?;
    let wanted = build_id.to_string();
    let mut shown = 0;
    loop {
        // Read after LISTEN: a change between the two is seen either here or as a notification.
        let row: Option<(BuildStatus, Option<String>, Option<String>, String)> =
            sqlx::query_as("SELECT status, stage, error, log FROM builds WHERE id = $1")
                .bind(build_id)
                .fetch_optional(pool)
                .await?;
        let (status, stage, error, log) =
            row.with_context(|| format!("there is no build {build_id}"))?;
        if log.len() < shown {
            on_line("[lookit-local] the build started again");
            shown = 0;
        }
        // Only whole lines; the rest comes with the next append.
        if let Some(end) = log[shown..].rfind('\n') {
            log[shown..shown + end].lines().for_each(&mut on_line);
            shown += end + 1;
        }
        if status.is_finished() {
            return Ok(BuildOutcome {
                status,
                stage,
                error,
            });
        }
        while listener.recv().await?.payload() != wanted {}
    }
}
