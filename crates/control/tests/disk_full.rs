//! The disk holding the app's log files fills up (issue #9): logging goes on without blocking or
//! panicking, the trouble is reported once (stderr in the app; a buffer here) and its end once,
//! and the file holds whole JSON lines again once there is room. Tested where the log writer is
//! built (`telemetry::log_file`), on a small ext4 disk the test mounts: root only; it says why it
//! skips otherwise.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lookit_config::LogConfig;
use lookit_control::telemetry::log_file;
use lookit_testkit::SmallDisk;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::layer::SubscriberExt;

/// What the writer reports, as the app's stderr would show it.
#[derive(Clone, Default)]
struct Reports(Arc<Mutex<Vec<u8>>>);

impl Write for Reports {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Reports {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The lines of the one log file in `logs`.
fn log_lines(logs: &Path) -> Vec<String> {
    let files: Vec<_> = std::fs::read_dir(logs)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    std::fs::read_to_string(&files[0])
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

/// Runs `logging` with the app's JSON log file in `logs` as the default subscriber, as the app
/// builds it; gives what its writer reported (also to `logging`) and the writer's guard (dropping
/// it waits for the writer thread to finish what it was given).
fn with_json_log(logs: &Path, logging: impl FnOnce(&Reports)) -> (Reports, WorkerGuard) {
    let reports = Reports::default();
    let (writer, guard) = log_file(&LogConfig::default(), logs, "lookit-local", reports.clone());
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().json().with_writer(writer));
    tracing::subscriber::with_default(subscriber, || logging(&reports));
    (reports, guard)
}

/// Waits (a writer thread writes the file) until `condition` holds.
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_full_disk_drops_log_lines_with_one_report_and_the_file_resumes_whole_once_there_is_room() {
    let Some(disk) = SmallDisk::mount() else {
        return;
    };
    let logs = disk.path().join("logs");
    let has_line = |text: &str| log_lines(&logs).iter().any(|line| line.contains(text));

    let (reports, _guard) = with_json_log(&logs, |reports| {
        tracing::info!("before the disk is full");
        wait_until("the first line is in the file", || {
            has_line("before the disk is full")
        });

        disk.fill();
        // Each call returns at once, whatever the disk does: the app goes on serving.
        for n in 0..1000 {
            tracing::info!(n, "while the disk is full");
        }
        wait_until("the full disk is reported", || {
            reports.text().contains("No space left on device")
        });

        disk.free();
        tracing::info!("once there is room again");
        wait_until("the line after is in the file", || {
            has_line("once there is room again")
        });
    });

    let reported = reports.text();
    assert_eq!(
        reported.matches("cannot write the log file").count(),
        1,
        "reported once, not per line: {reported}"
    );
    assert!(
        reported.contains(&logs.display().to_string()),
        "the report names the folder: {reported}"
    );
    assert_eq!(
        reported.matches("is written again").count(),
        1,
        "and says once when it ends: {reported}"
    );
    let lines = log_lines(&logs);
    let not_json: Vec<&String> = lines
        .iter()
        .filter(|line| serde_json::from_str::<serde_json::Value>(line).is_err())
        .collect();
    assert!(
        not_json.len() <= 1
            && not_json
                .iter()
                .all(|line| line.matches("{\"timestamp\"").count() == 1),
        "at most the line the full disk cut short, not run together with the next: {not_json:?}"
    );
    let last = lines.last().unwrap();
    assert!(
        last.contains("once there is room again")
            && serde_json::from_str::<serde_json::Value>(last).is_ok(),
        "the line after is whole JSON on a line of its own: {lines:?}"
    );
}

#[test]
fn a_log_folder_that_cannot_be_made_on_a_full_disk_leaves_logging_on_stderr_said_once() {
    let Some(disk) = SmallDisk::mount() else {
        return;
    };
    disk.fill();
    let logs = disk.path().join("logs");
    let (reports, guard) = with_json_log(&logs, |_| {
        for n in 0..100 {
            tracing::info!(n, "with no log file");
        }
    });
    drop(guard);
    let reported = reports.text();
    assert_eq!(
        reported.lines().collect::<Vec<_>>(),
        [format!(
            "lookit-local: create the log folder {}: No space left on device (os error 28); \
             logging to stderr only",
            logs.display()
        )],
    );
    assert!(!logs.exists());
}
