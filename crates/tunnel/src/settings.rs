//! Tunnel settings, built from plain values (the `[tunnel]` config section, CLI flags, the panel)
//! and validated while being built.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use crate::TunnelError;

/// Which service makes the API public.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    Ngrok,
    /// A bore server the lab runs itself (`bore server`, or [`crate::BoreServer`]).
    Bore,
}

impl ProviderKind {
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Ngrok => "ngrok",
            ProviderKind::Bore => "bore",
        }
    }
}

impl FromStr for ProviderKind {
    type Err = TunnelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ngrok" => Ok(ProviderKind::Ngrok),
            "bore" => Ok(ProviderKind::Bore),
            other => Err(TunnelError::InvalidSetting {
                key: "provider",
                reason: format!("`{other}` is not a provider; use `ngrok` or `bore`"),
            }),
        }
    }
}

/// The control address of a bore server: `host` or `host:port` (port 7835 when left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoreServerAddress {
    host: String,
    port: u16,
}

impl BoreServerAddress {
    /// The port `bore server` listens on for control connections.
    pub const DEFAULT_PORT: u16 = bore_cli::shared::CONTROL_PORT;

    /// The host as written in URLs (IPv6 literals in brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The host as given to a resolver (IPv6 literals without brackets).
    pub(crate) fn connect_host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl FromStr for BoreServerAddress {
    type Err = TunnelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: String| TunnelError::InvalidSetting {
            key: "server",
            reason,
        };
        // Parse as the authority of a URL so IPv6 literals (`[::1]:7835`) work too.
        let url = Url::parse(&format!("bore://{s}"))
            .map_err(|e| invalid(format!("`{s}` is not host[:port]: {e}")))?;
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| invalid(format!("`{s}` has no host")))?;
        if url.path() != "" && url.path() != "/"
            || url.query().is_some()
            || !url.username().is_empty()
        {
            return Err(invalid(format!("`{s}` is not host[:port]")));
        }
        Ok(BoreServerAddress {
            host: host.to_string(),
            port: url.port().unwrap_or(Self::DEFAULT_PORT),
        })
    }
}

impl fmt::Display for BoreServerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Which provider, and how to reach it.
#[derive(Debug, Clone)]
pub enum ProviderSettings {
    Ngrok {
        /// From the config or the OS keyring; [`crate::ngrok_authtoken_from_env`] otherwise.
        authtoken: Option<SecretString>,
        /// A reserved domain (`lab.ngrok.app`); a random one when `None`.
        domain: Option<String>,
        /// ngrok's agent ingress, `host:port`; `connect.ngrok-agent.com:443` when `None`.
        server: Option<String>,
    },
    Bore {
        server: BoreServerAddress,
        secret: Option<SecretString>,
    },
}

impl ProviderSettings {
    pub fn kind(&self) -> ProviderKind {
        match self {
            ProviderSettings::Ngrok { .. } => ProviderKind::Ngrok,
            ProviderSettings::Bore { .. } => ProviderKind::Bore,
        }
    }
}

/// What the inspector keeps of each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InspectorSettings {
    /// Keep request and response bodies (up to `body_cap_bytes`) and non-credential header
    /// values. Off by default: only sizes, and header values from a short harmless list.
    pub capture: bool,
    pub body_cap_bytes: usize,
    /// How many recent requests stay in the database.
    pub keep_requests: u32,
}

impl Default for InspectorSettings {
    fn default() -> Self {
        InspectorSettings {
            capture: false,
            body_cap_bytes: 64 * 1024,
            keep_requests: 1000,
        }
    }
}

/// How the guardian watches the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardianSettings {
    /// How often a request goes through the public URL to see that it still arrives.
    pub probe_interval: Duration,
    /// How long a probe may take before it counts as failed.
    pub probe_timeout: Duration,
    /// First wait before reconnecting; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for GuardianSettings {
    fn default() -> Self {
        GuardianSettings {
            probe_interval: Duration::from_secs(60),
            probe_timeout: Duration::from_secs(15),
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// Everything `start` needs (the inspector's settings are the [`crate::Tunnel`]'s own: its
/// record outlives sharing sessions).
#[derive(Debug, Clone)]
pub struct TunnelSettings {
    pub provider: ProviderSettings,
    pub guardian: GuardianSettings,
}

/// Where the Lookit API listens: the one and only thing the tunnel forwards to.
#[derive(Debug, Clone)]
pub struct ApiTarget {
    /// e.g. `https://127.0.0.1:8000`; only scheme, host and port are used.
    pub base_url: Url,
    /// PEM of the CA that signed the API's certificate (the local CA); `None` for plain HTTP.
    pub ca_cert_pem: Option<Vec<u8>>,
}

impl ApiTarget {
    pub fn new(base_url: Url, ca_cert_pem: Option<Vec<u8>>) -> Result<Self, TunnelError> {
        if !matches!(base_url.scheme(), "http" | "https") || base_url.host().is_none() {
            return Err(TunnelError::InvalidSetting {
                key: "api",
                reason: format!("`{base_url}` is not an http(s) address"),
            });
        }
        Ok(ApiTarget {
            base_url,
            ca_cert_pem,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bore_server_addresses_parse_with_the_default_port() {
        let a: BoreServerAddress = "tunnel.lab.example".parse().unwrap();
        assert_eq!(a.to_string(), "tunnel.lab.example:7835");
        let b: BoreServerAddress = "127.0.0.1:9000".parse().unwrap();
        assert_eq!((b.host(), b.port()), ("127.0.0.1", 9000));
        for bad in ["", "host:notaport", "host/path", "user@host"] {
            let err = bad.parse::<BoreServerAddress>().unwrap_err().to_string();
            assert!(err.contains("`server`"), "{bad}: {err}");
        }
    }

    #[test]
    fn unknown_providers_are_refused_with_the_choices() {
        let err = "localtunnel"
            .parse::<ProviderKind>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("use `ngrok` or `bore`"), "{err}");
    }
}
