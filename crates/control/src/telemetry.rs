//! Logging: readable lines on stderr and JSON lines in a daily-rotated file under the data home.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::Context;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::{fmt, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter};

use lookit_config::LogConfig;

/// Keeps the file writer flushing; logging to the file stops when it is dropped, so hold it for
/// the life of the process.
pub struct LogGuard {
    _file: WorkerGuard,
}

/// Installs the global subscriber. The level comes from `RUST_LOG` when set, else `log.level`.
/// `file_name` distinguishes processes sharing a home (`lookit-local`, `desktop`, `worker`).
pub fn init(config: &LogConfig, logs_dir: &Path, file_name: &str) -> anyhow::Result<LogGuard> {
    std::fs::create_dir_all(logs_dir)
        .with_context(|| format!("create the log folder {}", logs_dir.display()))?;
    let appender = tracing_appender::rolling::Builder::new()
        .rotation(tracing_appender::rolling::Rotation::DAILY)
        .filename_prefix(file_name)
        .filename_suffix("jsonl")
        .max_log_files(config.keep_files.max(1))
        .build(logs_dir)
        .with_context(|| format!("open a log file in {}", logs_dir.display()))?;
    let (writer, guard) = tracing_appender::non_blocking(appender);
    let filter = match std::env::var("RUST_LOG") {
        Ok(value) if !value.is_empty() => EnvFilter::try_new(&value)
            .with_context(|| format!("RUST_LOG={value:?} is not a valid filter"))?,
        _ => EnvFilter::new(config.level.as_str()),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(
            fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .with(fmt::layer().json().with_writer(writer))
        .try_init()
        .context("install the logger")?;
    Ok(LogGuard { _file: guard })
}

/// How often CPU and memory are read. A reading of Docker containers takes about a second (the
/// engine samples twice), so this runs in its own loop, never per request.
pub(crate) const USAGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// The latest CPU and memory of each service and of this process (which runs the embedded API
/// and worker), for the overview cards.
#[derive(Default)]
pub(crate) struct ResourceTelemetry {
    own_process: lookit_stack::ProcessSampler,
    latest: std::sync::Mutex<std::collections::HashMap<String, lookit_stack::ResourceUsage>>,
}

/// Key of this process's reading; the embedded services show it.
const OWN_PROCESS: &str = "";

impl ResourceTelemetry {
    /// Takes a new reading of the stack's services (when it runs) and of this process.
    pub(crate) async fn sample(&self, stack: Option<&lookit_stack::Stack>) {
        let mut readings = match stack {
            Some(stack) => stack.resource_usage().await,
            None => Default::default(),
        };
        // Only this process, not its children: those are the native servers, measured above.
        let me = std::process::id();
        if let Some(own) = self.own_process.sample(&[(me, false)]).remove(&me) {
            readings.insert(OWN_PROCESS.to_string(), own);
        }
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = readings;
    }

    /// Puts the latest readings on the services' cards. The embedded API and worker share this
    /// process, so both show its figures.
    pub(crate) fn apply(&self, services: &mut [lookit_status::ServiceStatus]) {
        let latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        for service in services {
            let key = if service.backend == "embedded" {
                OWN_PROCESS
            } else {
                service.name.as_str()
            };
            let reading = latest
                .get(key)
                .filter(|_| service.state != lookit_status::ServiceState::Stopped);
            service.cpu_percent = reading.and_then(|r| r.cpu_percent);
            service.memory_bytes = reading.map(|r| r.memory_bytes);
        }
    }
}
