//! The live development loop in the running app (issue 8): the watchers of every study's linked
//! folders, and the config file. What they do reaches the dashboard as notifications; a config
//! change says which keys were applied and which need a restart, and a `[watch]` change restarts
//! the folder watchers with the new settings.

use anyhow::Context as _;
use sqlx::PgPool;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use lookit_config::{Config, Home};
use lookit_panel::{NotificationLevel, PanelEvent};
use lookit_watch::{ConfigChange, ConfigWatch, WatchEvent, WatchSettings};

/// Runs until `stop` fires. A config file that cannot be watched is reported; the folder
/// watchers run regardless.
pub(crate) async fn run(
    pool: PgPool,
    home: Home,
    config: Config,
    panel: broadcast::Sender<PanelEvent>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let (events, receiver) = broadcast::channel(256);
    tokio::spawn(forward(receiver, panel.clone()));
    let mut settings = WatchSettings::from_config(&config.watch);
    let mut folders = start_folders(&pool, settings, &events, &stop);
    let (_config_watch, mut changes) =
        match ConfigWatch::start(&home, config, settings.mode, settings.quiet) {
            Ok((watch, changes)) => (Some(watch), changes),
            Err(error) => {
                notify(
                    &panel,
                    NotificationLevel::Warning,
                    "The config file is not watched",
                    &error.to_string(),
                );
                (None, tokio::sync::mpsc::unbounded_channel().1)
            }
        };
    loop {
        let change = tokio::select! {
            _ = stop.cancelled() => break,
            change = changes.recv() => change,
        };
        match change {
            // The config watch could not start: only the folder watchers remain.
            None => {
                stop.cancelled().await;
                break;
            }
            Some(ConfigChange::Refused { error }) => notify(
                &panel,
                NotificationLevel::Error,
                "Config change refused; the previous config stays",
                &error,
            ),
            Some(ConfigChange::Applied {
                config,
                live,
                needs_restart,
            }) => {
                let new_settings = WatchSettings::from_config(&config.watch);
                if new_settings != settings {
                    settings = new_settings;
                    folders.cancel();
                    folders = start_folders(&pool, settings, &events, &stop);
                }
                let mut body = Vec::new();
                if !live.is_empty() {
                    body.push(format!("applied now: {}", live.join(", ")));
                }
                if !needs_restart.is_empty() {
                    body.push(format!(
                        "applied after a restart: {}",
                        needs_restart.join(", ")
                    ));
                }
                notify(
                    &panel,
                    if needs_restart.is_empty() {
                        NotificationLevel::Success
                    } else {
                        NotificationLevel::Warning
                    },
                    "Config changed",
                    &body.join("; "),
                );
            }
        }
    }
    folders.cancel();
    Ok(())
}

/// The folder watchers, stopped by cancelling the returned token.
fn start_folders(
    pool: &PgPool,
    settings: WatchSettings,
    events: &broadcast::Sender<WatchEvent>,
    stop: &CancellationToken,
) -> CancellationToken {
    let token = stop.child_token();
    let (pool, events, run_token) = (pool.clone(), events.clone(), token.clone());
    tokio::spawn(async move {
        if let Err(error) = lookit_watch::run_study_watches(pool, settings, events, run_token)
            .await
            .context("watch the linked study folders")
        {
            tracing::warn!("{error:#}");
        }
    });
    token
}

fn notify(
    panel: &broadcast::Sender<PanelEvent>,
    level: NotificationLevel,
    title: &str,
    body: &str,
) {
    let _ = panel.send(PanelEvent::Notification {
        level,
        title: title.into(),
        body: body.into(),
    });
}

/// Watch events → notifications (builds show up on the Builds page as any build does).
async fn forward(
    mut events: broadcast::Receiver<WatchEvent>,
    panel: broadcast::Sender<PanelEvent>,
) {
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        tracing::info!(?event, "watch");
        let (level, title, body) = match event {
            WatchEvent::RebuildQueued { study, changes, .. } => (
                NotificationLevel::Info,
                "Rebuilding after your changes",
                format!("study {study}: {} changed file(s)", changes.len()),
            ),
            WatchEvent::ProtocolApplied {
                study,
                changed: true,
            } => (
                NotificationLevel::Success,
                "Study structure updated",
                format!("study {study}: from its protocol folder"),
            ),
            WatchEvent::ProtocolInvalid { study, error } => (
                NotificationLevel::Error,
                "Protocol file invalid; the structure is unchanged",
                format!("study {study}: {error}"),
            ),
            WatchEvent::FolderGone { study, folder } => (
                NotificationLevel::Warning,
                "A watched folder was deleted",
                format!(
                    "study {study}: {} (watched again when it comes back)",
                    folder.display()
                ),
            ),
            WatchEvent::Failed { study, message } => (
                NotificationLevel::Error,
                "Watching failed",
                match study {
                    Some(study) => format!("study {study}: {message}"),
                    None => message,
                },
            ),
            _ => continue,
        };
        notify(&panel, level, title, &body);
    }
}
