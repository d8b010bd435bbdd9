use std::path::{Path, PathBuf};

use crate::ConfigError;

/// The folders Lookit Local owns: one config file and a data tree (service data, logs,
/// certificates, build outputs, runtime state).
///
/// With `LOOKIT_LOCAL_HOME` both live in that one folder; otherwise the platform's config and
/// data folders are used (XDG on Linux).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    config_file: PathBuf,
    data_dir: PathBuf,
}

impl Home {
    /// Name of the variable that puts config and data in one folder.
    pub const ENV: &'static str = "LOOKIT_LOCAL_HOME";

    /// The home the current process should use.
    pub fn from_env() -> Result<Self, ConfigError> {
        match std::env::var_os(Self::ENV) {
            Some(dir) if !dir.is_empty() => Ok(Self::at(dir)),
            _ => {
                let dirs = directories::ProjectDirs::from("org", "lookit", "lookit-local")
                    .ok_or(ConfigError::NoHome)?;
                Ok(Self {
                    config_file: dirs.config_dir().join("config.toml"),
                    data_dir: dirs.data_dir().to_path_buf(),
                })
            }
        }
    }

    /// A home with config and data in one folder (what `LOOKIT_LOCAL_HOME` selects).
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Self {
            config_file: dir.join("config.toml"),
            data_dir: dir,
        }
    }

    pub fn config_file(&self) -> &Path {
        &self.config_file
    }
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    /// Our own log files (rotated JSON lines) and one log per managed service.
    pub fn logs_dir(&self) -> PathBuf {
        self.data_dir.join("logs")
    }
    /// Data of the services run natively (Postgres cluster, RabbitMQ node).
    pub fn services_dir(&self) -> PathBuf {
        self.data_dir.join("services")
    }
    /// The local certificate authority and the server certificate for localhost.
    pub fn certs_dir(&self) -> PathBuf {
        self.data_dir.join("certs")
    }
    /// Frameplayer checkouts, build outputs and their cache.
    pub fn builds_dir(&self) -> PathBuf {
        self.data_dir.join("builds")
    }
    /// Generated secrets, mode 0600.
    pub fn secrets_file(&self) -> PathBuf {
        self.data_dir.join("secrets.toml")
    }
    /// Describes the running instance (panel URL, token, pid), mode 0600; absent when none runs.
    pub fn instance_file(&self) -> PathBuf {
        self.data_dir.join("instance.json")
    }
    /// A short stable tag for this home, used to name containers and nodes so that two homes on
    /// one machine never share a service.
    pub fn tag(&self) -> String {
        // FNV-1a: stable across Rust versions, unlike `DefaultHasher`.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in self.data_dir.to_string_lossy().bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{:08x}", hash as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_folder_home_keeps_config_and_data_together() {
        let home = Home::at("/srv/lab");
        assert_eq!(home.config_file(), Path::new("/srv/lab/config.toml"));
        assert_eq!(home.logs_dir(), Path::new("/srv/lab/logs"));
    }

    #[test]
    fn tags_differ_between_homes_and_are_stable() {
        assert_eq!(Home::at("/a").tag(), Home::at("/a").tag());
        assert_ne!(Home::at("/a").tag(), Home::at("/b").tag());
    }
}
