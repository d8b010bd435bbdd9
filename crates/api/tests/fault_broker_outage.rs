//! A job requested while the broker is down is delivered once it is back.
//!
//! This stops the shared test broker, so it must not run alongside other broker tests: the test
//! command runs `fault_*` binaries alone, after the others.

mod common;

use common::broker::{consumer, declare_queues, next_message};
use common::*;
use lookit_contracts::{BuildJob, Queue};
use serde_json::json;

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

#[tokio::test]
async fn a_build_requested_while_the_broker_is_down_is_delivered_when_it_returns() {
    let vhost = vhost().await;
    let _ = declare_queues(vhost.amqp_url())
        .await
        .close(200, "declared")
        .await;
    let app = spawn_app().await;
    let relay = RunningRelay::start(&app.pool, vhost.amqp_url());
    let (_, session, lab) = app.researcher().await;
    let study = app.study(lab, "approved").await;

    let guard = RestartBroker;
    lookit_testkit::test_services("stop-rabbitmq").await;
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

    lookit_testkit::test_services("start-rabbitmq").await;
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
    relay.stop().await;
}
