//! How videos are registered (§4): Pipe's `video_copied_s3` webhook (`POST /exp/renamevideo/`,
//! HMAC-SHA1 over the public URL Pipe called plus the raw payload) and the AWS Lambda
//! (`POST /api/v1/video/`, HMAC-SHA256 over the compact JSON of `data.attributes`).
//!
//! Unlike Lookit, signatures are compared in constant time, and a file name that does not parse
//! (frame ids may contain `_`) or names an unknown study/response is a 400 with the reason.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use lookit_storage::object_store::ObjectStoreExt;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use sha1::Sha1;
use sha2::Sha256;
use sqlx::PgConnection;
use subtle::ConstantTimeEq;
use url::Url;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::extract::{Form, Json};
use crate::state::ApiState;

pub const PIPE_SIGNATURE_HEADER: &str = "x-pipe-signature";
pub const LAMBDA_SIGNATURE_HEADER: &str = "x-aws-lambda-hmac-sig";
pub const RENAME_PATH: &str = "/exp/renamevideo/";

/// A video file name the frameplayer gives Pipe:
/// `[consent-]videoStream_<study_uuid>_<frame_id>_<response_uuid>_<timestamp_ms>_<3 digits>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoName {
    pub consent_prefix: bool,
    pub study_id: Uuid,
    pub frame_id: String,
    pub response_id: Uuid,
    pub timestamp: DateTime<Utc>,
}

impl std::str::FromStr for VideoName {
    type Err = String;

    /// Frame ids may contain `_`, so the fixed-width parts are taken from both ends.
    fn from_str(name: &str) -> Result<Self, String> {
        let (consent_prefix, rest) = match name.strip_prefix("consent-") {
            Some(rest) => (true, rest),
            None => (false, name),
        };
        let rest = rest
            .strip_prefix("videoStream_")
            .ok_or("the name must start with videoStream_ (or consent-videoStream_)")?;
        let (study, rest) = rest.split_once('_').ok_or("the name has no study uuid")?;
        let study_id =
            Uuid::parse_str(study).map_err(|_| format!("{study:?} is not a study uuid"))?;
        let mut tail = rest.rsplitn(4, '_');
        let (Some(random), Some(millis), Some(response), Some(frame_id)) =
            (tail.next(), tail.next(), tail.next(), tail.next())
        else {
            return Err("expected <frame id>_<response uuid>_<timestamp ms>_<3 digits> after the study uuid".into());
        };
        if random.len() != 3 || !random.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "the name must end with 3 random digits, not {random:?}"
            ));
        }
        let timestamp = millis
            .parse::<i64>()
            .ok()
            .and_then(DateTime::from_timestamp_millis)
            .ok_or_else(|| format!("{millis:?} is not a timestamp in milliseconds"))?;
        let response_id = Uuid::parse_str(response)
            .map_err(|_| format!("{response:?} is not a response uuid"))?;
        if frame_id.is_empty() {
            return Err("the frame id is empty".into());
        }
        Ok(VideoName {
            consent_prefix,
            study_id,
            frame_id: frame_id.to_string(),
            response_id,
            timestamp,
        })
    }
}

/// A video to store, from either route.
struct NewVideo {
    full_name: String,
    pipe_name: String,
    pipe_numeric_id: Option<i64>,
    s3_timestamp: DateTime<Utc>,
    frame_id: String,
    study_id: Uuid,
    response_id: Uuid,
    is_consent_footage: bool,
}

