//! What the tunnel keeps in Postgres (migration `0200_tunnel.sql`): the inspector's recent
//! requests and the audit trail of sharing sessions. Runtime queries only.

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Row};
use uuid::Uuid;

/// One request that came through the tunnel (or a replay of one), as the inspector shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordedRequest {
    pub id: i64,
    pub session_id: Option<Uuid>,
    pub received_at: DateTime<Utc>,
    pub method: String,
    /// Path and query; the query reads `?[redacted]` unless capture was on.
    pub target: String,
    /// `None` when the API could not be reached.
    pub status: Option<u16>,
    pub duration_ms: i64,
    pub request_bytes: i64,
    pub response_bytes: i64,
    /// Header names with values; sensitive values read `[redacted]`.
    pub request_headers: Vec<(String, String)>,
    pub response_headers: Vec<(String, String)>,
    /// Captured bodies (lossy UTF-8 for display), only with capture on.
    pub request_body: Option<String>,
    pub response_body: Option<String>,
    pub error: Option<String>,
    pub replay_of: Option<i64>,
}

/// One sharing session: from "Share" to "Stop sharing", for ethics review.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SharingSession {
    pub id: Uuid,
    pub started_by: String,
    pub provider: String,
    /// Every public URL the session had, in order.
    pub public_urls: Vec<String>,
    pub started_at: DateTime<Utc>,
    /// `None` while the session is still running.
    pub ended_at: Option<DateTime<Utc>>,
    /// Requests that came in from outside (replays not counted).
    pub request_count: i64,
}

impl SharingSession {
    /// How long the API was shared (so far, for a running session).
    pub fn duration(&self) -> chrono::Duration {
        self.ended_at.unwrap_or_else(Utc::now) - self.started_at
    }
}

/// A request and its outcome, ready to be stored.
pub(crate) struct NewRecord {
    pub session_id: Option<Uuid>,
    pub received_at: DateTime<Utc>,
    pub method: String,
    pub target: String,
    pub status: Option<u16>,
    pub duration_ms: i64,
    pub request_bytes: i64,
    pub response_bytes: i64,
    pub request_headers: Vec<(String, String)>,
    pub response_headers: Vec<(String, String)>,
    pub request_body: Option<Vec<u8>>,
    pub request_body_complete: bool,
    pub response_body: Option<Vec<u8>>,
    pub error: Option<String>,
    pub replay_of: Option<i64>,
}

/// What a replay needs of a recorded request: the raw body, not the display form.
pub(crate) struct ReplaySource {
    pub method: String,
    pub target: String,
    pub request_bytes: i64,
    pub request_headers: Vec<(String, String)>,
    pub request_body: Option<Vec<u8>>,
    pub request_body_complete: bool,
}

#[derive(Clone)]
pub(crate) struct TunnelStore {
    pool: PgPool,
}

const RECORD_COLUMNS: &str = "id, session_id, received_at, method, target, status, duration_ms, \
     request_bytes, response_bytes, request_headers, response_headers, request_body, \
     response_body, error, replay_of";

impl TunnelStore {
    pub fn new(pool: PgPool) -> Self {
        TunnelStore { pool }
    }

