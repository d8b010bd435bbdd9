//! The configuration keys. Every section denies unknown keys and every key has a default, so an
//! empty or missing file is a complete configuration. Values are validated while parsing: a
//! [`crate::Config`] that exists is a valid one.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub log: LogConfig,
    pub stack: StackConfig,
    pub postgres: PostgresConfig,
    pub rabbitmq: RabbitConfig,
    pub docker: DockerConfig,
    pub api: ApiConfig,
    pub panel: PanelConfig,
    pub builds: BuildsConfig,
    pub email: EmailConfig,
    pub tunnel: TunnelConfig,
    pub desktop: DesktopConfig,
    pub storage: StorageConfig,
    pub watch: WatchConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `lookit_stack=debug,info`; `RUST_LOG` wins over it.
    pub level: LogFilter,
    /// How many daily JSON log files to keep.
    pub keep_files: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: LogFilter("info".into()),
            keep_files: 7,
        }
    }
}

/// Which kind of servers run Postgres and RabbitMQ.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Docker when an engine answers, otherwise the natively installed servers.
    #[default]
    Auto,
    /// Containers managed through the Docker engine.
    Docker,
    /// Private instances of the Postgres and RabbitMQ installed on this machine.
    Native,
    /// Servers someone else runs, reached through `postgres.url` and `rabbitmq.url`.
    External,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Auto => "auto",
            Backend::Docker => "docker",
            Backend::Native => "native",
            Backend::External => "external",
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StackConfig {
    pub backend: Backend,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// Preferred port on 127.0.0.1; a free one is chosen (and reported) when it is taken.
    pub port: Port,
    pub database: Identifier,
    pub user: Identifier,
    /// Image for the Docker backend.
    pub image: ImageName,
    /// Connection URL for the external backend (password may be given in it).
    pub url: Option<url::Url>,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            port: Port(5432),
            database: Identifier("lookit".into()),
            user: Identifier("lookit".into()),
            image: ImageName("postgres:17".into()),
            url: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RabbitConfig {
    pub port: Port,
    pub management_port: Port,
    pub user: Identifier,
    pub vhost: String,
    pub image: ImageName,
    /// AMQP URL for the external backend.
    pub url: Option<url::Url>,
    /// Management API URL for the external backend (queue depths); optional.
    pub management_url: Option<url::Url>,
}

impl Default for RabbitConfig {
    fn default() -> Self {
        Self {
            port: Port(5672),
            management_port: Port(15672),
            user: Identifier("lookit-admin".into()),
            vhost: "/".into(),
            image: ImageName("rabbitmq:3-management".into()),
            url: None,
            management_url: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DockerConfig {
    /// Engine address (`unix:///var/run/docker.sock`, `tcp://…`); empty means the platform
    /// default and `DOCKER_HOST`.
    pub host: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// HTTPS port of the embedded Lookit API on 127.0.0.1.
    pub port: Port,
    /// The public URL Pipe and the Lambda call, when it is fixed (otherwise the tunnel's).
    pub public_url: Option<url::Url>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            port: Port(8000),
            public_url: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PanelConfig {
    /// Port of the control panel on 127.0.0.1; 0 picks a free one.
    pub port: Port,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BuildsConfig {
    /// Image that honours Lookit's build contract (§2). When it is missing, the app builds it
    /// from `docker/ember-builder` (`lookit-local builder build`).
    pub builder_image: ImageName,
    /// The Node image the builder image is built on (its `NODE_IMAGE` build argument). Offline
    /// labs point it at a Node image already on this machine, as no registry can be reached.
    pub builder_base_image: ImageName,
    /// Longest a build may run before it fails as timed out.
    pub time_limit_secs: u64,
    /// Attempts of one job before it goes to its dead-letter queue.
    pub max_attempts: u32,
}

impl Default for BuildsConfig {
    fn default() -> Self {
        Self {
            builder_image: ImageName("lookit/ember-builder:latest".into()),
            builder_base_image: ImageName("node:14-bullseye".into()),
            time_limit_secs: 30 * 60,
            max_attempts: 5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmailConfig {
    /// `smtp://host:port` (lettre syntax). Without it, email is kept in the local outbox that
    /// the dashboard shows.
    pub smtp_url: Option<url::Url>,
    pub from_address: String,
}

impl Default for EmailConfig {
    fn default() -> Self {
        Self {
            smtp_url: None,
            from_address: "Lookit Local <lookit@localhost>".into(),
        }
    }
}

/// The desktop app's window and tray (`[desktop]`); the headless CLI ignores them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DesktopConfig {
    /// Closing the window hides it and keeps the stack running in the tray; off: closing the
    /// window quits (stopping the services the app started).
    pub close_to_tray: bool,
    /// Start with the window hidden in the tray (as `--minimized` does).
    pub start_minimized: bool,
    /// Start the app (minimised) when the user logs in. Unset: as chosen in the tray menu;
    /// `true`/`false`: the app makes it so at every start.
    pub start_at_login: Option<bool>,
    /// Let the web view render on the GPU (composited). Off: WebKit paints the panel on the
    /// CPU and the window never sets up GL, which keeps Mesa and LLVM out of the app's memory.
    pub gpu: bool,
}

impl Default for DesktopConfig {
    fn default() -> Self {
        Self {
            close_to_tray: true,
            start_minimized: false,
            start_at_login: None,
            gpu: false,
        }
    }
}

/// Which service makes the API reachable from the internet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelProviderChoice {
    /// ngrok's cloud; needs an authtoken (`NGROK_AUTHTOKEN` or `ngrok_authtoken` in secrets.toml).
    #[default]
    Ngrok,
    /// A bore tunnel server the lab runs itself (`tunnel.server`).
    Bore,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TunnelConfig {
    pub provider: TunnelProviderChoice,
    /// The bore server, `host[:port]` (port 7835 by default); required for `bore`.
    pub server: Option<String>,
    /// A reserved ngrok domain such as `lab.ngrok.app`; a random one otherwise.
    pub ngrok_domain: Option<String>,
    /// Keep request bodies (up to `body_cap_bytes`) and non-credential headers in the inspector.
    pub capture: bool,
    pub body_cap_bytes: usize,
    /// How many recent requests the inspector keeps.
    pub keep_requests: u32,
    /// How often the guardian sends a probe through the public URL.
    pub probe_interval_secs: u64,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        Self {
            provider: TunnelProviderChoice::Ngrok,
            server: None,
            ngrok_domain: None,
            capture: false,
            body_cap_bytes: 64 * 1024,
            keep_requests: 1000,
            probe_interval_secs: 60,
        }
    }
}

/// Where videos and built studies are kept. S3 credentials (`s3_access_key_id`,
/// `s3_secret_access_key`) and the Google service-account key path (`gcs_service_account_key`)
/// go in secrets.toml; without them the providers' usual environment variables are used.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Where Pipe's video objects are renamed (§4): `local` (a folder in the data home),
    /// `s3://bucket[/prefix]` or `gs://bucket[/prefix]`.
    pub videos: StorageUrl,
    /// Where built studies are uploaded and served from, at `experiments/<study_uuid>/` below
    /// it (Lookit's layout); same forms as `videos`.
    pub builds: StorageUrl,
    /// Region of the S3 buckets.
    pub region: String,
    /// An S3-compatible server (MinIO, moto, a lab's own) instead of AWS, e.g.
    /// `http://127.0.0.1:9000`.
    pub endpoint: Option<url::Url>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            videos: StorageUrl::Local,
            builds: StorageUrl::Local,
            region: "us-east-1".into(),
            endpoint: None,
        }
    }
}

/// One storage place: `local`, `s3://bucket[/prefix]` or `gs://bucket[/prefix]`. The prefix has
/// no leading or trailing `/` (empty: the bucket's root).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum StorageUrl {
    /// A folder under the data home.
    Local,
    S3 {
        bucket: String,
        prefix: String,
    },
    Gcs {
        bucket: String,
        prefix: String,
    },
}

impl TryFrom<String> for StorageUrl {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        const EXPECTED: &str = "expected `local`, `s3://bucket/prefix` or `gs://bucket/prefix`";
        if value == "local" {
            return Ok(StorageUrl::Local);
        }
        let url = url::Url::parse(&value)
            .map_err(|e| format!("{value:?} is not a storage place ({e}): {EXPECTED}"))?;
        let bucket = url.host_str().unwrap_or_default().to_string();
        // S3 and GCS bucket names: 3 to 63 (GCS with dots: 222) lowercase letters, digits, `.`,
        // `-` and (GCS) `_`.
        let bucket_ok = (3..=222).contains(&bucket.len())
            && bucket.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
            });
        let prefix = url.path().trim_matches('/').to_string();
        let make: fn(String, String) -> StorageUrl = match url.scheme() {
            "s3" => |bucket, prefix| StorageUrl::S3 { bucket, prefix },
            "gs" => |bucket, prefix| StorageUrl::Gcs { bucket, prefix },
            other => {
                return Err(format!(
                    "{value:?} has the unsupported scheme `{other}`: {EXPECTED}"
                ))
            }
        };
        if !bucket_ok {
            return Err(format!(
                "{value:?} does not name a bucket: 3 or more lowercase letters, digits, `.`, `-` or `_` after `{}://`",
                url.scheme()
            ));
        }
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err(format!(
                "{value:?} has parts a storage place cannot have (user, `?` or `#`): {EXPECTED}"
            ));
        }
        Ok(make(bucket, prefix))
    }
}

