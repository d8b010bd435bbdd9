//! RabbitMQ restarted while researchers keep requesting builds: every request is accepted (the
//! jobs wait in the outbox), and every accepted job reaches the `builds` queue once the broker is
//! back.
//!
//! This restarts the SHARED test broker, so it must not run alongside other suites: the test
//! command runs `fault_*` binaries alone, after the others.

mod common;

use std::collections::HashSet;

use common::broker::{consumer, declare_queues, next_message};
use common::*;
use lookit_contracts::{BuildJob, Queue};
use serde_json::{json, Value};
use uuid::Uuid;

/// Starts the broker again even when the test fails half-way.
struct RestartBroker;

impl Drop for RestartBroker {
    fn drop(&mut self) {
        let _ = std::thread::spawn(|| {
            if let Ok(runtime) = tokio::runtime::Runtime::new() {
                runtime.block_on(lookit_testkit::test_services("start-rabbitmq"));
            }
        })
        .join();
    }
}

/// Requests a build of each study; every request must be accepted. Returns the build ids.
async fn request_builds(app: &TestApp, session: &Session, studies: &[Uuid]) -> Vec<String> {
    let mut ids = Vec::new();
    for study in studies {
        let response = app
            .post(
                session,
                &format!("/api/researcher/studies/{study}/builds/"),
                json!({}),
            )
            .await;
        assert_eq!(response.status(), 202, "a build request is accepted");
        let build: Value = response.json().await.unwrap();
        ids.push(build["id"].as_str().unwrap().to_string());
    }
    ids
}

#[tokio::test]
async fn restarting_rabbitmq_under_load_keeps_the_api_answering_and_loses_no_job() {
    let vhost = vhost().await;
    let _ = declare_queues(vhost.amqp_url())
        .await
        .close(200, "declared")
        .await;
    let app = spawn_app_with(AppOptions {
        amqp_url: Some(vhost.amqp_url().to_string()),
        ..Default::default()
    })
    .await;
    let relay = RunningRelay::start(&app.pool, vhost.amqp_url());
    let (_, session, lab) = app.researcher().await;
    // One build may be queued per study at a time: one study per request.
    let mut studies = Vec::new();
    for _ in 0..50 {
        studies.push(app.study(lab, "approved").await);
    }

    let mut accepted = request_builds(&app, &session, &studies[..10]).await;

    let guard = RestartBroker;
    lookit_testkit::test_services("stop-rabbitmq").await;
    accepted.extend(request_builds(&app, &session, &studies[10..30]).await);
    let health = app
        .client
        .get(app.url("/api/health/"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 503, "health names the missing broker");
    let health: Value = health.json().await.unwrap();
    assert!(
        health["broker"]
            .as_str()
            .unwrap()
            .starts_with("unreachable"),
        "{health}"
    );
    // The broker comes back while requests keep arriving.
    let (_, during_start) = tokio::join!(
        lookit_testkit::test_services("start-rabbitmq"),
        request_builds(&app, &session, &studies[30..40]),
    );
    drop(guard);
    accepted.extend(during_start);
    accepted.extend(request_builds(&app, &session, &studies[40..]).await);

    let broker = lapin::Connection::connect(vhost.amqp_url(), Default::default())
        .await
        .unwrap();
    let mut builds = consumer(&broker, Queue::Builds).await;
    let accepted: HashSet<String> = accepted.into_iter().collect();
    let mut delivered = HashSet::new();
    // Delivery is at least once: a job may arrive twice, but none may be missing.
    while delivered.len() < accepted.len() {
        let (_, _, _, body) = next_message(&mut builds).await;
        let job: BuildJob = serde_json::from_value(body).unwrap();
        delivered.insert(job.build_id.to_string());
    }
    assert_eq!(
        delivered, accepted,
        "every accepted build's job was delivered"
    );
    eventually("every job marked published", || async {
        published_jobs(&app.pool).await == 50
    })
    .await;
    relay.stop().await;
}
