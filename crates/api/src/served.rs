//! Built studies (§2 "Serving"): participants load `/studies/<study>/<child>/` (the latest
//! successful build's `index.html`), assets come from `/studies/<study>/<path>` (the build
//! prepends that fingerprint), and researchers preview at
//! `/exp/studies/<study>/<child>/preview/`. Files come from the builds storage (a local folder,
//! S3 or Google Cloud Storage) at `experiments/<study>/`, where the worker uploads them, once the
//! study has a successful build.
//!
//! `index.html` is never cached (a new build must show at once); fingerprinted assets are
//! immutable; other files are cached briefly (`lookit_storage::cache_control`).

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::auth::Researcher;
use crate::error::{ApiError, ApiResult};
use crate::extract::Path;
use crate::state::ApiState;

/// Refuses a study without a successful build: its storage may hold nothing, or a failed
/// upload's leftovers.
async fn require_build(state: &ApiState, study: Uuid) -> ApiResult<()> {
    let built: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM builds WHERE study_id = $1 AND status = 'succeeded')",
    )
    .bind(study)
    .fetch_one(state.pool())
    .await?;
    if built {
        Ok(())
    } else {
        Err(ApiError::NotFound(
            "this study has no successful build yet".into(),
        ))
    }
}

/// The study's built file at `path` (relative to its build), with its type and cache policy.
async fn file_response(state: &ApiState, study: Uuid, path: &str) -> ApiResult<Response> {
    require_build(state, study).await?;
    let key = lookit_storage::below(&lookit_storage::study_prefix(study), path)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let builds = &state.settings().builds;
    let bytes = builds
        .read(&key)
        .await
        .map_err(|e| anyhow::Error::new(e).context("read a built study file"))?
        .ok_or_else(|| ApiError::not_found("file"))?;
    let content_type = HeaderValue::from_str(&lookit_storage::content_type(path))
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static(lookit_storage::cache_control(path)),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        bytes,
    )
        .into_response())
}

async fn index(state: &ApiState, study: Uuid) -> ApiResult<Response> {
    file_response(state, study, "index.html").await
}

async fn child_exists(state: &ApiState, child: Uuid) -> ApiResult<bool> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM children WHERE id = $1)")
            .bind(child)
            .fetch_one(state.pool())
            .await?,
    )
}

#[utoipa::path(get, path = "/studies/{study}/{*path}", tag = "studies",
    params(("study" = Uuid, Path), ("path" = String, Path, description = "`<child uuid>/` for the study page, else an asset path")),
    responses((status = 200, description = "the built study's index.html or an asset"),
              (status = 404, description = "no such study, child, build or file")))]
async fn study_file(
    State(state): State<ApiState>,
    Path((study, path)): Path<(Uuid, String)>,
) -> ApiResult<Response> {
    let as_child = path.strip_suffix('/').unwrap_or(&path);
    if let Ok(child) = Uuid::parse_str(as_child) {
        let active: Option<String> = sqlx::query_scalar("SELECT state FROM studies WHERE id = $1")
            .bind(study)
            .fetch_optional(state.pool())
            .await?;
        if active.as_deref() != Some("active") {
            return Err(ApiError::NotFound("this study is not active".into()));
        }
        if !child_exists(&state, child).await? {
            return Err(ApiError::not_found("child"));
        }
        return index(&state, study).await;
    }
    file_response(&state, study, &path).await
}

#[utoipa::path(get, path = "/exp/studies/{study}/{child}/preview/", tag = "studies",
    params(("study" = Uuid, Path), ("child" = Uuid, Path)),
    responses((status = 200, description = "the built study for a researcher, in any state"),
              (status = 404, description = "no such study, child or build")))]
async fn preview(
    State(state): State<ApiState>,
    Researcher(user): Researcher,
    Path((study, child)): Path<(Uuid, Uuid)>,
) -> ApiResult<Response> {
    if !crate::researcher::can_preview(state.pool(), &user, study).await? {
        return Err(ApiError::not_found("study"));
    }
    if !child_exists(&state, child).await? {
        return Err(ApiError::not_found("child"));
    }
    let page = index(&state, study).await?;
    Ok(crate::preview_reload::with_reload_script(page, study).await)
}

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(study_file))
        .routes(routes!(preview))
}
