//! The config file, watched: every save is loaded and validated exactly as at start-up. A valid
//! change is announced with the keys that changed, split into those the running app applies
//! and those that only take effect after a restart; an invalid one is refused with the config
//! error (key, file, line) and the previous config stays in force.

use std::time::Duration;

use lookit_config::{Config, Home};
use tokio::sync::mpsc;

use crate::folder::{FolderEvent, FolderWatch, Scope, WatchMode};
use crate::WatchError;

/// Sections the running app applies without a restart: the folder watchers are restarted
/// with the new `[watch]` settings. Every other key is read once at start-up.
const LIVE_SECTIONS: &[&str] = &["watch"];

/// The outcome of one change of the config file.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigChange {
    /// The file is valid and differs from the config in force, which it now is.
    Applied {
        config: Box<Config>,
        /// Changed keys (`section.key`) the running app applies now.
        live: Vec<String>,
        /// Changed keys that take effect after a restart.
        needs_restart: Vec<String>,
    },
    /// The file is invalid; the config in force stays. The message names key, file and line.
    Refused { error: String },
}

/// A running watch of the config file; dropping it stops it.
pub struct ConfigWatch {
    _folder: FolderWatch,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ConfigWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ConfigWatch {
    /// Watches `home`'s config file (through its folder, so saves by rename are seen), starting
    /// from `current`, the config in force. Needs a Tokio runtime.
    pub fn start(
        home: &Home,
        current: Config,
        mode: WatchMode,
        quiet: Duration,
    ) -> Result<(ConfigWatch, mpsc::UnboundedReceiver<ConfigChange>), WatchError> {
        let file = home.config_file().to_path_buf();
        let folder = file
            .parent()
            .ok_or_else(|| WatchError::NotAFolder(file.clone()))?
            .to_path_buf();
        std::fs::create_dir_all(&folder).map_err(|source| WatchError::Folder {
            path: folder.clone(),
            source,
        })?;
        let (watch, mut events) = FolderWatch::start(&folder, Scope::File(file), mode, quiet)?;
        let (changes, receiver) = mpsc::unbounded_channel();
        let home = home.clone();
        let task = tokio::spawn(async move {
            let mut current = current;
            while let Some(event) = events.recv().await {
                let FolderEvent::Changed { .. } = event else {
                    continue;
                };
                let change = match Config::load(&home) {
                    Err(error) => ConfigChange::Refused {
                        error: error.to_string(),
                    },
                    Ok(config) if config == current => continue,
                    Ok(config) => {
                        let (live, needs_restart) = changed_keys(&current, &config)
                            .into_iter()
                            .partition(|key| {
                                LIVE_SECTIONS.contains(&key.split('.').next().unwrap_or(key))
                            });
                        current = config.clone();
                        ConfigChange::Applied {
                            config: Box::new(config),
                            live,
                            needs_restart,
                        }
                    }
                };
                if changes.send(change).is_err() {
                    return;
                }
            }
        });
        Ok((
            ConfigWatch {
                _folder: watch,
                task,
            },
            receiver,
        ))
    }
}

/// The dotted keys whose values differ between two configs.
pub fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    fn walk(
        prefix: &str,
        old: Option<&toml::Value>,
        new: Option<&toml::Value>,
        out: &mut Vec<String>,
    ) {
        match (old, new) {
            (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => {
                let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                for key in keys {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    walk(&path, a.get(key), b.get(key), out);
                }
            }
            (a, b) if a != b => out.push(prefix.to_string()),
            _ => {}
        }
    }
    let as_value = |config: &Config| toml::Value::try_from(config).ok();
    let mut out = Vec::new();
    walk("", as_value(old).as_ref(), as_value(new).as_ref(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_keys_are_named_with_their_section() {
        let old = Config::default();
        let mut new = Config::default();
        new.watch.debounce_ms = 900;
        new.api.port = lookit_config::Port(9443);
        assert_eq!(
            changed_keys(&old, &new),
            vec!["api.port", "watch.debounce_ms"]
        );
        new.api.public_url = Some("https://lab.example".parse().unwrap());
        assert!(changed_keys(&old, &new).contains(&"api.public_url".to_string()));
    }
}