impl From<StorageUrl> for String {
    fn from(url: StorageUrl) -> String {
        url.to_string()
    }
}

impl fmt::Display for StorageUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (scheme, bucket, prefix) = match self {
            StorageUrl::Local => return f.write_str("local"),
            StorageUrl::S3 { bucket, prefix } => ("s3", bucket, prefix),
            StorageUrl::Gcs { bucket, prefix } => ("gs", bucket, prefix),
        };
        write!(f, "{scheme}://{bucket}")?;
        if !prefix.is_empty() {
            write!(f, "/{prefix}")?;
        }
        Ok(())
    }
}

/// The live development loop (issue 8): watched player and protocol folders and the config file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchConfig {
    /// Quiet time that ends a burst of changes; one burst gives one rebuild. 50 to 60000.
    #[serde(deserialize_with = "debounce_ms")]
    pub debounce_ms: u64,
    /// Scan folders every `poll_interval_secs` instead of asking the kernel (inotify) to report
    /// changes: for network folders (NFS, SMB, sshfs) where no change notices arrive.
    pub poll: bool,
    /// How often a polled folder is scanned, 1 to 3600 seconds.
    #[serde(deserialize_with = "poll_interval_secs")]
    pub poll_interval_secs: u64,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            debounce_ms: 300,
            poll: false,
            poll_interval_secs: 2,
        }
    }
}

