//! The panel's HTTP errors: always JSON `{"error": "...", "code": "..."}` with a fitting status,
//! never a bare 500 for bad input.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::control_plane::ActionError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or wrong token: open the dashboard URL that `lookit-local up` printed")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// A `Range` outside a video of `size` bytes; answered with `Content-Range: bytes */size`.
    #[error("the requested range is not within the video's {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error(transparent)]
    Action(#[from] ActionError),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::RangeNotSatisfiable { .. } => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable")
            }
            ApiError::Action(ActionError::UnknownService(_) | ActionError::NotFound(_)) => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            ApiError::Action(ActionError::NotAvailable(_)) => {
                (StatusCode::NOT_IMPLEMENTED, "not_available")
            }
            ApiError::Action(ActionError::Conflict(_)) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Action(ActionError::Invalid(_)) => (StatusCode::BAD_REQUEST, "invalid"),
            ApiError::Action(ActionError::Failed(_)) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "failed")
            }
            ApiError::Action(ActionError::Upstream(_)) => (StatusCode::BAD_GATEWAY, "upstream"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = serde_json::json!({ "error": self.to_string(), "code": code });
        let mut response = (status, Json(body)).into_response();
        if let ApiError::RangeNotSatisfiable { size } = self {
            let content_range = HeaderValue::from_str(&format!("bytes */{size}"))
                .expect("digits and punctuation only");
            response
                .headers_mut()
                .insert(header::CONTENT_RANGE, content_range);
        }
        response
    }
}