    /// Stores `record`, counts it for its session unless it is a replay, and keeps only the
    /// newest `keep` requests.
    pub async fn record(&self, record: NewRecord, keep: u32) -> anyhow::Result<i64> {
        let mut tx = self.pool.begin().await.context("begin")?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO tunnel_requests (session_id, received_at, method, target, status, \
             duration_ms, request_bytes, response_bytes, request_headers, response_headers, \
             request_body, request_body_complete, response_body, error, replay_of) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) RETURNING id",
        )
        .bind(record.session_id)
        .bind(record.received_at)
        .bind(&record.method)
        .bind(&record.target)
        .bind(record.status.map(|s| s as i16))
        .bind(record.duration_ms)
        .bind(record.request_bytes)
        .bind(record.response_bytes)
        .bind(serde_json::to_value(&record.request_headers)?)
        .bind(serde_json::to_value(&record.response_headers)?)
        .bind(&record.request_body)
        .bind(record.request_body_complete)
        .bind(&record.response_body)
        .bind(&record.error)
        .bind(record.replay_of)
        .fetch_one(&mut *tx)
        .await
        .context("insert the request record")?;
        if let (None, Some(session_id)) = (record.replay_of, record.session_id) {
            sqlx::query(
                "UPDATE tunnel_sessions SET request_count = request_count + 1 WHERE id = $1",
            )
            .bind(session_id)
            .execute(&mut *tx)
            .await
            .context("count the request")?;
        }
        sqlx::query(
            "DELETE FROM tunnel_requests WHERE id <= \
             (SELECT id FROM tunnel_requests ORDER BY id DESC OFFSET $1 LIMIT 1)",
        )
        .bind(i64::from(keep))
        .execute(&mut *tx)
        .await
        .context("prune old request records")?;
        tx.commit().await.context("commit the request record")?;
        Ok(id)
    }

    pub async fn recent(&self, limit: u32) -> anyhow::Result<Vec<RecordedRequest>> {
        let rows = sqlx::query(&format!(
            "SELECT {RECORD_COLUMNS} FROM tunnel_requests ORDER BY id DESC LIMIT $1"
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .context("load recent requests")?;
        rows.iter().map(recorded_request).collect()
    }

    pub async fn get(&self, id: i64) -> anyhow::Result<Option<RecordedRequest>> {
        let row = sqlx::query(&format!(
            "SELECT {RECORD_COLUMNS} FROM tunnel_requests WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .context("load a request record")?;
        row.as_ref().map(recorded_request).transpose()
    }

    pub async fn replay_source(&self, id: i64) -> anyhow::Result<Option<ReplaySource>> {
        let row = sqlx::query(
            "SELECT method, target, request_bytes, request_headers, request_body, \
             request_body_complete FROM tunnel_requests WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .context("load the request to replay")?;
        row.map(|row| {
            Ok(ReplaySource {
                method: row.try_get("method")?,
                target: row.try_get("target")?,
                request_bytes: row.try_get("request_bytes")?,
                request_headers: serde_json::from_value(row.try_get("request_headers")?)?,
                request_body: row.try_get("request_body")?,
                request_body_complete: row.try_get("request_body_complete")?,
            })
        })
        .transpose()
    }

    pub async fn open_session(&self, started_by: &str, provider: &str) -> anyhow::Result<Uuid> {
        let id = Uuid::new_v4();
        sqlx::query("INSERT INTO tunnel_sessions (id, started_by, provider) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(started_by)
            .bind(provider)
            .execute(&self.pool)
            .await
            .context("record the sharing session")?;
        Ok(id)
    }

    pub async fn add_session_url(&self, id: Uuid, url: &str) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE tunnel_sessions SET public_urls = array_append(public_urls, $2) WHERE id = $1",
        )
        .bind(id)
        .bind(url)
        .execute(&self.pool)
        .await
        .context("record the session's public URL")?;
        Ok(())
    }

    pub async fn end_session(&self, id: Uuid) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE tunnel_sessions SET ended_at = now() WHERE id = $1 AND ended_at IS NULL",
        )
        .bind(id)
        .execute(&self.pool)
        .await
        .context("record the end of the sharing session")?;
        Ok(())
    }

    pub async fn sessions(&self) -> anyhow::Result<Vec<SharingSession>> {
        let rows = sqlx::query(
            "SELECT id, started_by, provider, public_urls, started_at, ended_at, request_count \
             FROM tunnel_sessions ORDER BY started_at DESC",
        )
        .fetch_all(&self.pool)
        .await
        .context("load the sharing sessions")?;
        rows.iter()
            .map(|row| {
                Ok(SharingSession {
                    id: row.try_get("id")?,
                    started_by: row.try_get("started_by")?,
                    provider: row.try_get("provider")?,
                    public_urls: row.try_get("public_urls")?,
                    started_at: row.try_get("started_at")?,
                    ended_at: row.try_get("ended_at")?,
                    request_count: row.try_get("request_count")?,
                })
            })
            .collect()
    }
}

fn recorded_request(row: &sqlx::postgres::PgRow) -> anyhow::Result<RecordedRequest> {
    let body = |column: &str| -> anyhow::Result<Option<String>> {
        let bytes: Option<Vec<u8>> = row.try_get(column)?;
        Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
    };
    Ok(RecordedRequest {
        id: row.try_get("id")?,
        session_id: row.try_get("session_id")?,
        received_at: row.try_get("received_at")?,
        method: row.try_get("method")?,
        target: row.try_get("target")?,
        status: row.try_get::<Option<i16>, _>("status")?.map(|s| s as u16),
        duration_ms: row.try_get("duration_ms")?,
        request_bytes: row.try_get("request_bytes")?,
        response_bytes: row.try_get("response_bytes")?,
        request_headers: serde_json::from_value(row.try_get("request_headers")?)?,
        response_headers: serde_json::from_value(row.try_get("response_headers")?)?,
        request_body: body("request_body")?,
        response_body: body("response_body")?,
        error: row.try_get("error")?,
        replay_of: row.try_get("replay_of")?,
    })
}
