//! RabbitMQ restarted while researchers keep requesting builds: every request is accepted (the
//! jobs wait in the outbox), and every accepted job reaches the `builds` queue once the broker is
//! back.
//!
//! This restarts the SHARED test broker, so it must not run alongside other suites: the test
//! command runs `fault_*` binaries alone, after the others.

mod common;

use std::collections::HashSet;

use common::broker::QueueReader;
use common::*;
use lookit_contracts::Queue;
use lookit_testkit::TestServer;
use serde_json::Value;
use uuid::Uuid;

/// Requests a build of each study; every request must be accepted. Returns the build ids.
async fn request_builds(app: &TestApp, session: &Session, studies: &[Uuid]) -> Vec<String> {
    let mut ids = Vec::new();
    for study in studies {
        let response = app.request_build(session, *study).await;
        assert_eq!(response.status(), 202, "a build request is accepted");
        let build: Value = response.json().await.unwrap();
        ids.push(build["id"].as_str().unwrap().to_string());
    }
    ids
}

#[tokio::test]
async fn restarting_rabbitmq_under_load_keeps_the_api_answering_and_loses_no_job() {
    let (app, vhost, relay) = spawn_app_with_broker().await;
    let (_, session, lab) = app.researcher().await;
    // One build may be queued per study at a time: one study per request.
    let mut studies = Vec::new();
    for _ in 0..50 {
        studies.push(app.study(lab, "approved").await);
    }

    let mut accepted = request_builds(&app, &session, &studies[..10]).await;
    // Health keeps its broker connection between checks: the restart must still show.
    assert_eq!(app.health().await.1["broker"], "ok");

    let broker = TestServer::RabbitMq.stop().await;
    accepted.extend(request_builds(&app, &session, &studies[10..30]).await);
    let (status, health) = app.health().await;
    assert_eq!(status, 503, "health names the missing broker");
    assert!(
        health["broker"]
            .as_str()
            .unwrap()
            .starts_with("unreachable"),
        "{health}"
    );
    // The broker comes back while requests keep arriving.
    let (_, during_start) = tokio::join!(
        broker.start(),
        request_builds(&app, &session, &studies[30..40]),
    );
    accepted.extend(during_start);
    accepted.extend(request_builds(&app, &session, &studies[40..]).await);
    // The next check logs in again: the panel's ready light comes back without a restart.
    let (status, health) = app.health().await;
    assert_eq!(
        (status, &health["broker"]),
        (200, &Value::from("ok")),
        "{health}"
    );

    let mut builds = QueueReader::open(vhost.amqp_url(), Queue::Builds).await;
    let accepted: HashSet<String> = accepted.into_iter().collect();
    let mut delivered = HashSet::new();
    // Delivery is at least once: a job may arrive twice, but none may be missing.
    while delivered.len() < accepted.len() {
        delivered.insert(builds.next_build_job().await.build_id.to_string());
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
