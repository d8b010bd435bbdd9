//! Researcher routes (JSON, under `/api/researcher/`): create and edit studies, move them
//! through their states (each transition writes a study log entry), ask for builds and read
//! them, rule on consent, and read the email outbox. Every route needs a researcher logged in
//! with the second factor; a researcher acts on the studies of their labs, staff on all.
//!
//! Work for the worker (a build, an email) is written to `job_outbox` in the same transaction as
//! the change that caused it; [`crate::outbox::OutboxRelay`] publishes it.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use lookit_contracts::{BuildJob, EmailJob, Queue};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::auth::{Researcher, User};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, Path};
use crate::state::ApiState;

pub const DEFAULT_PLAYER_REPO: &str = "https://github.com/lookit/ember-lookit-frameplayer";
pub const DEFAULT_PLAYER_BRANCH: &str = "master";

/// A study's state (§6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StudyState {
    Created,
    Submitted,
    Approved,
    Active,
    Paused,
    Deactivated,
    Rejected,
    Retracted,
    Archived,
}

impl StudyState {
    fn as_str(self) -> &'static str {
        match self {
            StudyState::Created => "created",
            StudyState::Submitted => "submitted",
            StudyState::Approved => "approved",
            StudyState::Active => "active",
            StudyState::Paused => "paused",
            StudyState::Deactivated => "deactivated",
            StudyState::Rejected => "rejected",
            StudyState::Retracted => "retracted",
            StudyState::Archived => "archived",
        }
    }

    fn parse(s: &str) -> Option<StudyState> {
        serde_json::from_value(Value::String(s.to_string())).ok()
    }

    /// The states reachable from this one.
    fn next(self) -> &'static [StudyState] {
        use StudyState::*;
        match self {
            Created => &[Submitted, Archived],
            Submitted => &[Approved, Rejected, Retracted],
            Rejected | Retracted => &[Submitted, Archived],
            Approved => &[Active, Retracted],
            Active => &[Paused, Deactivated],
            Paused => &[Active, Deactivated],
            Deactivated => &[Archived],
            Archived => &[],
        }
    }

    /// Approving and rejecting is the reviewers' (staff) decision.
    fn needs_staff(self) -> bool {
        matches!(self, StudyState::Approved | StudyState::Rejected)
    }
}

#[derive(sqlx::FromRow, Serialize, ToSchema)]
pub struct Study {
    id: Uuid,
    pk: i64,
    name: String,
    lab_id: Uuid,
    creator_id: Option<Uuid>,
    study_type: i16,
    state: String,
    public: bool,
    structure: Value,
    metadata: Value,
    /// The latest build succeeded.
    built: bool,
    /// A build is queued or running.
    is_building: bool,
    created_at: DateTime<Utc>,
    modified_at: DateTime<Utc>,
}

const STUDY_SELECT: &str = "SELECT s.id, s.pk, s.name, s.lab_id, s.creator_id, s.study_type, \
    s.state, s.public, s.structure, s.metadata, \
    coalesce((SELECT b.status = 'succeeded' FROM builds b WHERE b.study_id = s.id \
      AND b.status IN ('succeeded', 'failed') ORDER BY b.created_at DESC LIMIT 1), false) AS built, \
    EXISTS (SELECT 1 FROM builds b WHERE b.study_id = s.id AND b.status IN ('queued', 'running')) AS is_building, \
    s.created_at, s.modified_at FROM studies s";

/// Studies a researcher acts on: their labs' (all for staff).
const STUDY_ACCESS: &str =
    "($2 OR s.lab_id IN (SELECT lab_id FROM lab_researchers WHERE user_id = $1))";

async fn study_for(pool: &PgPool, user: &User, id: Uuid) -> ApiResult<Study> {
    sqlx::query_as(&format!(
        "{STUDY_SELECT} WHERE {STUDY_ACCESS} AND s.id = $3"
    ))
    .bind(user.id)
    .bind(user.is_staff)
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| ApiError::not_found("study"))
}