fn bounded<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
    range: std::ops::RangeInclusive<u64>,
    unit: &str,
) -> Result<u64, D::Error> {
    let value = u64::deserialize(deserializer)?;
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(serde::de::Error::custom(format!(
            "{value} is out of range: expected {} to {} {unit}",
            range.start(),
            range.end()
        )))
    }
}

fn debounce_ms<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    bounded(deserializer, 50..=60_000, "milliseconds")
}

fn poll_interval_secs<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    bounded(deserializer, 1..=3600, "seconds")
}

/// A TCP port number; 0 means "any free port".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Port(pub u16);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PortVisitor;
        impl serde::de::Visitor<'_> for PortVisitor {
            type Value = Port;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port number from 0 to 65535")
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Port, E> {
                u16::try_from(value).map(Port).map_err(|_| {
                    E::custom(format!("{value} is not a port number: expected 0 to 65535"))
                })
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Port, E> {
                self.visit_i64(i64::try_from(value).unwrap_or(i64::MAX))
            }
        }
        deserializer.deserialize_i64(PortVisitor)
    }
}

/// A SQL / broker identifier we create ourselves: letters, digits, `_` and `-`, 1 to 63 chars.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Identifier(String);

impl Identifier {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Identifier {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        let ok = (1..=63).contains(&value.len())
            && value.starts_with(|c: char| c.is_ascii_alphabetic())
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if ok {
            Ok(Self(value))
        } else {
            Err(format!(
                "{value:?} is not a usable name: expected 1 to 63 letters, digits, `_` or `-`, starting with a letter"
            ))
        }
    }
}

impl From<Identifier> for String {
    fn from(id: Identifier) -> String {
        id.0
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A container image reference such as `postgres:17` or `registry.lab/pg@sha256:…`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct ImageName(String);

impl ImageName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ImageName {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            Err(format!(
                "{value:?} is not an image name: expected something like `postgres:17`"
            ))
        } else {
            Ok(Self(value))
        }
    }
}

