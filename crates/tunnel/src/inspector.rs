//! The inspector proxy: the only thing the tunnel forwards to. It listens on loopback, sends
//! every request on to the Lookit API (and nowhere else: the Host header and absolute-form
//! request targets cannot redirect it), and records each exchange.
//!
//! Redaction: with capture off (the default) only sizes are kept, plus the values of a short
//! list of harmless headers; query strings read `?[redacted]`. With capture on, bodies (up to
//! the cap), queries and header values are kept, except credentials, which are never stored.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use chrono::Utc;
use lookit_status::TunnelStatus;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use uuid::Uuid;

use crate::guardian::{ApiHealth, HopResult};
use crate::settings::{ApiTarget, InspectorSettings};
use crate::store::{NewRecord, RecordedRequest, TunnelStore};
use crate::TunnelError;

pub(crate) const REDACTED: &str = "[redacted]";
/// Header carrying the guardian's probe nonce; answered by the proxy itself, never forwarded.
pub(crate) const PROBE_HEADER: &str = "x-lookit-tunnel-probe";
/// The Lookit API's health route; see [`HealthReport`].
const HEALTH_PATH: &str = "/api/health/";
/// The health report's `broker` when the API runs without one: nothing to check.
const BROKER_NOT_CONFIGURED: &str = "not configured";
/// Largest request body the proxy accepts (Pipe and Lambda webhooks are a few KiB).
const MAX_REQUEST_BYTES: usize = 32 * 1024 * 1024;

/// Header values that are never stored, whatever the capture setting.
const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-csrftoken",
    "x-api-key",
];
/// Header values stored even with capture off: they describe the request, they do not carry it.
const HARMLESS_HEADERS: &[&str] = &[
    "accept",
    "accept-encoding",
    "accept-language",
    "cache-control",
    "content-encoding",
    "content-length",
    "content-type",
    "date",
    "etag",
    "host",
    "last-modified",
    "location",
    "server",
    "user-agent",
    "vary",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
];
/// Connection-level headers that must not be passed through a proxy (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The inspector proxy and its record. Cheap to share (`Arc`).
pub struct Inspector {
    api: ApiTarget,
    client: reqwest::Client,
    settings: InspectorSettings,
    store: TunnelStore,
    /// The running sharing session, which recorded requests count towards.
    session_id: std::sync::RwLock<Option<Uuid>>,
    /// The guardian's current status: the public URL's scheme becomes `X-Forwarded-Proto`.
    status: watch::Receiver<TunnelStatus>,
    pub(crate) probe_nonce: String,
}

/// The body of the API's health route: `"ok"` or why not, for each.
#[derive(Deserialize)]
struct HealthReport {
    database: String,
    broker: String,
}

/// One forwarded exchange.
struct Exchange {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    record_id: Option<i64>,
}

impl Inspector {
    pub(crate) fn new(
        api: ApiTarget,
        settings: InspectorSettings,
        store: TunnelStore,
        status: watch::Receiver<TunnelStatus>,
    ) -> Result<Self, TunnelError> {
        let mut client = reqwest::Client::builder()
            // Redirects go back to the caller, as they would without the tunnel.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy();
        if let Some(pem) = &api.ca_cert_pem {
            let ca =
                reqwest::Certificate::from_pem(pem).map_err(|e| TunnelError::InvalidSetting {
                    key: "api CA certificate",
                    reason: e.to_string(),
                })?;
            client = client.add_root_certificate(ca);
        }
        let client = client.build().context("build the API client")?;
        Ok(Inspector {
            api,
            client,
            settings,
            store,
            session_id: std::sync::RwLock::new(None),
            status,
            probe_nonce: Uuid::new_v4().simple().to_string(),
        })
    }

    /// The newest `limit` recorded requests, newest first.
    pub async fn recent(&self, limit: u32) -> Result<Vec<RecordedRequest>, TunnelError> {
        Ok(self.store.recent(limit).await?)
    }

