//! Fixtures shared by the worker's integration tests: a migrated database, a vhost with the
//! queues, a study with an admin, and a folder frameplayer.
#![allow(dead_code)] // each test binary uses its own part of these fixtures

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lookit_contracts::{BuildJob, EmailJob, Queue};
use lookit_testkit::{TestDatabase, TestVhost};
use lookit_worker::{Publisher, WorkerEvent, WorkerSettings};
use secrecy::SecretString;
use sqlx::PgPool;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const BUILDER_IMAGE: &str = "lookit-test/builder:latest";

pub struct Fixture {
    pub db: TestDatabase,
    pub vhost: TestVhost,
    pub pool: PgPool,
    pub dir: tempfile::TempDir,
    pub study_id: Uuid,
    pub admin_email: String,
}

pub async fn fixture() -> Fixture {
    lookit_testkit::install_crypto_provider();
    let (db, pool) = lookit_testkit::migrated_database().await;
    let vhost = lookit_testkit::fresh_vhost().await;
    let connection = connect(&vhost).await;
    let channel = connection.create_channel().await.unwrap();
    lookit_worker::declare_queues(&channel)
        .await
        .expect("declare queues");
    let _ = connection.close(200, "done").await;
    let (study_id, admin_email) = seed_study(&pool).await;
    Fixture {
        db,
        vhost,
        pool,
        dir: tempfile::tempdir().unwrap(),
        study_id,
        admin_email,
    }
}

pub async fn connect(vhost: &TestVhost) -> lapin::Connection {
    lookit_worker::connect_broker(&SecretString::from(vhost.amqp_url().to_string()))
        .await
        .expect("connect to the test vhost")
}

async fn seed_study(pool: &PgPool) -> (Uuid, String) {
    let (user, lab, study) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let email = format!("admin-{}@example.org", user.simple());
    sqlx::query("INSERT INTO users (id, username, is_researcher) VALUES ($1, $2, true)")
        .bind(user)
        .bind(&email)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO labs (id, name) VALUES ($1, 'Test lab')")
        .bind(lab)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO studies (id, name, lab_id, creator_id) VALUES ($1, 'Peekaboo', $2, $3)",
    )
    .bind(study)
    .bind(lab)
    .bind(user)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO study_admins (study_id, user_id) VALUES ($1, $2)")
        .bind(study)
        .bind(user)
        .execute(pool)
        .await
        .unwrap();
    (study, email)
}

impl Fixture {
    pub fn builds_dir(&self) -> PathBuf {
        self.dir.path().join("builds")
    }

    pub fn settings(&self) -> WorkerSettings {
        let mut settings = WorkerSettings::new(
            SecretString::from(self.vhost.amqp_url().to_string()),
            BUILDER_IMAGE.to_string(),
            self.builds_dir(),
        );
        settings.retry_backoff_base = Duration::from_millis(50);
        settings.max_attempts = 3;
        settings.build_time_limit = Duration::from_secs(120);
        settings
    }

    /// A connection to the test vhost with a publisher (with confirms) on it, as the API's
    /// outbox relay publishes. The publisher works while the connection is kept.
    pub async fn publisher(&self) -> (lapin::Connection, Publisher) {
        let connection = connect(&self.vhost).await;
        let publisher = Publisher::open(&connection)
            .await
            .expect("open a publisher on the test vhost");
        (connection, publisher)
    }

