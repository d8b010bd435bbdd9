//! The disk holding the builds folder fills up (issue #9): its checkouts, deployments, output
//! cache and the local builds store (`published/experiments/<study>`) are all on it, as in a
//! home. A build that runs out of space fails at once, with a reason that says the disk is full,
//! at whichever stage ran out; the published study stays as it was; nothing half written stays
//! behind; and once there is room the same build succeeds.
//!
//! Real Docker (the test builder image) on a small ext4 disk the test mounts: root only; it says
//! why it skips otherwise.
//!
//! The database's disk fills up too: a job whose transaction cannot grow a table (SQLSTATE 53100)
//! is retried through the broker, never dead-lettered at once, and done once there is room. The
//! table lives in a tablespace of the test Postgres on a small disk the test fills.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{fixture, participant_message, ready, start_worker, wait_until};
use lookit_contracts::{BuildStatus, Queue};
use lookit_storage::StoreLocation;
use lookit_testkit::{SmallDisk, SmallTablespace};
use lookit_worker::{EmailOutcome, WorkerEvent};

const MIB: u64 = 1024 * 1024;

/// Every file of a published study, by path, with its contents.
fn published_files(study: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    lookit_storage::output_files(study)
        .unwrap()
        .into_iter()
        .map(|file| {
            let contents = std::fs::read(study.join(&file)).unwrap();
            (file, contents)
        })
        .collect()
}

/// What a failed build could leave behind in the builds folder: staging folders (hidden), of
/// checkouts or of publishing, and deployment folders.
fn leftovers(builds: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for (folder, only_hidden) in [
        (builds.join("checkouts"), true),
        (builds.join("published/experiments"), true),
        (builds.join("deployments"), false),
    ] {
        for entry in std::fs::read_dir(folder).into_iter().flatten().flatten() {
            if !only_hidden || entry.file_name().to_string_lossy().starts_with('.') {
                found.push(entry.path());
            }
        }
    }
    found
}

#[tokio::test]
async fn a_full_disk_fails_the_build_saying_so_and_the_published_study_stays_as_it_was() {
    let Some(disk) = SmallDisk::mount() else {
        return;
    };
    let f = fixture().await;
    let builds = disk.path().join("builds");
    let mut settings = f.settings();
    settings.builds_dir = builds.clone();
    settings.builds_store = StoreLocation::Folder(builds.join("published"));
    let worker = start_worker(&f.pool, settings);
    let (_connection, publisher) = f.publisher().await;
    let build = |player: PathBuf| {
        let (f, publisher) = (&f, &publisher);
        async move {
            let build_id = f.request_build(publisher, &player).await;
            let mut log = Vec::new();
            let outcome =
                lookit_worker::follow_build(&f.pool, build_id, |line| log.push(line.to_string()))
                    .await
                    .unwrap();
            let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM builds WHERE id = $1")
                .bind(build_id)
                .fetch_one(&f.pool)
                .await
                .unwrap();
            (outcome, log, attempts)
        }
    };

    let (first, _, _) = build(f.player("first", &[])).await;
    assert_eq!(first.status, BuildStatus::Succeeded);
    let study = builds
        .join("published/experiments")
        .join(f.study_id.to_string());
    let published = published_files(&study);

    // The next version carries a 2 MiB video in public/: its checkout, its builder output and
    // its published copy need 2 MiB each. With no room the checkout runs out; with 3 MiB the
    // builder does (the checkout took 2); with 3 MiB again (the checkout is kept) the upload.
    let video = "v".repeat(2 * MIB as usize);
    let second = f.player("second", &[("public/assets/intro.mp4", &video)]);
    for (room, stage) in [(0, "checkout"), (3 * MIB, "build"), (3 * MIB, "upload")] {
        disk.fill_leaving(room);
        let (outcome, log, attempts) = build(second.clone()).await;
        assert_eq!(outcome.status, BuildStatus::Failed, "{log:?}");
        assert_eq!(outcome.stage.as_deref(), Some(stage), "{outcome:?}");
        let error = outcome.error.unwrap_or_default();
        assert!(
            error.contains("the disk is full") && error.contains("free some space"),
            "the panel shows why and what to do: {error}"
        );
        assert_eq!(attempts, 1, "a full disk is not retried: {error}");
        assert_eq!(
            published_files(&study),
            published,
            "the published study is as it was (stage {stage})"
        );
        assert_eq!(leftovers(&builds), Vec::<PathBuf>::new(), "stage {stage}");
    }

    // Room again: the same version builds and replaces the published one.
    disk.free();
    let (outcome, _, _) = build(second).await;
    assert_eq!(outcome.status, BuildStatus::Succeeded, "{outcome:?}");
    let now = published_files(&study);
    assert_eq!(
        now.get(Path::new("assets/intro.mp4")).map(Vec::len),
        Some(video.len())
    );
    assert_ne!(
        now.get(Path::new("index.html")),
        published.get(Path::new("index.html"))
    );
    assert_eq!(leftovers(&builds), Vec::<PathBuf>::new());
    worker.stop().await;
}

#[tokio::test]
async fn a_job_failing_on_a_full_database_disk_is_retried_and_done_once_there_is_room() {
    let Some(tablespace) = SmallTablespace::create().await else {
        return;
    };
    let f = fixture().await;
    // The ledger a job's effects are committed with: empty, it must grow for the job's row.
    tablespace.take_table(&f.pool, "processed_jobs").await;
    tablespace.disk().fill();
    let mut settings = f.settings();
    // Long enough to see the job wait for its retry; attempts to spare for a slow test machine.
    settings.retry_backoff_base = Duration::from_secs(2);
    settings.max_attempts = 5;
    let worker = start_worker(&f.pool, settings);
    let mut events = worker.events.subscribe();
    let (connection, publisher) = f.publisher().await;
    let channel = connection.create_channel().await.unwrap();
    let email_id = f
        .queue_email(&publisher, "participant_message", participant_message())
        .await;

    wait_until(
        "the job waits in email.retry",
        Duration::from_secs(30),
        || async { (ready(&channel, &Queue::Email.retry_name()).await == 1).then_some(()) },
    )
    .await;
    let status: String = sqlx::query_scalar("SELECT status FROM emails WHERE id = $1")
        .bind(email_id)
        .fetch_one(&f.pool)
        .await
        .unwrap();
    assert_eq!(status, "queued", "the failed attempt changed nothing");

    // Room again: the retry does the job.
    tablespace.disk().free();
    let outcome = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match events.recv().await.expect("the worker's events") {
                WorkerEvent::Email {
                    email_id: id,
                    outcome,
                } if id == email_id => break outcome,
                WorkerEvent::DeadLettered { reason, .. } => {
                    panic!("a full database disk is not a reason to give up: {reason}")
                }
                _ => {}
            }
        }
    })
    .await
    .expect("the email is done once the disk has room");
    assert_eq!(outcome, EmailOutcome::Kept);
    assert_eq!(ready(&channel, &Queue::Email.dead_letter_name()).await, 0);
    worker.stop().await;
}