    /// Sends a recorded request to the API again, records it (marked as a replay) and returns
    /// the new record. Refused when what was recorded is not the whole request (body or query
    /// not captured); redacted headers are left out.
    pub async fn replay(&self, id: i64) -> Result<RecordedRequest, TunnelError> {
        let source = self
            .store
            .replay_source(id)
            .await?
            .ok_or(TunnelError::UnknownRequest(id))?;
        if source.target.contains(REDACTED) {
            return Err(TunnelError::NotReplayable {
                id,
                reason: "its query string was not recorded (turn on inspector capture)",
            });
        }
        let body = match source.request_body {
            Some(body) if source.request_body_complete => body,
            _ if source.request_bytes == 0 => Vec::new(),
            _ => {
                return Err(TunnelError::NotReplayable {
                    id,
                    reason: "its body was not recorded in full (turn on inspector capture, or \
                             raise the body cap)",
                })
            }
        };
        let method = Method::from_bytes(source.method.as_bytes()).context("recorded method")?;
        let mut headers = HeaderMap::new();
        for (name, value) in source.request_headers {
            if value == REDACTED {
                continue;
            }
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                headers.append(name, value);
            }
        }
        let exchange = self
            .exchange(method, &source.target, headers, Bytes::from(body), Some(id))
            .await;
        let record_id = exchange.record_id.ok_or_else(|| {
            TunnelError::Internal(anyhow::anyhow!("the replay could not be recorded"))
        })?;
        self.store
            .get(record_id)
            .await?
            .ok_or(TunnelError::UnknownRequest(record_id))
    }

    /// Forwards one request to the API and records it.
    async fn exchange(
        &self,
        method: Method,
        target: &str,
        mut headers: HeaderMap,
        body: Bytes,
        replay_of: Option<i64>,
    ) -> Exchange {
        let received_at = Utc::now();
        let started = Instant::now();
        let recorded_request_headers = self.recorded_headers(&headers);
        let original_host = headers
            .get(axum::http::header::HOST)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static(""));
        strip_hop_by_hop(&mut headers);
        headers.remove(axum::http::header::HOST);
        headers.remove(PROBE_HEADER);
        // The API checks webhook signatures over the public URL the caller used.
        headers.insert("x-forwarded-host", original_host);
        headers.insert("x-forwarded-proto", self.public_scheme());

        let url = format!(
            "{}://{}{}",
            self.api.base_url.scheme(),
            self.api_authority(),
            target
        );
        let outcome = self
            .client
            .request(method.clone(), &url)
            .headers(headers)
            .body(body.clone())
            .send()
            .await;
        let outcome = match outcome {
            Ok(response) => {
                let status = response.status();
                let mut headers = response.headers().clone();
                match response.bytes().await {
                    Ok(bytes) => {
                        strip_hop_by_hop(&mut headers);
                        Ok((status, headers, bytes))
                    }
                    Err(e) => Err(format!("reading the API's response failed: {e}")),
                }
            }
            Err(e) => Err(format!(
                "the Lookit API at {} did not answer: {e}",
                self.api_authority()
            )),
        };
        let (status, response_headers, response_body, error) = match outcome {
            Ok((status, headers, body)) => (status, headers, body, None),
            Err(error) => {
                warn!("{error}");
                (
                    StatusCode::BAD_GATEWAY,
                    HeaderMap::new(),
                    Bytes::from_static(
                        b"The Lookit API behind this tunnel is not reachable right now.\n",
                    ),
                    Some(error),
                )
            }
        };

        let cap = self.settings.body_cap_bytes;
        let captured = |bytes: &Bytes| {
            (self.settings.capture && !bytes.is_empty())
                .then(|| bytes[..bytes.len().min(cap)].to_vec())
        };
        let record = NewRecord {
            session_id: self.session(),
            received_at,
            method: method.to_string(),
            target: self.recorded_target(target),
            status: error.is_none().then_some(status.as_u16()),
            duration_ms: started.elapsed().as_millis() as i64,
            request_bytes: body.len() as i64,
            response_bytes: response_body.len() as i64,
            request_headers: recorded_request_headers,
            response_headers: self.recorded_headers(&response_headers),
            request_body: captured(&body),
            request_body_complete: self.settings.capture && body.len() <= cap,
            response_body: captured(&response_body),
            error,
            replay_of,
        };
        let record_id = match self.store.record(record, self.settings.keep_requests).await {
            Ok(id) => Some(id),
            Err(e) => {
                warn!("the inspector could not record a request: {e:#}");
                None
            }
        };
        Exchange {
            status,
            headers: response_headers,
            body: response_body,
            record_id,
        }
    }

    pub(crate) fn set_session(&self, session: Option<Uuid>) {
        *self.session_id.write().unwrap_or_else(|p| p.into_inner()) = session;
    }

    fn session(&self) -> Option<Uuid> {
        *self.session_id.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the API's health route (`GET /api/health/`), over the same client and address the
    /// proxy forwards to, whether it and its database and broker work. An API without that
    /// route (404) is reachable, with its database and broker unchecked.
    pub(crate) async fn check_api(&self, timeout: std::time::Duration) -> ApiHealth {
        let url = format!(
            "{}://{}{HEALTH_PATH}",
            self.api.base_url.scheme(),
            self.api_authority()
        );
        let response = match self.client.get(&url).timeout(timeout).send().await {
            Ok(response) => response,
            // The API took the request but its health route waits on something behind it.
            Err(e) if e.is_timeout() => {
                return ApiHealth::unreachable(format!(
                    "the Lookit API at {} did not answer its health route within {} s: its \
                     database or broker may be hanging",
                    self.api_authority(),
                    timeout.as_secs()
                ))
            }
            Err(e) => {
                return ApiHealth::unreachable(format!(
                    "the Lookit API at {} does not answer: {}",
                    self.api_authority(),
                    error_chain(&e)
                ))
            }
        };
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return ApiHealth {
                api: HopResult::Ok,
                database: HopResult::NotChecked,
                broker: HopResult::NotChecked,
            };
        }
        // The health route answers 200 when all is well and 503 when something behind it is
        // down; either way the body says what.
        let report = match status {
            StatusCode::OK | StatusCode::SERVICE_UNAVAILABLE => {
                let body = response.bytes().await.unwrap_or_default();
                serde_json::from_slice::<HealthReport>(&body).ok()
            }
            _ => None,
        };
        let Some(report) = report else {
            return ApiHealth::unreachable(format!(
                "the Lookit API at {} answered {status} to {HEALTH_PATH} instead of its health report",
                self.api_authority()
            ));
        };
        ApiHealth {
            api: HopResult::Ok,
            database: match report.database.as_str() {
                "ok" => HopResult::Ok,
                _ => HopResult::Failed(report.database),
            },
            broker: match report.broker.as_str() {
                "ok" => HopResult::Ok,
                BROKER_NOT_CONFIGURED => HopResult::NotChecked,
                _ => HopResult::Failed(report.broker),
            },
        }
    }

    fn api_authority(&self) -> String {
        let url = &self.api.base_url;
        match (url.host_str(), url.port()) {
            (Some(host), Some(port)) if host.contains(':') => format!("[{host}]:{port}"),
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_string(),
            (None, _) => String::new(),
        }
    }

    fn public_scheme(&self) -> HeaderValue {
        let status = self.status.borrow();
        match status.public_url.as_deref() {
            Some(url) if url.starts_with("http://") => HeaderValue::from_static("http"),
            _ => HeaderValue::from_static("https"),
        }
    }

    fn recorded_target(&self, target: &str) -> String {
        match target.split_once('?') {
            Some((path, _)) if !self.settings.capture => format!("{path}?{REDACTED}"),
            _ => target.to_string(),
        }
    }

    fn recorded_headers(&self, headers: &HeaderMap) -> Vec<(String, String)> {
        headers
            .iter()
            .filter(|(name, _)| name.as_str() != PROBE_HEADER)
            .map(|(name, value)| {
                let name = name.as_str();
                let shown = !CREDENTIAL_HEADERS.contains(&name)
                    && (self.settings.capture || HARMLESS_HEADERS.contains(&name));
                let value = if shown {
                    String::from_utf8_lossy(value.as_bytes()).into_owned()
                } else {
                    REDACTED.to_string()
                };
                (name.to_string(), value)
            })
            .collect()
    }
}

