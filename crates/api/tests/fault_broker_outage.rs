//! A job requested while the broker is down is delivered once it is back.
//!
//! This stops the shared test broker, so it must not run alongside other broker tests: the test
//! command runs `fault_*` binaries alone, after the others.

mod common;

use common::broker::QueueReader;
use common::*;
use lookit_contracts::Queue;
use lookit_testkit::TestServer;

#[tokio::test]
async fn a_build_requested_while_the_broker_is_down_is_delivered_when_it_returns() {
    let (app, vhost, relay) = spawn_app_with_broker().await;
    let (_, session, lab) = app.researcher().await;
    let study = app.study(lab, "approved").await;

    let broker = TestServer::RabbitMq.stop().await;
    let response = app.request_build(&session, study).await;
    assert_eq!(
        response.status(),
        202,
        "the request succeeds without the broker"
    );
    let build: serde_json::Value = response.json().await.unwrap();
    // The job waits in the outbox.
    assert_eq!(published_jobs(&app.pool).await, 0);

    broker.start().await;
    let mut builds = QueueReader::open(vhost.amqp_url(), Queue::Builds).await;
    let job = builds.next_build_job().await;
    assert_eq!(job.build_id.to_string(), build["id"].as_str().unwrap());
    eventually("the job marked published", || async {
        published_jobs(&app.pool).await == 1
    })
    .await;
    relay.stop().await;
}
