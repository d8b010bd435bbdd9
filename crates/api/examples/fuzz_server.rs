//! The API served for `scripts/api-fuzz` (schemathesis against `/api/openapi.json`): the real
//! router over HTTPS with a local CA, on a fresh database of the test Postgres with the demo data
//! and a researcher of the demo lab whose API token authenticates the fuzzer.
//!
//! ```sh
//! eval "$(scripts/test-services start)"
//! cargo run -p lookit-api --example fuzz_server
//! ```
//!
//! Prints `LOOKIT_FUZZ_URL=`, `LOOKIT_FUZZ_CA=` (the CA certificate's path) and
//! `LOOKIT_FUZZ_TOKEN=` lines, then `ready`, and serves until its standard input closes or it
//! gets SIGTERM/SIGINT; the database and certificates are removed then.

#[path = "common/api_token.rs"]
mod api_token;

use anyhow::Context;
use lookit_api::tls::LocalCa;
use lookit_api::{ApiSettings, ApiState};
use secrecy::SecretString;
use tokio::io::AsyncReadExt;

const USERNAME: &str = "fuzz-researcher@lookit.local";
const PASSWORD: &str = "fuzzing password 1";

/// A researcher of the demo lab with password and activated authenticator; returns the
/// authenticator secret.
async fn seed(pool: &sqlx::PgPool) -> anyhow::Result<String> {
    let demo = lookit_api::demo::seed(pool).await.context("demo seed")?;
    let created = lookit_api::admin::create_researcher(
        pool,
        "fuzz",
        USERNAME,
        Some(SecretString::from(PASSWORD)),
    )
    .await
    .context("create the fuzzing researcher")?;
    sqlx::query("UPDATE users SET totp_activated = true WHERE id = $1")
        .bind(created.id)
        .execute(pool)
        .await?;
    sqlx::query("INSERT INTO lab_researchers (lab_id, user_id) VALUES ($1, $2)")
        .bind(demo.lab)
        .bind(created.id)
        .execute(pool)
        .await?;
    url::Url::parse(&created.otpauth_uri)?
        .query_pairs()
        .find(|(k, _)| k == "secret")
        .map(|(_, v)| v.to_string())
        .context("no secret in the authenticator URI")
}

/// Completes on SIGTERM, SIGINT or the end of standard input (the script that started us ended).
async fn stopped() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let stdin_closed = async {
        let mut stdin = tokio::io::stdin();
        let mut buffer = [0u8; 64];
        while matches!(stdin.read(&mut buffer).await, Ok(n) if n > 0) {}
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { if let Some(t) = terminate.as_mut() { t.recv().await; } else { std::future::pending::<()>().await } } => {}
        _ = stdin_closed => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let (_db, pool) = lookit_testkit::migrated_database().await;
    let totp_secret = seed(&pool).await?;

    let files = tempfile::tempdir()?;
    let ca = LocalCa::load_or_create(&files.path().join("certs")).context("local CA")?;
    let settings = ApiSettings {
        public_url: None,
        environment: "fuzz".into(),
        session_key: SecretString::from("session-key-for-fuzzing"),
        pipe_webhook_key: SecretString::from("pipe-key-for-fuzzing"),
        lambda_secret: SecretString::from("lambda-secret-for-fuzzing"),
        videos: lookit_storage::Storage::folder(files.path().join("videos"))?,
        builds: lookit_storage::Storage::folder(files.path().join("builds"))?,
        amqp_url: None,
        cookie_secure: true,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    // `localhost` and 127.0.0.1 are both in the certificate.
    let base = format!("https://127.0.0.1:{}", listener.local_addr()?.port());
    let (stop, stop_signal) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(lookit_api::run(
        listener,
        Some(ca.server_config()?),
        ApiState::new(pool.clone(), settings),
        async {
            let _ = stop_signal.await;
        },
    ));
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.ca_pem().as_bytes())?)
        .build()?;
    let token = api_token::api_token(&client, &base, USERNAME, PASSWORD, &totp_secret)
        .await
        .context("get an API token")?;
    println!("LOOKIT_FUZZ_URL={base}");
    println!("LOOKIT_FUZZ_CA={}", ca.ca_certificate_path().display());
    println!("LOOKIT_FUZZ_TOKEN={token}");
    println!("ready");

    stopped().await;
    let _ = stop.send(());
    server.await??;
    pool.close().await;
    Ok(())
}
