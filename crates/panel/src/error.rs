//! The panel's HTTP errors: always JSON `{"error": "...", "code": "..."}` with a fitting status,
//! never a bare 500 for bad input.

use axum::http::StatusCode;
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
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = serde_json::json!({ "error": self.to_string(), "code": code });
        (status, Json(body)).into_response()
    }
}
