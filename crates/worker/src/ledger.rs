//! The `processed_jobs` ledger: which job ids have had their effects committed.

use lookit_contracts::Queue;
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

pub(crate) async fn is_processed(
    connection: &mut PgConnection,
    job_id: Uuid,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM processed_jobs WHERE job_id = $1)")
        .bind(job_id)
        .fetch_one(connection)
        .await
}

/// Records the job in the caller's transaction, next to the job's effect.
pub(crate) async fn mark_processed(
    tx: &mut Transaction<'_, Postgres>,
    job_id: Uuid,
    queue: Queue,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO processed_jobs (job_id, queue) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(job_id)
    .bind(queue.name())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
