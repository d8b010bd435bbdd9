//! The `/api` routes. Every one answers JSON; failures are [`ApiError`]s.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use lookit_contracts::Queue;
use lookit_status::{DoctorCheck, StatusReport};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::byte_range::{self, Requested};
use crate::control_plane::{
    BuildAction, BuildSummary, ControlPlane, DeadLetter, DeadLetterAction, EmailMessage,
    EmailSummary, InspectedRequest, NewBuild, PanelEvent, ServiceAction, ServiceName, StackAction,
    StudySummary, TunnelAction, TunnelCheck, TunnelOptions, VideoSummary,
};
use crate::error::ApiError;

/// Most log lines one request may ask for.
const MAX_TAIL: usize = 10_000;

#[derive(Clone)]
pub struct ApiState {
    pub control: Arc<dyn ControlPlane>,
    /// Cancelled when the panel shuts down, so open event streams end and shutdown completes.
    pub closing: CancellationToken,
}

pub fn routes(state: ApiState) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/events", get(events))
        .route("/stack/{action}", post(stack_action))
        .route("/services/{service}/logs", get(logs))
        .route("/services/{service}/{action}", post(service_action))
        .route("/tunnel/check", get(tunnel_check))
        .route("/tunnel/requests", get(tunnel_requests))
        .route("/tunnel/requests/{id}/replay", post(replay_request))
        .route("/tunnel/{action}", post(tunnel_action))
        .route("/builds", get(builds).post(start_build))
        .route("/studies", get(studies))
        .route("/emails", get(emails))
        .route("/emails/{id}", get(email))
        .route("/videos", get(videos))
        .route("/videos/{id}/file", get(video_file))
        .route("/builds/{id}/log", get(build_log))
        .route("/builds/{id}/{action}", post(build_action))
        .route("/queues/{queue}/dead", get(dead_letters))
        .route(
            "/queues/{queue}/dead/{message}/{action}",
            post(dead_letter_action),
        )
        .route("/doctor", get(doctor))
        .route("/shutdown", post(shutdown))
        .fallback(|| async { ApiError::NotFound("no such API route".into()) })
        .with_state(state)
}

/// A path segment parsed with serde, with a JSON error naming what was expected.
fn path_part<T: DeserializeOwned>(
    path: Result<Path<T>, PathRejection>,
    what: &str,
) -> Result<T, ApiError> {
    path.map(|Path(value)| value)
        .map_err(|e| ApiError::BadRequest(format!("{what}: {}", e.body_text())))
}

fn service_name(name: &str) -> Result<ServiceName, ApiError> {
    ServiceName::parse(name).map_err(|e| ApiError::BadRequest(e.to_string()))
}

fn queue(name: &str) -> Result<Queue, ApiError> {
    Queue::from_name(name).ok_or_else(|| ApiError::NotFound(format!("there is no queue {name:?}")))
}

fn done() -> Json<Value> {
    Json(json!({ "ok": true }))
}

async fn status(State(state): State<ApiState>) -> Json<StatusReport> {
    Json(state.control.status().await)
}

/// Server-Sent Events: a status snapshot first, then every [`PanelEvent`]. A client that falls
/// behind gets a fresh snapshot instead of the events it missed.
async fn events(
    State(state): State<ApiState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    // Subscribe before taking the snapshot, so no change between the two is lost.
    let receiver = state.control.subscribe();
    let first = PanelEvent::Status {
        report: state.control.status().await,
    };
    let control = state.control.clone();
    let live = BroadcastStream::new(receiver).then(move |item| {
        let control = control.clone();
        async move {
            match item {
                Ok(event) => event,
                Err(BroadcastStreamRecvError::Lagged(_)) => PanelEvent::Status {
                    report: control.status().await,
                },
            }
        }
    });
    let stream = futures::stream::once(async { first })
        .chain(live)
        .map(|event| Ok(sse_event(&event)))
        .take_until(state.closing.cancelled_owned());
    Sse::new(stream).keep_alive(KeepAlive::default())
}

