//! Built studies (§2 "Serving"): participants load `/studies/<study>/<child>/` (the latest
//! successful build's `index.html`), assets come from `/studies/<study>/<path>` (the build
//! prepends that fingerprint), and researchers preview at
//! `/exp/studies/<study>/<child>/preview/`. Files come from the build's `output_location`, a
//! local folder.
//!
//! `index.html` is never cached (a new build must show at once); fingerprinted assets are
//! immutable; other files are cached briefly.

use std::path::{Component, Path as FsPath, PathBuf};

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::auth::Researcher;
use crate::error::{ApiError, ApiResult};
use crate::extract::Path;
use crate::state::ApiState;

/// The output folder of the study's newest successful build.
async fn output_folder(state: &ApiState, study: Uuid) -> ApiResult<PathBuf> {
    let location: Option<Option<String>> = sqlx::query_scalar(
        "SELECT output_location FROM builds WHERE study_id = $1 AND status = 'succeeded' \
         ORDER BY finished_at DESC NULLS LAST, created_at DESC LIMIT 1",
    )
    .bind(study)
    .fetch_optional(state.pool())
    .await?;
    location
        .flatten()
        .map(PathBuf::from)
        .ok_or_else(|| ApiError::NotFound("this study has no successful build yet".into()))
}

/// Joins a URL path below `root`, refusing anything that could leave it.
fn inside(root: &FsPath, relative: &str) -> ApiResult<PathBuf> {
    let relative = FsPath::new(relative);
    if !relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(ApiError::bad_request(
            "the path must not contain `..` or be absolute",
        ));
    }
    Ok(root.join(relative))
}

/// Ember's fingerprinted names: `name-<32 hex>.ext`.
fn is_fingerprinted(path: &str) -> bool {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split('.').next().unwrap_or(file);
    stem.rsplit_once('-')
        .is_some_and(|(_, hash)| hash.len() >= 20 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
}

async fn file_response(path: PathBuf, cache: &'static str) -> ApiResult<Response> {
    let bytes = match tokio::fs::read(&path).await {
        Ok(bytes) => bytes,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::IsADirectory
            ) =>
        {
            return Err(ApiError::not_found("file"))
        }
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!("read {}", path.display()))
                .into())
        }
    };
    let mime = mime_guess::from_path(&path).first_or_octet_stream();
    let content_type = HeaderValue::from_str(mime.essence_str())
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let content_type = if mime.type_() == mime_guess::mime::TEXT
        || mime.essence_str() == "application/javascript"
    {
        HeaderValue::from_str(&format!("{}; charset=utf-8", mime.essence_str()))
            .unwrap_or(content_type)
    } else {
        content_type
    };
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
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
    let folder = output_folder(state, study).await?;
    file_response(folder.join("index.html"), "no-cache").await
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
    let folder = output_folder(&state, study).await?;
    let cache = if path.ends_with("index.html") {
        "no-cache"
    } else if is_fingerprinted(&path) {
        "public, max-age=31536000, immutable"
    } else {
        "public, max-age=300"
    };
    file_response(inside(&folder, &path)?, cache).await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cannot_leave_the_build() {
        let root = FsPath::new("/srv/build");
        assert!(inside(root, "../etc/passwd").is_err());
        assert!(inside(root, "/etc/passwd").is_err());
        assert_eq!(
            inside(root, "assets/app.js").unwrap(),
            root.join("assets/app.js")
        );
    }

    #[test]
    fn fingerprints_are_recognised() {
        assert!(is_fingerprinted(
            "assets/vendor-0123456789abcdef0123456789abcdef.js"
        ));
        assert!(!is_fingerprinted("assets/vendor.js"));
        assert!(!is_fingerprinted("robots.txt"));
    }
}
