//! A world for tunnel tests: a real Postgres database with the migrations, a bore server on
//! loopback, a stand-in Lookit API and a stand-in control panel, each on port 0.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::Json;
use lookit_status::TunnelStatus;
use lookit_testkit::TestDatabase;
use lookit_tunnel::{
    ApiTarget, BoreServer, GuardianSettings, InspectorSettings, ProviderSettings, Tunnel,
    TunnelSettings,
};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the stand-in API saw: one JSON object per request.
#[derive(Clone, Default)]
pub struct ApiLog(Arc<Mutex<Vec<Value>>>);

impl ApiLog {
    pub fn requests(&self) -> Vec<Value> {
        self.0.lock().unwrap().clone()
    }
}

async fn api_echo(
    State(log): State<ApiLog>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Json<Value> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let seen = json!({
        "answered_by": "api",
        "method": method.as_str(),
        "target": uri.to_string(),
        "x_forwarded_host": header("x-forwarded-host"),
        "x_forwarded_proto": header("x-forwarded-proto"),
        "x_pipe_signature": header("x-pipe-signature"),
        "authorization": header("authorization"),
        "body": String::from_utf8_lossy(&body),
    });
    log.0.lock().unwrap().push(seen.clone());
    Json(seen)
}

/// Serves `router` on 127.0.0.1:0 until the token is cancelled.
pub async fn serve(router: axum::Router) -> (SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let shutdown = stop.clone().cancelled_owned();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
            .unwrap()
    });
    (addr, stop)
}

/// What the stand-in API's health route reports, as the real API's `GET /api/health/` does:
/// `"ok"` or why not for the database and the broker, 200 when both are ok, else 503.
#[derive(Clone)]
pub struct ApiHealth(Arc<Mutex<(String, String)>>);

impl Default for ApiHealth {
    fn default() -> Self {
        ApiHealth(Arc::new(Mutex::new(("ok".into(), "ok".into()))))
    }
}

impl ApiHealth {
    pub fn set(&self, database: &str, broker: &str) {
        *self.0.lock().unwrap() = (database.into(), broker.into());
    }
}

async fn api_health(State(health): State<ApiHealth>) -> (StatusCode, Json<Value>) {
    let (database, broker) = health.0.lock().unwrap().clone();
    let status = if database == "ok" && broker == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "database": database, "broker": broker })),
    )
}

fn api_router(log: &ApiLog, health: &ApiHealth) -> axum::Router {
    let health = axum::Router::new()
        .route("/api/health/", axum::routing::get(api_health))
        .with_state(health.clone());
    axum::Router::new()
        .fallback(api_echo)
        .with_state(log.clone())
        .merge(health)
}

pub async fn start_api() -> (SocketAddr, ApiLog, ApiHealth, CancellationToken) {
    let log = ApiLog::default();
    let health = ApiHealth::default();
    let (addr, stop) = serve(api_router(&log, &health)).await;
    (addr, log, health, stop)
}

/// The stand-in API over HTTPS with a certificate for 127.0.0.1 signed by a fresh CA, as the
/// real API is served. Returns the CA certificate (PEM) too; the server runs until the test ends.
pub async fn start_https_api() -> (SocketAddr, ApiLog, Vec<u8>) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let config = axum_server::tls_rustls::RustlsConfig::from_pem(
        cert.pem().into_bytes(),
        key.serialize_pem().into_bytes(),
    )
    .await
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let log = ApiLog::default();
    let server = axum_server::from_tcp_rustls(listener, config).unwrap();
    let app = api_router(&log, &ApiHealth::default()).into_make_service();
    tokio::spawn(async move { server.serve(app).await.unwrap() });
    (addr, log, ca.pem().into_bytes())
}

/// A bore server whose control port can be taken down and brought back.
pub struct BoreHost {
    pub control: SocketAddr,
    stop: CancellationToken,
}

impl BoreHost {
    pub async fn start() -> BoreHost {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener)
    }

    fn serve(listener: TcpListener) -> BoreHost {
        let control = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = BoreServer::new("127.0.0.1".parse().unwrap(), None);
        tokio::spawn(server.run(listener, stop.clone()));
        BoreHost { control, stop }
    }

    /// Settings that share through this server, with a guardian that reacts within the test.
    pub fn settings(&self) -> TunnelSettings {
        TunnelSettings {
            provider: ProviderSettings::Bore {
                server: self.control.to_string().parse().unwrap(),
                secret: None,
            },
            guardian: fast_guardian(),
        }
    }

    /// Takes the server away: its control port and every tunnel close.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Brings a server back on the same control port.
    pub async fn restart(&self) -> BoreHost {
        let listener = TcpListener::bind(self.control).await.unwrap();
        Self::serve(listener)
    }
}

pub struct World {
    /// Kept so the database lives as long as the test.
    pub _db: TestDatabase,
    pub tunnel: Tunnel,
    pub api: SocketAddr,
    pub api_log: ApiLog,
    pub api_health: ApiHealth,
    pub api_stop: CancellationToken,
    pub bore: BoreHost,
}

pub fn fast_guardian() -> GuardianSettings {
    GuardianSettings {
        probe_interval: Duration::from_secs(3600),
        probe_timeout: Duration::from_secs(10),
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
    }
}

/// A tunnel (not started) to the API at `api_url`, trusting `ca_pem` for an `https://` one.
pub fn tunnel_to(
    pool: sqlx::PgPool,
    api_url: &str,
    ca_pem: Option<Vec<u8>>,
    inspector: InspectorSettings,
) -> Tunnel {
    let target = ApiTarget::new(api_url.parse().unwrap(), ca_pem).unwrap();
    Tunnel::new(pool, target, inspector).unwrap()
}

impl World {
    pub async fn new(inspector: InspectorSettings) -> World {
        let (db, pool) = lookit_testkit::migrated_database().await;
        let (api, api_log, api_health, api_stop) = start_api().await;
        let bore = BoreHost::start().await;
        let tunnel = tunnel_to(pool, &format!("http://{api}"), None, inspector);
        World {
            _db: db,
            tunnel,
            api,
            api_log,
            api_health,
            api_stop,
            bore,
        }
    }

    /// Starts sharing through the bore server; returns the public URL.
    pub async fn share(&self) -> String {
        let status = self
            .tunnel
            .start(self.bore.settings(), "ada@lab.example")
            .await
            .unwrap();
        status.public_url.expect("an open tunnel has a public URL")
    }
}

/// Waits (with a generous deadline) until the status satisfies `condition`.
pub async fn wait_for_status(
    rx: &mut watch::Receiver<TunnelStatus>,
    what: &str,
    condition: impl FnMut(&TunnelStatus) -> bool,
) -> TunnelStatus {
    tokio::time::timeout(Duration::from_secs(60), rx.wait_for(condition))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for the tunnel to be {what}"))
        .expect("the status channel is open")
        .clone()
}
