//! Logging: readable lines on stderr and JSON lines in a daily-rotated file under the data home.
//!
//! Invariant: the log file never stops the app. It is written on a thread of its own (lines
//! beyond a full queue are dropped, never waited for); when it cannot be written (a full disk)
//! that is said once on stderr, its lines are dropped until it can, and then that is said once
//! too; a log folder that cannot be opened at all leaves the app logging to stderr only.

use std::borrow::Cow;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};
use tracing_appender::rolling::RollingFileAppender;
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
    let (writer, guard) = log_file(config, logs_dir, file_name, std::io::stderr());
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

/// The writer of the JSON log file `<logs_dir>/<file_name>.<date>.jsonl` (daily, the last
/// `log.keep_files` kept), on a thread of its own. Trouble with the file is reported on
/// `problems` (stderr in the app) when it starts and when it ends, never per line.
pub fn log_file(
    config: &LogConfig,
    logs_dir: &Path,
    file_name: &str,
    mut problems: impl Write + Send + 'static,
) -> (NonBlocking, WorkerGuard) {
    let opened = std::fs::create_dir_all(logs_dir)
        .with_context(|| format!("create the log folder {}", logs_dir.display()))
        .and_then(|()| {
            tracing_appender::rolling::Builder::new()
                .rotation(tracing_appender::rolling::Rotation::DAILY)
                .filename_prefix(file_name)
                .filename_suffix("jsonl")
                .max_log_files(config.keep_files.max(1))
                .build(logs_dir)
                .with_context(|| format!("open a log file in {}", logs_dir.display()))
        });
    let file = match opened {
        Ok(file) => Some(file),
        Err(error) => {
            let _ = writeln!(problems, "lookit-local: {error:#}; logging to stderr only");
            None
        }
    };
    // The queue to the writer thread is allocated whole up front: tracing-appender's default
    // of 128,000 lines is 4 MiB held for the app's lifetime. A sixteenth still absorbs any
    // burst the writer lags behind (a build's log arrives line by line).
    tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_LINES_QUEUED)
        .finish(LogFile {
            file,
            dir: logs_dir.to_path_buf(),
            problems,
            lost: None,
            torn: false,
        })
}

/// Lines waiting for the log file's writer thread at most.
const LOG_LINES_QUEUED: usize = 8_000;

/// The log file as its writer thread sees it.
struct LogFile<P> {
    /// `None`: the folder could not be opened (already reported).
    file: Option<RollingFileAppender>,
    dir: PathBuf,
    problems: P,
    /// Lines dropped since writing started failing; `None` while it works.
    lost: Option<u64>,
    /// The file ends in part of a line (a write cut short by a full disk): the next line starts
    /// on a line of its own, so every line after it is whole JSON again.
    torn: bool,
}

impl<P: Write> Write for LogFile<P> {
    /// Takes one formatted line; never fails, so the writer thread goes on with the next.
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let Some(file) = self.file.as_mut() else {
            return Ok(line.len());
        };
        let separator = usize::from(self.torn);
        let bytes: Cow<[u8]> = if self.torn {
            Cow::Owned([&b"\n"[..], line].concat())
        } else {
            Cow::Borrowed(line)
        };
        match write_counting(file, &bytes) {
            Ok(()) => {
                self.torn = false;
                if let Some(lost) = self.lost.take() {
                    let _ = writeln!(
                        self.problems,
                        "lookit-local: the log file in {} is written again ({lost} lines were \
                         lost meanwhile; stderr had them)",
                        self.dir.display()
                    );
                }
            }
            Err((written, error)) => {
                if written > 0 {
                    self.torn = written > separator;
                }
                match &mut self.lost {
                    Some(lost) => *lost += 1,
                    None => {
                        self.lost = Some(1);
                        let _ = writeln!(
                            self.problems,
                            "lookit-local: cannot write the log file in {}: {error}; its lines \
                             are dropped until it can be written (stderr still has them)",
                            self.dir.display()
                        );
                    }
                }
            }
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if let Some(file) = self.file.as_mut() {
            // A failed flush is a failed write, reported there.
            let _ = file.flush();
        }
        Ok(())
    }
}

/// Writes all of `bytes`; on failure, how many were written before it.
fn write_counting(file: &mut impl Write, bytes: &[u8]) -> Result<(), (usize, std::io::Error)> {
    let mut written = 0;
    while written < bytes.len() {
        match file.write(&bytes[written..]) {
            Ok(0) => return Err((written, std::io::ErrorKind::WriteZero.into())),
            Ok(n) => written += n,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err((written, error)),
        }
    }
    Ok(())
}

/// How often CPU and memory are read. A reading of Docker containers takes about a second (the
/// engine samples twice), so this runs in its own loop, never per request. Each reading that
/// changes a figure is a new snapshot the window re-renders (15–30 ms of the web view's
/// work each): every 10 s keeps the cards current without being most of an idle window's work
/// (issue 7's idle CPU target).
pub(crate) const USAGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// A reading as the cards show it: CPU to a tenth of a percent, memory to the MiB. A snapshot
/// then changes, and the window re-renders, only when what it shows would.
fn as_shown(reading: &lookit_stack::ResourceUsage) -> (Option<f32>, u64) {
    const MIB: u64 = 1024 * 1024;
    (
        reading.cpu_percent.map(|cpu| (cpu * 10.0).round() / 10.0),
        (reading.memory_bytes + MIB / 2) / MIB * MIB,
    )
}

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
            let shown = reading.map(as_shown);
            service.cpu_percent = shown.and_then(|(cpu, _)| cpu);
            service.memory_bytes = shown.map(|(_, memory)| memory);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_change_only_when_a_card_would() {
        const MIB: u64 = 1024 * 1024;
        let reading = |cpu_percent, memory_bytes| lookit_stack::ResourceUsage {
            cpu_percent,
            memory_bytes,
        };
        // Two idle readings of RabbitMQ that differ below what the card shows.
        assert_eq!(
            as_shown(&reading(Some(1.000_157_7), 145_190_912)),
            as_shown(&reading(Some(0.999_821_6), 145_100_000)),
        );
        assert_eq!(
            as_shown(&reading(Some(0.800_126_2), 145_190_912)),
            (Some(0.8), 138 * MIB)
        );
        assert_ne!(
            as_shown(&reading(Some(0.8), 145_190_912)),
            as_shown(&reading(Some(1.2), 145_190_912)),
            "a change the card shows is kept"
        );
        assert_eq!(as_shown(&reading(None, 0)), (None, 0));
    }
}
