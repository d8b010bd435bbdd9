//! The running app's watchers: one per linked folder, started for every link at start-up and
//! restarted whenever a study's links change (`lookit-local study watch` in another process
//! announces it on [`LINKS_CHANGED_CHANNEL`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use lookit_contracts::BuildStatus;
use serde::Serialize;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::folder::{FolderWatch, Scope, WatchMode};
use crate::links::{study_link, study_links, StudyLink, LINKS_CHANGED_CHANNEL};
use crate::protocol::{ProtocolError, ProtocolSync};
use crate::rebuild::PlayerRebuild;

/// How folders are watched (from the `[watch]` config section).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchSettings {
    pub mode: WatchMode,
    /// Quiet time that ends a burst.
    pub quiet: Duration,
}

impl WatchSettings {
    pub fn from_config(config: &lookit_config::WatchConfig) -> WatchSettings {
        WatchSettings {
            mode: WatchMode::from_config(config),
            quiet: Duration::from_millis(config.debounce_ms),
        }
    }
}

/// Which of a study's folders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FolderRole {
    Player,
    Protocol,
}

/// What the watchers did, for the dashboard and the log.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WatchEvent {
    /// A linked folder is watched (every watch is in place).
    Watching {
        study: Uuid,
        role: FolderRole,
        folder: PathBuf,
    },
    /// A burst of changes in a player folder ended.
    PlayerChanged { study: Uuid, paths: Vec<PathBuf> },
    /// A rebuild was queued for these changes.
    RebuildQueued {
        study: Uuid,
        build: Uuid,
        changes: Vec<PathBuf>,
    },
    /// A followed build ended (a successful one has reloaded the previews).
    RebuildFinished {
        study: Uuid,
        build: Uuid,
        status: BuildStatus,
    },
    /// The protocol folder was read and is valid; `changed` when the structure is new.
    ProtocolApplied { study: Uuid, changed: bool },
    /// The protocol folder is invalid; the old structure stays.
    ProtocolInvalid { study: Uuid, error: ProtocolError },
    /// A linked folder was deleted; it is watched again when it comes back.
    FolderGone { study: Uuid, folder: PathBuf },
    /// Something went wrong that the user should see.
    Failed {
        study: Option<Uuid>,
        message: String,
    },
}

/// One study's running watchers; dropping it stops them.
struct StudyWatch {
    stop: CancellationToken,
}

impl Drop for StudyWatch {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Runs the watchers of every study's links until `cancel` fires.
pub async fn run_study_watches(
    pool: PgPool,
    settings: WatchSettings,
    events: broadcast::Sender<WatchEvent>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    // Listen before reading the links: a change in between is seen as a notice.
    let mut listener = PgListener::connect_with(&pool)
        .await
        .context("listen for study link changes")?;
    listener.listen(LINKS_CHANGED_CHANNEL).await?;
    let mut running: HashMap<Uuid, (StudyLink, StudyWatch)> = HashMap::new();
    for link in study_links(&pool).await? {
        let watch = start(&pool, &link, settings, &events, &cancel).await;
        running.insert(link.study_id, (link, watch));
    }
    loop {
        let notice = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            notice = listener.recv() => notice.context("listen for study link changes")?,
        };
        let Ok(study) = notice.payload().parse::<Uuid>() else {
            continue;
        };
        let link = study_link(&pool, study).await?;
        // A notice for a link already watched as it is (the first read of the links can see a
        // change whose notice comes after it) must not restart its watchers: a restart drops
        // the burst of edits they are gathering.
        if link.as_ref() == running.get(&study).map(|(current, _)| current) {
            continue;
        }
        running.remove(&study);
        if let Some(link) = link {
            let watch = start(&pool, &link, settings, &events, &cancel).await;
            running.insert(study, (link, watch));
        }
    }
}

/// Starts the watchers of one study's folders; a folder that cannot be watched is reported and
/// the other one still runs.
async fn start(
    pool: &PgPool,
    link: &StudyLink,
    settings: WatchSettings,
    events: &broadcast::Sender<WatchEvent>,
    cancel: &CancellationToken,
) -> StudyWatch {
    let stop = cancel.child_token();
    let study = link.study_id;
    if let Some(folder) = link.player() {
        let rebuild = PlayerRebuild::new(pool.clone(), study, folder);
        match (watch(folder, settings).await, rebuild) {
            (Ok((watch, changes)), Ok(rebuild)) => {
                announce(events, study, FolderRole::Player, folder);
                let (events, stop) = (events.clone(), stop.clone());
                tokio::spawn(async move {
                    let _watch = watch;
                    rebuild.run(changes, events, stop).await
                });
            }
            (Err(error), _) | (_, Err(error)) => fail(events, study, folder, error),
        }
    }
    if let Some(folder) = link.protocol() {
        match watch(folder, settings).await {
            Ok((watch, changes)) => {
                announce(events, study, FolderRole::Protocol, folder);
                let sync = ProtocolSync::new(pool.clone(), study, folder);
                let (events, stop) = (events.clone(), stop.clone());
                tokio::spawn(async move {
                    let _watch = watch;
                    sync.run(changes, events, stop).await
                });
            }
            Err(error) => fail(events, study, folder, error),
        }
    }
    StudyWatch { stop }
}

type Watched = (
    FolderWatch,
    tokio::sync::mpsc::UnboundedReceiver<crate::FolderEvent>,
);

/// Walking a large tree to watch it is blocking work.
async fn watch(folder: &Path, settings: WatchSettings) -> anyhow::Result<Watched> {
    let folder = folder.to_path_buf();
    Ok(tokio::task::spawn_blocking(move || {
        FolderWatch::start(&folder, Scope::Tree, settings.mode, settings.quiet)
    })
    .await??)
}

fn announce(events: &broadcast::Sender<WatchEvent>, study: Uuid, role: FolderRole, folder: &Path) {
    tracing::info!(%study, folder = %folder.display(), ?role, "watching");
    let _ = events.send(WatchEvent::Watching {
        study,
        role,
        folder: folder.to_path_buf(),
    });
}

fn fail(events: &broadcast::Sender<WatchEvent>, study: Uuid, folder: &Path, error: anyhow::Error) {
    let message = format!("{} is not watched: {error:#}", folder.display());
    tracing::warn!(%study, "{message}");
    let _ = events.send(WatchEvent::Failed {
        study: Some(study),
        message,
    });
}
