use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::distributions::{Alphanumeric, DistString};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::load::{read_text_file, TextFileError};

/// Why the secrets file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot read the secrets file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the secrets file {path} is damaged ({message}); move it away to generate new secrets (existing databases will then need `lookit-local down --purge`)")]
    Damaged { path: PathBuf, message: String },
    #[error("cannot write the secrets file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Credentials Lookit Local generates for the services it provisions. Generated on first use,
/// kept in a 0600 file in the data home, never logged (`Debug` shows `[REDACTED]`).
#[derive(Debug, Clone)]
pub struct Secrets {
    pub postgres_password: SecretString,
    pub rabbitmq_password: SecretString,
    pub session_key: SecretString,
    pub pipe_webhook_key: SecretString,
    pub lambda_secret: SecretString,
    /// The user's ngrok authtoken, when they put it in the file (never generated).
    pub ngrok_authtoken: Option<SecretString>,
    /// The shared secret of the lab's bore tunnel server, when it has one (never generated).
    pub bore_secret: Option<SecretString>,
    /// S3 credentials for `storage.videos`/`storage.builds` in S3 (never generated); without
    /// them the AWS environment variables or instance credentials are used.
    pub s3_access_key_id: Option<SecretString>,
    pub s3_secret_access_key: Option<SecretString>,
    /// Path of the Google Cloud service-account key file for storage in GCS (never generated);
    /// without it `GOOGLE_APPLICATION_CREDENTIALS` is used.
    pub gcs_service_account_key: Option<PathBuf>,
}

/// On-disk form. Missing fields are generated, so older files gain new secrets on upgrade.
#[derive(Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct SecretsFile {
    postgres_password: Option<String>,
    rabbitmq_password: Option<String>,
    session_key: Option<String>,
    pipe_webhook_key: Option<String>,
    lambda_secret: Option<String>,
    ngrok_authtoken: Option<String>,
    bore_secret: Option<String>,
    s3_access_key_id: Option<String>,
    s3_secret_access_key: Option<String>,
    gcs_service_account_key: Option<PathBuf>,
}

/// A random token of `len` letters and digits (~5.95 bits each), from the OS generator.
pub fn random_token(len: usize) -> String {
    Alphanumeric.sample_string(&mut rand::rngs::OsRng, len)
}

impl Secrets {
    /// Reads the secrets at `path`, generating and saving any that are missing.
    pub fn load_or_generate(path: &Path) -> Result<Secrets, SecretsError> {
        let mut file: SecretsFile = match read_text_file(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| SecretsError::Damaged {
                path: path.to_path_buf(),
                message: e.message().to_string(),
            })?,
            Err(TextFileError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                SecretsFile::default()
            }
            Err(TextFileError::Io(source)) => {
                return Err(SecretsError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
            Err(TextFileError::NotText(message)) => {
                return Err(SecretsError::Damaged {
                    path: path.to_path_buf(),
                    message,
                })
            }
        };
        let mut changed = false;
        let mut fill = |slot: &mut Option<String>| {
            if slot.as_deref().is_none_or(str::is_empty) {
                *slot = Some(random_token(32));
                changed = true;
            }
            SecretString::from(slot.clone().expect("filled above"))
        };
        let given = |slot: &Option<String>| {
            slot.as_deref()
                .filter(|value| !value.is_empty())
                .map(|value| SecretString::from(value.to_string()))
        };
        let secrets = Secrets {
            postgres_password: fill(&mut file.postgres_password),
            rabbitmq_password: fill(&mut file.rabbitmq_password),
            session_key: fill(&mut file.session_key),
            pipe_webhook_key: fill(&mut file.pipe_webhook_key),
            lambda_secret: fill(&mut file.lambda_secret),
            ngrok_authtoken: given(&file.ngrok_authtoken),
            bore_secret: given(&file.bore_secret),
            s3_access_key_id: given(&file.s3_access_key_id),
            s3_secret_access_key: given(&file.s3_secret_access_key),
            gcs_service_account_key: file
                .gcs_service_account_key
                .clone()
                .filter(|path| !path.as_os_str().is_empty()),
        };
        if changed {
            write_private(
                path,
                &toml::to_string(&file).expect("plain strings serialize"),
            )
            .map_err(|source| SecretsError::Write {
                path: path.to_path_buf(),
                source,
            })?;
        }
        Ok(secrets)
    }

    /// Every generated secret value, for checks that no log or output ever contains one.
    pub fn all_values(&self) -> [&str; 5] {
        [
            self.postgres_password.expose_secret(),
            self.rabbitmq_password.expose_secret(),
            self.session_key.expose_secret(),
            self.pipe_webhook_key.expose_secret(),
            self.lambda_secret.expose_secret(),
        ]
    }
}

/// Writes `contents` to `path` readable by the owner only, atomically (temp file + rename), so
/// a crash never leaves a half-written or world-readable file; a failed write (a full disk)
/// removes its temp file and leaves the old file as it was. For secrets and anything that
/// holds a token.
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // `mode` only applies on creation; a leftover temp file must not keep wider permissions.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_generated_once_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.toml");
        let first = Secrets::load_or_generate(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let second = Secrets::load_or_generate(&path).unwrap();
        assert_eq!(first.all_values(), second.all_values());
        assert!(first.all_values().iter().all(|v| v.len() == 32));
        assert_ne!(first.all_values()[0], first.all_values()[1]);
    }

    #[test]
    fn debug_output_hides_every_secret() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = Secrets::load_or_generate(&dir.path().join("s.toml")).unwrap();
        let shown = format!("{secrets:?}");
        for value in secrets.all_values() {
            assert!(!shown.contains(value));
        }
    }

    #[test]
    fn storage_credentials_are_read_and_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(
            &path,
            "s3_access_key_id = \"AKIDEXAMPLE\"\ns3_secret_access_key = \"wJalrXUtnFEMI\"\ngcs_service_account_key = \"/keys/lab.json\"\n",
        )
        .unwrap();
        let secrets = Secrets::load_or_generate(&path).unwrap();
        assert_eq!(
            secrets
                .s3_secret_access_key
                .as_ref()
                .map(|s| s.expose_secret()),
            Some("wJalrXUtnFEMI")
        );
        assert_eq!(
            secrets.gcs_service_account_key.as_deref(),
            Some(Path::new("/keys/lab.json"))
        );
        let shown = format!("{secrets:?}");
        assert!(!shown.contains("wJalrXUtnFEMI") && !shown.contains("AKIDEXAMPLE"));
        // Kept as written when the missing generated secrets are added.
        let again = std::fs::read_to_string(&path).unwrap();
        assert!(
            again.contains("s3_secret_access_key = \"wJalrXUtnFEMI\""),
            "{again}"
        );
    }

    #[test]
    fn damaged_file_is_a_clear_error_not_a_silent_regeneration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, "postgres_password = [").unwrap();
        let err = Secrets::load_or_generate(&path).unwrap_err().to_string();
        assert!(err.contains("damaged") && err.contains("s.toml"), "{err}");
    }
}
