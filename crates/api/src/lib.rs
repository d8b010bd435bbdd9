//! The embedded Lookit API server (issue 4): the parts of Lookit's Django server that local work
//! needs, compatible with the contracts of the domain reference so a real frameplayer build, Pipe
//! and the AWS Lambda can talk to it.
//!
//! - [`run`] serves HTTPS (or plain HTTP when no TLS is given: tests, behind the panel) until the
//!   shutdown future completes.
//! - `/api/auth/` login with password and authenticator ([`auth`]), `/api/v1/` the JSON:API,
//!   `/api/researcher/` the researcher routes, `/exp/renamevideo/` Pipe's webhook,
//!   `/studies/...` built studies, `/api/health/`, `/api/openapi.json` (every route).
//! - Every client error is a JSON body; no client input produces a 500.

pub mod admin;
mod auth;
mod broker_check;
pub mod demo;
mod error;
mod extract;
mod jsonapi;
pub mod outbox;
pub mod preview_reload;
mod researcher;
mod served;
mod state;
pub mod tls;
mod video;

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::Serialize;
use utoipa::{PartialSchema, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

pub use auth::{check_password_rules, FAILURE_WINDOW_MINUTES, MAX_FAILURES};
pub use error::ApiError;
pub use researcher::{queue_study_build, Build};
pub use state::{ApiSettings, ApiState, PublicUrl};
pub use tls::TlsConfig;
pub use video::VideoName;

/// Bodies up to this size: a response's `exp_data` grows frame by frame.
const BODY_LIMIT: usize = 16 * 1024 * 1024;
/// How long open connections may finish after shutdown begins.
const GRACE: Duration = Duration::from_secs(5);

#[derive(Serialize, ToSchema)]
pub struct Health {
    database: String,
    broker: String,
}

#[utoipa::path(get, path = "/api/health/", tag = "health",
    responses((status = 200, body = Health, description = "database and broker reachable"),
              (status = 503, body = Health, description = "something is down; the fields say what")))]
async fn health(State(state): State<ApiState>) -> Response {
    // Bounded like the broker check, so a database that hangs is named instead of the API.
    let query = sqlx::query("SELECT 1").execute(state.pool());
    let database = match tokio::time::timeout(broker_check::ANSWER_WITHIN, query).await {
        Ok(Ok(_)) => "ok".to_string(),
        Ok(Err(e)) => format!("unreachable: {e}"),
        Err(_) => format!(
            "unreachable: no answer within {} s",
            broker_check::ANSWER_WITHIN.as_secs()
        ),
    };
    let broker = match state.broker() {
        None => "not configured".to_string(),
        Some(broker) => broker.check().await,
    };
    let healthy = database == "ok" && broker != "not configured" && broker == "ok";
    let status = if healthy || (database == "ok" && broker == "not configured") {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(Health { database, broker })).into_response()
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route; GET /api/openapi.json lists them all".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::Rejected {
        status: StatusCode::METHOD_NOT_ALLOWED,
        detail: "this route does not take that method; GET /api/openapi.json lists them".into(),
    }
}

fn api_router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .nest("/api/auth", auth::routes())
        .nest("/api/v1", jsonapi::routes())
        .nest("/api/researcher", researcher::routes())
        .merge(video::routes())
        .merge(served::routes())
        .merge(preview_reload::routes())
}

/// The OpenAPI document of every route (axum's `{*rest}` written as `{rest}`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = api_router().split_for_parts();
    doc.info.title = "Lookit Local API".into();
    doc.info.description = Some("The embedded Lookit API server of Lookit Local.".into());
    doc.paths.paths = std::mem::take(&mut doc.paths.paths)
        .into_iter()
        .map(|(path, item)| (path.replace("{*", "{"), item))
        .collect();
    document_errors(&mut doc);
    doc
}

/// Every failure is an [`error::ErrorDocument`], whatever its status: it is each operation's
/// `default` response, so clients (and schemathesis) know the shape of every error.
fn document_errors(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let components = doc
        .components
        .get_or_insert_with(utoipa::openapi::Components::new);
    for (name, schema) in [
        ("ErrorDocument", error::ErrorDocument::schema()),
        ("ErrorObject", error::ErrorObject::schema()),
    ] {
        components.schemas.insert(name.to_string(), schema);
    }
    let error = ResponseBuilder::new()
        .description("an error: JSON:API error objects saying what is wrong")
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorDocument")))
                .build(),
        )
        .build();
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            operation
                .responses
                .responses
                .entry("default".to_string())
                .or_insert_with(|| error.clone().into());
        }
    }
}

/// The whole application as an axum router.
pub fn router(state: ApiState) -> Router {
    let (router, _) = api_router().split_for_parts();
    let document = openapi();
    router
        .route(
            "/api/openapi.json",
            axum::routing::get(move || async move { axum::Json(document) }),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// Serves the API on `listener` (HTTPS when `tls` is given) until `shutdown` completes, then
/// lets open requests finish for a few seconds.
pub async fn run(
    listener: tokio::net::TcpListener,
    tls: Option<TlsConfig>,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let served = serve(listener, tls, router(state.clone()), shutdown).await;
    if let Some(broker) = state.broker() {
        broker.close().await;
    }
    served
}

/// Checks the certificate every [`tls::RENEWAL_CHECK`] while the server runs, so an app left
/// running for months never serves an expired certificate.
async fn renew_certificate_while_serving(tls: TlsConfig) {
    let mut ticks = tokio::time::interval(tls::RENEWAL_CHECK);
    ticks.tick().await; // The first tick is immediate; the certificate was just loaded.
    loop {
        ticks.tick().await;
        let check = tls.clone();
        if let Ok(Err(error)) = tokio::task::spawn_blocking(move || check.renew_if_due()).await {
            tracing::warn!(%error, "could not renew the HTTPS certificate");
        }
    }
}

/// Serves `app` (the API's [`router`], possibly with extra routes: the benchmark mounts a bare
/// one) exactly as [`run`] does.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<TlsConfig>,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let listener = listener.into_std().context("take over the listener")?;
    let handle = axum_server::Handle::new();
    let on_shutdown = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        on_shutdown.graceful_shutdown(Some(GRACE));
    });
    match tls {
        Some(tls) => {
            let renewal = tokio::spawn(renew_certificate_while_serving(tls.clone()));
            let served = axum_server::from_tcp_rustls(listener, tls.live)
                .handle(handle)
                .serve(app)
                .await;
            renewal.abort();
            served
        }
        None => {
            axum_server::from_tcp(listener)
                .handle(handle)
                .serve(app)
                .await
        }
    }
    .context("serve the API")
}
