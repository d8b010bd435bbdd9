//! Fixtures for tests that need Postgres or RabbitMQ: each test gets its own database or vhost on
//! the shared servers that `scripts/test-services start` runs (it exports the `LOOKIT_TEST_*`
//! variables read here), so tests run in parallel without seeing each other's data.
//!
//! These are real servers; a test that cannot reach them fails with the command to run, it never
//! silently passes. The one exception is [`SmallDisk`] (a real filesystem the test fills, also
//! under a [`SmallTablespace`] of the test Postgres), which needs root to mount and says so when
//! it skips.

mod small_disk;
mod small_tablespace;

pub use small_disk::SmallDisk;
pub use small_tablespace::SmallTablespace;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};
use url::Url;

/// Installs aws-lc-rs as the process's rustls provider (as the binaries do at start-up), so the
/// HTTPS and AMQP clients of a test work whichever fixture it calls first. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn required_env(name: &str) -> String {
    install_crypto_provider();
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run `eval \"$(scripts/test-services start)\"` first (the test command does this)")
    })
}

/// A database created for one test, dropped (best effort) when the value is dropped.
pub struct TestDatabase {
    name: String,
    url: String,
    admin_url: String,
}

/// Creates an empty database for one test (no migrations applied).
pub async fn fresh_database() -> TestDatabase {
    let admin_url = required_env("LOOKIT_TEST_DATABASE_URL");
    let name = format!("test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .expect("connect to the test Postgres (is scripts/test-services running?)");
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut admin)
        .await
        .expect("create the test database");
    let mut url = Url::parse(&admin_url).expect("LOOKIT_TEST_DATABASE_URL is a URL");
    url.set_path(&name);
    TestDatabase {
        name,
        url: url.to_string(),
        admin_url,
    }
}

/// Creates a database for one test with the app's schema ([`lookit_contracts::MIGRATOR`]) applied,
/// and a pool on it. The database lives as long as the returned [`TestDatabase`].
pub async fn migrated_database() -> (TestDatabase, PgPool) {
    let database = fresh_database().await;
    let pool = database.pool().await;
    lookit_contracts::MIGRATOR
        .run(&pool)
        .await
        .expect("apply the migrations to the test database");
    (database, pool)
}

impl TestDatabase {
    pub fn name(&self) -> &str {
        &self.name
    }
    /// A superuser URL to this database.
    pub fn url(&self) -> &str {
        &self.url
    }
    pub fn connect_options(&self) -> PgConnectOptions {
        self.url
            .parse::<PgConnectOptions>()
            .expect("a URL we built")
            .disable_statement_logging()
    }
    pub async fn pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(10)
            .connect_with(self.connect_options())
            .await
            .expect("connect to the test database")
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Failure only leaves a throw-away database behind.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        on_own_thread(async move {
            if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut admin)
                    .await;
            }
        });
    }
}

/// Runs `work` to its end on a thread of its own, with a runtime of its own: for the `Drop` of a
/// fixture (these and a test's own), which needs async I/O and must work while the test's
/// runtime shuts down or unwinds from a failure. `None` when the thread could not run it.
pub fn on_own_thread<F>(work: F) -> Option<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        Some(runtime.block_on(work))
    })
    .join()
    .ok()
    .flatten()
}

/// A RabbitMQ virtual host created for one test, deleted when the value is dropped.
pub struct TestVhost {
    name: String,
    amqp_url: String,
    management_url: Url,
}

/// Creates a vhost for one test with full permissions for the test user.
pub async fn fresh_vhost() -> TestVhost {
    let amqp =
        Url::parse(&required_env("LOOKIT_TEST_AMQP_URL")).expect("LOOKIT_TEST_AMQP_URL is a URL");
    let management_url =
        Url::parse(&required_env("LOOKIT_TEST_RABBITMQ_MANAGEMENT_URL")).expect("management URL");
    let name = format!("test-{}", uuid::Uuid::new_v4().simple());
    let client = reqwest::Client::new();
    let user = management_url.username().to_string();
    let password = management_url.password().unwrap_or_default().to_string();
    let base = management_base(&management_url);
    client
        .put(format!("{base}/api/vhosts/{name}"))
        .basic_auth(&user, Some(&password))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .expect("create the test vhost");
    client
        .put(format!("{base}/api/permissions/{name}/{user}"))
        .basic_auth(&user, Some(&password))
        .json(&serde_permissions())
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .expect("grant the test user the test vhost");
    let mut amqp_url = amqp.clone();
    amqp_url.set_path(&format!("/{name}"));
    TestVhost {
        name,
        amqp_url: amqp_url.to_string(),
        management_url,
    }
}

