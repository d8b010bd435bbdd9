//! Garbage and oversized messages on every queue: each lands in `<queue>.dead` with the reason,
//! and the worker keeps going (a valid job published after them is done).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{connect, fixture, start_worker, wait_until, Fixture};
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use lookit_contracts::{CleanupJob, CleanupTask, Queue};
use lookit_worker::Publisher;
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

/// Publishes every garbage body to `queue`, then waits for all of them in `<queue>.dead` and
/// checks each one's reason.
async fn garbage_is_dead_lettered(f: &Fixture, queue: Queue) {
    let connection = connect(&f.vhost).await;
    let channel = connection.create_channel().await.unwrap();
    let mut dead = channel
        .basic_consume(
            &queue.dead_letter_name(),
            "test",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
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
        let message = tokio::time::timeout(Duration::from_secs(60), dead.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} of the garbage dead-lettered: {reasons:?}",
                    reasons.len()
                )
            })
            .unwrap()
            .unwrap();
        message.ack(BasicAckOptions::default()).await.unwrap();
        let (name, _) = garbage
            .iter()
            .find(|(_, body)| **body == message.data)
            .expect("the dead-lettered body is one we sent, unchanged");
        let reason = match message
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-lookit-reason").cloned())
        {
            Some(AMQPValue::LongString(reason)) => reason.to_string(),
            other => panic!("{name}: no reason header: {other:?}"),
        };
        reasons.insert(*name, reason);
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
}

#[tokio::test]
async fn garbage_on_the_email_queue_is_dead_lettered_and_a_valid_email_follows() {
    let f = fixture().await;
    let worker = start_worker(&f.pool, f.settings());
    garbage_is_dead_lettered(&f, Queue::Email).await;
    let connection = connect(&f.vhost).await;
    let publisher = Publisher::open(&connection).await.unwrap();
    let context = serde_json::json!({
        "study_name": "Peekaboo", "study_id": "s", "previous_state": "active",
        "state": "paused", "changed_by": "", "comments": "",
    });
    let email = f
        .queue_email(&publisher, "study_state_changed", context)
        .await;
    wait_until(
        "the valid email is done",
        Duration::from_secs(60),
        || async {
            sqlx::query_scalar::<_, String>(
                "SELECT status FROM emails WHERE id = $1 AND status = 'kept'",
            )
            .bind(email)
            .fetch_optional(&f.pool)
            .await
            .unwrap()
        },
    )
    .await;
    worker.stop().await;
}

#[tokio::test]
async fn garbage_on_the_cleanup_queue_is_dead_lettered_and_a_valid_task_follows() {
    let f = fixture().await;
    let worker = start_worker(&f.pool, f.settings());
    garbage_is_dead_lettered(&f, Queue::Cleanup).await;
    let connection = connect(&f.vhost).await;
    let publisher = Publisher::open(&connection).await.unwrap();
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
    wait_until(
        "the valid task is done",
        Duration::from_secs(60),
        || async {
            sqlx::query_scalar::<_, String>("SELECT queue FROM processed_jobs WHERE job_id = $1")
                .bind(job_id)
                .fetch_optional(&f.pool)
                .await
                .unwrap()
        },
    )
    .await;
    worker.stop().await;
}

#[tokio::test]
async fn garbage_on_the_builds_queue_is_dead_lettered_and_a_valid_build_follows() {
    let f = fixture().await;
    let worker = start_worker(&f.pool, f.settings());
    garbage_is_dead_lettered(&f, Queue::Builds).await;
    let connection = connect(&f.vhost).await;
    let publisher = Publisher::open(&connection).await.unwrap();
    let player = f.player("player", &[]);
    let build_id = f.request_build(&publisher, &player).await;
    assert_eq!(f.finished_build(build_id).await, "succeeded");
    worker.stop().await;
}
