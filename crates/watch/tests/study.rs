//! The running app's watchers on a real Postgres: linked folders, rebuilds and protocol sync.
//! The worker's part (a build finishing) is played by updating the build row and notifying as
//! the worker does, so a test decides when a build ends.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lookit_contracts::BuildStatus;
use lookit_watch::{
    link_study, run_study_watches, FolderRole, WatchEvent, WatchMode, WatchSettings,
};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

struct Running {
    _database: lookit_testkit::TestDatabase,
    pool: PgPool,
    study: Uuid,
    events: broadcast::Receiver<WatchEvent>,
    stop: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A migrated database with the demo study, and the app's watchers running on it.
async fn running() -> Running {
    let (database, pool) = lookit_testkit::migrated_database().await;
    let study = lookit_api::demo::seed(&pool).await.unwrap().study;
    let (sender, events) = broadcast::channel(256);
    let stop = CancellationToken::new();
    let settings = WatchSettings {
        mode: WatchMode::Native,
        quiet: Duration::from_millis(200),
    };
    tokio::spawn(run_study_watches(
        pool.clone(),
        settings,
        sender,
        stop.clone(),
    ));
    Running {
        _database: database,
        pool,
        study,
        events,
        stop,
    }
}

impl Running {
    /// The next event that `pick` accepts; the deadline only turns a hang into a failure.
    async fn wait<T>(&mut self, mut pick: impl FnMut(WatchEvent) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .expect("the awaited watch event within 30 s")
                .expect("the watchers are running");
            if let WatchEvent::Failed { message, .. } = &event {
                panic!("watch failed: {message}");
            }
            if let Some(found) = pick(event) {
                return found;
            }
        }
    }

    async fn rebuild_queued(&mut self) -> (Uuid, Vec<PathBuf>) {
        self.wait(|e| match e {
            WatchEvent::RebuildQueued { build, changes, .. } => Some((build, changes)),
            _ => None,
        })
        .await
    }