fn serde_permissions() -> std::collections::HashMap<&'static str, &'static str> {
    [("configure", ".*"), ("write", ".*"), ("read", ".*")].into()
}

fn management_base(url: &Url) -> String {
    format!(
        "{}://{}:{}",
        url.scheme(),
        url.host_str().unwrap_or("127.0.0.1"),
        url.port_or_known_default().unwrap_or(15672)
    )
}

impl TestVhost {
    pub fn name(&self) -> &str {
        &self.name
    }
    /// AMQP URL of this vhost for the test (administrator) user.
    pub fn amqp_url(&self) -> &str {
        &self.amqp_url
    }
    /// Management API base URL with the test user's credentials in it.
    pub fn management_url(&self) -> &Url {
        &self.management_url
    }

    /// `GET /api/<path>` of the management API as the test user (e.g.
    /// `queues/<vhost>/<queue>`); panics unless it answers with JSON.
    pub async fn management_get(&self, path: &str) -> serde_json::Value {
        let url = &self.management_url;
        reqwest::Client::new()
            .get(format!("{}/api/{path}", management_base(url)))
            .basic_auth(url.username(), url.password())
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|e| panic!("GET /api/{path} of the management API: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET /api/{path} of the management API: {e}"))
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        let url = format!(
            "{}/api/vhosts/{}",
            management_base(&self.management_url),
            self.name
        );
        let user = self.management_url.username().to_string();
        let password = self
            .management_url
            .password()
            .unwrap_or_default()
            .to_string();
        on_own_thread(async move {
            let _ = reqwest::Client::new()
                .delete(url)
                .basic_auth(user, Some(password))
                .send()
                .await;
        });
    }
}

/// One of the shared servers that `scripts/test-services` runs, for fault tests: it really goes
/// down and comes back, for every test using it (so fault tests run alone).
#[derive(Clone, Copy, Debug)]
pub enum TestServer {
    Postgres,
    RabbitMq,
}

impl TestServer {
    fn name(self) -> &'static str {
        match self {
            TestServer::Postgres => "postgres",
            TestServer::RabbitMq => "rabbitmq",
        }
    }

    /// Restarts the server (a fast shutdown, then a start) and waits until it serves again.
    pub async fn restart(self) {
        test_services(&format!("restart-{}", self.name())).await
    }

    /// Stops the server until [`StoppedServer::start`]; the returned value starts it again when
    /// dropped too, so a test that fails half-way leaves it running for the suites after it.
    pub async fn stop(self) -> StoppedServer {
        let stopped = StoppedServer {
            server: self,
            started: false,
        };
        test_services(&format!("stop-{}", self.name())).await;
        stopped
    }
}

/// A shared test server stopped by [`TestServer::stop`].
#[must_use = "the server starts again when this is dropped"]
pub struct StoppedServer {
    server: TestServer,
    started: bool,
}

impl StoppedServer {
    /// Starts the server again and waits until it serves.
    pub async fn start(mut self) {
        test_services(&format!("start-{}", self.server.name())).await;
        self.started = true;
    }
}

impl Drop for StoppedServer {
    fn drop(&mut self) {
        if self.started {
            return;
        }
        let verb = format!("start-{}", self.server.name());
        on_own_thread(async move { test_services(&verb).await });
    }
}

/// Runs one of the `scripts/test-services` verbs (e.g. `restart-rabbitmq`) and waits for it.
/// Its output is discarded so no server it starts can hold the test runner's output pipe open.
async fn test_services(verb: &str) {
    let script = required_env("LOOKIT_TEST_SERVICES");
    let status = tokio::process::Command::new(&script)
        .arg(verb)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .unwrap_or_else(|e| panic!("run {script} {verb}: {e}"));
    assert!(status.success(), "{script} {verb} failed: {status}");
}