fn sse_event(event: &PanelEvent) -> Event {
    match Event::default().json_data(event) {
        Ok(sse) => sse,
        // Our own types always serialize; should one not, the client learns of it.
        Err(e) => Event::default().event("error").data(e.to_string()),
    }
}

async fn stack_action(
    State(state): State<ApiState>,
    action: Result<Path<StackAction>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let action = path_part(action, "stack action (start or stop)")?;
    state.control.stack_action(action).await?;
    Ok(done())
}

async fn service_action(
    State(state): State<ApiState>,
    path: Result<Path<(String, ServiceAction)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let (service, action) = path_part(path, "service action (start, stop or restart)")?;
    let service = service_name(&service)?;
    state.control.service_action(&service, action).await?;
    Ok(done())
}

#[derive(Deserialize)]
struct LogsQuery {
    tail: Option<usize>,
}

async fn logs(
    State(state): State<ApiState>,
    Path(service): Path<String>,
    query: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let service = service_name(&service)?;
    let Query(query) = query.map_err(|_| {
        ApiError::BadRequest(format!(
            "tail must be a number of lines from 0 to {MAX_TAIL}"
        ))
    })?;
    let tail = query.tail.unwrap_or(500);
    if tail > MAX_TAIL {
        return Err(ApiError::BadRequest(format!(
            "tail must be a number of lines from 0 to {MAX_TAIL}"
        )));
    }
    let lines = state.control.logs(&service, tail).await?;
    Ok(Json(json!({ "service": service, "lines": lines })))
}

async fn tunnel_action(
    State(state): State<ApiState>,
    action: Result<Path<TunnelAction>, PathRejection>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let action = path_part(action, "tunnel action (start or stop)")?;
    // The body is optional: the UI's Share button sends none, the CLI may send overrides.
    let options = if body.iter().all(u8::is_ascii_whitespace) {
        TunnelOptions::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::BadRequest(format!(
                "the body must be {{\"provider\": \"ngrok\"|\"bore\", \"server\": \"host[:port]\"}}: {e}"
            ))
        })?
    };
    state.control.tunnel_action(action, options).await?;
    Ok(done())
}

async fn tunnel_check(State(state): State<ApiState>) -> Result<Json<TunnelCheck>, ApiError> {
    Ok(Json(state.control.tunnel_check().await?))
}

async fn tunnel_requests(
    State(state): State<ApiState>,
) -> Result<Json<Vec<InspectedRequest>>, ApiError> {
    Ok(Json(state.control.tunnel_requests().await?))
}

async fn replay_request(
    State(state): State<ApiState>,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = path_part(id, "request id")?;
    state.control.replay_request(id).await?;
    Ok(done())
}

async fn builds(State(state): State<ApiState>) -> Result<Json<Vec<BuildSummary>>, ApiError> {
    Ok(Json(state.control.builds().await?))
}

async fn start_build(
    State(state): State<ApiState>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<BuildSummary>), ApiError> {
    let request: NewBuild = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "the body must be {{\"study\": \"<study id>\", \"player\": \"<folder or repository URL>\" (optional)}}: {e}"
        ))
    })?;
    let build = state.control.start_build(request).await?;
    Ok((StatusCode::CREATED, Json(build)))
}

async fn studies(State(state): State<ApiState>) -> Result<Json<Vec<StudySummary>>, ApiError> {
    Ok(Json(state.control.studies().await?))
}

async fn emails(State(state): State<ApiState>) -> Result<Json<Vec<EmailSummary>>, ApiError> {
    Ok(Json(state.control.emails().await?))
}

