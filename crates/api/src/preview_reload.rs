//! Open previews reload by themselves (issue 8): a researcher's preview page carries a tiny
//! script that listens on `GET /exp/studies/<study>/preview/events/` (server-sent events) and
//! reloads the page on a `reload` event. Reloads are announced through Postgres
//! ([`announce_reload`] → [`PREVIEW_RELOAD_CHANNEL`]), so whoever learns of a new build or
//! structure (the app's folder watchers, another process) reaches every API server's previews.
//!
//! The stream first sends `ready` (the listener is in place: a reload announced after it is
//! delivered), then one `reload` per announcement for this study.

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::auth::Researcher;
use crate::error::{ApiError, ApiResult};
use crate::extract::Path;
use crate::state::ApiState;

/// Postgres channel notified (payload: the study id) when the study's open previews should
/// reload: a rebuild succeeded or its structure changed.
pub const PREVIEW_RELOAD_CHANNEL: &str = "lookit_preview_reload";

/// The largest `index.html` the reload script is injected into; larger bodies are served as is.
const MAX_INDEX_BYTES: usize = 8 * 1024 * 1024;

/// Asks the study's open previews to reload.
pub async fn announce_reload(pool: &PgPool, study: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(PREVIEW_RELOAD_CHANNEL)
        .bind(study.to_string())
        .execute(pool)
        .await?;
    Ok(())
}

/// The script the preview page gets: reload when the server says so.
fn reload_script(study: Uuid) -> String {
    format!(
        "<script data-lookit-preview-reload>(function(){{var s=new EventSource(\"/exp/studies/{study}/preview/events/\");\
         s.addEventListener(\"reload\",function(){{s.close();window.location.reload();}});}})();</script>"
    )
}

/// The preview's `index.html` with the reload script before `</body>` (at the end when there is
/// none). Anything that is not a successful HTML page passes unchanged.
pub(crate) async fn with_reload_script(response: Response, study: Uuid) -> Response {
    let is_html = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if response.status() != StatusCode::OK || !is_html {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_INDEX_BYTES).await else {
        return ApiError::Internal(anyhow::anyhow!("read the preview's index.html"))
            .into_response();
    };
    let mut html = String::from_utf8_lossy(&bytes).into_owned();
    let script = reload_script(study);
    match html.rfind("</body>") {
        Some(at) => html.insert_str(at, &script),
        None => html.push_str(&script),
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(html))
}

#[utoipa::path(get, path = "/exp/studies/{study}/preview/events/", tag = "studies",
    params(("study" = Uuid, Path)),
    responses((status = 200, description = "server-sent events: `ready` once, then `reload` whenever the study's previews should reload"),
              (status = 404, description = "no such study for this researcher")))]
async fn preview_events(
    State(state): State<ApiState>,
    Researcher(user): Researcher,
    Path(study): Path<Uuid>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    if !crate::researcher::can_preview(state.pool(), &user, study).await? {
        return Err(ApiError::not_found("study"));
    }
    let mut listener = PgListener::connect_with(state.pool())
        .await
        .map_err(anyhow::Error::from)?;
    listener
        .listen(PREVIEW_RELOAD_CHANNEL)
        .await
        .map_err(anyhow::Error::from)?;
    let wanted = study.to_string();
    let ready = futures::stream::once(std::future::ready(Ok(Event::default()
        .event("ready")
        .data(wanted.clone()))));
    let reloads = futures::stream::unfold(listener, move |mut listener| {
        let wanted = wanted.clone();
        async move {
            loop {
                match listener.recv().await {
                    Ok(notice) if notice.payload() == wanted => {
                        let event = Event::default().event("reload").data(wanted);
                        return Some((Ok(event), listener));
                    }
                    Ok(_) => continue,
                    Err(error) => {
                        tracing::warn!(%error, "preview reload listener stopped");
                        return None;
                    }
                }
            }
        }
    });
    use futures::StreamExt as _;
    Ok(Sse::new(ready.chain(reloads)).keep_alive(KeepAlive::default()))
}

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(preview_events))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_events_route_lives_beside_the_preview_pages() {
        let doc = crate::openapi();
        assert!(doc
            .paths
            .paths
            .contains_key("/exp/studies/{study}/preview/events/"));
        assert!(doc
            .paths
            .paths
            .contains_key("/exp/studies/{study}/{child}/preview/"));
    }

    #[tokio::test]
    async fn the_script_goes_before_the_end_of_the_body_of_html_only() {
        let study = Uuid::new_v4();
        let page = Response::builder()
            .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
            .body(Body::from("<html><body><p>hi</p></body></html>"))
            .unwrap();
        let page = with_reload_script(page, study).await;
        let html = axum::body::to_bytes(page.into_body(), 1 << 20)
            .await
            .unwrap();
        let html = String::from_utf8(html.to_vec()).unwrap();
        assert!(
            html.ends_with("</script></body></html>")
                && html.contains(&format!("/exp/studies/{study}/preview/events/")),
            "{html}"
        );
        let script = Response::builder()
            .header(header::CONTENT_TYPE, "application/javascript")
            .body(Body::from("var x;"))
            .unwrap();
        let script = with_reload_script(script, study).await;
        let body = axum::body::to_bytes(script.into_body(), 1 << 20)
            .await
            .unwrap();
        assert_eq!(&body[..], b"var x;");
    }
}
