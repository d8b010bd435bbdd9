//! HTTPS on localhost without a browser warning: a local certificate authority (made once, kept
//! under the data home) issues the server certificate for `localhost`, `127.0.0.1` and `::1`.
//! Certificates are renewed when they have less than [`RENEW_BEFORE_DAYS`] left. [`LocalCa::trust`]
//! installs the CA where the system (and NSS browsers) look, or says the exact commands.
//!
//! Files in the folder: `ca.pem`, `ca-key.pem`, `server.pem`, `server-key.pem` (keys 0600).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

pub const CA_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";
pub const SERVER_FILE: &str = "server.pem";
pub const SERVER_KEY_FILE: &str = "server-key.pem";
pub const RENEW_BEFORE_DAYS: i64 = 30;
const CA_DAYS: i64 = 3650;
const SERVER_DAYS: i64 = 365;
pub const SERVER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{path} is not a PEM file we can read")]
    Pem { path: PathBuf },
}

/// How often a running server checks whether its certificate is due for renewal.
pub const RENEWAL_CHECK: std::time::Duration = std::time::Duration::from_secs(12 * 60 * 60);

/// The rustls configuration the server runs with. Clones share it: a renewal through
/// [`TlsConfig::renew_if_due`] reaches every listener serving this configuration, for the
/// connections made after it.
#[derive(Clone)]
pub struct TlsConfig {
    pub(crate) live: axum_server::tls_rustls::RustlsConfig,
    /// The local CA's folder, where renewed certificates are kept.
    certs_dir: PathBuf,
}

impl TlsConfig {
    /// Renews the certificate when it has less than [`RENEW_BEFORE_DAYS`] left and switches the
    /// running server over to it. Returns whether it renewed.
    pub fn renew_if_due(&self) -> Result<bool, TlsError> {
        let dir = &self.certs_dir;
        let before = read(&dir.join(SERVER_FILE))?;
        let ca = LocalCa::load_or_create(dir)?;
        if before.as_deref() == Some(ca.server_pem.as_str()) {
            return Ok(false);
        }
        self.live.reload_from_config(ca.rustls_config()?);
        tracing::info!(folder = %dir.display(), "renewed the HTTPS certificate");
        Ok(true)
    }
}

/// The local CA and the server certificate it issued, as files.
pub struct LocalCa {
    dir: PathBuf,
    server_pem: String,
    server_key_pem: String,
    ca_pem: String,
}

fn read(path: &Path) -> Result<Option<String>, TlsError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TlsError::Io {
            path: path.into(),
            source,
        }),
    }
}

