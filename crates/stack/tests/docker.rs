//! The Docker backend with the images `scripts/build-test-images` builds locally.

mod common;

use common::*;
use futures::StreamExt;
use lookit_config::Backend;
use lookit_stack::{StackError, StackEvent, StepOutcome};
use lookit_status::ServiceState;

fn docker() -> bollard::Docker {
    bollard::Docker::connect_with_local_defaults().expect("a Docker engine (start dockerd)")
}

fn container(test: &TestHome, service: &str) -> String {
    format!("lookit-{}-{service}", test.home.tag())
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_cold_start_provisions_adopts_and_keeps_data_across_restarts() {
    let test = test_home(Backend::Docker);
    let (stack, mut received) = test.start().await;
    let events = drain(&mut received);
    assert_eq!(
        step_outcome(&events, "postgres", "container"),
        Some(StepOutcome::Done)
    );
    assert_eq!(
        step_outcome(&events, "docker", "engine"),
        Some(StepOutcome::Unchanged)
    );

    // Published on loopback only, under the home's name, with our label.
    let inspected = docker()
        .inspect_container(&container(&test, "postgres"), None)
        .await
        .unwrap();
    let bindings = inspected.host_config.unwrap().port_bindings.unwrap();
    let binding = &bindings["5432/tcp"].as_ref().unwrap()[0];
    assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        inspected.config.unwrap().labels.unwrap()["org.lookit.local.home"],
        test.home.tag()
    );

    assert_ready_and_write_a_row(&stack, "docker").await;
    stack.shutdown().await.unwrap();

    // A warm start in a runtime that then dies without shutting down, like a crashed app: its
    // containers keep running.
    let port_before = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Runtime::new().unwrap();
                runtime.block_on(async {
                    let (stack, _events) = test.start().await;
                    let connections = stack.connections();
                    assert_eq!(read_row(&connections).await, "written before the restart");
                    let port = connections.postgres.port;
                    // Never shut down: the runtime is dropped under it.
                    std::mem::forget(stack);
                    port
                })
            })
            .join()
            .unwrap()
    });

    // The next run adopts the running containers instead of duplicating them.
    let (stack, mut received) = test.start().await;
    let events = drain(&mut received);
    assert_eq!(
        step_outcome(&events, "postgres", "container"),
        Some(StepOutcome::Unchanged)
    );
    assert_eq!(stack.connections().postgres.port, port_before);
    assert_eq!(
        read_row(&stack.connections()).await,
        "written before the restart"
    );
    let ours = docker()
        .list_containers(Some(bollard::container::ListContainersOptions::<String> {
            all: true,
            filters: [(
                "label".to_string(),
                vec![format!("org.lookit.local.home={}", test.home.tag())],
            )]
            .into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(ours.len(), 2);
    stack.shutdown().await.unwrap();
    lookit_stack::purge(&test.home, &test.config).await.unwrap();
    assert!(docker()
        .inspect_container(&container(&test, "postgres"), None)
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_killed_container_is_restarted_and_a_taken_port_is_replaced() {
    let mut test = test_home(Backend::Docker);
    let (_holder, taken) = taken_port();
    test.config.rabbitmq.port.0 = taken;
    let (stack, mut received) = test.start().await;
    let events = drain(&mut received);
    assert!(events.iter().any(|e| matches!(e,
        StackEvent::PortChanged { service, wanted, .. } if service == "rabbitmq" && *wanted == taken)));
    assert_ne!(stack.connections().rabbitmq.port, taken);

    let name = container(&test, "postgres");
    let mut exits = docker().wait_container::<String>(&name, None);
    docker()
        .kill_container::<String>(&name, None)
        .await
        .unwrap();
    let _ = exits.next().await;
    wait_for_state(&mut received, "postgres", ServiceState::Failed).await;
    wait_for_state(&mut received, "postgres", ServiceState::Ready).await;
    assert_eq!(service(&stack, "postgres").restarts, 1);
    assert_password_required(&stack.connections()).await;

    stack.shutdown().await.unwrap();
    lookit_stack::purge(&test.home, &test.config).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_bad_image_name_is_a_clear_error() {
    let mut test = test_home(Backend::Docker);
    test.config.postgres.image = "lookit-test/no-such-image:1"
        .to_string()
        .try_into()
        .unwrap();
    let (events, _received) = tokio::sync::broadcast::channel(256);
    let error =
        match lookit_stack::Stack::start(&test.home, &test.config, &test.secrets, events).await {
            Ok(_) => panic!("a stack with a missing image started"),
            Err(error) => error,
        };
    let text = error.to_string();
    assert!(matches!(error, StackError::Start { .. }), "{error:?}");
    assert!(text.contains("lookit-test/no-such-image:1"), "{text}");
    assert!(
        text.contains("docker load") && text.contains("postgres.image"),
        "{text}"
    );
    // The other service was not left running.
    let rabbit = docker()
        .inspect_container(&container(&test, "rabbitmq"), None)
        .await;
    assert!(rabbit
        .map(|c| c.state.unwrap().running != Some(true))
        .unwrap_or(true));
    lookit_stack::purge(&test.home, &test.config).await.unwrap();
}
