//! Which folders are linked to which study (`study_links`). Links are made by
//! `lookit-local study watch` (possibly while the app runs in another process), so every change
//! is announced on [`LINKS_CHANGED_CHANNEL`] in the same transaction.

use std::path::Path;

use anyhow::Context as _;
use sqlx::PgPool;
use uuid::Uuid;

/// Postgres channel notified (payload: the study id) when a study's links change.
pub const LINKS_CHANGED_CHANNEL: &str = "lookit_study_links";

/// The folders linked to one study; at least one of them is set.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StudyLink {
    pub study_id: Uuid,
    /// Its changes rebuild the study with this folder as the player.
    pub player_folder: Option<String>,
    /// Its JSON files are the study's structure.
    pub protocol_folder: Option<String>,
}

impl StudyLink {
    pub fn player(&self) -> Option<&Path> {
        self.player_folder.as_deref().map(Path::new)
    }
    pub fn protocol(&self) -> Option<&Path> {
        self.protocol_folder.as_deref().map(Path::new)
    }
}

fn absolute_folder(path: &Path) -> anyhow::Result<String> {
    let folder = std::fs::canonicalize(path)
        .with_context(|| format!("{}: no such folder", path.display()))?;
    anyhow::ensure!(folder.is_dir(), "{} is not a folder", folder.display());
    Ok(folder.display().to_string())
}

/// Links folders to `study` (replacing its earlier links). Both must exist; they are stored as
/// absolute paths.
pub async fn link_study(
    pool: &PgPool,
    study: Uuid,
    player: Option<&Path>,
    protocol: Option<&Path>,
) -> anyhow::Result<StudyLink> {
    anyhow::ensure!(
        player.is_some() || protocol.is_some(),
        "link a player folder, a protocol folder or both"
    );
    let player = player.map(absolute_folder).transpose()?;
    let protocol = protocol.map(absolute_folder).transpose()?;
    let mut tx = pool.begin().await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM studies WHERE id = $1)")
        .bind(study)
        .fetch_one(&mut *tx)
        .await?;
    anyhow::ensure!(exists, "there is no study {study}");
    let link: StudyLink = sqlx::query_as(
        "INSERT INTO study_links (study_id, player_folder, protocol_folder) VALUES ($1, $2, $3) \
         ON CONFLICT (study_id) DO UPDATE SET player_folder = $2, protocol_folder = $3, \
         modified_at = now() RETURNING study_id, player_folder, protocol_folder",
    )
    .bind(study)
    .bind(&player)
    .bind(&protocol)
    .fetch_one(&mut *tx)
    .await?;
    announce(&mut tx, study).await?;
    tx.commit().await?;
    Ok(link)
}

/// Removes the study's links; false when it had none.
pub async fn unlink_study(pool: &PgPool, study: Uuid) -> anyhow::Result<bool> {
    let mut tx = pool.begin().await?;
    let removed = sqlx::query("DELETE FROM study_links WHERE study_id = $1")
        .bind(study)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    announce(&mut tx, study).await?;
    tx.commit().await?;
    Ok(removed > 0)
}

/// Every study's links.
pub async fn study_links(pool: &PgPool) -> anyhow::Result<Vec<StudyLink>> {
    Ok(sqlx::query_as(
        "SELECT study_id, player_folder, protocol_folder FROM study_links ORDER BY created_at",
    )
    .fetch_all(pool)
    .await?)
}

async fn announce(tx: &mut sqlx::PgConnection, study: Uuid) -> anyhow::Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(LINKS_CHANGED_CHANNEL)
        .bind(study.to_string())
        .execute(tx)
        .await?;
    Ok(())
}

/// The links of one study, if any.
pub(crate) async fn study_link(pool: &PgPool, study: Uuid) -> anyhow::Result<Option<StudyLink>> {
    Ok(sqlx::query_as(
        "SELECT study_id, player_folder, protocol_folder FROM study_links WHERE study_id = $1",
    )
    .bind(study)
    .fetch_optional(pool)
    .await?)
}
