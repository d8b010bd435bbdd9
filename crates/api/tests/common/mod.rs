//! The API spawned in-process on port 0 over a fresh database, plus helpers to log in as the
//! different kinds of user.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod broker;

use std::net::SocketAddr;

use lookit_api::{ApiSettings, ApiState};
use lookit_testkit::TestDatabase;
use reqwest::header::HeaderMap;
use secrecy::SecretString;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::oneshot;
use url::Url;
use uuid::Uuid;

pub const PUBLIC_URL: &str = "https://tunnel.example.org";
pub const PIPE_KEY: &str = "pipe-webhook-key-for-tests";
pub const LAMBDA_SECRET: &str = "lambda-secret-for-tests";
pub const PASSWORD: &str = "correct horse battery";

pub struct TestApp {
    pub base: String,
    pub addr: SocketAddr,
    pub pool: PgPool,
    pub state: ApiState,
    pub client: reqwest::Client,
    /// The local video folder (unused when `AppOptions::videos` puts videos elsewhere).
    pub videos: tempfile::TempDir,
    _builds: tempfile::TempDir,
    _db: TestDatabase,
    _shutdown: oneshot::Sender<()>,
}

#[derive(Default)]
pub struct AppOptions {
    pub amqp_url: Option<String>,
    pub tls: Option<lookit_api::TlsConfig>,
    pub cookie_secure: bool,
    /// How long a request waits for a database connection (as the instance bounds it); sqlx's
    /// default when `None`.
    pub acquire_timeout: Option<std::time::Duration>,
    /// Video storage instead of a local folder (e.g. the test S3 server).
    pub videos: Option<lookit_storage::StoreLocation>,
    /// Built-study storage instead of a local folder.
    pub builds: Option<lookit_storage::StoreLocation>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(AppOptions::default()).await
}

/// The API with a broker, as the instance runs it: a fresh vhost with the work queues declared
/// as the stack declares them, the API checking it (`/api/health/`), and the outbox relay
/// publishing the API's jobs to it (stop it with [`RunningRelay::stop`]).
pub async fn spawn_app_with_broker() -> (TestApp, lookit_testkit::TestVhost, RunningRelay) {
    let vhost = lookit_testkit::fresh_vhost().await;
    let _ = broker::declare_queues(vhost.amqp_url())
        .await
        .close(200, "declared")
        .await;
    let app = spawn_app_with(AppOptions {
        amqp_url: Some(vhost.amqp_url().to_string()),
        ..Default::default()
    })
    .await;
    let relay = RunningRelay::start(&app.pool, vhost.amqp_url());
    (app, vhost, relay)
}

pub async fn spawn_app_with(options: AppOptions) -> TestApp {
    lookit_testkit::install_crypto_provider();
    let (db, mut pool) = lookit_testkit::migrated_database().await;
    if let Some(timeout) = options.acquire_timeout {
        pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(timeout)
            .connect_with(db.connect_options())
            .await
            .expect("connect to the test database");
    }
    let videos = tempfile::tempdir().expect("temp dir");
    let builds = tempfile::tempdir().expect("temp dir");
    let open = |place: Option<lookit_storage::StoreLocation>, folder: &std::path::Path| {
        place
            .unwrap_or_else(|| lookit_storage::StoreLocation::Folder(folder.to_path_buf()))
            .open()
            .expect("open the test storage")
    };
    let settings = ApiSettings {
        public_url: Some(Url::parse(PUBLIC_URL).unwrap()),
        environment: "test".into(),
        session_key: SecretString::from("session-key-for-tests"),
        pipe_webhook_key: SecretString::from(PIPE_KEY),
        lambda_secret: SecretString::from(LAMBDA_SECRET),
        videos: open(options.videos, videos.path()),
        builds: open(options.builds, builds.path()),
        amqp_url: options.amqp_url.map(SecretString::from),
        cookie_secure: options.cookie_secure,
    };
    let state = ApiState::new(pool.clone(), settings);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let scheme = if options.tls.is_some() {
        "https"
    } else {
        "http"
    };
    tokio::spawn(lookit_api::run(
        listener,
        options.tls,
        state.clone(),
        async {
            let _ = rx.await;
        },
    ));
    TestApp {
        base: format!("{scheme}://{addr}"),
        addr,
        pool,
        state,
        client: reqwest::Client::new(),
        videos,
        _builds: builds,
        _db: db,
        _shutdown: tx,
    }
}