/// Inserts the video after checking the response belongs to the study. Consent footage: the
/// prefix, or the response's data marks the frame as a consent frame.
async fn insert_video(connection: &mut PgConnection, video: NewVideo) -> ApiResult<Uuid> {
    let exp_data: Option<Value> =
        sqlx::query_scalar("SELECT exp_data FROM responses WHERE id = $1 AND study_id = $2")
            .bind(video.response_id)
            .bind(video.study_id)
            .fetch_optional(&mut *connection)
            .await?;
    let exp_data = exp_data.ok_or_else(|| {
        ApiError::bad_request(format!(
            "no response {} in study {}",
            video.response_id, video.study_id
        ))
    })?;
    let consent_frame = exp_data
        .get(&video.frame_id)
        .and_then(|frame| frame.get("frameType"))
        .and_then(Value::as_str)
        .is_some_and(|t| t.eq_ignore_ascii_case("consent"));
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO videos (id, full_name, pipe_name, pipe_numeric_id, s3_timestamp, frame_id, \
         study_id, response_id, is_consent_footage) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(id)
    .bind(&video.full_name)
    .bind(&video.pipe_name)
    .bind(video.pipe_numeric_id)
    .bind(video.s3_timestamp)
    .bind(&video.frame_id)
    .bind(video.study_id)
    .bind(video.response_id)
    .bind(video.is_consent_footage || consent_frame)
    .execute(&mut *connection)
    .await
    .map_err(|e| match ApiError::from(e) {
        ApiError::Conflict(_) => {
            ApiError::Conflict(format!("video {} is already registered", video.full_name))
        }
        other => other,
    })?;
    Ok(id)
}

#[derive(Deserialize)]
pub struct PipeForm {
    payload: Option<String>,
}

#[derive(Deserialize)]
struct PipeEvent {
    data: PipeData,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PipeData {
    s3_upload_status: String,
    video_name: String,
    #[serde(default)]
    id: Option<Value>,
    payload: String,
}

/// The URLs Pipe may have called: the public URL (configured, or the tunnel's), and what the
/// local tunnel proxy forwards in `X-Forwarded-Proto`/`X-Forwarded-Host`. Without either, the
/// `Host` header over HTTPS.
fn called_urls(state: &ApiState, headers: &HeaderMap) -> Vec<String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let mut urls = Vec::new();
    if let Some(public) = state.public_url().get() {
        urls.push(origin(&public));
    }
    if let Some(host) = header("x-forwarded-host") {
        let proto = header("x-forwarded-proto").unwrap_or("https");
        urls.push(format!("{proto}://{host}"));
    }
    if urls.is_empty() {
        if let Some(host) = header("host") {
            urls.push(format!("https://{host}"));
        }
    }
    urls
}

/// `scheme://host[:port]` of a URL, as Pipe puts it in front of the path.
fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

fn pipe_signature(key: &[u8], message: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(message.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

#[utoipa::path(post, path = "/exp/renamevideo/", tag = "video",
    request_body(content = String, content_type = "application/x-www-form-urlencoded",
                 description = "field payload: Pipe's video_copied_s3 event as JSON"),
    responses((status = 200, description = "`<old name> --> <new name>`"),
              (status = 400, description = "missing header or field, unparsable name, unknown study or response"),
              (status = 403, description = "bad signature, upload not successful, or empty payload"),
              (status = 507, description = "the video storage or the database's disk is full: nothing recorded, the video keeps Pipe's name; call again later")))]
