//! Postgres going away under the API: requests get a prompt 503 that names the database (not a
//! 500, not a hang), the API recovers by itself once Postgres is back, and what it accepted
//! before is still there.
//!
//! This stops the SHARED test Postgres, so it must not run alongside other suites: the test
//! command runs `fault_*` binaries alone, after the others.

mod common;

use std::time::Duration;

use common::*;
use lookit_testkit::TestServer;
use serde_json::Value;

/// A request must be answered within this, database or not: a hang is a failure.
const ANSWER_WITHIN: Duration = Duration::from_secs(20);

async fn answered<T>(request: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(ANSWER_WITHIN, request)
        .await
        .expect("the API answers while the database is down instead of hanging")
}

#[tokio::test]
async fn while_postgres_is_down_the_api_answers_503_and_recovers_without_losing_data() {
    let app = spawn_app_with(AppOptions {
        acquire_timeout: Some(Duration::from_secs(2)),
        ..Default::default()
    })
    .await;
    let (_, session, lab) = app.researcher().await;
    let study = app.study(lab, "approved").await;
    let build = app.request_build(&session, study).await;
    assert_eq!(build.status(), 202);
    let build: Value = build.json().await.unwrap();

    let postgres = TestServer::Postgres.stop().await;

    let studies = answered(app.get(&session, "/api/researcher/studies/")).await;
    assert_eq!(studies.status(), 503, "an outage is not a bug of ours");
    let (_, detail) = error_detail(studies).await;
    assert!(
        detail.contains("database"),
        "the reason names the database: {detail}"
    );

    let another = answered(app.request_build(&session, study)).await;
    assert_eq!(
        another.status(),
        503,
        "a request that cannot be stored is refused, not accepted"
    );

    let (status, health) = answered(app.health()).await;
    assert_eq!(status, 503);
    assert!(
        health["database"]
            .as_str()
            .unwrap()
            .starts_with("unreachable"),
        "{health}"
    );

    postgres.start().await;

    // The same server, not restarted, serves again once its pool reconnects.
    eventually("the API serves again", || async {
        app.get(&session, "/api/researcher/studies/").await.status() == 200
    })
    .await;
    let builds: Value = app
        .get(
            &session,
            &format!("/api/researcher/studies/{study}/builds/"),
        )
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = builds
        .as_array()
        .unwrap_or_else(|| panic!("a list of builds: {builds}"))
        .iter()
        .filter_map(|b| b["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        [build["id"].as_str().unwrap()],
        "the build accepted before the outage is kept, the refused one was not stored"
    );
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM job_outbox")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(queued, 1, "its job still waits in the outbox");
}
