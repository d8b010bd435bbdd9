//! `lookit-worker`: the worker on its own, configured by environment variables. The app's
//! `lookit-local worker` command is the user-facing way to run it; this binary lets the tests
//! kill a real worker process in the middle of a build.

use std::path::PathBuf;

use anyhow::Context as _;
use lookit_worker::{run, WorkerSettings};
use secrecy::SecretString;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

fn required(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let database_url = SecretString::from(required("LOOKIT_WORKER_DATABASE_URL")?);
    let mut settings = WorkerSettings::new(
        SecretString::from(required("LOOKIT_WORKER_AMQP_URL")?),
        required("LOOKIT_WORKER_BUILDER_IMAGE")?,
        PathBuf::from(required("LOOKIT_WORKER_BUILDS_DIR")?),
    );
    settings.smtp_url = std::env::var("LOOKIT_WORKER_SMTP_URL")
        .ok()
        .map(SecretString::from);
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .connect(secrecy::ExposeSecret::expose_secret(&database_url))
        .await
        .context("connect to Postgres")?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("install the SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        stop.cancel();
    });
    let (events, _) = tokio::sync::broadcast::channel(1024);
    run(pool, settings, events, shutdown).await
}