async fn write_log(
    tx: &mut PgConnection,
    study_id: Uuid,
    user_id: impl Into<Option<Uuid>>,
    action: &str,
    extra: Value,
) -> ApiResult<()> {
    sqlx::query(
        "INSERT INTO study_logs (study_id, user_id, action, extra) VALUES ($1, $2, $3, $4)",
    )
    .bind(study_id)
    .bind(user_id.into())
    .bind(action)
    .bind(extra)
    .execute(tx)
    .await?;
    Ok(())
}

/// Records a job for the worker; part of the caller's transaction.
async fn enqueue(
    tx: &mut PgConnection,
    queue: Queue,
    job_id: Uuid,
    payload: Value,
) -> ApiResult<()> {
    sqlx::query("INSERT INTO job_outbox (id, queue, payload) VALUES ($1, $2, $3)")
        .bind(job_id)
        .bind(queue.name())
        .bind(payload)
        .execute(tx)
        .await?;
    Ok(())
}

/// Queues an email (outbox row plus job) in the caller's transaction.
async fn queue_email(
    tx: &mut PgConnection,
    template: &str,
    to: &[String],
    context: Value,
) -> ApiResult<()> {
    if to.is_empty() {
        return Ok(());
    }
    let email_id = Uuid::new_v4();
    sqlx::query("INSERT INTO emails (id, template, context, to_addresses) VALUES ($1, $2, $3, $4)")
        .bind(email_id)
        .bind(template)
        .bind(context)
        .bind(to)
        .execute(&mut *tx)
        .await?;
    let job_id = Uuid::new_v4();
    let job = EmailJob { job_id, email_id };
    enqueue(
        tx,
        Queue::Email,
        job_id,
        serde_json::to_value(job).map_err(anyhow::Error::from)?,
    )
    .await
}

#[utoipa::path(get, path = "/studies/", tag = "researcher",
    responses((status = 200, body = [Study])))]
async fn list_studies(
    State(state): State<ApiState>,
    Researcher(user): Researcher,
) -> ApiResult<Json<Vec<Study>>> {
    let studies = sqlx::query_as(&format!(
        "{STUDY_SELECT} WHERE {STUDY_ACCESS} ORDER BY s.pk"
    ))
    .bind(user.id)
    .bind(user.is_staff)
    .fetch_all(state.pool())
    .await?;
    Ok(Json(studies))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewStudy {
    name: String,
    lab_id: Uuid,
    #[serde(default = "default_study_type")]
    study_type: i16,
    #[serde(default)]
    public: bool,
    #[serde(default)]
    structure: Option<Value>,
    #[serde(default)]
    metadata: Option<Value>,
}

fn default_study_type() -> i16 {
    1
}

fn check_study_fields(
    name: Option<&str>,
    study_type: Option<i16>,
    structure: Option<&Value>,
    metadata: Option<&Value>,
) -> ApiResult<()> {
    if name.is_some_and(|n| n.trim().is_empty()) {
        return Err(ApiError::bad_request("name must not be empty"));
    }
    if study_type.is_some_and(|t| !(1..=3).contains(&t)) {
        return Err(ApiError::bad_request(
            "study_type must be 1 (frameplayer), 2 (external) or 3 (jsPsych)",
        ));
    }
    if let Some(structure) = structure {
        if !structure.get("frames").is_some_and(Value::is_object)
            || !structure.get("sequence").is_some_and(Value::is_array)
        {
            return Err(ApiError::bad_request(
                "structure must be an object with frames (an object) and sequence (an array)",
            ));
        }
    }
    if let Some(metadata) = metadata {
        if !metadata.is_object() {
            return Err(ApiError::bad_request("metadata must be an object"));
        }
        for key in ["player_repo_url", "last_known_player_sha", "player_branch"] {
            if metadata.get(key).is_some_and(|v| !v.is_string()) {
                return Err(ApiError::bad_request(format!(
                    "metadata.{key} must be a string"
                )));
            }
        }
    }
    Ok(())
}

#[utoipa::path(post, path = "/studies/", tag = "researcher", request_body = NewStudy,
    responses((status = 201, body = Study), (status = 400, description = "invalid fields"),
              (status = 403, description = "not a researcher of that lab")))]
