//! The external backend: servers someone else runs, reached through configured URLs. Here the
//! "someone else" is a native stack of another home.

mod common;

use common::*;
use lookit_config::Backend;
use lookit_stack::StepOutcome;
use lookit_status::ServiceState;
use secrecy::ExposeSecret;

#[tokio::test(flavor = "multi_thread")]
async fn external_servers_are_checked_and_provisioned_through_their_urls() {
    let lab = test_home(Backend::Native);
    let (lab_stack, _events) = lab.start().await;
    let lab_connections = lab_stack.connections();

    let mut test = test_home(Backend::External);
    test.config.postgres.url = Some(
        lab_connections
            .postgres
            .url()
            .expose_secret()
            .parse()
            .unwrap(),
    );
    test.config.rabbitmq.url = Some(
        lab_connections
            .rabbitmq
            .amqp_url()
            .expose_secret()
            .parse()
            .unwrap(),
    );
    test.config.rabbitmq.management_url = lab_connections.rabbitmq.management_url.clone();
    let (stack, mut received) = test.start().await;
    let events = drain(&mut received);
    // Already provisioned by the lab's stack: every step finds it done.
    for (service, step) in [
        ("postgres", "database"),
        ("rabbitmq", "admin user"),
        ("rabbitmq", "permissions"),
    ] {
        assert_eq!(
            step_outcome(&events, service, step),
            Some(StepOutcome::Unchanged),
            "{service} {step}"
        );
    }
    assert!(stack
        .services()
        .iter()
        .all(|s| s.state == ServiceState::Ready && s.backend == "external"));
    let connections = stack.connections();
    assert_eq!(connections.postgres.port, lab_connections.postgres.port);
    assert_password_required(&connections).await;
    assert_broker_provisioned(&connections).await;

    // Stopping the external stack leaves the lab's servers running.
    stack.shutdown().await.unwrap();
    assert_password_required(&lab_connections).await;
    lab_stack.shutdown().await.unwrap();
    lookit_stack::purge(&lab.home, &lab.config).await.unwrap();
}
