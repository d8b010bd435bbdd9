//! A player folder's bursts become builds of its study: one build per burst, and a burst that
//! comes while a build is queued or running gives exactly one more build after it (never none,
//! never one per burst). A build that succeeds reloads the study's open previews.

use std::path::{Path, PathBuf};

use lookit_api::ApiError;
use lookit_contracts::BuildStatus;
use sqlx::PgPool;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::folder::FolderEvent;
use crate::player::{queue_build_with_player, Player};
use crate::supervisor::WatchEvent;

/// Rebuilds one study from its player folder.
pub struct PlayerRebuild {
    pool: PgPool,
    study: Uuid,
    player: Player,
}

type Following = (
    Uuid,
    JoinHandle<anyhow::Result<lookit_worker::BuildOutcome>>,
);

impl PlayerRebuild {
    pub fn new(pool: PgPool, study: Uuid, folder: &Path) -> anyhow::Result<PlayerRebuild> {
        let player = Player::parse(&folder.display().to_string())?;
        Ok(PlayerRebuild {
            pool,
            study,
            player,
        })
    }

    /// Turns the folder's events into builds until `folder` ends or `cancel` fires.
    pub async fn run(
        self,
        mut folder: mpsc::UnboundedReceiver<FolderEvent>,
        events: broadcast::Sender<WatchEvent>,
        cancel: CancellationToken,
    ) {
        let study = self.study;
        // Changes not yet covered by a queued build.
        let mut pending: Vec<PathBuf> = Vec::new();
        let mut following: Option<Following> = None;
        loop {
            if !pending.is_empty() && following.is_none() {
                following = self.queue(&mut pending, &events).await;
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                event = folder.recv() => match event {
                    None => break,
                    Some(FolderEvent::Changed { paths }) => {
                        let _ = events.send(WatchEvent::PlayerChanged { study, paths: paths.clone() });
                        pending.extend(paths);
                    }
                    Some(FolderEvent::Gone) => {
                        let _ = events.send(WatchEvent::FolderGone {
                            study,
                            folder: PathBuf::from(&self.player.source),
                        });
                    }
                    Some(FolderEvent::Failed { message }) => {
                        let _ = events.send(WatchEvent::Failed { study: Some(study), message });
                    }
                },
                joined = async { (&mut following.as_mut().expect("guarded").1).await }, if following.is_some() => {
                    let (build, _) = following.take().expect("guarded");
                    self.finished(build, joined.map_err(anyhow::Error::from).and_then(|r| r), &events).await;
                }
            }
        }
        if let Some((_, task)) = following {
            task.abort();
        }
    }

    /// Queues a build for the pending changes; when another build is queued or running, follows
    /// that one instead and keeps the changes pending.
    async fn queue(
        &self,
        pending: &mut Vec<PathBuf>,
        events: &broadcast::Sender<WatchEvent>,
    ) -> Option<Following> {
        // Twice at most: a refusal because of a build that ended between the two queries is
        // worth one retry; a second refusal is for another reason.
        for _ in 0..2 {
            let refusal = match queue_build_with_player(&self.pool, self.study, &self.player).await
            {
                Ok(build) => {
                    let _ = events.send(WatchEvent::RebuildQueued {
                        study: self.study,
                        build: build.id,
                        changes: std::mem::take(pending),
                    });
                    return Some(self.follow(build.id));
                }
                Err(ApiError::Conflict(refusal)) => refusal,
                Err(error) => {
                    self.failed(format!("the rebuild was not queued: {error}"), events);
                    pending.clear();
                    return None;
                }
            };
            match self.current_build().await {
                Ok(Some(build)) => return Some(self.follow(build)),
                Ok(None) => tracing::debug!(%refusal, "build refused without a build in the way"),
                Err(error) => {
                    self.failed(format!("{error:#}"), events);
                    pending.clear();
                    return None;
                }
            }
        }
        self.failed(
            "the rebuild was refused twice; see the study's builds".into(),
            events,
        );
        pending.clear();
        None
    }

    fn follow(&self, build: Uuid) -> Following {
        let pool = self.pool.clone();
        let task =
            tokio::spawn(async move { lookit_worker::follow_build(&pool, build, |_| {}).await });
        (build, task)
    }

    async fn current_build(&self) -> anyhow::Result<Option<Uuid>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM builds WHERE study_id = $1 AND status IN ('queued', 'running') \
             ORDER BY created_at DESC LIMIT 1",
        )
        .bind(self.study)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn finished(
        &self,
        build: Uuid,
        outcome: anyhow::Result<lookit_worker::BuildOutcome>,
        events: &broadcast::Sender<WatchEvent>,
    ) {
        match outcome {
            Ok(outcome) => {
                if outcome.status == BuildStatus::Succeeded {
                    if let Err(error) =
                        lookit_api::preview_reload::announce_reload(&self.pool, self.study).await
                    {
                        tracing::warn!(%error, "could not ask the previews to reload");
                    }
                }
                let _ = events.send(WatchEvent::RebuildFinished {
                    study: self.study,
                    build,
                    status: outcome.status,
                });
            }
            Err(error) => self.failed(format!("lost track of build {build}: {error:#}"), events),
        }
    }

    fn failed(&self, message: String, events: &broadcast::Sender<WatchEvent>) {
        tracing::warn!(study = %self.study, "{message}");
        let _ = events.send(WatchEvent::Failed {
            study: Some(self.study),
            message,
        });
    }
}