async fn create_study(
    State(state): State<ApiState>,
    Researcher(user): Researcher,
    Json(new): Json<NewStudy>,
) -> ApiResult<(StatusCode, Json<Study>)> {
    check_study_fields(
        Some(&new.name),
        Some(new.study_type),
        new.structure.as_ref(),
        new.metadata.as_ref(),
    )?;
    let pool = state.pool();
    let member: bool = sqlx::query_scalar(
        "SELECT $3 OR EXISTS (SELECT 1 FROM lab_researchers WHERE lab_id = $1 AND user_id = $2)",
    )
    .bind(new.lab_id)
    .bind(user.id)
    .bind(user.is_staff)
    .fetch_one(pool)
    .await?;
    if !member {
        return Err(ApiError::Forbidden(
            "you are not a researcher of that lab".into(),
        ));
    }
    let id = Uuid::new_v4();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO studies (id, name, lab_id, creator_id, study_type, public, structure, metadata) \
         VALUES ($1, $2, $3, $4, $5, $6, coalesce($7, '{\"frames\": {}, \"sequence\": []}'::jsonb), \
         coalesce($8, '{}'::jsonb))",
    )
    .bind(id)
    .bind(new.name.trim())
    .bind(new.lab_id)
    .bind(user.id)
    .bind(new.study_type)
    .bind(new.public)
    .bind(new.structure)
    .bind(new.metadata)
    .execute(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO study_admins (study_id, user_id) VALUES ($1, $2)")
        .bind(id)
        .bind(user.id)
        .execute(&mut *tx)
        .await?;
    write_log(&mut tx, id, user.id, "created", json!({})).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(study_for(pool, &user, id).await?)))
}

#[utoipa::path(get, path = "/studies/{id}/", tag = "researcher", params(("id" = Uuid, Path)),
    responses((status = 200, body = Study), (status = 404, description = "not found")))]
