//! The one error type of the HTTP boundary. Every client error becomes a JSON body of JSON:API
//! error objects (`{"errors": [{"status", "code", "title", "detail"}]}`) that says what is wrong.
//! A database that cannot take requests is a 503 (unreachable, short of connections or memory)
//! or a 507 (its disk is full) saying so; only failures of our own (a bug) become 500, with the
//! details logged and not sent.

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
    /// The disk that had to take the request's data is full; the detail says which (a store, the
    /// database's; never a path of this machine: callers include Pipe) and that a retry works
    /// once there is room.
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
/// connections) rather than a bug: worth a 503 that says so, and a retry.
fn database_unreachable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // Class 08: connection exception; class 57: operator intervention (shutdown, restart).
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57")),
        _ => false,
    }
}

/// The answer to a database that cannot do the request for a reason of its own, not of the
/// request's: unreachable or no connection in time (503), its disk full (507: it stays full
/// until someone frees space), or short of another resource (class 53: connections, memory;
/// 503). `None` for any other error. Logged here with the server's words, which the answer
/// leaves out (they name files of the database): callers include Pipe, outside this machine.
fn database_outage(error: &sqlx::Error) -> Option<ApiError> {
    let answer = match error {
        // The pool waited its bounded time: the server is down or restarting, or refuses new
        // connections (53300, which sqlx retries while it waits), or ours are all in use.
        sqlx::Error::PoolTimedOut => ApiError::Unavailable(
            "the database gave no connection in time (down, restarting, or all its connections \
             taken); try again in a moment"
                .into(),
        ),
        error if database_unreachable(error) => ApiError::Unavailable(
            "the database is unreachable (down or restarting); try again in a moment".into(),
        ),
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("53100") => ApiError::InsufficientStorage(
                "the database's disk is full: free some space on the disk that holds the \
                 database, then try again"
                    .into(),
            ),
            Some(code) if code.starts_with("53") => {
                let shortage = match code {
                    "53200" => "it is out of memory",
                    "53300" => "all its connections are taken (too many connections)",
                    "53400" => "a configured limit was reached",
                    _ => "it is short of resources",
                };
                ApiError::Unavailable(format!(
                    "the database cannot take the request now: {shortage}; try again in a moment"
                ))
            }
            _ => return None,
        },
        _ => return None,
    };
    tracing::warn!(error = %error, "the database cannot take requests");
    Some(answer)
}

/// Database errors that client input can cause are client errors; a database that cannot take
/// requests (unreachable, disk full, short of resources) is a 503 or 507 that says so;
/// everything else is ours.
impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        if let Some(outage) = database_outage(&error) {
            return outage;
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
        if let ApiError::Internal(error) = &self {
            let outage = error.chain().find_map(|cause| {
                cause
                    .downcast_ref::<sqlx::Error>()
                    .and_then(database_outage)
            });
            if let Some(outage) = outage {
                return outage.into_response();
            }
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