async fn email(
    State(state): State<ApiState>,
    id: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<EmailMessage>, ApiError> {
    let id = path_part(id, "email id")?;
    Ok(Json(state.control.email(id).await?))
}

async fn videos(State(state): State<ApiState>) -> Result<Json<Vec<VideoSummary>>, ApiError> {
    Ok(Json(state.control.videos().await?))
}

/// `GET /api/videos/{id}/file?download`: the Download link asks for an attachment.
#[derive(Deserialize)]
struct VideoFileQuery {
    download: Option<String>,
}

/// The video file itself, streamed from whichever store holds it, for the Videos page's player
/// and its Download link. A `<video>` element cannot send headers, so like the event stream it
/// carries the token in the query. A browser seeks with `Range`: one range is answered with 206
/// and exactly those bytes, one outside the video with 416.
async fn video_file(
    State(state): State<ApiState>,
    id: Result<Path<Uuid>, PathRejection>,
    query: Result<Query<VideoFileQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = path_part(id, "video id")?;
    let disposition = match query {
        Ok(Query(VideoFileQuery { download: Some(_) })) => "attachment",
        _ => "inline",
    };
    let video = state.control.video_file(id).await?;
    let (status, range) = match byte_range::requested(headers.get(header::RANGE), video.size) {
        Requested::Whole => (StatusCode::OK, 0..video.size),
        Requested::Part(range) => (StatusCode::PARTIAL_CONTENT, range),
        Requested::Unsatisfiable => {
            return Err(ApiError::RangeNotSatisfiable { size: video.size });
        }
    };
    let body = if range.is_empty() {
        Body::empty()
    } else {
        Body::from_stream(video.content.read(range.clone()).await?)
    };
    let mut response = (status, body).into_response();
    let response_headers = response.headers_mut();
    let content_type = HeaderValue::from_str(&video.content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    response_headers.insert(header::CONTENT_TYPE, content_type);
    response_headers.insert(header::CONTENT_LENGTH, (range.end - range.start).into());
    response_headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    response_headers.insert(
        header::CONTENT_DISPOSITION,
        content_disposition(disposition, &video.file_name),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        let content_range = format!("bytes {}-{}/{}", range.start, range.end - 1, video.size);
        response_headers.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&content_range).expect("digits, '-' and '/' only"),
        );
    }
    Ok(response)
}

/// `inline` or `attachment` with the file name: plain ASCII for every client (other characters
/// become `_`), and the exact name in UTF-8 (RFC 6266) when it differs.
fn content_disposition(disposition: &str, file_name: &str) -> HeaderValue {
    let plain: String = file_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut value = format!("{disposition}; filename=\"{plain}\"");
    if plain != file_name {
        value.push_str("; filename*=UTF-8''");
        for byte in file_name.bytes() {
            // RFC 5987 attr-char as is, everything else percent-encoded.
            if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
                value.push(char::from(byte));
            } else {
                value.push_str(&format!("%{byte:02X}"));
            }
        }
    }
    HeaderValue::from_str(&value).expect("ASCII letters, digits and punctuation only")
}

async fn build_log(
    State(state): State<ApiState>,
    id: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = path_part(id, "build id")?;
    let lines = state.control.build_log(id).await?;
    Ok(Json(json!({ "build": id, "lines": lines })))
}

async fn build_action(
    State(state): State<ApiState>,
    path: Result<Path<(Uuid, BuildAction)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let (id, action) = path_part(path, "build id and action (rebuild or cancel)")?;
    state.control.build_action(id, action).await?;
    Ok(done())
}

async fn dead_letters(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<DeadLetter>>, ApiError> {
    Ok(Json(state.control.dead_letters(queue(&name)?).await?))
}

async fn dead_letter_action(
    State(state): State<ApiState>,
    path: Result<Path<(String, String, DeadLetterAction)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let (name, message, action) =
        path_part(path, "queue, message id and action (requeue or discard)")?;
    state
        .control
        .dead_letter_action(queue(&name)?, &message, action)
        .await?;
    Ok(done())
}

async fn doctor(State(state): State<ApiState>) -> Result<Json<Vec<DoctorCheck>>, ApiError> {
    Ok(Json(state.control.doctor().await?))
}

/// Answers first and stops afterwards: stopping ends this server, which would otherwise wait for
/// this very request to finish.
async fn shutdown(State(state): State<ApiState>) -> (StatusCode, Json<Value>) {
    let control = state.control.clone();
    tokio::spawn(async move { control.shutdown().await });
    (StatusCode::ACCEPTED, Json(json!({ "stopping": true })))
}