async fn pipe_rename(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Form(form): Form<PipeForm>,
) -> ApiResult<Response> {
    let signature = headers
        .get(PIPE_SIGNATURE_HEADER)
        .ok_or_else(|| ApiError::bad_request("the X-Pipe-Signature header is missing"))?;
    let raw = form
        .payload
        .ok_or_else(|| ApiError::bad_request("the form field payload is missing"))?;
    let sent = base64::engine::general_purpose::STANDARD
        .decode(signature.as_bytes())
        .map_err(|_| ApiError::Forbidden("X-Pipe-Signature is not base64".into()))?;
    let key = state
        .settings()
        .pipe_webhook_key
        .expose_secret()
        .as_bytes()
        .to_vec();
    let signed = called_urls(&state, &headers).into_iter().any(|base| {
        let expected = pipe_signature(&key, &format!("{base}{RENAME_PATH}{raw}"));
        bool::from(expected.ct_eq(&sent))
    });
    if !signed {
        return Err(ApiError::Forbidden(
            "X-Pipe-Signature does not match (is the public URL Pipe calls this server's?)".into(),
        ));
    }
    let event: PipeEvent = serde_json::from_str(&raw)
        .map_err(|e| ApiError::bad_request(format!("payload is not a Pipe event: {e}")))?;
    let data = event.data;
    if data.s3_upload_status != "upload success" {
        return Err(ApiError::Forbidden(format!(
            "the upload was not successful: {:?}",
            data.s3_upload_status
        )));
    }
    if data.payload.is_empty() {
        return Err(ApiError::Forbidden(
            "data.payload (the video's file name) is empty".into(),
        ));
    }
    let name: VideoName = data.payload.parse().map_err(|reason| {
        ApiError::bad_request(format!("video name {:?}: {reason}", data.payload))
    })?;
    let pipe_numeric_id = match &data.id {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    };
    let old_name = data.video_name;
    let new_name = data.payload;
    // The row first, in a transaction committed only once the object is renamed: a request
    // refused for its study, response or a duplicate leaves the storage untouched, and a rename
    // refused (a full disk) stores no row. Either way Pipe's retry finds the video as it left it.
    let mut tx = state.pool().begin().await?;
    insert_video(
        &mut tx,
        NewVideo {
            full_name: new_name.clone(),
            pipe_name: old_name.clone(),
            pipe_numeric_id,
            s3_timestamp: name.timestamp,
            frame_id: name.frame_id,
            study_id: name.study_id,
            response_id: name.response_id,
            is_consent_footage: name.consent_prefix,
        },
    )
    .await?;
    rename_stored_video(&state, &old_name, &new_name).await?;
    if let Err(error) = tx.commit().await {
        // No row for the video: it goes back under Pipe's name, where Pipe's retry looks for it.
        if let Err(undo) = rename_stored_video(&state, &new_name, &old_name).await {
            tracing::error!(video = %new_name, error = %undo,
                "the video of a registration that failed keeps its new name without a row");
        }
        return Err(error.into());
    }
    delete_snapshot(&state, &old_name).await;
    Ok((StatusCode::OK, format!("{old_name} --> {new_name}")).into_response())
}

/// `<old>.mp4` → `<new>.mp4` in the video store. A full disk (a directory that cannot grow) is a
/// 507 that leaves the video under its old name.
async fn rename_stored_video(state: &ApiState, old: &str, new: &str) -> ApiResult<()> {
    let store = state.settings().videos.store();
    let part = lookit_storage::video_object;
    let from = part(old, "mp4")
        .map_err(|_| ApiError::bad_request("videoName is not a valid object name"))?;
    let to = part(new, "mp4")
        .map_err(|_| ApiError::bad_request("payload is not a valid object name"))?;
    match store.rename(&from, &to).await {
        Ok(()) => Ok(()),
        Err(lookit_storage::object_store::Error::NotFound { .. }) => Err(ApiError::bad_request(
            format!("the video {old}.mp4 is not in the video storage"),
        )),
        Err(e) if lookit_storage::is_out_of_space(&e) => {
            // The path is for the log; the answer goes to Pipe, outside this machine.
            tracing::warn!(error = %e, "the video storage is full");
            Err(ApiError::InsufficientStorage(format!(
                "the video storage is full: {old}.mp4 keeps its name and nothing was recorded; \
                 call again once there is room"
            )))
        }
        Err(e) => Err(anyhow::Error::new(e).context("rename the video").into()),
    }
}

/// Deletes Pipe's `<old>.jpg` snapshot (it may be absent), which nothing uses once the video is
/// registered: a failure only leaves it behind, so it is logged, not answered.
async fn delete_snapshot(state: &ApiState, old: &str) {
    let Ok(snapshot) = lookit_storage::video_object(old, "jpg") else {
        return;
    };
    match state.settings().videos.store().delete(&snapshot).await {
        Ok(()) | Err(lookit_storage::object_store::Error::NotFound { .. }) => {}
        Err(error) => tracing::warn!(%error, "could not delete Pipe's snapshot {old}.jpg"),
    }
}

/// The Lambda's body; `attributes` kept raw because the signature is over its bytes.
#[derive(Deserialize)]
pub struct LambdaBody<'a> {
    #[serde(borrow)]
    data: LambdaData<'a>,
}

#[derive(Deserialize)]
struct LambdaData<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(borrow)]
    attributes: &'a RawValue,
    #[serde(default)]
    relationships: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LambdaAttributes {
    pipe_name: String,
    #[serde(default)]
    pipe_numeric_id: Option<i64>,
    frame_id: String,
    full_name: String,
    s3_timestamp: DateTime<Utc>,
    #[serde(default)]
    is_consent_footage: bool,
}