impl From<ImageName> for String {
    fn from(image: ImageName) -> String {
        image.0
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A `tracing` filter directive, checked with the same parser that will use it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct LogFilter(String);

impl LogFilter {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for LogFilter {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        tracing_subscriber::EnvFilter::try_new(&value)
            .map(|_| Self(value.clone()))
            .map_err(|e| {
                format!("{value:?} is not a log filter ({e}): expected e.g. `info` or `lookit_stack=debug,info`")
            })
    }
}

impl From<LogFilter> for String {
    fn from(filter: LogFilter) -> String {
        filter.0
    }
}

#[cfg(test)]
mod storage_tests {
    use super::*;

    fn parse(value: &str) -> Result<StorageUrl, String> {
        StorageUrl::try_from(value.to_string())
    }

    #[test]
    fn storage_places_parse_and_print_back() {
        assert_eq!(parse("local").unwrap(), StorageUrl::Local);
        let s3 = parse("s3://lab-videos/pipe/raw/").unwrap();
        assert_eq!(
            s3,
            StorageUrl::S3 {
                bucket: "lab-videos".into(),
                prefix: "pipe/raw".into()
            }
        );
        assert_eq!(s3.to_string(), "s3://lab-videos/pipe/raw");
        assert_eq!(
            parse("gs://lab-builds").unwrap(),
            StorageUrl::Gcs {
                bucket: "lab-builds".into(),
                prefix: String::new()
            }
        );
        assert_eq!(StorageConfig::default().builds, StorageUrl::Local);
    }

    #[test]
    fn bad_storage_places_say_what_is_expected() {
        let err = parse("ftp://bucket/x").unwrap_err();
        assert!(err.contains("unsupported scheme `ftp`"), "{err}");
        assert!(err.contains("s3://bucket/prefix"), "{err}");
        let err = parse("/srv/videos").unwrap_err();
        assert!(err.contains("not a storage place"), "{err}");
        let err = parse("s3://Bad_Bucket/x").unwrap_err();
        assert!(err.contains("does not name a bucket"), "{err}");
        let err = parse("s3:///prefix-only").unwrap_err();
        assert!(err.contains("does not name a bucket"), "{err}");
    }

    #[test]
    fn a_bad_storage_place_in_the_file_names_the_key() {
        let err = crate::Config::from_sources(
            std::path::Path::new("config.toml"),
            Some("[storage]\nbuilds = \"gcs://lab/x\"\n"),
            Vec::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("storage.builds"), "{err}");
        assert!(err.contains("unsupported scheme `gcs`"), "{err}");
    }
}

#[cfg(test)]
mod watch_tests {
    use crate::Config;

    fn load(text: &str) -> Result<Config, crate::ConfigError> {
        Config::from_sources(
            std::path::Path::new("/lab/config.toml"),
            Some(text),
            Vec::new(),
        )
    }

    #[test]
    fn the_watch_section_has_defaults_and_names_a_value_out_of_range() {
        let config = load("").unwrap();
        assert_eq!(config.watch.debounce_ms, 300);
        assert!(!config.watch.poll);
        let config = load("[watch]\npoll = true\npoll_interval_secs = 5\n").unwrap();
        assert!(config.watch.poll);
        assert_eq!(config.watch.poll_interval_secs, 5);
        let err = load("[watch]\n\ndebounce_ms = 10\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 3")
                && err.contains("`watch.debounce_ms`")
                && err.contains("50 to 60000"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod desktop_tests {
    use crate::Config;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, crate::ConfigError> {
        Config::from_sources(
            std::path::Path::new("/lab/config.toml"),
            Some(text),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn the_desktop_section_defaults_to_close_to_tray_and_leaves_login_to_the_tray() {
        let desktop = load("", &[]).unwrap().desktop;
        assert!(desktop.close_to_tray);
        assert!(!desktop.gpu, "the panel renders on the CPU unless asked");
        assert!(!desktop.start_minimized);
        assert_eq!(desktop.start_at_login, None);
        let desktop = load(
            "[desktop]\nclose_to_tray = false\nstart_minimized = true\nstart_at_login = true\n",
            &[],
        )
        .unwrap()
        .desktop;
        assert!(!desktop.close_to_tray && desktop.start_minimized);
        assert_eq!(desktop.start_at_login, Some(true));
        // The environment overrides the file, as for every key.
        let desktop = load("", &[("LOOKIT_LOCAL__DESKTOP__CLOSE_TO_TRAY", "false")])
            .unwrap()
            .desktop;
        assert!(!desktop.close_to_tray);
    }

    #[test]
    fn a_bad_desktop_value_names_the_key_and_line() {
        let err = load("[desktop]\n\nclose_to_tray = \"sometimes\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 3") && err.contains("`desktop.close_to_tray`"),
            "{err}"
        );
        let err = load("[desktop]\nminimised = true\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("`desktop.minimised`"), "{err}");
    }
}
