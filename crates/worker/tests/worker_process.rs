//! The worker as a separate process (the `lookit-worker` binary), killed in the middle of a build.

mod common;

use std::time::Duration;

use common::{connect, fixture, wait_until, Fixture, BUILDER_IMAGE};
use lookit_worker::Publisher;

fn spawn_worker(f: &Fixture) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_lookit-worker"))
        .env("LOOKIT_WORKER_DATABASE_URL", f.db.url())
        .env("LOOKIT_WORKER_AMQP_URL", f.vhost.amqp_url())
        .env("LOOKIT_WORKER_BUILDER_IMAGE", BUILDER_IMAGE)
        .env("LOOKIT_WORKER_BUILDS_DIR", f.builds_dir())
        .kill_on_drop(true)
        .spawn()
        .expect("start lookit-worker")
}

#[tokio::test]
async fn killing_the_worker_mid_build_leads_to_exactly_one_completed_build() {
    let f = fixture().await;
    let connection = connect(&f.vhost).await;
    let publisher = Publisher::open(&connection).await.unwrap();
    // The test builder waits for `release` to appear in its checkout: the build is surely
    // running when the worker is killed.
    let player = f.player("player", &[("WAIT_FOR_FILE", "release")]);
    let build_id = f.request_build(&publisher, &player).await;

    let mut first = spawn_worker(&f);
    let waiting = |attempt: i32| {
        let pool = f.pool.clone();
        move || {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, Option<String>>(
                    "SELECT player_sha FROM builds WHERE id = $1 AND attempts = $2 AND log LIKE '%waiting for%'",
                )
                .bind(build_id)
                .bind(attempt)
                .fetch_optional(&pool)
                .await
                .unwrap()
                .flatten()
            }
        }
    };
    wait_until(
        "the first attempt is building",
        Duration::from_secs(60),
        waiting(1),
    )
    .await;
    first.kill().await.unwrap();

    let mut second = spawn_worker(&f);
    let sha = wait_until(
        "the redelivered job builds again",
        Duration::from_secs(60),
        waiting(2),
    )
    .await;
    std::fs::write(
        f.builds_dir().join("checkouts").join(&sha).join("release"),
        "",
    )
    .unwrap();
    assert_eq!(f.finished_build(build_id).await, "succeeded");

    let succeeded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM builds WHERE study_id = $1 AND status = 'succeeded'",
    )
    .bind(f.study_id)
    .fetch_one(&f.pool)
    .await
    .unwrap();
    assert_eq!(succeeded, 1);
    let deployed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM study_logs WHERE study_id = $1 AND action = 'deployed'",
    )
    .bind(f.study_id)
    .fetch_one(&f.pool)
    .await
    .unwrap();
    assert_eq!(deployed, 1);
    let emails: i64 = sqlx::query_scalar("SELECT count(*) FROM emails WHERE build_id = $1")
        .bind(build_id)
        .fetch_one(&f.pool)
        .await
        .unwrap();
    assert_eq!(emails, 1);
    // The killed worker's container was replaced, not left running.
    let leftover = std::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("name=lookit-build-{build_id}"),
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&leftover.stdout).trim().is_empty(),
        "a builder container is left"
    );
    second.kill().await.unwrap();
}