    /// A frameplayer folder with the given files (paths relative to it).
    pub fn player(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(dir.join("app")).unwrap();
        std::fs::write(dir.join("app/app.js"), format!("// player {name}")).unwrap();
        for (file, contents) in files {
            let path = dir.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, contents).unwrap();
        }
        dir
    }

    /// What the API does on a build request: a queued row, then a job on `builds`.
    pub async fn request_build(&self, publisher: &Publisher, player: &Path) -> Uuid {
        let build_id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO builds (id, study_id, player_repo, player_ref) VALUES ($1, $2, $3, '')",
        )
        .bind(build_id)
        .bind(self.study_id)
        .bind(player.display().to_string())
        .execute(&self.pool)
        .await
        .unwrap();
        let job = BuildJob {
            job_id: Uuid::new_v4(),
            build_id,
        };
        publisher.publish_job(Queue::Builds, &job).await.unwrap();
        build_id
    }

    /// What the API does to send an email: an outbox row, then a job on `email`.
    pub async fn queue_email(
        &self,
        publisher: &Publisher,
        template: &str,
        context: serde_json::Value,
    ) -> Uuid {
        let email_id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO emails (id, template, context, to_addresses) VALUES ($1, $2, $3, $4)",
        )
        .bind(email_id)
        .bind(template)
        .bind(context)
        .bind(vec![self.admin_email.clone()])
        .execute(&self.pool)
        .await
        .unwrap();
        let job = EmailJob {
            job_id: Uuid::new_v4(),
            email_id,
        };
        publisher.publish_job(Queue::Email, &job).await.unwrap();
        email_id
    }

    /// How many entries the study's log has, of `action` only when one is given.
    pub async fn study_log_entries(&self, action: Option<&str>) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM study_logs WHERE study_id = $1 AND ($2::text IS NULL OR action = $2)",
        )
        .bind(self.study_id)
        .bind(action)
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    /// How many emails the build caused (its notice).
    pub async fn emails_of(&self, build_id: Uuid) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM emails WHERE build_id = $1")
            .bind(build_id)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    pub async fn build_status(&self, build_id: Uuid) -> String {
        sqlx::query_scalar("SELECT status FROM builds WHERE id = $1")
            .bind(build_id)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Waits until an attempt of the build numbered within `attempts` runs the test builder and
    /// it waits for its `release` file (a player with `WAIT_FOR_FILE`), and gives the commit it
    /// checked out (for [`Self::release_builder`]).
    pub async fn builder_waiting(
        &self,
        what: &str,
        limit: Duration,
        build_id: Uuid,
        attempts: RangeInclusive<i32>,
    ) -> String {
        wait_until(what, limit, || async {
            sqlx::query_scalar::<_, Option<String>>(
                "SELECT player_sha FROM builds WHERE id = $1 AND attempts BETWEEN $2 AND $3 \
                 AND status = 'running' AND log LIKE '%waiting for%'",
            )
            .bind(build_id)
            .bind(attempts.start())
            .bind(attempts.end())
            .fetch_optional(&self.pool)
            .await
            .unwrap()
            .flatten()
        })
        .await
    }

    /// Lets the test builder waiting in the checkout of commit `sha` go on.
    pub fn release_builder(&self, sha: &str) {
        std::fs::write(
            self.builds_dir()
                .join("checkouts")
                .join(sha)
                .join("release"),
            "",
        )
        .expect("write the release file into the checkout");
    }

    /// Waits up to a minute until `sql` (one text column, `$1` bound to `id`) finds a row, and
    /// gives its value: the worker's effects reach the test through the database only.
    pub async fn row_for(&self, what: &str, sql: &str, id: Uuid) -> String {
        wait_until(what, Duration::from_secs(60), || async {
            sqlx::query_scalar::<_, String>(sql)
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .unwrap()
        })
        .await
    }

    /// Waits until the build is over (no event reaches the test from another process, so the
    /// row is polled, with a deadline).
    pub async fn finished_build(&self, build_id: Uuid) -> String {
        wait_until("the build finishes", Duration::from_secs(180), || async {
            let status = self.build_status(build_id).await;
            ["succeeded", "failed", "cancelled"]
                .contains(&status.as_str())
                .then_some(status)
        })
        .await
    }
}

/// The context of a `participant_message` email: subject "Thank you for taking part", body
/// "Your child's session is complete.".
pub fn participant_message() -> serde_json::Value {
    serde_json::json!({
        "subject": "Thank you for taking part",
        "body": "Your child's session is complete.",
        "unsubscribe_url": "https://lookit.localhost/account/email/unsubscribe/abc",
    })
}

/// A consumer of `<queue>.dead` on a channel of its own on `connection`.
pub async fn dead_letters(connection: &lapin::Connection, queue: Queue) -> lapin::Consumer {
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_consume(
            &queue.dead_letter_name(),
            "test",
            lapin::options::BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("consume the dead letters")
}

/// The next message `consumer` delivers (not acknowledged); the test fails after `limit`, saying
/// it was waiting for `what`.
pub async fn next_delivery(
    consumer: &mut lapin::Consumer,
    limit: Duration,
    what: &str,
) -> lapin::message::Delivery {
    use futures::StreamExt;
    tokio::time::timeout(limit, consumer.next())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .expect("the consumer is open")
        .expect("a delivery")
}

/// A text header of a message, as the worker sets `x-lookit-reason` and `x-lookit-last-error`
/// on what it dead-letters; the test fails when the message has none.
pub fn text_header(message: &lapin::message::Delivery, name: &str) -> String {
    let headers = message.properties.headers();
    match headers.as_ref().and_then(|h| h.inner().get(name)) {
        Some(lapin::types::AMQPValue::LongString(text)) => text.to_string(),
        other => panic!("no {name} header ({other:?}) in {headers:?}"),
    }
}

/// Messages ready in a queue, as the broker says now (a passive declare).
pub async fn ready(channel: &lapin::Channel, queue: &str) -> u32 {
    let options = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue, options, lapin::types::FieldTable::default())
        .await
        .unwrap_or_else(|error| panic!("passive declare of {queue}: {error}"))
        .message_count()
}

/// Fails unless the builder container of the build is gone (stopped and removed).
pub async fn assert_no_builder_container(build_id: Uuid) {
    let docker = bollard::Docker::connect_with_local_defaults().expect("a Docker engine");
    let containers = docker
        .list_containers(Some(bollard::container::ListContainersOptions::<String> {
            all: true,
            filters: std::collections::HashMap::from([(
                "name".to_string(),
                vec![format!("lookit-build-{build_id}")],
            )]),
            ..Default::default()
        }))
        .await
        .expect("list the Docker engine's containers");
    assert!(
        containers.is_empty(),
        "a builder container is left: {containers:?}"
    );
}

/// Polls `condition` until it gives a value or `limit` passes (then the test fails with `what`).
pub async fn wait_until<T, F, Fut>(what: &str, limit: Duration, mut condition: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = condition().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A worker running in this process.
pub struct RunningWorker {
    pub events: broadcast::Sender<WorkerEvent>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub fn start_worker(pool: &PgPool, settings: WorkerSettings) -> RunningWorker {
    let (events, _) = broadcast::channel(4096);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(lookit_worker::run(
        pool.clone(),
        settings,
        events.clone(),
        shutdown.clone(),
    ));
    RunningWorker {
        events,
        shutdown,
        task,
    }
}

impl RunningWorker {
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().expect("the worker stops cleanly");
    }
}
