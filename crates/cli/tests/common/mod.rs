//! Running the `lookit-local` binary as users do, with a fresh home and ports of its own.
#![allow(dead_code)] // each test binary uses its own part of this module

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use assert_cmd::cargo::CommandCargoExt;

pub fn lookit(home: &Path) -> Command {
    let mut command = Command::cargo_bin("lookit-local").expect("binary built");
    command
        .env("LOOKIT_LOCAL_HOME", home)
        .env_remove("RUST_LOG")
        // Ports of their own, so this test never meets another instance or the test services.
        .env("LOOKIT_LOCAL__STACK__BACKEND", "native")
        .env("LOOKIT_LOCAL__POSTGRES__PORT", "0")
        .env("LOOKIT_LOCAL__RABBITMQ__PORT", "0")
        .env("LOOKIT_LOCAL__RABBITMQ__MANAGEMENT_PORT", "0")
        .env("LOOKIT_LOCAL__API__PORT", "0");
    command
}

pub fn output(command: &mut Command) -> (bool, String, String) {
    let out = command.output().expect("run lookit-local");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running `lookit-local up`, killed if the test fails half-way so no server outlives the
/// test. Keeps everything it printed.
pub struct Running {
    pub child: Child,
    /// Its standard output so far.
    pub stdout: Arc<Mutex<String>>,
    /// Its standard error so far.
    pub stderr: Arc<Mutex<String>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// Waits for a line starting with `wanted` on the instance's stdout (read by a thread, so a
/// silent instance ends the wait at the deadline instead of hanging the test).
fn wait_for_line(lines: &std::sync::mpsc::Receiver<String>, wanted: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.starts_with(wanted) => return line,
            Ok(_) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("no `{wanted}` line within 240 s")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                panic!("the instance exited before printing `{wanted}`")
            }
        }
    }
}

/// Starts `lookit-local up --headless` for `home` and returns once it printed `Stack ready`.
pub fn up_until_ready(home: &Path, extra_env: &[(&str, &str)]) -> Running {
    let mut command = lookit(home);
    for (name, value) in extra_env {
        command.env(name, value);
    }
    let mut child = command
        .args(["up", "--headless"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let running = Running {
        child,
        stdout: Arc::default(),
        stderr: Arc::default(),
    };
    let (sender, lines) = std::sync::mpsc::channel();
    let printed = running.stdout.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let mut all = printed.lock().unwrap();
            all.push_str(&line);
            all.push('\n');
            drop(all);
            // The test may have stopped listening; keep draining so the instance never blocks.
            let _ = sender.send(line);
        }
    });
    let errors = running.stderr.clone();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buffer) {
            if n == 0 {
                break;
            }
            errors
                .lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    });
    let dashboard = wait_for_line(&lines, "Dashboard: http://127.0.0.1:");
    assert!(dashboard.contains("/#token="), "{dashboard}");
    wait_for_line(&lines, "Stack ready");
    running
}

/// Settings for the test builder image, which honours Lookit's build contract
/// (`scripts/build-test-images` makes it).
pub const TEST_BUILDER: [(&str, &str); 1] = [(
    "LOOKIT_LOCAL__BUILDS__BUILDER_IMAGE",
    "lookit-test/builder:latest",
)];

/// The demo study, built by a running instance.
pub struct BuiltDemo {
    pub study: String,
    /// The player folder the study was built from (linked to it: kept while the instance runs).
    pub player: tempfile::TempDir,
    /// What `demo seed --json` printed, standard output and error.
    pub seed_output: String,
    /// What `build --wait` printed on standard output: the build log as it grew, then the end.
    pub build_log: String,
    /// What `build --wait` printed on standard error.
    pub build_stderr: String,
}

/// Seeds the demo data in the running instance of `home` and builds its study from a fresh
/// player folder with `build --wait` (with [`TEST_BUILDER`]), as a user does; the test fails
/// when either command fails.
pub fn build_the_demo_study(home: &Path) -> BuiltDemo {
    let (ok, json, stderr) = output(
        lookit(home)
            .envs(TEST_BUILDER)
            .args(["demo", "seed", "--json"]),
    );
    assert!(ok, "{stderr}");
    let ids: serde_json::Value = serde_json::from_str(&json).unwrap();
    let study = ids["study"]
        .as_str()
        .expect("demo seed prints the study id")
        .to_string();
    let player = tempfile::tempdir().unwrap();
    std::fs::write(
        player.path().join("package.json"),
        "{\"name\": \"frameplayer\"}",
    )
    .unwrap();
    let (ok, build_log, build_stderr) = output(lookit(home).envs(TEST_BUILDER).args([
        "build",
        &study,
        "--player",
        player.path().to_str().unwrap(),
        "--wait",
    ]));
    assert!(ok, "build failed:\n{build_log}\n{build_stderr}");
    BuiltDemo {
        study,
        player,
        seed_output: json + &stderr,
        build_log,
        build_stderr,
    }
}
