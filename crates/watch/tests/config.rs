//! The config file, watched while the app runs: real saves on disk.

use std::time::Duration;

use lookit_config::{Config, Home};
use lookit_watch::{ConfigChange, ConfigWatch, WatchMode};
use tokio::sync::mpsc::UnboundedReceiver;

async fn next(changes: &mut UnboundedReceiver<ConfigChange>) -> ConfigChange {
    tokio::time::timeout(Duration::from_secs(30), changes.recv())
        .await
        .expect("a config change within 30 s")
        .expect("the config watch is running")
}

#[tokio::test]
async fn a_valid_change_is_applied_naming_restart_keys_and_an_invalid_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::at(dir.path());
    let file = home.config_file().to_path_buf();
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, "[watch]\ndebounce_ms = 300\n").unwrap();
    let current = Config::load(&home).unwrap();
    let (_watch, mut changes) = ConfigWatch::start(
        &home,
        current,
        WatchMode::Native,
        Duration::from_millis(200),
    )
    .unwrap();

    std::fs::write(&file, "[watch]\ndebounce_ms = 900\n[api]\nport = 9443\n").unwrap();
    match next(&mut changes).await {
        ConfigChange::Applied {
            config,
            live,
            needs_restart,
        } => {
            assert_eq!(config.watch.debounce_ms, 900);
            assert_eq!(live, vec!["watch.debounce_ms"]);
            assert_eq!(needs_restart, vec!["api.port"]);
        }
        other => panic!("expected the change applied, got {other:?}"),
    }

    // An invalid save, written by rename as many editors do: refused with key, file and line.
    let temporary = file.with_extension("toml.tmp");
    std::fs::write(
        &temporary,
        "[watch]\ndebounce_ms = 900\n[api]\nport = \"high\"\n",
    )
    .unwrap();
    std::fs::rename(&temporary, &file).unwrap();
    match next(&mut changes).await {
        ConfigChange::Refused { error } => {
            assert!(
                error.contains("line 4") && error.contains("`api.port`"),
                "{error}"
            );
            assert!(error.contains(&file.display().to_string()), "{error}");
        }
        other => panic!("expected the change refused, got {other:?}"),
    }

    // The config in force is still the last valid one: the next valid save is compared with it.
    std::fs::write(
        &file,
        "[watch]\ndebounce_ms = 900\n[api]\nport = 9443\npublic_url = \"https://lab.example/\"\n",
    )
    .unwrap();
    match next(&mut changes).await {
        ConfigChange::Applied {
            live,
            needs_restart,
            ..
        } => {
            assert!(live.is_empty(), "{live:?}");
            assert_eq!(needs_restart, vec!["api.public_url"]);
        }
        other => panic!("expected the change applied, got {other:?}"),
    }
}
