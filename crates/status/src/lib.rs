//! The status vocabulary shared by `lookit-local status --json`, the control panel API and the
//! UI. These types are a wire contract: fields are only ever added, never renamed.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Everything a user may want to know about one Lookit Local home, running or not.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// True when the end-to-end check passed: API → database → broker → worker.
    pub ready: bool,
    /// Whether an instance (`lookit-local up` or the desktop app) is running for this home.
    pub running: bool,
    pub services: Vec<ServiceStatus>,
    pub queues: Vec<QueueDepth>,
    pub api: Endpoint,
    pub panel: Endpoint,
    pub tunnel: TunnelStatus,
}

/// A URL that is set while the thing it points at is running.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    pub url: Option<String>,
}

/// One managed service (Postgres, RabbitMQ, Docker engine, API server, worker).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Stable name: `postgres`, `rabbitmq`, `docker`, `api`, `worker`.
    pub name: String,
    pub state: ServiceState,
    /// `docker`, `native`, `external` or `embedded`.
    pub backend: String,
    /// Where it listens, e.g. `127.0.0.1:5432`; `None` while stopped.
    pub address: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    /// How often it was restarted after a crash in this run.
    pub restarts: u32,
    pub cpu_percent: Option<f32>,
    pub memory_bytes: Option<u64>,
    /// What the user should know: the last error, a port that was changed, …
    pub message: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    Stopped,
    Starting,
    /// Accepting a real protocol handshake as the provisioned user.
    Ready,
    /// Crashed or unreachable; a restart with backoff may be under way.
    Failed,
    Stopping,
}

/// Depth of one RabbitMQ queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueDepth {
    pub name: String,
    pub ready: u64,
    pub unacked: u64,
    pub consumers: u64,
    /// Messages per second, when the management API reports rates.
    pub publish_rate: Option<f64>,
    pub deliver_rate: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TunnelStatus {
    pub state: TunnelState,
    pub provider: Option<String>,
    pub public_url: Option<String>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TunnelState {
    #[default]
    Off,
    Starting,
    Open,
    Reconnecting,
    Failed,
}

/// One prerequisite checked by the doctor (`lookit-local doctor`, the panel's Doctor page).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DoctorCheck {
    /// What was checked, e.g. `docker engine`, `port 5432 (postgres)`.
    pub name: String,
    pub outcome: CheckOutcome,
    /// What was found.
    pub detail: String,
    /// The exact command (or config change) that fixes it; `None` when nothing is wrong.
    pub fix: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckOutcome {
    Ok,
    /// Works, but not as configured or not for every backend.
    Warning,
    /// Something needed is missing.
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_json_has_the_documented_keys() {
        let json = serde_json::to_value(StatusReport::default()).unwrap();
        for key in ["ready", "services", "queues", "api", "panel", "tunnel"] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
        assert_eq!(json["tunnel"]["state"], "off");
        assert!(json["tunnel"]["public_url"].is_null());
        assert!(json["api"]["url"].is_null());
    }
}
