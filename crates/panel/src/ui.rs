//! The built UI, embedded at compile time (see `build.rs`).

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{Html, IntoResponse, Response};

use crate::error::ApiError;

include!(concat!(env!("OUT_DIR"), "/ui_files.rs"));

const NOT_BUILT: &str = "<!doctype html><meta charset=utf-8><title>Lookit Local</title>\
<body style=\"font-family:sans-serif;margin:3rem\"><h1>Lookit Local</h1>\
<p>UI not built: run <code>npm --prefix ui run build</code>, then rebuild the app.</p>\
<p>The panel API under <code>/api</code> works without it.</p>";

fn file(name: &str) -> Option<&'static [u8]> {
    UI_FILES
        .iter()
        .find(|(file, _)| *file == name)
        .map(|(_, bytes)| *bytes)
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") | Some("map") => "application/json",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    }
}

/// `/`: the UI shell, or a page saying how to build it.
pub async fn index() -> Response {
    match file("index.html").filter(|_| UI_BUILT) {
        Some(bytes) => (
            [
                (CONTENT_TYPE, "text/html; charset=utf-8"),
                (CACHE_CONTROL, "no-cache"),
            ],
            bytes,
        )
            .into_response(),
        None => Html(NOT_BUILT).into_response(),
    }
}

/// `/assets/*`: hashed file names, so they may be cached for good.
pub async fn asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    let path = format!("assets/{name}");
    let bytes = file(&path).ok_or_else(|| ApiError::NotFound(format!("no file /{path}")))?;
    Ok((
        [
            (CONTENT_TYPE, content_type(&path)),
            (CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        bytes,
    )
        .into_response())
}

/// Other top-level files of `ui/dist` (favicon, …).
pub async fn top_level(Path(name): Path<String>) -> Result<Response, ApiError> {
    let bytes = file(&name).ok_or_else(|| ApiError::NotFound(format!("no file /{name}")))?;
    Ok(([(CONTENT_TYPE, content_type(&name))], bytes).into_response())
}
