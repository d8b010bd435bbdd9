//! Issue 4's benchmark: requests per second and p99 latency of `GET /api/v1/studies/` and of
//! PATCHing a response, next to a bare route mounted on the same server, in the same run.
//!
//! ```sh
//! eval "$(scripts/test-services start)"
//! cargo run --release -p lookit-api --example route_bench
//! ```
//!
//! The real API router is served in-process over plain HTTP on 127.0.0.1:0 against a fresh
//! database on the test Postgres (created here, dropped at the end). Load comes from a tokio
//! reqwest client over loopback with a fixed number of concurrent keep-alive connections. Routes
//! are measured in interleaved rounds (bare, studies, patch, bare, ...) so load from other
//! processes on the machine hits all three alike; every round is bounded both in requests and
//! in time, so the run stops by itself.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use lookit_api::{ApiSettings, ApiState};
use secrecy::SecretString;
use serde_json::{json, Value};
use uuid::Uuid;

#[path = "common/api_token.rs"]
mod api_token;
use api_token::api_token;

/// Concurrent connections driving load (each a worker task with its own response to PATCH).
const CONNECTIONS: usize = 8;
/// Requests per route per round, at most.
const REQUESTS_PER_ROUND: usize = 3_000;
/// Time per route per round, at most.
const ROUND_LIMIT: Duration = Duration::from_secs(8);
const ROUNDS: usize = 3;
/// Unmeasured requests per route before the first round (connections, caches, prepared statements).
const WARM_UP: usize = 200;
/// Active studies added to the demo seed: more than a page (10), so the list is a full page.
const EXTRA_STUDIES: usize = 12;
const PASSWORD: &str = "benchmark password 1";
const BARE_PATH: &str = "/bench/bare";

#[derive(Clone, Copy, PartialEq)]
enum Route {
    Bare,
    Studies,
    PatchResponse,
}

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::Bare => "GET /bench/bare (bare route)",
            Route::Studies => "GET /api/v1/studies/",
            Route::PatchResponse => "PATCH /api/v1/responses/{id}/",
        }
    }
}

/// What the load driver needs to make requests as the benchmark's participant.
struct Target {
    base: String,
    token: String,
    client: reqwest::Client,
    /// One response per connection, so concurrent PATCHes do not queue on one row lock (a
    /// frameplayer patches only its own session).
    responses: Vec<Uuid>,
}

impl Target {
    async fn request(&self, route: Route, worker: usize, n: usize) -> anyhow::Result<()> {
        let auth = format!("Token {}", self.token);
        let (request, expected) = match route {
            Route::Bare => (self.client.get(format!("{}{BARE_PATH}", self.base)), 200),
            Route::Studies => (
                self.client
                    .get(format!("{}/api/v1/studies/", self.base))
                    .header("authorization", auth),
                200,
            ),
            Route::PatchResponse => {
                let id = self.responses[worker];
                // What the frameplayer sends after a frame: the data so far and the sequence.
                let body = json!({"data": {"type": "responses", "id": id, "attributes": {
                    "exp_data": {
                        "0-intro": {"frameType": "DEFAULT", "eventTimings": [{"eventType": "nextFrame", "timestamp": "2026-01-01T00:00:00Z"}]},
                        "1-video-consent": {"frameType": "CONSENT", "n": n},
                    },
                    "sequence": ["0-intro", "1-video-consent"],
                    "completed": false,
                }}});
                (
                    self.client
                        .patch(format!("{}/api/v1/responses/{id}/", self.base))
                        .header("authorization", auth)
                        .header("content-type", "application/vnd.api+json")
                        .body(body.to_string()),
                    200,
                )
            }
        };
        let response = request.send().await.context("send")?;
        let status = response.status().as_u16();
        let body = response.bytes().await.context("read the body")?;
        ensure!(
            status == expected,
            "{} answered {status}: {}",
            route.label(),
            String::from_utf8_lossy(&body)
        );
        Ok(())
    }
}

