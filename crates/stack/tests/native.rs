//! The native backend on the Debian binaries: private Postgres and RabbitMQ instances.

mod common;

use common::*;
use lookit_config::Backend;
use lookit_stack::StepOutcome;
use lookit_status::ServiceState;

#[tokio::test(flavor = "multi_thread")]
async fn native_cold_start_provisions_and_keeps_data_across_restarts() {
    let test = test_home(Backend::Native);
    let (stack, mut received) = test.start().await;
    let events = drain(&mut received);
    assert_eq!(
        step_outcome(&events, "postgres", "initdb"),
        Some(StepOutcome::Done)
    );
    assert_eq!(
        step_outcome(&events, "postgres", "database"),
        Some(StepOutcome::Done)
    );
    assert_eq!(
        step_outcome(&events, "rabbitmq", "guest user"),
        Some(StepOutcome::Unchanged)
    );
    assert!(stack.services().iter().all(|s| s.address.is_some()));
    assert_ready_and_write_a_row(&stack, "native").await;
    stack.shutdown().await.unwrap();
    assert!(lookit_stack::inspect(&test.home, &test.config)
        .await
        .iter()
        .all(|s| s.state == ServiceState::Stopped));

    let (stack, mut received) = test.start().await;
    let events = drain(&mut received);
    assert_eq!(
        step_outcome(&events, "postgres", "initdb"),
        Some(StepOutcome::Unchanged)
    );
    let connections = stack.connections();
    assert_eq!(read_row(&connections).await, "written before the restart");
    // The message published before the restart is persistent: still queued.
    let mut depths = stack.queue_depths();
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        depths.wait_for(|queues| queues.iter().any(|q| q.name == "email" && q.ready == 1)),
    )
    .await
    .expect("the persistent message is still queued after the restart")
    .unwrap();
    stack.shutdown().await.unwrap();

    // Each server's own output is captured, and no password is in it.
    for service in ["postgres", "rabbitmq"] {
        let log =
            std::fs::read_to_string(test.home.logs_dir().join(format!("{service}.log"))).unwrap();
        assert!(!log.is_empty(), "{service}.log is empty");
        for secret in test.secrets.all_values() {
            assert!(!log.contains(secret), "{service}.log contains a password");
        }
    }
    lookit_stack::purge(&test.home, &test.config).await.unwrap();
    assert!(!test.home.services_dir().join("postgres").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn native_killed_service_is_restarted_and_a_taken_port_is_replaced() {
    let mut test = test_home(Backend::Native);
    let (_holder, taken) = taken_port();
    test.config.postgres.port.0 = taken;
    let (stack, mut received) = test.start().await;

    let connections = stack.connections();
    assert_ne!(connections.postgres.port, taken);
    assert!(service(&stack, "postgres")
        .message
        .unwrap_or_default()
        .contains(&format!("port {taken} is taken")));
    drain(&mut received);

    let pid = stack
        .process_id("postgres")
        .expect("native postgres has a pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let message = wait_for_state(&mut received, "postgres", ServiceState::Failed).await;
    assert!(message.unwrap_or_default().contains("restarting"));
    wait_for_state(&mut received, "postgres", ServiceState::Ready).await;
    assert_eq!(service(&stack, "postgres").restarts, 1);
    assert_ne!(stack.process_id("postgres"), Some(pid));
    assert_password_required(&stack.connections()).await;

    // Starting a running service changes nothing.
    let running_pid = stack.process_id("postgres");
    stack.start_service("postgres").await.unwrap();
    assert_eq!(stack.process_id("postgres"), running_pid);

    // A user stop is not undone by the supervisor; a start brings it back.
    stack.stop_service("rabbitmq").await.unwrap();
    assert_eq!(service(&stack, "rabbitmq").state, ServiceState::Stopped);
    assert!(lapin::Connection::connect(
        secrecy::ExposeSecret::expose_secret(&stack.connections().rabbitmq.amqp_url()),
        lapin::ConnectionProperties::default()
    )
    .await
    .is_err());
    stack.start_service("rabbitmq").await.unwrap();
    assert_broker_provisioned(&stack.connections()).await;

    stack.shutdown().await.unwrap();
    lookit_stack::purge(&test.home, &test.config).await.unwrap();
}
