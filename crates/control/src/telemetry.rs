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