/// An error with its causes (`reqwest` shows only the outermost, "error sending request").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too.
    let named: Vec<String> = headers
        .get_all(axum::http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|n| n.trim().to_ascii_lowercase()))
        .collect();
    for name in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        headers.remove(name);
    }
}

/// Serves the inspector proxy on `listener` until `shutdown`.
pub async fn run(
    listener: TcpListener,
    inspector: Arc<Inspector>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = Router::new().fallback(proxy).with_state(inspector);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("serve the inspector proxy")
}

async fn proxy(State(inspector): State<Arc<Inspector>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    if let Some(nonce) = parts.headers.get(PROBE_HEADER) {
        if nonce.as_bytes() == inspector.probe_nonce.as_bytes() {
            return (StatusCode::OK, inspector.probe_nonce.clone()).into_response();
        }
    }
    let body = match axum::body::to_bytes(body, MAX_REQUEST_BYTES).await {
        Ok(body) => body,
        Err(_) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                "Requests through the tunnel are limited to 32 MiB.\n",
            )
                .into_response()
        }
    };
    // Only the path and query are used: an absolute-form target (`GET http://other:port/`)
    // must not reach anything but the API.
    let target = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/")
        .to_string();
    let exchange = inspector
        .exchange(parts.method, &target, parts.headers, body, None)
        .await;
    let mut response = Response::new(Body::from(exchange.body));
    *response.status_mut() = exchange.status;
    *response.headers_mut() = exchange.headers;
    response
}

/// Binds the proxy on loopback (port chosen by the OS).
pub(crate) async fn bind() -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .context("bind the inspector proxy on 127.0.0.1")?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}
