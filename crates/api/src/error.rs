//! The one error type of the HTTP boundary. Every client error becomes a JSON body of JSON:API
//! error objects (`{"errors": [{"status", "code", "title", "detail"}]}`) that says what is wrong;
//! only failures of our own (database down, a bug) become 500, with the details logged and not
//! sent.

use axum::extract::rejection::{FormRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{detail}")]
    TooManyRequests {
        detail: String,
        retry_after_secs: u64,
    },
    /// A request axum refused before our handler ran (bad JSON, wrong content type, body too
    /// large, unknown method); the status is axum's.
    #[error("{detail}")]
    Rejected { status: StatusCode, detail: String },
    #[error("{0}")]
    Unavailable(String),
    /// The disk that had to take the request's data is full; the detail says which store (never
    /// a path of this machine: callers include Pipe) and that a retry works once there is room.
    #[error("{0}")]
    InsufficientStorage(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Rejected { status, .. } => *status,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        ApiError::BadRequest(detail.into())
    }
    pub fn not_found(what: &str) -> Self {
        ApiError::NotFound(format!("{what} not found"))
    }
}

/// Whether `error` means the database cannot be reached right now (down, restarting, refusing
/// connections, pool exhausted) rather than a bug: worth a 503 that says so, and a retry.
fn database_unreachable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // Class 08: connection exception; class 57: operator intervention (shutdown, restart).
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57")),
        _ => false,
    }
}

const DATABASE_UNAVAILABLE: &str =
    "the database is unreachable (down or restarting); try again in a moment";

/// Database errors that client input can cause are client errors; an unreachable database is
/// 503; everything else is ours.
impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        if database_unreachable(&error) {
            tracing::warn!(error = %error, "database unreachable");
            return ApiError::Unavailable(DATABASE_UNAVAILABLE.into());
        }
        if let sqlx::Error::Database(db) = &error {
            match db.code().as_deref() {
                Some("23505") => return ApiError::Conflict("this record already exists".into()),
                Some("23503") => {
                    return ApiError::BadRequest("refers to a record that does not exist".into())
                }
                Some("23514") => {
                    return ApiError::BadRequest(format!("value not allowed: {}", db.message()))
                }
                // 22021/22P05: a NUL character, which Postgres text and jsonb cannot hold.
                Some("22P02" | "22007" | "22008" | "22003" | "22001" | "22021" | "22P05") => {
                    return ApiError::BadRequest(format!("invalid value: {}", db.message()))
                }
                _ => {}
            }
        }
        ApiError::Internal(anyhow::Error::new(error).context("database"))
    }
}

/// The body of every error response, whatever its status (the OpenAPI document gives it as each
/// operation's `default` response).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDocument {
    pub errors: Vec<ErrorObject>,
}

/// One JSON:API error object.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorObject {
    /// The HTTP status, as a string (`"404"`).
    pub status: String,
    /// The status's reason in snake case (`not_found`).
    pub code: String,
    /// The status's reason (`Not Found`).
    pub title: String,
    /// What is wrong, for a person to read.
    pub detail: String,
}

macro_rules! from_rejection {
    ($($rejection:ty),*) => {$(
        impl From<$rejection> for ApiError {
            fn from(rejection: $rejection) -> Self {
                ApiError::Rejected { status: rejection.status(), detail: rejection.body_text() }
            }
        }
    )*};
}
from_rejection!(JsonRejection, PathRejection, QueryRejection, FormRejection);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // A database error wrapped with context on its way up is still an outage, not a bug.
        let unreachable = matches!(&self, ApiError::Internal(error)
            if error.chain().any(|cause| cause.downcast_ref::<sqlx::Error>().is_some_and(database_unreachable)));
        if unreachable {
            if let ApiError::Internal(error) = &self {
                tracing::warn!(error = format!("{error:#}"), "database unreachable");
            }
            return ApiError::Unavailable(DATABASE_UNAVAILABLE.into()).into_response();
        }
        let status = self.status();
        let detail = match &self {
            ApiError::Internal(error) => {
                tracing::error!(error = format!("{error:#}"), "request failed");
                "internal error; the server log has the details".to_string()
            }
            other => other.to_string(),
        };
        let body = ErrorDocument {
            errors: vec![ErrorObject {
                status: status.as_u16().to_string(),
                code: status
                    .canonical_reason()
                    .unwrap_or("error")
                    .to_lowercase()
                    .replace(' ', "_"),
                title: status.canonical_reason().unwrap_or("Error").to_string(),
                detail,
            }],
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let ApiError::TooManyRequests {
            retry_after_secs, ..
        } = self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
