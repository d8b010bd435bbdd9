//! The live development loop (issue 8): a study's player can be a local folder and its protocol
//! a folder of JSON files; both are watched, and so is the config file.
//!
//! - [`FolderWatch`]: one event per burst of changes, ignoring dependency, output and
//!   version-control folders and editor temporaries; inotify or polling ([`WatchMode`]).
//! - [`PlayerRebuild`]: a burst in a player folder asks for a build of the study with that folder
//!   as its player (as `lookit-local build --player <folder>` does); a burst during a build gives
//!   exactly one more build after it; a successful build reloads the study's open previews.
//! - [`ProtocolSync`]: valid protocol files become the study's structure; an invalid one keeps the
//!   old structure and is recorded in the study log with its file and line.
//! - [`ConfigWatch`]: a valid config change is applied, with the keys that need a restart named;
//!   an invalid one is refused with the config error and the old config stays.
//! - [`StudyLink`]: which study watches which folders, kept in the database (`study_links`) and
//!   followed by [`run_study_watches`] in the running app.

mod config_watch;
mod folder;
mod ignore;
mod links;
mod player;
mod protocol;
mod rebuild;
mod supervisor;

use std::path::PathBuf;

pub use config_watch::{changed_keys, ConfigChange, ConfigWatch};
pub use folder::{FolderEvent, FolderWatch, Scope, WatchMode};
pub use ignore::is_ignored;
pub use links::{link_study, study_links, unlink_study, StudyLink, LINKS_CHANGED_CHANNEL};
pub use player::{queue_build_with_player, Player};
pub use protocol::{read_protocol, ProtocolError, ProtocolSync};
pub use rebuild::PlayerRebuild;
pub use supervisor::{run_study_watches, FolderRole, WatchEvent, WatchSettings};

/// Where the kernel's inotify watch limit is set, and the value the fix proposes.
const WATCHES_SYSCTL: &str = "fs.inotify.max_user_watches";
const SUGGESTED_WATCHES: u64 = 524_288;

/// Why watching did not (fully) work.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch {path}: {source}")]
    Folder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a folder")]
    NotAFolder(PathBuf),
    #[error(
        "cannot watch {path}: the system's limit of inotify watches is reached ({WATCHES_SYSCTL} = {limit}). \
         Raise it with `sudo sysctl {WATCHES_SYSCTL}={SUGGESTED_WATCHES}` (add `{WATCHES_SYSCTL}={SUGGESTED_WATCHES}` \
         to /etc/sysctl.d/60-lookit-local.conf to keep it), or set `watch.poll = true` to scan folders instead"
    )]
    WatchLimit { path: PathBuf, limit: String },
    #[error(
        "cannot watch {path}: too many inotify instances or open files. Raise the limit with \
         `sudo sysctl fs.inotify.max_user_instances=1024`, or set `watch.poll = true` to scan folders instead"
    )]
    InstanceLimit { path: PathBuf },
    #[error("{0}")]
    Other(String),
}

impl WatchError {
    fn from_notify(error: notify::Error, path: &std::path::Path) -> WatchError {
        let path = error.paths.first().cloned().unwrap_or(path.to_path_buf());
        match error.kind {
            notify::ErrorKind::MaxFilesWatch => WatchError::WatchLimit {
                path,
                limit: std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|_| "unknown".into()),
            },
            notify::ErrorKind::Io(source) if source.raw_os_error() == Some(24) => {
                // EMFILE from inotify_init: the per-user instance limit.
                WatchError::InstanceLimit { path }
            }
            notify::ErrorKind::Io(source) => WatchError::Folder { path, source },
            notify::ErrorKind::PathNotFound => WatchError::Folder {
                path,
                source: std::io::ErrorKind::NotFound.into(),
            },
            other => WatchError::Other(format!("cannot watch {}: {other:?}", path.display())),
        }
    }
}
