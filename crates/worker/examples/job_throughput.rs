//! Issue 5's benchmark: jobs per second from a durable queue of persistent messages, each
//! acknowledged after its work, for the same two jobs in the worker's real consume path
//! ([`lookit_worker::consume`] with a [`JobHandler`]), in Python Celery (acks_late), and — the
//! ceiling — in a bare lapin consume-and-ack loop, on the same broker, with the same message
//! count and the same concurrency and prefetch.
//!
//! ```sh
//! eval "$(scripts/test-services start)"
//! cargo run --release -p lookit-worker --example job_throughput
//! ```
//!
//! Jobs: `noop` does nothing; `insert` inserts one row keyed by the job id into Postgres and
//! commits (idempotent: a redelivery inserts nothing). Each contestant gets a fresh vhost whose
//! queue is filled before its consumer starts; the rate is measured while the queue drains, from
//! the broker's own count of ready messages (between 90 % and 10 % of the messages left), so
//! start-up and the tail do not count. Afterwards the queue must be empty (nothing requeued) and,
//! for `insert`, the table must hold exactly one row per message.
//!
//! Environment: `LOOKIT_TEST_*` from scripts/test-services; `BENCH_CELERY` (default: the test
//! venv's `celery`); `BENCH_JOBS` (messages per run, default 10000). Progress goes to stderr, the
//! Markdown table to stdout.

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use lookit_contracts::Queue;
use lookit_worker::{JobError, JobHandler, Publisher, QueueLimits, RetryPolicy};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Jobs running at once, and messages the broker hands out ahead, for every contestant.
const CONCURRENCY: usize = 8;
const PREFETCH: u16 = 8;
/// Celery's default queue; the Rust contestants use the worker's own `email` queue (declared by
/// the worker with its dead-letter arguments), each on a vhost of its own.
const CELERY_QUEUE: &str = "celery";
const DRAIN_LIMIT: Duration = Duration::from_secs(240);

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Noop,
    Insert,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Noop => "no-op job",
            Kind::Insert => "insert one row + commit",
        }
    }
    fn celery_name(self) -> &'static str {
        match self {
            Kind::Noop => "noop",
            Kind::Insert => "insert",
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Contestant {
    /// A bare lapin consume-and-ack loop: the broker's ceiling for this client.
    Bare,
    Worker,
    Celery,
}

impl Contestant {
    fn label(self) -> &'static str {
        match self {
            Contestant::Bare => "bare lapin loop",
            Contestant::Worker => "lookit worker",
            Contestant::Celery => "Celery",
        }
    }
}

/// The message body the Rust contestants consume.
#[derive(Serialize, Deserialize)]
struct BenchJob {
    job_id: Uuid,
}

/// One statement in autocommit: the row is committed when the statement returns (the Celery
/// task does the same, so both make one round trip to Postgres per job).
async fn insert_row(pool: &PgPool, job_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO bench_jobs (job_id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(job_id)
        .execute(pool)
        .await
        .map(drop)
}

/// The benchmark's job for the worker: what `kind` says, counted when done.
struct BenchHandler {
    kind: Kind,
    pool: PgPool,
    done: Arc<AtomicUsize>,
}

impl JobHandler for BenchHandler {
    const QUEUE: Queue = Queue::Email;
    type Job = BenchJob;

    fn job_id(job: &BenchJob) -> Uuid {
        job.job_id
    }

    async fn handle(
        &self,
        job: &BenchJob,
        _publisher: &Publisher,
        _cancel: &CancellationToken,
    ) -> Result<(), JobError> {
        if self.kind == Kind::Insert {
            insert_row(&self.pool, job.job_id).await?;
        }
        self.done.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn give_up(&self, _job: &BenchJob, _: &Publisher, error: &str) -> anyhow::Result<()> {
        bail!("a benchmark job failed: {error}")
    }
}

/// The ceiling: consume and ack, nothing else. The acks are sent while the next deliveries
/// arrive (awaiting each before taking the next would measure a round trip per message, not the
/// broker). For the insert job the ceiling is the same loop: it bounds what any consumer of
/// this broker reaches with this prefetch.
async fn bare_loop(
    connection: Connection,
    done: Arc<AtomicUsize>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            Queue::Email.name(),
            "bench-bare",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut acks = futures::stream::FuturesUnordered::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(acked) = acks.next(), if !acks.is_empty() => {
                acked?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            delivery = consumer.next() => match delivery {
                Some(delivery) => {
                    let delivery = delivery?;
                    acks.push(async move { delivery.ack(BasicAckOptions::default()).await });
                }
                None => break,
            },
        }
    }
    let _ = connection.close(200, "done").await;
    Ok(())
}

/// Ready messages in `queue`, as the broker counts them.
async fn ready(channel: &lapin::Channel, queue: &str) -> anyhow::Result<u32> {
    let declared = channel
        .queue_declare(
            queue,
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("look at {queue}"))?;
    Ok(declared.message_count())
}

async fn fill_rust_queue(connection: &Connection, jobs: usize) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    lookit_worker::declare_queues(&channel).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    for _ in 0..jobs {
        let body = serde_json::to_vec(&BenchJob {
            job_id: Uuid::new_v4(),
        })?;
        // The confirms are awaited all at once below.
        let _confirm = channel
            .basic_publish(
                "",
                Queue::Email.name(),
                BasicPublishOptions::default(),
                &body,
                properties.clone(),
            )
            .await?;
    }
    let returned = channel.wait_for_confirms().await?;
    ensure!(returned.is_empty(), "the broker refused some messages");
    Ok(())
}