/// JSON text without the whitespace outside strings: Python's `json.dumps(..., separators=(',', ':'))`
/// of the object as sent.
fn compact_json(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in raw.chars() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_whitespace() {
            out.push(c);
        }
    }
    out
}

#[utoipa::path(post, path = "/video/", tag = "jsonapi",
    request_body(content = Object, description = "JSON:API document of type videos; signed with X-AWS-Lambda-HMAC-Sig"),
    responses((status = 201, description = "video registered"),
              (status = 400, description = "invalid attributes or unknown study/response"),
              (status = 401, description = "missing or bad signature")))]
pub async fn lambda_video(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let signature = headers
        .get(LAMBDA_SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::Unauthorized("the X-AWS-Lambda-HMAC-Sig header is missing".into())
        })?;
    let parsed: LambdaBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("not a JSON:API video document: {e}")))?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(state.settings().lambda_secret.expose_secret().as_bytes())
            .expect("HMAC accepts keys of any length");
    mac.update(compact_json(parsed.data.attributes.get()).as_bytes());
    let expected = hex::encode(mac.finalize().into_bytes());
    if !bool::from(
        expected
            .as_bytes()
            .ct_eq(signature.trim().to_ascii_lowercase().as_bytes()),
    ) {
        return Err(ApiError::Unauthorized(
            "X-AWS-Lambda-HMAC-Sig does not match".into(),
        ));
    }
    if parsed.data.kind != "videos" {
        return Err(ApiError::Conflict(format!(
            "data.type is {:?}; this endpoint takes \"videos\"",
            parsed.data.kind
        )));
    }
    let attributes: LambdaAttributes = serde_json::from_str(parsed.data.attributes.get())
        .map_err(|e| ApiError::bad_request(format!("data.attributes: {e}")))?;
    let relationships = parsed
        .data
        .relationships
        .and_then(|r| r.as_object().cloned())
        .map(|r| {
            let mut data = serde_json::Map::new();
            data.insert("relationships".into(), Value::Object(r));
            data
        })
        .unwrap_or_default();
    let response_id = crate::jsonapi::related_id(&relationships, "response")?;
    let study_id = crate::jsonapi::related_id(&relationships, "study")?;
    let id = insert_video(
        &mut *state.pool().acquire().await?,
        NewVideo {
            full_name: attributes.full_name.clone(),
            pipe_name: attributes.pipe_name,
            pipe_numeric_id: attributes.pipe_numeric_id,
            s3_timestamp: attributes.s3_timestamp,
            frame_id: attributes.frame_id,
            study_id,
            response_id,
            is_consent_footage: attributes.is_consent_footage,
        },
    )
    .await?;
    let document = json!({"data": {
        "type": "videos",
        "id": id,
        "attributes": {"full_name": attributes.full_name},
        "relationships": {
            "response": {"data": {"type": "responses", "id": response_id}},
            "study": {"data": {"type": "studies", "id": study_id}},
        },
    }});
    Ok((StatusCode::CREATED, Json(document)).into_response())
}

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(pipe_rename))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_ids_with_underscores_parse() {
        let study = Uuid::new_v4();
        let response = Uuid::new_v4();
        let name: VideoName =
            format!("consent-videoStream_{study}_2-my_video_frame_{response}_1700000000123_042")
                .parse()
                .unwrap();
        assert!(name.consent_prefix);
        assert_eq!(name.study_id, study);
        assert_eq!(name.frame_id, "2-my_video_frame");
        assert_eq!(name.response_id, response);
        assert_eq!(name.timestamp.timestamp_millis(), 1_700_000_000_123);
    }

    #[test]
    fn malformed_names_say_why() {
        let study = Uuid::new_v4();
        let err = format!("videoStream_{study}_frame_notauuid_1700000000123_042")
            .parse::<VideoName>()
            .unwrap_err();
        assert!(err.contains("not a response uuid"), "{err}");
        let err = "video_x".parse::<VideoName>().unwrap_err();
        assert!(err.contains("videoStream_"), "{err}");
    }

    #[test]
    fn compact_json_keeps_strings() {
        assert_eq!(
            compact_json(r#"{"a": "x y", "b": [1, 2], "c": "q\" z"}"#),
            r#"{"a":"x y","b":[1,2],"c":"q\" z"}"#
        );
    }
}
