use std::path::PathBuf;

/// Why a configuration could not be loaded. Every variant says where the bad value came from
/// (file and line, or environment variable) and what was expected, so the user can fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}, line {line}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}, line {line}, key `{key}`: {message}")]
    InvalidKey {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
    #[error("environment variable {var} (key `{key}`): {message}")]
    InvalidEnv {
        var: String,
        key: String,
        message: String,
    },
    /// Not a text config at all: binary, another encoding than UTF-8, or far too large.
    #[error("the config file {path} is not a TOML text file: {reason}")]
    NotText { path: PathBuf, reason: String },
    #[error("cannot find a home folder: set LOOKIT_LOCAL_HOME to a folder Lookit Local may use")]
    NoHome,
}