async fn get_study(
    State(state): State<ApiState>,
    Researcher(user): Researcher,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Study>> {
    Ok(Json(study_for(state.pool(), &user, id).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StudyEdit {
    name: Option<String>,
    study_type: Option<i16>,
    public: Option<bool>,
    structure: Option<Value>,
    metadata: Option<Value>,
}

#[utoipa::path(patch, path = "/studies/{id}/", tag = "researcher", params(("id" = Uuid, Path)),
    request_body = StudyEdit,
    responses((status = 200, body = Study), (status = 400, description = "invalid fields")))]
async fn edit_study(
    State(state): State<ApiState>,
    Researcher(user): Researcher,
    Path(id): Path<Uuid>,
    Json(edit): Json<StudyEdit>,
) -> ApiResult<Json<Study>> {
    check_study_fields(
        edit.name.as_deref(),
        edit.study_type,
        edit.structure.as_ref(),
        edit.metadata.as_ref(),
    )?;
    let pool = state.pool();
    study_for(pool, &user, id).await?;
    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE studies SET name = coalesce($2, name), study_type = coalesce($3, study_type), \
         public = coalesce($4, public), structure = coalesce($5, structure), \
         metadata = coalesce($6, metadata), modified_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(edit.name.as_deref().map(str::trim))
    .bind(edit.study_type)
    .bind(edit.public)
    .bind(&edit.structure)
    .bind(&edit.metadata)
    .execute(&mut *tx)
    .await?;
    let changed: Vec<&str> = [
        ("name", edit.name.is_some()),
        ("study_type", edit.study_type.is_some()),
        ("public", edit.public.is_some()),
        ("structure", edit.structure.is_some()),
        ("metadata", edit.metadata.is_some()),
    ]
    .into_iter()
    .filter_map(|(field, set)| set.then_some(field))
    .collect();
    write_log(&mut tx, id, user.id, "edited", json!({ "fields": changed })).await?;
    tx.commit().await?;
    Ok(Json(study_for(pool, &user, id).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Transition {
    /// The state to move to.
    to: String,
    #[serde(default)]
    comments: Option<String>,
}

#[utoipa::path(post, path = "/studies/{id}/transition/", tag = "researcher", params(("id" = Uuid, Path)),
    request_body = Transition,
    responses((status = 200, body = Study),
              (status = 409, description = "not allowed from the current state, or not built"),
              (status = 403, description = "approving and rejecting is for staff")))]
async fn transition_study(
    State(state): State<ApiState>,
    Researcher(user): Researcher,
    Path(id): Path<Uuid>,
    Json(transition): Json<Transition>,
) -> ApiResult<Json<Study>> {
    let pool = state.pool();
    let study = study_for(pool, &user, id).await?;
    let to = StudyState::parse(&transition.to).ok_or_else(|| {
        ApiError::bad_request(format!("{:?} is not a study state", transition.to))
    })?;
    let from = StudyState::parse(&study.state)
        .ok_or_else(|| anyhow::anyhow!("study {id} has unknown state {}", study.state))?;
    if !from.next().contains(&to) {
        let allowed: Vec<&str> = from.next().iter().map(|s| s.as_str()).collect();
        return Err(ApiError::Conflict(format!(
            "a {} study cannot become {}; allowed: {}",
            from.as_str(),
            to.as_str(),
            if allowed.is_empty() {
                "none".to_string()
            } else {
                allowed.join(", ")
            }
        )));
    }
    if to.needs_staff() && !user.is_staff {
        return Err(ApiError::Forbidden(format!(
            "only staff may make a study {}",
            to.as_str()
        )));
    }
    if to == StudyState::Active && !study.built {
        return Err(ApiError::Conflict(
            "the study is not built yet: request a build and wait for it to succeed".into(),
        ));
    }
    let mut tx = pool.begin().await?;
    // The state check and the update are one statement, so two racing transitions cannot both win.
    let updated = sqlx::query(
        "UPDATE studies SET state = $3, modified_at = now() WHERE id = $1 AND state = $2",
    )
    .bind(id)
    .bind(from.as_str())
    .bind(to.as_str())
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() != 1 {
        return Err(ApiError::Conflict(
            "the study changed state meanwhile; reload it".into(),
        ));
    }
    write_log(
        &mut tx,
        id,
        user.id,
        to.as_str(),
        json!({"from": from.as_str(), "to": to.as_str(), "comments": transition.comments}),
    )
    .await?;
    if to == StudyState::Submitted {
        let staff: Vec<String> =
            sqlx::query_scalar("SELECT username FROM users WHERE is_staff ORDER BY username")
                .fetch_all(&mut *tx)
                .await?;
        queue_email(
            &mut tx,
            "study_submitted",
            &staff,
            json!({"study_id": id, "study_name": study.name, "submitted_by": user.username}),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Json(study_for(pool, &user, id).await?))
}

#[derive(sqlx::FromRow, Serialize, ToSchema)]
pub struct StudyLog {
    id: i64,
    user_id: Option<Uuid>,
    action: String,
    extra: Value,
    created_at: DateTime<Utc>,
}

#[utoipa::path(get, path = "/studies/{id}/logs/", tag = "researcher", params(("id" = Uuid, Path)),
    responses((status = 200, body = [StudyLog])))]
async fn study_logs(
    State(state): State<ApiState>,
    Researcher(user): Researcher,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Vec<StudyLog>>> {
    study_for(state.pool(), &user, id).await?;
    let logs = sqlx::query_as(
        "SELECT id, user_id, action, extra, created_at FROM study_logs WHERE study_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(state.pool())
    .await?;
    Ok(Json(logs))
}

#[derive(sqlx::FromRow, Serialize, ToSchema)]
pub struct Build {
    pub id: Uuid,
    study_id: Uuid,
    requested_by: Option<Uuid>,
    player_repo: String,
    player_ref: String,
    player_sha: Option<String>,
    /// queued, running, succeeded, failed or cancelled.
    status: String,
    /// The current stage, or the failing one.
    stage: Option<String>,
    cache_hit: bool,
    log: String,
    output_location: Option<String>,
    error: Option<String>,
    attempts: i32,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

const BUILD_SELECT: &str = "SELECT b.id, b.study_id, b.requested_by, b.player_repo, b.player_ref, \
    b.player_sha, b.status, b.stage, b.cache_hit, b.log, b.output_location, b.error, b.attempts, \
    b.created_at, b.started_at, b.finished_at FROM builds b";

fn is_sha(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Repository and ref of the player (§2 step 2): the pinned sha when it is one, else the branch.
fn player_of(metadata: &Value) -> (String, String, bool) {
    let text = |key: &str| {
        metadata
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
    };
    let repo = text("player_repo_url")
        .unwrap_or(DEFAULT_PLAYER_REPO)
        .to_string();
    match text("last_known_player_sha").filter(|s| is_sha(s)) {
        Some(sha) => (repo, sha.to_lowercase(), true),
        None => (
            repo,
            text("player_branch")
                .unwrap_or(DEFAULT_PLAYER_BRANCH)
                .to_string(),
            false,
        ),
    }
}

#[utoipa::path(post, path = "/studies/{id}/builds/", tag = "researcher", params(("id" = Uuid, Path)),
    responses((status = 202, body = Build, description = "queued for the worker"),
              (status = 409, description = "a build is already queued or running, or the study is built from this version")))]
async fn request_build(
    State(state): State<ApiState>,
    Researcher(user): Researcher,
    Path(id): Path<Uuid>,
) -> ApiResult<(StatusCode, Json<Build>)> {
    let study = study_for(state.pool(), &user, id).await?;
    let build = queue_build(state.pool(), &study, Some(user.id)).await?;
    Ok((StatusCode::ACCEPTED, Json(build)))
}

/// Queues a build of the study `id` for the worker (the `lookit-local build` command; the
/// researcher route checks access first and shares [`queue_build`]).
pub async fn queue_study_build(pool: &PgPool, id: Uuid) -> ApiResult<Build> {
    let study: Study = sqlx::query_as(&format!("{STUDY_SELECT} WHERE s.id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| ApiError::not_found("study"))?;
    queue_build(pool, &study, None).await
}

/// The build row and its job go into the database in one transaction (the outbox relay
/// publishes the job). Refused while a build is queued or running, and when the study is
/// already built from this version with a pinned player.
async fn queue_build(pool: &PgPool, study: &Study, requested_by: Option<Uuid>) -> ApiResult<Build> {
    let id = study.id;
    let (repo, reference, pinned) = player_of(&study.metadata);
    let fingerprint = hex::encode(Sha256::digest(
        serde_json::to_vec(&json!([
            study.structure,
            study.metadata,
            study.study_type,
            repo,
            reference
        ]))
        .map_err(anyhow::Error::from)?,
    ));
    let mut tx = pool.begin().await?;
    let running: Option<(Uuid, String)> = sqlx::query_as(
        "SELECT id, status FROM builds WHERE study_id = $1 AND status IN ('queued', 'running')",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some((build, status)) = running {
        return Err(ApiError::Conflict(format!(
            "build {build} of this study is already {status}"
        )));
    }
    // A branch may have moved since, so only a pinned player makes an unchanged study "built".
    let last_success: Option<String> = sqlx::query_scalar(
        "SELECT study_fingerprint FROM builds WHERE study_id = $1 AND status = 'succeeded' \
         ORDER BY created_at DESC LIMIT 1",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    .flatten();
    if pinned && last_success.as_deref() == Some(fingerprint.as_str()) {
        return Err(ApiError::Conflict(
            "the study is already built from this version and player; change the study or its player to build again".into(),
        ));
    }
    let build_id = Uuid::new_v4();
    let job_id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO builds (id, study_id, requested_by, player_repo, player_ref, study_fingerprint) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(build_id)
    .bind(id)
    .bind(requested_by)
    .bind(&repo)
    .bind(&reference)
    .bind(&fingerprint)
    .execute(&mut *tx)
    .await
    .map_err(|e| match ApiError::from(e) {
        // The unique index caught a build requested at the same moment.
        ApiError::Conflict(_) => ApiError::Conflict("a build of this study is already queued".into()),
        other => other,
    })?;
    let job = BuildJob { job_id, build_id };
    enqueue(
        &mut tx,
        Queue::Builds,
        job_id,
        serde_json::to_value(job).map_err(anyhow::Error::from)?,
    )
    .await?;
    write_log(
        &mut tx,
        id,
        requested_by,
        "build requested",
        json!({"build_id": build_id, "player_ref": reference}),
    )
    .await?;
    tx.commit().await?;
    let build = sqlx::query_as(&format!("{BUILD_SELECT} WHERE b.id = $1"))
        .bind(build_id)
        .fetch_one(pool)
        .await?;
    Ok(build)
}

#[utoipa::path(get, path = "/studies/{id}/builds/", tag = "researcher", params(("id" = Uuid, Path)),
    responses((status = 200, body = [Build], description = "newest first")))]
async fn list_builds(
    State(state): State<ApiState>,
    Researcher(user): Researcher,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Vec<Build>>> {
    study_for(state.pool(), &user, id).await?;
    let builds = sqlx::query_as(&format!(
        "{BUILD_SELECT} WHERE b.study_id = $1 ORDER BY b.created_at DESC"
    ))
    .bind(id)
    .fetch_all(state.pool())
    .await?;
    Ok(Json(builds))
}

#[utoipa::path(get, path = "/builds/{id}/", tag = "researcher", params(("id" = Uuid, Path)),
    responses((status = 200, body = Build), (status = 404, description = "not found")))]
async fn get_build(
    State(state): State<ApiState>,
    Researcher(user): Researcher,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Build>> {
    let build: Build = sqlx::query_as(&format!("{BUILD_SELECT} WHERE b.id = $1"))
        .bind(id)
        .fetch_optional(state.pool())
        .await?
        .ok_or_else(|| ApiError::not_found("build"))?;
    study_for(state.pool(), &user, build.study_id)
        .await
        .map_err(|_| ApiError::not_found("build"))?;
    Ok(Json(build))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRuling {
    /// accepted, rejected or pending.
    action: String,
    #[serde(default)]
    comments: String,
}

#[derive(sqlx::FromRow, Serialize, ToSchema)]
pub struct ConsentRuling {
    id: i64,
    response_id: Uuid,
    action: String,
    arbiter_id: Option<Uuid>,
    comments: String,
    created_at: DateTime<Utc>,
}

/// The response's study, if the researcher acts on it.
async fn response_study(pool: &PgPool, user: &User, response: Uuid) -> ApiResult<Uuid> {
    let study: Option<Uuid> = sqlx::query_scalar("SELECT study_id FROM responses WHERE id = $1")
        .bind(response)
        .fetch_optional(pool)
        .await?;
    let study = study.ok_or_else(|| ApiError::not_found("response"))?;
    study_for(pool, user, study)
        .await
        .map_err(|_| ApiError::not_found("response"))?;
    Ok(study)
}

#[utoipa::path(post, path = "/responses/{id}/consent/", tag = "researcher", params(("id" = Uuid, Path)),
    request_body = NewRuling,
    responses((status = 201, body = ConsentRuling), (status = 400, description = "unknown action")))]
async fn rule_consent(
    State(state): State<ApiState>,
    Researcher(user): Researcher,
    Path(id): Path<Uuid>,
    Json(ruling): Json<NewRuling>,
) -> ApiResult<(StatusCode, Json<ConsentRuling>)> {
    if !["accepted", "rejected", "pending"].contains(&ruling.action.as_str()) {
        return Err(ApiError::bad_request(
            "action must be accepted, rejected or pending",
        ));
    }
    let pool = state.pool();
    let study = response_study(pool, &user, id).await?;
    let mut tx = pool.begin().await?;
    let row: ConsentRuling = sqlx::query_as(
        "INSERT INTO consent_rulings (response_id, action, arbiter_id, comments) VALUES ($1, $2, $3, $4) \
         RETURNING id, response_id, action, arbiter_id, comments, created_at",
    )
    .bind(id)
    .bind(&ruling.action)
    .bind(user.id)
    .bind(&ruling.comments)
    .fetch_one(&mut *tx)
    .await?;
    write_log(
        &mut tx,
        study,
        user.id,
        "consent ruling",
        json!({"response_id": id, "action": ruling.action}),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(row)))
}

#[derive(Serialize, ToSchema)]
pub struct ConsentStatus {
    /// The newest ruling's action; `pending` when there is none.
    current: String,
    rulings: Vec<ConsentRuling>,
}

#[utoipa::path(get, path = "/responses/{id}/consent/", tag = "researcher", params(("id" = Uuid, Path)),
    responses((status = 200, body = ConsentStatus)))]
async fn consent_status(
    State(state): State<ApiState>,
    Researcher(user): Researcher,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<ConsentStatus>> {
    response_study(state.pool(), &user, id).await?;
    let rulings: Vec<ConsentRuling> = sqlx::query_as(
        "SELECT id, response_id, action, arbiter_id, comments, created_at FROM consent_rulings \
         WHERE response_id = $1 ORDER BY created_at DESC, id DESC",
    )
    .bind(id)
    .fetch_all(state.pool())
    .await?;
    let current = rulings
        .first()
        .map_or("pending".to_string(), |r| r.action.clone());
    Ok(Json(ConsentStatus { current, rulings }))
}

#[derive(sqlx::FromRow, Serialize, ToSchema)]
pub struct Email {
    id: Uuid,
    template: String,
    to_addresses: Vec<String>,
    subject: Option<String>,
    body_text: Option<String>,
    /// queued, sent, kept or failed.
    status: String,
    error: Option<String>,
    created_at: DateTime<Utc>,
    sent_at: Option<DateTime<Utc>>,
}

#[utoipa::path(get, path = "/emails/", tag = "researcher",
    responses((status = 200, body = [Email], description = "newest first: the caller's mail (staff: all)")))]
async fn list_emails(
    State(state): State<ApiState>,
    Researcher(user): Researcher,
) -> ApiResult<Json<Vec<Email>>> {
    let emails = sqlx::query_as(
        "SELECT id, template, to_addresses, subject, body_text, status, error, created_at, sent_at \
         FROM emails WHERE $1 OR lower($2) = ANY (SELECT lower(a) FROM unnest(to_addresses) a) \
         ORDER BY created_at DESC LIMIT 200",
    )
    .bind(user.is_staff)
    .bind(&user.username)
    .fetch_all(state.pool())
    .await?;
    Ok(Json(emails))
}

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_studies, create_study))
        .routes(routes!(get_study, edit_study))
        .routes(routes!(transition_study))
        .routes(routes!(study_logs))
        .routes(routes!(request_build, list_builds))
        .routes(routes!(get_build))
        .routes(routes!(rule_consent, consent_status))
        .routes(routes!(list_emails))
}

/// Whether the researcher may preview the study (used by the preview route).
pub(crate) async fn can_preview(pool: &PgPool, user: &User, study: Uuid) -> ApiResult<bool> {
    match study_for(pool, user, study).await {
        Ok(_) => Ok(true),
        Err(ApiError::NotFound(_)) => Ok(false),
        Err(other) => Err(other),
    }
}