/// Runs up to `limit` requests of `route` (and no longer than `time`); returns each latency and
/// the elapsed wall time.
async fn drive(
    target: &Arc<Target>,
    route: Route,
    limit: usize,
    time: Duration,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let issued = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + time;
    let mut workers = Vec::new();
    for worker in 0..CONNECTIONS {
        let target = target.clone();
        let issued = issued.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if n >= limit || Instant::now() >= deadline {
                    break;
                }
                let sent = Instant::now();
                target.request(route, worker, n).await?;
                latencies.push(sent.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await.context("load worker")??);
    }
    Ok((latencies, started.elapsed()))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Figures {
    route: Route,
    requests: usize,
    rps: f64,
    p50: Duration,
    p99: Duration,
}

/// Seeds the demo data, a full page of active studies, and a participant (with password and
/// activated authenticator) who owns the demo child and one response per connection.
async fn seed(pool: &sqlx::PgPool) -> anyhow::Result<(String, String, Vec<Uuid>)> {
    let demo = lookit_api::demo::seed(pool).await.context("demo seed")?;
    for i in 0..EXTRA_STUDIES {
        sqlx::query(
            "INSERT INTO studies (id, name, lab_id, creator_id, state, public, structure) \
             SELECT $1, $2, lab_id, creator_id, 'active', true, structure FROM studies WHERE id = $3",
        )
        .bind(Uuid::new_v4())
        .bind(format!("Benchmark study {i}"))
        .bind(demo.study)
        .execute(pool)
        .await
        .context("add an active study")?;
    }
    let username = "bench-participant@lookit.local";
    let created = lookit_api::admin::create_researcher(
        pool,
        "bench",
        username,
        Some(SecretString::from(PASSWORD)),
    )
    .await
    .context("create the benchmark participant")?;
    let secret = url::Url::parse(&created.otpauth_uri)?
        .query_pairs()
        .find(|(k, _)| k == "secret")
        .map(|(_, v)| v.to_string())
        .context("no secret in the authenticator URI")?;
    // A participant, not a researcher; the activated authenticator is what token creation needs.
    sqlx::query("UPDATE users SET is_researcher = false, totp_activated = true WHERE id = $1")
        .bind(created.id)
        .execute(pool)
        .await?;
    sqlx::query("UPDATE children SET user_id = $1 WHERE id = $2")
        .bind(created.id)
        .bind(demo.child)
        .execute(pool)
        .await?;
    let mut responses = vec![demo.response];
    for _ in 1..CONNECTIONS {
        let id = Uuid::new_v4();
        sqlx::query("INSERT INTO responses (id, study_id, child_id) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(demo.study)
            .bind(demo.child)
            .execute(pool)
            .await?;
        responses.push(id);
    }
    Ok((username.to_string(), secret, responses))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let (db, pool) = lookit_testkit::migrated_database().await;
    let (username, secret, responses) = seed(&pool).await?;

    let videos = tempfile::tempdir()?;
    let settings = ApiSettings {
        public_url: None,
        environment: "bench".into(),
        session_key: SecretString::from("session-key-for-the-benchmark"),
        pipe_webhook_key: SecretString::from("unused"),
        lambda_secret: SecretString::from("unused"),
        videos: lookit_storage::Storage::folder(videos.path().join("videos"))?,
        builds: lookit_storage::Storage::folder(videos.path().join("builds"))?,
        amqp_url: None,
        cookie_secure: false,
    };
    let app = lookit_api::router(ApiState::new(pool.clone(), settings))
        .route(BARE_PATH, axum::routing::get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(lookit_api::serve(listener, None, app, async {
        let _ = stopped.await;
    }));

    let token = api_token(&reqwest::Client::new(), &base, &username, PASSWORD, &secret).await?;
    let target = Arc::new(Target {
        base,
        token,
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(CONNECTIONS)
            .build()?,
        responses,
    });
    let routes = [Route::Bare, Route::Studies, Route::PatchResponse];
    let page: Value = target
        .client
        .get(format!("{}/api/v1/studies/", target.base))
        .header("authorization", format!("Token {}", target.token))
        .send()
        .await?
        .json()
        .await?;
    let listed = page["data"].as_array().map_or(0, Vec::len);
    ensure!(
        listed == 10,
        "the studies page lists {listed}, not a full page of 10"
    );

    for route in routes {
        drive(&target, route, WARM_UP, ROUND_LIMIT).await?;
    }
    let mut samples: Vec<(Vec<Duration>, Duration)> = routes
        .iter()
        .map(|_| (Vec::new(), Duration::ZERO))
        .collect();
    for round in 1..=ROUNDS {
        for (i, route) in routes.iter().enumerate() {
            let (latencies, elapsed) =
                drive(&target, *route, REQUESTS_PER_ROUND, ROUND_LIMIT).await?;
            eprintln!(
                "round {round}: {:<32} {} requests in {:.2} s",
                route.label(),
                latencies.len(),
                elapsed.as_secs_f64()
            );
            samples[i].0.extend(latencies);
            samples[i].1 += elapsed;
        }
    }
    let _ = stop.send(());
    server.await.context("server task")??;

    let figures: Vec<Figures> = routes
        .iter()
        .zip(samples)
        .map(|(route, (mut latencies, elapsed))| {
            latencies.sort();
            Figures {
                route: *route,
                requests: latencies.len(),
                rps: latencies.len() as f64 / elapsed.as_secs_f64(),
                p50: percentile(&latencies, 0.50),
                p99: percentile(&latencies, 0.99),
            }
        })
        .collect();
    let bare = &figures[0];
    println!(
        "\n{CONNECTIONS} connections, plain HTTP over loopback, {ROUNDS} interleaved rounds\n"
    );
    println!("| route | requests | req/s | p50 | p99 | req/s vs bare | p99 vs bare |");
    println!("| ----- | -------- | ----- | --- | --- | ------------- | ----------- |");
    for f in &figures {
        println!(
            "| {} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.2} | {:.1}× |",
            f.route.label(),
            f.requests,
            f.rps,
            f.p50.as_secs_f64() * 1e3,
            f.p99.as_secs_f64() * 1e3,
            f.rps / bare.rps,
            f.p99.as_secs_f64() / bare.p99.as_secs_f64(),
        );
    }
    drop(pool);
    drop(db);
    Ok(())
}
