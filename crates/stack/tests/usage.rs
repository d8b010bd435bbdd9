//! CPU and memory per running service, as the overview cards show them: native servers from
//! their process trees, containers from the engine's stats.

mod common;

use common::*;
use lookit_config::Backend;

/// Memory is known at the first reading; CPU (native) from the second, which compares.
async fn assert_both_services_measured(stack: &lookit_stack::Stack) {
    let first = stack.resource_usage().await;
    let second = stack.resource_usage().await;
    for service in ["postgres", "rabbitmq"] {
        let usage = second
            .get(service)
            .unwrap_or_else(|| panic!("no reading for {service}: {first:?} then {second:?}"));
        // Both servers hold well over a megabyte resident; RabbitMQ's VM much more.
        assert!(usage.memory_bytes > 1024 * 1024, "{service}: {usage:?}");
        let cpu = usage
            .cpu_percent
            .expect("CPU known from the second reading");
        assert!(cpu >= 0.0, "{service}: {usage:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn native_services_report_cpu_and_memory_of_their_process_trees() {
    let test = test_home(Backend::Native);
    let (stack, _events) = test.start().await;
    assert_both_services_measured(&stack).await;
    stack.stop_service("postgres").await.unwrap();
    let after_stop = stack.resource_usage().await;
    assert!(!after_stop.contains_key("postgres"), "{after_stop:?}");
    assert!(after_stop.contains_key("rabbitmq"), "{after_stop:?}");
    stack.shutdown().await.unwrap();
    lookit_stack::purge(&test.home, &test.config).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_services_report_cpu_and_memory_from_container_stats() {
    let test = test_home(Backend::Docker);
    let (stack, _events) = test.start().await;
    assert_both_services_measured(&stack).await;
    stack.shutdown().await.unwrap();
    lookit_stack::purge(&test.home, &test.config).await.unwrap();
}