/// moto's S3-compatible server, installed by the test command in its Python venv
/// (`pip_tools` in scripts/lib.sh); `LOOKIT_TEST_MOTO_SERVER` points elsewhere.
const MOTO_SERVER: &str = "/var/cache/lookit-local/tools/venv/bin/moto_server";

/// An S3-compatible server (moto) on loopback, one per test binary, started on first use and
/// killed when the test process ends. It accepts any credentials; tests use
/// [`S3Server::ACCESS_KEY_ID`] and [`S3Server::SECRET_ACCESS_KEY`].
pub struct S3Server {
    endpoint: String,
}

static S3_SERVER: tokio::sync::OnceCell<S3Server> = tokio::sync::OnceCell::const_new();

/// The test binary's S3 server, answering requests.
pub async fn s3_server() -> &'static S3Server {
    S3_SERVER.get_or_init(S3Server::start).await
}

impl S3Server {
    pub const ACCESS_KEY_ID: &'static str = "lookit-test";
    pub const SECRET_ACCESS_KEY: &'static str = "lookit-test-secret";
    pub const REGION: &'static str = "us-east-1";

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The S3 storage place `s3://<bucket>/<prefix>` on this server, with the test credentials.
    pub fn location(&self, bucket: &str, prefix: &str) -> lookit_storage::StoreLocation {
        lookit_storage::StoreLocation::S3(lookit_storage::S3Location {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            region: Self::REGION.to_string(),
            endpoint: Some(self.endpoint.parse().expect("the server's URL")),
            access_key_id: Some(Self::ACCESS_KEY_ID.into()),
            secret_access_key: Some(Self::SECRET_ACCESS_KEY.into()),
        })
    }

    /// Creates an empty bucket for one test and returns its name.
    pub async fn fresh_bucket(&self) -> String {
        let name = format!("test-{}", uuid::Uuid::new_v4().simple());
        reqwest::Client::new()
            .put(format!("{}/{name}", self.endpoint))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .expect("create a bucket on the test S3 server");
        name
    }

    async fn start() -> S3Server {
        install_crypto_provider();
        let binary =
            std::env::var("LOOKIT_TEST_MOTO_SERVER").unwrap_or_else(|_| MOTO_SERVER.into());
        let (port_sender, port) = std::sync::mpsc::channel();
        // The server is spawned from a thread that lives exactly as long as the server (it reads
        // the server's log until it closes): the kernel kills the server when the thread that
        // started it ends (PR_SET_PDEATHSIG), i.e. when the test process exits, never earlier.
        std::thread::spawn(move || {
            use std::io::BufRead;
            use std::os::unix::process::CommandExt;
            let mut command = std::process::Command::new(&binary);
            command
                .args(["-H", "127.0.0.1", "-p", "0"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped());
            // SAFETY: only an async-signal-safe prctl call between fork and exec.
            unsafe {
                command.pre_exec(|| {
                    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                        .map_err(std::io::Error::from)
                });
            }
            let mut child = match command.spawn() {
                Ok(child) => child,
                Err(e) => {
                    let _ = port_sender.send(Err(format!(
                        "start {binary}: {e} (the test command installs moto in its venv)"
                    )));
                    return;
                }
            };
            let log = std::io::BufReader::new(child.stderr.take().expect("piped"));
            // werkzeug announces `Running on http://127.0.0.1:<port>`; the rest of the log is
            // read (and dropped) so the server never blocks on a full pipe.
            for line in log.lines().map_while(Result::ok) {
                if let Some(port) = line
                    .split("http://127.0.0.1:")
                    .nth(1)
                    .and_then(|rest| rest.trim().parse::<u16>().ok())
                {
                    let _ = port_sender.send(Ok(port));
                }
            }
            let _ = port_sender.send(Err(format!("{binary} exited: {:?}", child.wait())));
        });
        let port = tokio::task::spawn_blocking(move || {
            port.recv_timeout(std::time::Duration::from_secs(60))
                .unwrap_or_else(|e| Err(format!("no port announced by moto: {e}")))
        })
        .await
        .expect("waiting task")
        .unwrap_or_else(|e| panic!("the test S3 server did not start: {e}"));
        let endpoint = format!("http://127.0.0.1:{port}");
        // The port is announced just before the server accepts; wait until it answers.
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while client.get(&endpoint).send().await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the test S3 server at {endpoint} does not answer"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        S3Server { endpoint }
    }
}
