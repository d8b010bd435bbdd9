//! Garbage and oversized messages on every queue: each lands in `<queue>.dead` with the reason,
//! and the worker keeps going (a valid job published after them is done).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{
    connect, dead_letters, fixture, next_delivery, start_worker, text_header, Fixture,
    RunningWorker,
};
use lapin::options::{BasicAckOptions, BasicPublishOptions};
use lapin::BasicProperties;
use lookit_contracts::{CleanupJob, CleanupTask, Queue};
use uuid::Uuid;

/// Bodies no job of any queue parses, by name. The oversized one is far above what a job
/// message (ids only) ever is.
fn garbage() -> BTreeMap<&'static str, Vec<u8>> {
    let id = Uuid::new_v4();
    let oversized = serde_json::to_vec(&serde_json::json!({
        "job_id": id, "build_id": id, "email_id": id, "task": "docker_prune",
        "padding": "x".repeat(2 * 1024 * 1024),
    }))
    .unwrap();
    BTreeMap::from([
        ("empty", Vec::new()),
        ("binary", (0..=255u8).rev().cycle().take(1000).collect()),
        ("latin-1", b"{\"job_id\": \"caf\xe9\"}".to_vec()),
        ("utf-16", "{\"job_id\": 1}".encode_utf16().flat_map(u16::to_le_bytes).collect()),
        ("wrong shape", b"[1, 2, 3]".to_vec()),
        ("wrong types", b"{\"job_id\": 42, \"build_id\": null, \"email_id\": []}".to_vec()),
        ("truncated", b"{\"job_id\": \"".to_vec()),
        (
            "unknown field",
            format!("{{\"job_id\": \"{id}\", \"build_id\": \"{id}\", \"email_id\": \"{id}\", \"task\": \"docker_prune\", \"extra\": 1}}").into_bytes(),
        ),
        ("oversized", oversized),
    ])
}

/// A worker that has dead-lettered all the garbage: every garbage body is published to `queue`,
/// then each must arrive in `<queue>.dead` with its reason.
async fn worker_past_garbage(queue: Queue) -> (Fixture, RunningWorker) {
    let f = fixture().await;
    let worker = start_worker(&f.pool, f.settings());
    let connection = connect(&f.vhost).await;
    let mut dead = dead_letters(&connection, queue).await;
    let channel = connection.create_channel().await.unwrap();
    let garbage = garbage();
    for body in garbage.values() {
        channel
            .basic_publish(
                "",
                queue.name(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let mut reasons = BTreeMap::new();
    while reasons.len() < garbage.len() {
        let waited = format!(
            "the rest of the garbage ({} dead-lettered: {reasons:?})",
            reasons.len()
        );
        let message = next_delivery(&mut dead, Duration::from_secs(60), &waited).await;
        message.ack(BasicAckOptions::default()).await.unwrap();
        let (name, _) = garbage
            .iter()
            .find(|(_, body)| **body == message.data)
            .expect("the dead-lettered body is one we sent, unchanged");
        reasons.insert(*name, text_header(&message, "x-lookit-reason"));
    }
    for (name, reason) in &reasons {
        let expected = if *name == "oversized" {
            "oversized message"
        } else {
            "unparsable message"
        };
        assert!(
            reason.starts_with(expected),
            "{queue:?} {name}: reason {reason:?}"
        );
    }
    let _ = connection.close(200, "done").await;
    (f, worker)
}

#[tokio::test]
async fn garbage_on_the_email_queue_is_dead_lettered_and_a_valid_email_follows() {
    let (f, worker) = worker_past_garbage(Queue::Email).await;
    let (_connection, publisher) = f.publisher().await;
    let context = serde_json::json!({
        "study_name": "Peekaboo", "study_id": "s", "previous_state": "active",
        "state": "paused", "changed_by": "", "comments": "",
    });
    let email = f
        .queue_email(&publisher, "study_state_changed", context)
        .await;
    f.row_for(
        "the valid email is done",
        "SELECT status FROM emails WHERE id = $1 AND status = 'kept'",
        email,
    )
    .await;
    worker.stop().await;
}

#[tokio::test]
async fn garbage_on_the_cleanup_queue_is_dead_lettered_and_a_valid_task_follows() {
    let (f, worker) = worker_past_garbage(Queue::Cleanup).await;
    let (_connection, publisher) = f.publisher().await;
    let job_id = Uuid::new_v4();
    publisher
        .publish_job(
            Queue::Cleanup,
            &CleanupJob {
                job_id,
                task: CleanupTask::MultipartUploads,
            },
        )
        .await
        .unwrap();
    f.row_for(
        "the valid task is done",
        "SELECT queue FROM processed_jobs WHERE job_id = $1",
        job_id,
    )
    .await;
    worker.stop().await;
}

#[tokio::test]
async fn garbage_on_the_builds_queue_is_dead_lettered_and_a_valid_build_follows() {
    let (f, worker) = worker_past_garbage(Queue::Builds).await;
    let (_connection, publisher) = f.publisher().await;
    let player = f.player("player", &[]);
    let build_id = f.request_build(&publisher, &player).await;
    assert_eq!(f.finished_build(build_id).await, "succeeded");
    worker.stop().await;
}

/// Our connections ask for 8 KiB frames (lapin zero-fills 64 frames of buffer per connection
/// up front, 8 MiB each at RabbitMQ's default size); the oversized message above still arrives
/// whole over them. A URL that names a frame size keeps it.
#[tokio::test]
async fn connections_ask_for_small_frames_unless_the_url_names_a_size() {
    let vhost = lookit_testkit::fresh_vhost().await;
    let ours = lookit_contracts::connect_amqp(vhost.amqp_url(), "frame size test")
        .await
        .unwrap();
    assert_eq!(ours.configuration().frame_max(), 8 * 1024);
    let url = format!("{}?frame_max=65536", vhost.amqp_url());
    let named = lookit_contracts::connect_amqp(&url, "frame size test")
        .await
        .unwrap();
    assert_eq!(named.configuration().frame_max(), 65536);
}
