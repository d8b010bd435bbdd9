//! A job requested while the broker is down is delivered once it is back.
//!
//! This stops the shared test broker, so it must not run alongside other broker tests: run this
//! binary on its own (`cargo test -p lookit-api --test broker_outage`, or a nextest test group
//! with max-threads = 1).

mod common;

use common::broker::{consumer, declare_queues, next_message};
use common::*;
use lookit_contracts::{BuildJob, Queue};
use serde_json::json;

/// Runs a `scripts/test-services` verb with its output discarded: the broker it starts keeps
/// inherited descriptors open, which would hold the test runner's output pipe open.
async fn test_services(verb: &str) {
    let script = std::env::var("LOOKIT_TEST_SERVICES")
        .expect("LOOKIT_TEST_SERVICES is set by scripts/test-services");
    let status = tokio::process::Command::new(&script)
        .arg(verb)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .unwrap_or_else(|e| panic!("run {script} {verb}: {e}"));
    assert!(status.success(), "{script} {verb} failed: {status}");
}

/// Starts the broker again even when the test fails half-way.
struct RestartBroker;

impl Drop for RestartBroker {
    fn drop(&mut self) {
        let _ = std::thread::spawn(|| {
            if let Ok(runtime) = tokio::runtime::Runtime::new() {
                runtime.block_on(test_services("start-rabbitmq"));
            }
        })
        .join();
    }
}

#[tokio::test]
async fn a_build_requested_while_the_broker_is_down_is_delivered_when_it_returns() {
    let vhost = vhost().await;
    let _ = declare_queues(vhost.amqp_url())
        .await
        .close(200, "declared")
        .await;
    let app = spawn_app().await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(lookit_api::outbox::OutboxRelay::run(
        app.pool.clone(),
        vhost.amqp_url().to_string().into(),
        async {
            let _ = stopped.await;
        },
    ));
    let (_, session, lab) = app.researcher().await;
    let study = app.study(lab, "approved").await;

    let guard = RestartBroker;
    test_services("stop-rabbitmq").await;
    let response = app
        .post(
            &session,
            &format!("/api/researcher/studies/{study}/builds/"),
            json!({}),
        )
        .await;
    assert_eq!(
        response.status(),
        202,
        "the request succeeds without the broker"
    );
    let build: serde_json::Value = response.json().await.unwrap();
    // The job waits in the outbox.
    assert_eq!(published_jobs(&app.pool).await, 0);

    test_services("start-rabbitmq").await;
    drop(guard);
    let broker = lapin::Connection::connect(vhost.amqp_url(), Default::default())
        .await
        .unwrap();
    let mut builds = consumer(&broker, Queue::Builds).await;
    let (_, _, _, body) = next_message(&mut builds).await;
    let job: BuildJob = serde_json::from_value(body).unwrap();
    assert_eq!(job.build_id.to_string(), build["id"].as_str().unwrap());
    eventually("the job marked published", || async {
        published_jobs(&app.pool).await == 1
    })
    .await;
    let _ = stop.send(());
    relay.await.unwrap().unwrap();
}