fn celery_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/celery")
}

fn celery_bin() -> String {
    std::env::var("BENCH_CELERY")
        .unwrap_or_else(|_| "/var/cache/lookit-local/tools/venv/bin/celery".to_string())
}

/// The venv's python, next to its `celery`.
fn celery_python() -> std::path::PathBuf {
    std::path::Path::new(&celery_bin()).with_file_name("python")
}

async fn fill_celery_queue(
    broker: &str,
    database: &str,
    kind: Kind,
    jobs: usize,
) -> anyhow::Result<()> {
    let status = tokio::process::Command::new(celery_python())
        .arg("fill.py")
        .arg(kind.celery_name())
        .arg(jobs.to_string())
        .current_dir(celery_dir())
        .env("BENCH_BROKER_URL", broker)
        .env("BENCH_DATABASE_URL", database)
        .status()
        .await
        .context("run bench/celery/fill.py")?;
    ensure!(status.success(), "bench/celery/fill.py failed: {status}");
    Ok(())
}

/// One contestant's run: rate in jobs/s.
struct Run {
    rate: f64,
}

/// Polls the ready count until the queue is empty; the rate is taken between 90 % and 10 % left.
async fn measure_drain(channel: &lapin::Channel, queue: &str, jobs: usize) -> anyhow::Result<Run> {
    let started = Instant::now();
    let high = (jobs as f64 * 0.9) as u32;
    let low = (jobs as f64 * 0.1) as u32;
    let mut first: Option<(Instant, u32)> = None;
    let mut last: Option<(Instant, u32)> = None;
    loop {
        ensure!(
            started.elapsed() < DRAIN_LIMIT,
            "{queue} did not drain within {DRAIN_LIMIT:?}"
        );
        let now = Instant::now();
        let left = ready(channel, queue).await?;
        if left <= high && first.is_none() {
            first = Some((now, left));
        }
        if left >= low {
            last = Some((now, left));
        }
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ((t0, n0), (t1, n1)) = first.zip(last).context("no samples while draining")?;
    ensure!(t1 > t0 && n0 > n1, "the queue drained too fast to measure");
    Ok(Run {
        rate: f64::from(n0 - n1) / (t1 - t0).as_secs_f64(),
    })
}

/// Messages in `queue` not yet acknowledged (ready or in a consumer's hands), from the
/// management API's statistics (which lag by a few seconds: only used to wait for the end).
async fn unsettled(vhost: &lookit_testkit::TestVhost, queue: &str) -> anyhow::Result<u64> {
    let management = vhost.management_url();
    let base = format!(
        "{}://{}:{}",
        management.scheme(),
        management.host_str().unwrap_or("127.0.0.1"),
        management.port_or_known_default().unwrap_or(15672)
    );
    let info: serde_json::Value = reqwest::Client::new()
        .get(format!("{base}/api/queues/{}/{queue}", vhost.name()))
        .basic_auth(management.username(), management.password())
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    info["messages"]
        .as_u64()
        .context("no message count in the management API's answer")
}

/// Waits for `check` with a deadline (the consumers have no completion event to wait on).
async fn eventually<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await? {
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn run(kind: Kind, contestant: Contestant, jobs: usize) -> anyhow::Result<Run> {
    let vhost = lookit_testkit::fresh_vhost().await;
    let database = lookit_testkit::fresh_database().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(CONCURRENCY as u32)
        .connect_with(database.connect_options())
        .await
        .context("connect to the benchmark database")?;
    sqlx::query("CREATE TABLE bench_jobs (job_id uuid PRIMARY KEY, done_at timestamptz NOT NULL DEFAULT now())")
        .execute(&pool)
        .await?;
    let amqp_url = SecretString::from(vhost.amqp_url().to_string());
    let watcher = lookit_worker::connect_broker(&amqp_url).await?;
    let watch = watcher.create_channel().await?;
    let queue = match contestant {
        Contestant::Celery => {
            fill_celery_queue(vhost.amqp_url(), database.url(), kind, jobs).await?;
            CELERY_QUEUE
        }
        _ => {
            fill_rust_queue(&watcher, jobs).await?;
            Queue::Email.name()
        }
    };
    let filled = ready(&watch, queue).await?;
    ensure!(
        filled as usize == jobs,
        "{queue} holds {filled} messages, not {jobs}"
    );
    eprintln!(
        "{} / {}: {jobs} messages queued",
        kind.label(),
        contestant.label()
    );

    let done = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let measured = match contestant {
        Contestant::Bare | Contestant::Worker => {
            let connection = lookit_worker::connect_broker(&amqp_url).await?;
            let consumer = if contestant == Contestant::Bare {
                tokio::spawn(bare_loop(connection, done.clone(), stop.clone()))
            } else {
                let handler = Arc::new(BenchHandler {
                    kind,
                    pool: pool.clone(),
                    done: done.clone(),
                });
                let stop = stop.clone();
                tokio::spawn(async move {
                    let (events, _) = tokio::sync::broadcast::channel(16);
                    let retry = RetryPolicy {
                        max_attempts: 1,
                        backoff_base: Duration::from_secs(1),
                    };
                    let limits = QueueLimits::new(PREFETCH, CONCURRENCY)?;
                    lookit_worker::consume(&connection, handler, limits, retry, events, stop)
                        .await
                        .context("the worker's consumer")?;
                    let _ = connection.close(200, "done").await;
                    Ok(())
                })
            };
            let measured = measure_drain(&watch, queue, jobs)
                .await
                .context("measure the drain");
            let counted = eventually("every job done", || {
                let done = done.clone();
                async move { Ok(done.load(Ordering::Relaxed) >= jobs) }
            })
            .await;
            stop.cancel();
            consumer.await.context("consumer task")??;
            counted?;
            measured?
        }
        Contestant::Celery => {
            let mut celery = tokio::process::Command::new(celery_bin())
                .args([
                    "-A",
                    "tasks",
                    "worker",
                    "--pool=prefork",
                    &format!("--concurrency={CONCURRENCY}"),
                    "--prefetch-multiplier=1",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                    "--loglevel=WARNING",
                    "-Q",
                    CELERY_QUEUE,
                ])
                .current_dir(celery_dir())
                .env("BENCH_BROKER_URL", vhost.amqp_url())
                .env("BENCH_DATABASE_URL", database.url())
                // Celery warns about running as root (this machine's benchmark user).
                .env("PYTHONWARNINGS", "ignore")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("start celery")?;
            let measured = measure_drain(&watch, queue, jobs).await;
            // Celery says nothing when its last jobs are acknowledged; the management API does.
            let settled = eventually("Celery to acknowledge every job", || {
                unsettled(&vhost, queue).map(|left| left.map(|left| left == 0))
            })
            .await;
            // A warm shutdown (SIGTERM) finishes the jobs in hand and returns the rest unacknowledged.
            if let Some(pid) = celery.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            match tokio::time::timeout(Duration::from_secs(60), celery.wait()).await {
                Ok(status) => {
                    status.context("wait for celery")?;
                }
                Err(_) => {
                    celery.kill().await?;
                    bail!("celery did not stop within 60 s of SIGTERM");
                }
            }
            settled?;
            measured?
        }
    };
    let left = ready(&watch, queue).await?;
    ensure!(
        left == 0,
        "{left} messages went back to {queue}: some jobs were not acknowledged"
    );
    if kind == Kind::Insert {
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM bench_jobs")
            .fetch_one(&pool)
            .await?;
        ensure!(
            rows as usize == jobs,
            "{} inserted {rows} rows for {jobs} jobs",
            contestant.label()
        );
    }
    eprintln!(
        "{} / {}: {:.0} jobs/s",
        kind.label(),
        contestant.label(),
        measured.rate
    );
    let _ = watcher.close(200, "done").await;
    pool.close().await;
    Ok(measured)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    if std::env::var_os("LOOKIT_TEST_AMQP_URL").is_none() {
        bail!(
            "LOOKIT_TEST_AMQP_URL is not set: run `eval \"$(scripts/test-services start)\"` first"
        );
    }
    let jobs: usize = match std::env::var("BENCH_JOBS") {
        Ok(value) => value
            .parse()
            .with_context(|| format!("BENCH_JOBS={value:?} is not a count"))?,
        Err(_) => 10_000,
    };
    ensure!(
        jobs >= 1000,
        "BENCH_JOBS must be at least 1000 to measure a rate"
    );

    let ceiling = run(Kind::Noop, Contestant::Bare, jobs).await?.rate;
    let mut rows = Vec::new();
    for kind in [Kind::Noop, Kind::Insert] {
        let worker = run(kind, Contestant::Worker, jobs).await?.rate;
        let celery = run(kind, Contestant::Celery, jobs).await?.rate;
        rows.push((kind, worker, celery));
    }

    println!(
        "{jobs} persistent messages per run, durable queue, ack after the job; concurrency {CONCURRENCY}, prefetch {PREFETCH} for all\n"
    );
    println!("| job | lookit worker | Celery (acks_late, prefork) | bare lapin loop (ceiling) | worker / ceiling | worker / Celery |");
    println!("| --- | ------------- | --------------------------- | ------------------------- | ---------------- | --------------- |");
    for (kind, worker, celery) in rows {
        println!(
            "| {} | {worker:.0} jobs/s | {celery:.0} jobs/s | {ceiling:.0} msg/s | {:.2} | {:.1}× |",
            kind.label(),
            worker / ceiling,
            worker / celery
        );
    }
    Ok(())
}
