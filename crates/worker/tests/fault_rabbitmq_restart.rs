//! Restarts the SHARED test RabbitMQ: this binary (fault_*) runs alone, after the other suites.

mod common;

use std::time::Duration;

use common::{fixture, start_worker, wait_until};

async fn kept(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM emails WHERE status = 'kept'")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn restarting_rabbitmq_in_a_stream_of_jobs_loses_none() {
    let f = fixture().await;
    let worker = start_worker(&f.pool, f.settings());
    let context = |n: usize| {
        serde_json::json!({
            "study_name": format!("Study {n}"), "study_id": "s", "previous_state": "active",
            "state": "paused", "changed_by": "", "comments": "",
        })
    };
    {
        let (_connection, publisher) = f.publisher().await;
        for n in 0..30 {
            f.queue_email(&publisher, "study_state_changed", context(n))
                .await;
        }
    }
    wait_until("some jobs are done", Duration::from_secs(30), || async {
        (kept(&f.pool).await >= 1).then_some(())
    })
    .await;
    lookit_testkit::TestServer::RabbitMq.restart().await;
    {
        let (_connection, publisher) = f.publisher().await;
        for n in 30..60 {
            f.queue_email(&publisher, "study_state_changed", context(n))
                .await;
        }
    }
    wait_until("every job is done", Duration::from_secs(120), || async {
        (kept(&f.pool).await == 60).then_some(())
    })
    .await;
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM emails WHERE status <> 'kept'")
        .fetch_one(&f.pool)
        .await
        .unwrap();
    assert_eq!(queued, 0);
    worker.stop().await;
}