fn write(path: &Path, text: &str, private: bool) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| TlsError::Io {
        path: path.into(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if private {
        options.mode(0o600);
    }
    options
        .open(path)
        .map_err(io)?
        .write_all(text.as_bytes())
        .map_err(io)
}

/// True when the PEM certificate expires within the renewal margin (or cannot be read).
fn needs_renewal(pem: &str) -> bool {
    match CertificateParams::from_ca_cert_pem(pem) {
        Ok(params) => {
            params.not_after < OffsetDateTime::now_utc() + Duration::days(RENEW_BEFORE_DAYS)
        }
        Err(_) => true,
    }
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    // A little slack for clocks that run behind.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
}

impl LocalCa {
    /// Loads the CA and certificate from `dir`, creating or renewing what is missing or about to
    /// expire.
    pub fn load_or_create(dir: &Path) -> Result<LocalCa, TlsError> {
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
            path: dir.into(),
            source,
        })?;
        let (ca_path, ca_key_path) = (dir.join(CA_FILE), dir.join(CA_KEY_FILE));
        let (server_path, server_key_path) = (dir.join(SERVER_FILE), dir.join(SERVER_KEY_FILE));

        let existing_ca = match (read(&ca_path)?, read(&ca_key_path)?) {
            (Some(cert), Some(key)) if !needs_renewal(&cert) => Some((cert, key)),
            _ => None,
        };
        let ca_renewed = existing_ca.is_none();
        let (ca_pem, ca_key_pem) = match existing_ca {
            Some(pair) => pair,
            None => {
                let key = KeyPair::generate()?;
                let mut params = CertificateParams::new(Vec::<String>::new())?;
                let mut name = DistinguishedName::new();
                name.push(DnType::CommonName, "Lookit Local CA");
                name.push(DnType::OrganizationName, "Lookit Local");
                params.distinguished_name = name;
                params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
                params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
                validity(&mut params, CA_DAYS);
                let cert = params.self_signed(&key)?;
                write(&ca_key_path, &key.serialize_pem(), true)?;
                write(&ca_path, &cert.pem(), false)?;
                (cert.pem(), key.serialize_pem())
            }
        };

        let existing_server = match (read(&server_path)?, read(&server_key_path)?) {
            (Some(cert), Some(key)) if !ca_renewed && !needs_renewal(&cert) => Some((cert, key)),
            _ => None,
        };
        let (server_pem, server_key_pem) = match existing_server {
            Some(pair) => pair,
            None => {
                let ca_key = KeyPair::from_pem(&ca_key_pem)?;
                let ca_cert = CertificateParams::from_ca_cert_pem(&ca_pem)?.self_signed(&ca_key)?;
                let key = KeyPair::generate()?;
                let mut params = CertificateParams::new(
                    SERVER_NAMES
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>(),
                )?;
                params
                    .distinguished_name
                    .push(DnType::CommonName, "localhost");
                params.is_ca = IsCa::ExplicitNoCa;
                params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                params.use_authority_key_identifier_extension = true;
                validity(&mut params, SERVER_DAYS);
                let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
                write(&server_key_path, &key.serialize_pem(), true)?;
                write(&server_path, &cert.pem(), false)?;
                (cert.pem(), key.serialize_pem())
            }
        };
        Ok(LocalCa {
            dir: dir.into(),
            server_pem,
            server_key_pem,
            ca_pem,
        })
    }

    pub fn ca_certificate_path(&self) -> PathBuf {
        self.dir.join(CA_FILE)
    }

    /// The CA certificate (PEM), for clients that should trust this server.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The server configuration, renewed by the running server before it expires.
    pub fn server_config(&self) -> Result<TlsConfig, TlsError> {
        Ok(TlsConfig {
            live: axum_server::tls_rustls::RustlsConfig::from_config(self.rustls_config()?),
            certs_dir: self.dir.clone(),
        })
    }

    /// A rustls server configuration (aws-lc-rs) with the server certificate and the CA as chain.
    fn rustls_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let pem_error = |file: &str| TlsError::Pem {
            path: self.dir.join(file),
        };
        let chain = [self.server_pem.as_str(), self.ca_pem.as_str()]
            .into_iter()
            .map(|pem| CertificateDer::from_pem_slice(pem.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| pem_error(SERVER_FILE))?;
        let key = PrivateKeyDer::from_pem_slice(self.server_key_pem.as_bytes())
            .map_err(|_| pem_error(SERVER_KEY_FILE))?;
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Installs the CA into the system store (Debian's `update-ca-certificates`, when we may write
    /// there) and the user's NSS database (Chromium, Firefox; `certutil`, when present). Whatever
    /// could not be done comes back as the exact commands to run.
    pub fn trust(&self) -> TrustReport {
        let ca = self.ca_certificate_path();
        let mut report = TrustReport::default();
        let system_dir = Path::new("/usr/local/share/ca-certificates");
        let system_file = system_dir.join("lookit-local-ca.crt");
        let installed = std::fs::copy(&ca, &system_file).is_ok()
            && Command::new("update-ca-certificates")
                .status()
                .is_ok_and(|s| s.success());
        if installed {
            report
                .done
                .push(format!("system store: {}", system_file.display()));
        } else {
            report.commands.push(format!(
                "sudo cp {} {} && sudo update-ca-certificates",
                ca.display(),
                system_file.display()
            ));
        }
        let nss = std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".pki/nssdb"));
        let nss_command = |db: &Path| {
            vec![
                "-d".to_string(),
                format!("sql:{}", db.display()),
                "-A".into(),
                "-t".into(),
                "C,,".into(),
                "-n".into(),
                "Lookit Local CA".into(),
                "-i".into(),
                ca.display().to_string(),
            ]
        };
        if let Some(db) = nss {
            let args = nss_command(&db);
            let added = std::fs::create_dir_all(&db).is_ok()
                && Command::new("certutil")
                    .args(&args)
                    .status()
                    .is_ok_and(|s| s.success());
            if added {
                report
                    .done
                    .push(format!("browser store (NSS): {}", db.display()));
            } else {
                report.commands.push(format!(
                    "sudo apt-get install -y libnss3-tools && mkdir -p {} && certutil {}",
                    db.display(),
                    args.join(" ")
                        .replace("-t C,, -n Lookit Local CA", "-t C,, -n 'Lookit Local CA'")
                ));
            }
        }
        report
    }
}

/// What [`LocalCa::trust`] did, and what is left for the user.
#[derive(Debug, Default, serde::Serialize)]
pub struct TrustReport {
    pub done: Vec<String>,
    pub commands: Vec<String>,
}
