//! The Docker engine restarted in the middle of a build: the attempt fails with the reason and
//! the build goes back to the queue, the retry builds once the engine is back, and no builder
//! container or `running` state is left.
//!
//! Restarts the machine's SHARED dockerd: this binary (fault_*) runs alone, after the other
//! suites. dockerd is started again even when the test fails (see [`RunningDockerd`]).

mod common;

use std::time::Duration;

use common::{assert_no_builder_container, fixture, start_worker, wait_until};

fn docker_answers() -> bool {
    std::process::Command::new("docker")
        .arg("info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn dockerd_pid() -> Option<String> {
    let out = std::process::Command::new("pidof")
        .arg("dockerd")
        .output()
        .ok()?;
    let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!pid.is_empty()).then_some(pid)
}

/// Starts dockerd as `scripts/lib.sh` (start_dockerd) does and waits until `docker info` answers.
fn start_dockerd() {
    if docker_answers() {
        return;
    }
    let cache = std::env::var("LOOKIT_CACHE").unwrap_or_else(|_| "/var/cache/lookit-local".into());
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("nohup dockerd >>'{cache}/dockerd.log' 2>&1 &"))
        .status()
        .expect("start dockerd");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !docker_answers() {
        assert!(
            std::time::Instant::now() < deadline,
            "dockerd did not come back within 60 s"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Guarantees a running dockerd when the test ends, whether it passed or not.
struct RunningDockerd;

impl Drop for RunningDockerd {
    fn drop(&mut self) {
        start_dockerd();
    }
}

/// Stops dockerd (SIGTERM, as a service manager does) and waits until it is gone.
fn stop_dockerd() {
    let pid = dockerd_pid().expect("dockerd runs");
    std::process::Command::new("kill")
        .arg(&pid)
        .status()
        .expect("kill dockerd");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while dockerd_pid().is_some() {
        assert!(std::time::Instant::now() < deadline, "dockerd did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn restarting_dockerd_mid_build_fails_the_attempt_with_the_reason_and_the_retry_builds() {
    if unsafe_to_restart_docker() {
        return;
    }
    let f = fixture().await;
    let mut settings = f.settings();
    // Retries far enough apart that the engine is back before they run out.
    settings.max_attempts = 8;
    settings.retry_backoff_base = Duration::from_millis(500);
    let worker = start_worker(&f.pool, settings);
    let (_connection, publisher) = f.publisher().await;
    // The test builder waits for `release` in its checkout: the build surely runs at the restart.
    let player = f.player("player", &[("WAIT_FOR_FILE", "release")]);
    let build_id = f.request_build(&publisher, &player).await;
    f.builder_waiting(
        "the first attempt is building",
        Duration::from_secs(120),
        build_id,
        1..=1,
    )
    .await;

    let guard = RunningDockerd;
    tokio::task::spawn_blocking(stop_dockerd).await.unwrap();
    let (status, error): (String, Option<String>) = wait_until(
        "the attempt fails with a reason",
        Duration::from_secs(60),
        || async {
            sqlx::query_as::<_, (String, Option<String>)>(
                "SELECT status, error FROM builds WHERE id = $1 AND error IS NOT NULL",
            )
            .bind(build_id)
            .fetch_optional(&f.pool)
            .await
            .unwrap()
        },
    )
    .await;
    assert_eq!(
        status, "queued",
        "an engine outage is worth another attempt, not a failed build: {error:?}"
    );
    tokio::task::spawn_blocking(start_dockerd).await.unwrap();
    drop(guard);

    let sha = f
        .builder_waiting(
            "a retry builds once the engine is back",
            Duration::from_secs(120),
            build_id,
            2..=i32::MAX,
        )
        .await;
    f.release_builder(&sha);
    assert_eq!(f.finished_build(build_id).await, "succeeded");
    let running: i64 = sqlx::query_scalar("SELECT count(*) FROM builds WHERE status = 'running'")
        .fetch_one(&f.pool)
        .await
        .unwrap();
    assert_eq!(running, 0, "no build is left running");
    assert_no_builder_container(build_id).await;
    worker.stop().await;
}

/// dockerd can only be restarted by root on this machine; elsewhere the test says why it skips.
fn unsafe_to_restart_docker() -> bool {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root || dockerd_pid().is_none() {
        eprintln!("SKIPPED: restarting dockerd needs root and a dockerd started by scripts/test");
        return true;
    }
    false
}