    async fn builds(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM builds WHERE study_id = $1")
            .bind(self.study)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// What the worker does when a build ends.
    async fn finish(&self, build: Uuid, status: &str) {
        sqlx::query("UPDATE builds SET status = $2, finished_at = now() WHERE id = $1")
            .bind(build)
            .bind(status)
            .execute(&self.pool)
            .await
            .unwrap();
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(lookit_worker::BUILD_NOTIFY_CHANNEL)
            .bind(build.to_string())
            .execute(&self.pool)
            .await
            .unwrap();
    }

    async fn structure(&self) -> Value {
        sqlx::query_scalar("SELECT structure FROM studies WHERE id = $1")
            .bind(self.study)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

fn folder(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap().join(name);
    std::fs::create_dir_all(root.join("app")).unwrap();
    (dir, root)
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn a_burst_of_saves_gives_exactly_one_rebuild_with_the_folder_as_player() {
    let mut app = running().await;
    let (_dir, player) = folder("player");
    link_study(&app.pool, app.study, Some(&player), None)
        .await
        .unwrap();
    app.wait(|e| {
        matches!(
            e,
            WatchEvent::Watching {
                role: FolderRole::Player,
                ..
            }
        )
        .then_some(())
    })
    .await;
    let saved: Vec<PathBuf> = (0..5)
        .map(|i| player.join(format!("app/c{i}.js")))
        .collect();
    for path in &saved {
        write(path, "export default 1;");
    }
    let (build, changes) = app.rebuild_queued().await;
    assert_eq!(changes, saved);
    assert_eq!(app.builds().await, 1);
    let repo: String = sqlx::query_scalar("SELECT player_repo FROM builds WHERE id = $1")
        .bind(build)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        repo,
        player.display().to_string(),
        "the folder is the player"
    );

    app.finish(build, "succeeded").await;
    let status = app
        .wait(|e| match e {
            WatchEvent::RebuildFinished {
                build: b, status, ..
            } if b == build => Some(status),
            _ => None,
        })
        .await;
    assert_eq!(status, BuildStatus::Succeeded);
    // An ignored folder's change, then a sentinel save: the next rebuild is for the sentinel
    // alone, and there are two builds in all.
    write(&player.join("node_modules/ember/index.js"), "x");
    write(&player.join("dist/index.html"), "x");
    let sentinel = player.join("app/router.js");
    write(&sentinel, "x");
    let (_, changes) = app.rebuild_queued().await;
    assert_eq!(changes, vec![sentinel]);
    assert_eq!(app.builds().await, 2);
}

#[tokio::test]
async fn bursts_during_a_build_give_one_more_build_after_it_and_success_reloads_previews() {
    let mut app = running().await;
    let (_dir, player) = folder("player");
    link_study(&app.pool, app.study, Some(&player), None)
        .await
        .unwrap();
    app.wait(|e| matches!(e, WatchEvent::Watching { .. }).then_some(()))
        .await;
    write(&player.join("app/first.js"), "1");
    let (first, _) = app.rebuild_queued().await;
    // Two separate bursts while the first build runs.
    let during: Vec<PathBuf> = ["app/a.js", "app/b.js"]
        .iter()
        .map(|p| player.join(p))
        .collect();
    for path in &during {
        write(path, "x");
        let wanted = path.clone();
        app.wait(|e| match e {
            WatchEvent::PlayerChanged { paths, .. } if paths.contains(&wanted) => Some(()),
            _ => None,
        })
        .await;
    }
    assert_eq!(app.builds().await, 1, "nothing queued while the build runs");

    let mut previews = sqlx::postgres::PgListener::connect_with(&app.pool)
        .await
        .unwrap();
    previews
        .listen(lookit_api::preview_reload::PREVIEW_RELOAD_CHANNEL)
        .await
        .unwrap();
    app.finish(first, "succeeded").await;
    let (second, changes) = app.rebuild_queued().await;
    assert_ne!(second, first);
    assert_eq!(changes, during, "both bursts in the one build after it");
    assert_eq!(app.builds().await, 2);
    let reload = tokio::time::timeout(Duration::from_secs(30), previews.recv())
        .await
        .expect("a reload within 30 s")
        .unwrap();
    assert_eq!(reload.payload(), app.study.to_string());
}

#[tokio::test]
async fn protocol_files_update_the_structure_and_an_invalid_one_keeps_it_with_file_and_line() {
    let mut app = running().await;
    let (_dir, protocol) = folder("protocol");
    let main = protocol.join("main.json");
    write(
        &main,
        r#"{"frames": {"intro": {"kind": "exp-lookit-text"}}, "sequence": ["intro"]}"#,
    );
    link_study(&app.pool, app.study, None, Some(&protocol))
        .await
        .unwrap();
    let changed = app
        .wait(|e| match e {
            WatchEvent::ProtocolApplied { changed, .. } => Some(changed),
            _ => None,
        })
        .await;
    assert!(changed);
    let valid = app.structure().await;
    assert_eq!(valid["sequence"], json!(["intro"]));

    write(
        &main,
        "{\n  \"frames\": {\"intro\": {}},\n  \"sequence\": [\"intro\",]\n}\n",
    );
    let error = app
        .wait(|e| match e {
            WatchEvent::ProtocolInvalid { error, .. } => Some(error),
            _ => None,
        })
        .await;
    assert_eq!(error.file, main);
    assert_eq!(error.line, Some(3));
    assert_eq!(app.structure().await, valid, "the old structure stays");
    let logged: Value = sqlx::query_scalar(
        "SELECT extra FROM study_logs WHERE study_id = $1 AND action = 'protocol invalid' \
         ORDER BY id DESC LIMIT 1",
    )
    .bind(app.study)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(logged["line"], 3);
    assert_eq!(logged["file"], main.display().to_string());

    // Split over two files, saved by rename as many editors do.
    write(
        &protocol.join("video.json"),
        r#"{"frames": {"video": {"kind": "exp-video"}}}"#,
    );
    let temporary = protocol.join("main.json.tmp");
    write(
        &temporary,
        r#"{"frames": {"intro": {}}, "sequence": ["intro", "video"]}"#,
    );
    std::fs::rename(&temporary, &main).unwrap();
    app.wait(|e| matches!(e, WatchEvent::ProtocolApplied { changed: true, .. }).then_some(()))
        .await;
    assert_eq!(app.structure().await["sequence"], json!(["intro", "video"]));
}
