//! The file that tells other commands (`status`, `down`, `logs`, the desktop shell) that an
//! instance runs for a home and how to reach its panel.
//!
//! Invariant: the file exists only while its process lives; a record whose pid is gone is stale
//! and ignored (the process may have been killed without cleaning up).

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub pid: u32,
    /// Panel base URL, e.g. `http://127.0.0.1:41234`.
    pub panel_url: String,
    /// The panel token; the file is 0600 because of it.
    pub token: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
}

impl InstanceRecord {
    /// The dashboard URL with the token in the fragment (never sent to a server in a Referer).
    pub fn dashboard_url(&self) -> String {
        format!("{}/#token={}", self.panel_url, self.token)
    }

    /// Reads the record of a live instance; `None` when there is none or it is stale.
    pub fn read_live(path: &Path) -> anyhow::Result<Option<InstanceRecord>> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        let Ok(record) = serde_json::from_str::<InstanceRecord>(&text) else {
            return Ok(None);
        };
        Ok(process_alive(record.pid).then_some(record))
    }

    /// Writes the record owner-readable only; returns a guard that removes it on drop.
    pub fn write(&self, path: &Path) -> anyhow::Result<RecordGuard> {
        lookit_config::write_private(path, &serde_json::to_string_pretty(self)?)
            .with_context(|| format!("write {}", path.display()))?;
        Ok(RecordGuard {
            path: path.to_path_buf(),
        })
    }
}

/// Removes the instance record when the instance ends.
pub struct RecordGuard {
    path: PathBuf,
}

impl Drop for RecordGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // Signal 0 checks existence without delivering anything; EPERM still means it exists.
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn record(pid: u32) -> InstanceRecord {
        InstanceRecord {
            pid,
            panel_url: "http://127.0.0.1:4000".into(),
            token: "t0ken".into(),
            started_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn live_record_is_read_back_private_and_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("instance.json");
        let guard = record(std::process::id()).write(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the token must not be readable by others");
        let read = InstanceRecord::read_live(&path).unwrap().unwrap();
        assert_eq!(read.dashboard_url(), "http://127.0.0.1:4000/#token=t0ken");
        drop(guard);
        assert!(!path.exists());
    }

    #[test]
    fn record_of_a_dead_process_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("instance.json");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let _guard = record(pid).write(&path).unwrap();
        assert_eq!(InstanceRecord::read_live(&path).unwrap(), None);
    }
}
