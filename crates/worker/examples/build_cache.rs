//! Issue 5's build benchmark: a cached rebuild next to the first build of the same study, from
//! the build request to the worker's `succeeded`, through the real worker (`lookit_worker::run`)
//! and the local test builder image that honours the §2 build contract.
//!
//! ```sh
//! eval "$(scripts/test-services start)"   # and dockerd with the lookit-test images
//! cargo run --release -p lookit-worker --example build_cache
//! ```
//!
//! Both builds use the same frameplayer folder, so the second has the first's cache key (commit,
//! builder image id, build environment) and must be a cache hit. The time is taken from the
//! worker's own `BuildStatus` events, so no polling interval is part of it. Progress goes to
//! stderr, the Markdown table to stdout.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use lookit_contracts::BuildStatus;
use lookit_worker::{Publisher, WorkerEvent};
use uuid::Uuid;

const BUILD_LIMIT: Duration = Duration::from_secs(300);

/// Requests a build and waits for the worker to report its end; the time and whether it was a
/// cache hit.
async fn timed_build(
    fixture: &common::Fixture,
    worker: &common::RunningWorker,
    publisher: &Publisher,
    player: &std::path::Path,
) -> anyhow::Result<(Duration, bool)> {
    let mut events = worker.events.subscribe();
    let started = Instant::now();
    let build_id: Uuid = fixture.request_build(publisher, player).await;
    let ended = tokio::time::timeout(BUILD_LIMIT, async {
        loop {
            match events.recv().await {
                Ok(WorkerEvent::BuildStatus {
                    build_id: id,
                    status,
                    cache_hit,
                    ..
                }) if id == build_id && status.is_finished() => {
                    return Ok((status, cache_hit));
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(error) => return Err(anyhow::Error::from(error)),
            }
        }
    })
    .await
    .context("the build did not finish in time")??;
    let elapsed = started.elapsed();
    ensure!(
        ended.0 == BuildStatus::Succeeded,
        "the build failed: {}",
        fixture.finished_build(build_id).await
    );
    Ok((elapsed, ended.1))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    if std::env::var_os("LOOKIT_TEST_DATABASE_URL").is_none() {
        anyhow::bail!(
            "LOOKIT_TEST_DATABASE_URL is not set: run `eval \"$(scripts/test-services start)\"` first"
        );
    }
    let fixture = common::fixture().await;
    let worker = common::start_worker(&fixture.pool, fixture.settings());
    let connection = common::connect(&fixture.vhost).await;
    let publisher = Publisher::open(&connection).await?;
    let player = fixture.player("player", &[("index.html", "<html>bench</html>")]);

    let (first, first_hit) = timed_build(&fixture, &worker, &publisher, &player).await?;
    eprintln!("first build: {:.2} s", first.as_secs_f64());
    let (cached, cached_hit) = timed_build(&fixture, &worker, &publisher, &player).await?;
    eprintln!("cached rebuild: {:.2} s", cached.as_secs_f64());
    ensure!(
        !first_hit,
        "the first build was a cache hit: the cache was not empty"
    );
    ensure!(
        cached_hit,
        "the second build of the same study was not a cache hit"
    );

    let _ = connection.close(200, "done").await;
    worker.stop().await;
    println!("builder image `{}`\n", common::BUILDER_IMAGE);
    println!("| build | request → succeeded | vs first build |");
    println!("| ----- | ------------------- | -------------- |");
    println!(
        "| first build (builder container runs) | {:.2} s | 1.00 |",
        first.as_secs_f64()
    );
    println!(
        "| cached rebuild (same key: output reused) | {:.2} s | {:.3} ({:.0}× faster) |",
        cached.as_secs_f64(),
        cached.as_secs_f64() / first.as_secs_f64(),
        first.as_secs_f64() / cached.as_secs_f64()
    );
    Ok(())
}
