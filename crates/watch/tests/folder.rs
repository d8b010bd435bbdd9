//! Real file changes on disk, watched through inotify (and polling): what a developer's editor
//! and tools do to a frameplayer checkout.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lookit_watch::{FolderEvent, FolderWatch, Scope, WatchMode};
use tokio::sync::mpsc::UnboundedReceiver;

const QUIET: Duration = Duration::from_millis(200);

/// The next event; the deadline only turns a hang into a failure.
async fn next(events: &mut UnboundedReceiver<FolderEvent>) -> FolderEvent {
    tokio::time::timeout(Duration::from_secs(30), events.recv())
        .await
        .expect("an event within 30 s")
        .expect("the watch is running")
}

async fn next_change(events: &mut UnboundedReceiver<FolderEvent>) -> Vec<PathBuf> {
    match next(events).await {
        FolderEvent::Changed { paths } => paths,
        other => panic!("expected a change, got {other:?}"),
    }
}

/// Changes until one that includes `path` (a multi-step operation may span several bursts).
async fn change_including(
    events: &mut UnboundedReceiver<FolderEvent>,
    path: &Path,
) -> Vec<PathBuf> {
    loop {
        let paths = next_change(events).await;
        if paths.iter().any(|p| p == path) {
            return paths;
        }
    }
}

fn player() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap().join("player");
    std::fs::create_dir_all(root.join("app/components")).unwrap();
    std::fs::create_dir_all(root.join("node_modules/ember")).unwrap();
    std::fs::write(root.join("package.json"), "{}").unwrap();
    (dir, root)
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn a_burst_of_saves_is_one_change_and_the_next_save_another() {
    let (_dir, root) = player();
    let (_watch, mut events) =
        FolderWatch::start(&root, Scope::Tree, WatchMode::Native, QUIET).unwrap();
    let saved: Vec<PathBuf> = (0..5)
        .map(|i| root.join(format!("app/components/c{i}.js")))
        .collect();
    for path in &saved {
        write(path, "export default 1;");
    }
    let burst = next_change(&mut events).await;
    assert_eq!(burst, saved, "all five saves in one burst");
    let sentinel = root.join("app/app.js");
    write(&sentinel, "x");
    assert_eq!(next_change(&mut events).await, vec![sentinel]);
}

#[tokio::test]
async fn ignored_folders_and_editor_temporaries_give_no_change() {
    let (_dir, root) = player();
    let (_watch, mut events) =
        FolderWatch::start(&root, Scope::Tree, WatchMode::Native, QUIET).unwrap();
    write(&root.join("node_modules/ember/index.js"), "x");
    write(&root.join("node_modules/new-package/index.js"), "x");
    write(&root.join("dist/index.html"), "x");
    write(&root.join(".git/index"), "x");
    write(&root.join("app/.router.js.swp"), "x");
    write(&root.join("app/4913"), "");
    write(&root.join("app/router.js~"), "x");
    // Reading a source (as a build copying the folder does) is not a change either.
    std::fs::read(root.join("package.json")).unwrap();
    let sentinel = root.join("app/router.js");
    write(&sentinel, "x");
    // The first change reported is the sentinel alone: nothing before it counted.
    assert_eq!(next_change(&mut events).await, vec![sentinel]);
}

#[tokio::test]
async fn a_save_by_rename_counts_as_a_change_of_the_file() {
    let (_dir, root) = player();
    let target = root.join("app/router.js");
    write(&target, "old");
    let (_watch, mut events) =
        FolderWatch::start(&root, Scope::Tree, WatchMode::Native, QUIET).unwrap();
    let temporary = root.join("app/router.js.tmp");
    write(&temporary, "new");
    std::fs::rename(&temporary, &target).unwrap();
    assert_eq!(next_change(&mut events).await, vec![target]);
}

#[tokio::test]
async fn a_new_folder_is_watched_too() {
    let (_dir, root) = player();
    let (_watch, mut events) =
        FolderWatch::start(&root, Scope::Tree, WatchMode::Native, QUIET).unwrap();
    let folder = root.join("app/routes");
    std::fs::create_dir(&folder).unwrap();
    assert!(next_change(&mut events).await.contains(&folder));
    let file = folder.join("index.js");
    write(&file, "x");
    assert_eq!(next_change(&mut events).await, vec![file]);
}

#[tokio::test]
async fn a_deleted_and_recreated_folder_is_watched_again() {
    let (_dir, root) = player();
    let (_watch, mut events) =
        FolderWatch::start(&root, Scope::Tree, WatchMode::Native, QUIET).unwrap();
    std::fs::remove_dir_all(&root).unwrap();
    assert_eq!(next(&mut events).await, FolderEvent::Gone);
    std::fs::create_dir_all(root.join("app")).unwrap();
    change_including(&mut events, &root).await;
    // The re-created tree's folders are watched: a save deep in it is seen.
    let file = root.join("app/app.js");
    write(&file, "x");
    change_including(&mut events, &file).await;
}

#[tokio::test]
async fn polling_notices_changes_where_inotify_cannot() {
    let (_dir, root) = player();
    let (_watch, mut events) = FolderWatch::start(
        &root,
        Scope::Tree,
        WatchMode::Poll(Duration::from_millis(100)),
        QUIET,
    )
    .unwrap();
    let file = root.join("app/components/c.js");
    write(&file, "x");
    assert_eq!(next_change(&mut events).await, vec![file]);
}

#[tokio::test]
async fn one_file_is_watched_through_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let config = root.join("config.toml");
    write(&config, "");
    let (_watch, mut events) =
        FolderWatch::start(&root, Scope::File(config.clone()), WatchMode::Native, QUIET).unwrap();
    write(&root.join("secrets.toml"), "other file");
    let temporary = root.join(".config.toml.swp");
    write(&temporary, "[api]\n");
    std::fs::rename(&temporary, &config).unwrap();
    assert_eq!(next_change(&mut events).await, vec![config]);
}

/// Runs in a user namespace of its own whose inotify watch limit is lower than the tree's
/// folder count (the limit of the machine is not touched).
#[test]
fn running_out_of_inotify_watches_names_the_sysctl_fix() {
    if std::env::var_os("LOOKIT_WATCH_LIMIT_CHILD").is_none() {
        let exe = std::env::current_exe().unwrap();
        let output = std::process::Command::new("unshare")
            .args([
                "--user",
                "--map-root-user",
                "sh",
                "-c",
                "echo 4 > /proc/sys/user/max_inotify_watches && exec \"$0\" \"$@\"",
            ])
            .arg(exe)
            .args([
                "running_out_of_inotify_watches_names_the_sysctl_fix",
                "--exact",
                "--nocapture",
            ])
            .env("LOOKIT_WATCH_LIMIT_CHILD", "1")
            .output()
            .expect("run unshare (util-linux)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "{text}");
        assert!(text.contains("limit error checked"), "{text}");
        return;
    }
    let (_dir, root) = player();
    for i in 0..8 {
        std::fs::create_dir_all(root.join(format!("app/f{i}"))).unwrap();
    }
    let error = FolderWatch::start(&root, Scope::Tree, WatchMode::Native, QUIET)
        .err()
        .expect("more folders than watches");
    let message = error.to_string();
    assert!(
        message.contains("sudo sysctl fs.inotify.max_user_watches=524288")
            && message.contains("watch.poll = true"),
        "{message}"
    );
    println!("limit error checked: {message}");
}
