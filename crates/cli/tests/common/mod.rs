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