/// Pipe's `X-Pipe-Signature` for `payload` sent to `url` (the public URL Pipe called).
pub fn pipe_signature(url: &str, payload: &str) -> String {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(PIPE_KEY.as_bytes()).unwrap();
    mac.update(format!("{url}{payload}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The Lambda's `X-AWS-Lambda-HMAC-Sig` for a video document with these `attributes`.
pub fn lambda_signature(attributes: &Value) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(LAMBDA_SECRET.as_bytes()).unwrap();
    mac.update(serde_json::to_string(attributes).unwrap().as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Pipe's `video_copied_s3` event: the video `video_name` is to be called `payload`.
pub fn pipe_payload(video_name: &str, payload: &str, status: &str) -> String {
    json!({"version": "1.0", "event": "video_copied_s3", "data": {
        "s3UploadStatus": status, "videoName": video_name, "type": "MP4", "size": 493534,
        "id": "123", "url": "https://s3/x.mp4", "snapshotUrl": "https://s3/x.jpg",
        "bucket": "bucket", "region": "us-east-1", "acl": "public-read", "payload": payload,
    }})
    .to_string()
}

/// A logged-in browser session: the cookie and its CSRF token.
#[derive(Clone, Debug)]
pub struct Session {
    pub cookie: String,
    pub csrf: String,
}

/// A user created for a test.
pub struct TestUser {
    pub id: Uuid,
    pub username: String,
    pub totp_secret: String,
}

impl TestUser {
    pub fn code(&self) -> String {
        lookit_api_totp(&self.totp_secret, &self.username)
            .generate_current()
            .unwrap()
    }
}

pub fn lookit_api_totp(secret: &str, account: &str) -> totp_rs::TOTP {
    totp_rs::TOTP::new(
        totp_rs::Algorithm::SHA1,
        6,
        1,
        30,
        totp_rs::Secret::Encoded(secret.into()).to_bytes().unwrap(),
        Some("Lookit-test".into()),
        account.into(),
    )
    .unwrap()
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A user with the test password: `researcher` with an authenticator `activated` or not.
    pub async fn user(&self, researcher: bool, activated: bool) -> TestUser {
        let username = format!("{}@example.org", Uuid::new_v4().simple());
        let created = lookit_api::admin::create_researcher(
            &self.pool,
            "test",
            &username,
            Some(SecretString::from(PASSWORD)),
        )
        .await
        .expect("create user");
        let uri = Url::parse(&created.otpauth_uri).unwrap();
        let secret = uri
            .query_pairs()
            .find(|(k, _)| k == "secret")
            .map(|(_, v)| v.to_string())
            .unwrap();
        sqlx::query("UPDATE users SET is_researcher = $2, totp_activated = $3 WHERE id = $1")
            .bind(created.id)
            .bind(researcher)
            .bind(activated)
            .execute(&self.pool)
            .await
            .unwrap();
        TestUser {
            id: created.id,
            username,
            totp_secret: secret,
        }
    }

    pub async fn make_staff(&self, user: &TestUser) {
        sqlx::query("UPDATE users SET is_staff = true WHERE id = $1")
            .bind(user.id)
            .execute(&self.pool)
            .await
            .unwrap();
    }

    /// POST /api/auth/login/; returns the status, body and session (when a cookie was set).
    pub async fn login(
        &self,
        username: &str,
        password: &str,
    ) -> (u16, Value, Option<Session>, HeaderMap) {
        let response = self
            .client
            .post(self.url("/api/auth/login/"))
            .json(&json!({"username": username, "password": password}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let cookie = headers
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::to_string);
        let body: Value = response.json().await.unwrap();
        let session = cookie.map(|cookie| Session {
            cookie,
            csrf: body["csrf_token"].as_str().unwrap_or_default().to_string(),
        });
        (status, body, session, headers)
    }

    /// A complete session of the user (password, and the code when activated).
    pub async fn session(&self, user: &TestUser) -> Session {
        let (status, body, session, _) = self.login(&user.username, PASSWORD).await;
        assert_eq!(status, 200, "{body}");
        let session = session.expect("session cookie");
        if body["second_factor"] == "required" {
            let response = self
                .post(
                    &session,
                    "/api/auth/login/code/",
                    json!({"code": user.code()}),
                )
                .await;
            assert_eq!(response.status(), 204);
        }
        session
    }

    /// A fully logged-in researcher (activated authenticator) in a new approved lab.
    pub async fn researcher(&self) -> (TestUser, Session, Uuid) {
        let user = self.user(true, true).await;
        let lab = self.lab(true).await;
        sqlx::query("INSERT INTO lab_researchers (lab_id, user_id) VALUES ($1, $2)")
            .bind(lab)
            .bind(user.id)
            .execute(&self.pool)
            .await
            .unwrap();
        let session = self.session(&user).await;
        (user, session, lab)
    }

    pub async fn lab(&self, approved: bool) -> Uuid {
        let id = Uuid::new_v4();
        sqlx::query("INSERT INTO labs (id, name, approved_to_test) VALUES ($1, 'Lab', $2)")
            .bind(id)
            .bind(approved)
            .execute(&self.pool)
            .await
            .unwrap();
        id
    }

    pub async fn study(&self, lab: Uuid, state: &str) -> Uuid {
        let id = Uuid::new_v4();
        sqlx::query("INSERT INTO studies (id, name, lab_id, state) VALUES ($1, 'Study', $2, $3)")
            .bind(id)
            .bind(lab)
            .bind(state)
            .execute(&self.pool)
            .await
            .unwrap();
        id
    }

    pub async fn child(&self, user: Uuid) -> Uuid {
        let id = Uuid::new_v4();
        sqlx::query("INSERT INTO children (id, user_id, given_name, birthday) VALUES ($1, $2, 'Kid', '2023-01-01')")
            .bind(id)
            .bind(user)
            .execute(&self.pool)
            .await
            .unwrap();
        id
    }

    pub async fn response(&self, study: Uuid, child: Uuid) -> Uuid {
        let id = Uuid::new_v4();
        sqlx::query("INSERT INTO responses (id, study_id, child_id) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(study)
            .bind(child)
            .execute(&self.pool)
            .await
            .unwrap();
        id
    }

    /// GET `path` without a session, as a participant who is not logged in or a monitor does.
    pub async fn get_without_session(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// `GET /api/health/` (no session): its status and body.
    pub async fn health(&self) -> (u16, Value) {
        let response = self.get_without_session("/api/health/").await;
        let status = response.status().as_u16();
        (status, response.json().await.expect("health is JSON"))
    }

    /// A researcher's build request for `study` (the dashboard's Build button).
    pub async fn request_build(&self, session: &Session, study: Uuid) -> reqwest::Response {
        self.post(
            session,
            &format!("/api/researcher/studies/{study}/builds/"),
            json!({}),
        )
        .await
    }

    pub async fn get(&self, session: &Session, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .header("cookie", &session.cookie)
            .send()
            .await
            .unwrap()
    }

    pub async fn post(&self, session: &Session, path: &str, body: Value) -> reqwest::Response {
        self.send(reqwest::Method::POST, session, path, body).await
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        session: &Session,
        path: &str,
        body: Value,
    ) -> reqwest::Response {
        self.client
            .request(method, self.url(path))
            .header("cookie", &session.cookie)
            .header("x-csrftoken", &session.csrf)
            .json(&body)
            .send()
            .await
            .unwrap()
    }
}

/// The `detail` of the first JSON:API error object of a response (panics if there is none).
pub async fn error_detail(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("errors are JSON");
    let detail = body["errors"][0]["detail"]
        .as_str()
        .unwrap_or_else(|| panic!("no JSON:API error object in {body}"))
        .to_string();
    assert_eq!(body["errors"][0]["status"], status.to_string());
    (status, detail)
}

/// Polls `condition` until it holds (there is no event to wait on), failing after a minute.
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

pub async fn published_jobs(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM job_outbox WHERE published_at IS NOT NULL")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The outbox relay of `pool` publishing to `amqp_url`, running until [`RunningRelay::stop`].
pub struct RunningRelay {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningRelay {
    pub fn start(pool: &PgPool, amqp_url: &str) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(lookit_api::outbox::OutboxRelay::run(
            pool.clone(),
            SecretString::from(amqp_url.to_string()),
            async {
                let _ = stopped.await;
            },
        ));
        Self { stop, task }
    }

    /// Stops the relay; fails the test if it ended with an error.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}
