//! The Lookit Local control panel: an HTTP server on 127.0.0.1 that serves the embedded UI and
//! the panel API (`/api`, JSON, plus Server-Sent Events at `/api/events`) the UI uses in the
//! desktop window and in a browser alike.
//!
//! Invariants:
//! - It listens where it is told; [`run`] refuses a listener that is not on a loopback address.
//! - Every `/api` request carries the instance token; every request names the panel in its Host
//!   header and, if it has an Origin, comes from the panel's own origin (see [`access`]).
//! - It knows nothing of how the stack runs: everything goes through [`ControlPlane`].

mod access;
mod api;
mod byte_range;
mod control_plane;
mod error;
mod ui;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use axum::http::header::{CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_FRAME_OPTIONS};
use axum::http::HeaderValue;
use axum::routing::get;
use axum::Router;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

pub use control_plane::{
    ActionError, BuildAction, BuildSummary, ByteStream, ControlPlane, DeadLetter, DeadLetterAction,
    EmailHeader, EmailMessage, EmailSummary, HopOutcome, InspectedRequest, InvalidServiceName,
    NewBuild, NotificationLevel, PanelEvent, ServiceAction, ServiceName, StackAction, StoredState,
    StudySummary, TunnelAction, TunnelCheck, TunnelHop, TunnelOptions, VideoContent, VideoFile,
    VideoSummary,
};

/// What the panel serves: the instance it controls and the token clients must present.
#[derive(Clone)]
pub struct PanelState {
    pub control: Arc<dyn ControlPlane>,
    pub token: SecretString,
}

/// Serves the panel on `listener` until `shutdown` resolves, then closes open event streams and
/// finishes the requests in flight.
pub async fn run(
    listener: tokio::net::TcpListener,
    state: PanelState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let address = listener.local_addr().context("read the panel's address")?;
    anyhow::ensure!(
        address.ip().is_loopback(),
        "the control panel must listen on a loopback address, not {address}"
    );
    let closing = CancellationToken::new();
    let app = router(state, address.port(), closing.clone());
    tracing::info!(%address, "control panel listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            closing.cancel();
        })
        .await
        .context("serve the control panel")
}

fn router(state: PanelState, port: u16, closing: CancellationToken) -> Router {
    let policy = Arc::new(access::AccessPolicy::new(state.token, port));
    let api = api::routes(api::ApiState {
        control: state.control,
        closing,
    })
    .layer(axum::middleware::from_fn_with_state(
        policy.clone(),
        access::require_token,
    ));
    Router::new()
        .route("/", get(ui::index))
        .route("/assets/{*name}", get(ui::asset))
        .route("/{name}", get(ui::top_level))
        .nest("/api", api)
        .layer(axum::middleware::from_fn_with_state(
            policy,
            access::require_local_origin,
        ))
        .layer(axum::middleware::map_response(security_headers))
}

/// The UI loads nothing from elsewhere and is never framed.
async fn security_headers(mut response: axum::response::Response) -> axum::response::Response {
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
             connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}
