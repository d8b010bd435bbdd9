//! The JSON:API of §7 under `/api/v1/`, as the frameplayer uses it: resource `id` is the uuid,
//! attribute `pk` the numeric id, attribute names underscored, pages of [`PAGE_SIZE`], errors as
//! JSON:API error objects. Read-only except `responses` (POST, PUT, PATCH), `feedback` (POST,
//! researchers) and `video` (the Lambda, in [`crate::video`]).
//!
//! Who sees what: a participant sees their own user, children and responses; a researcher with
//! an activated authenticator also sees the responses (and responding children) of their labs'
//! studies; staff see everything. Demographic data is only ever the caller's own; feedback is
//! seen by whoever sees its response. Studies listed are the active ones; labs the approved ones.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{json, Map, Value};
use sqlx::postgres::PgRow;
use sqlx::PgPool;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::auth::{Caller, User};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, Path, Query};
use crate::state::ApiState;

pub const PAGE_SIZE: i64 = 10;
const BASE: &str = "/api/v1";
const MEDIA_TYPE: &str = "application/vnd.api+json";

/// A JSON:API document response.
struct Document(StatusCode, Value);

impl IntoResponse for Document {
    fn into_response(self) -> Response {
        (
            self.0,
            [(header::CONTENT_TYPE, MEDIA_TYPE)],
            self.1.to_string(),
        )
            .into_response()
    }
}

/// What a caller may see beyond their own records.
struct Scope {
    user_id: Uuid,
    researcher: bool,
    staff: bool,
}

impl Scope {
    fn of(user: &User) -> Scope {
        Scope {
            user_id: user.id,
            researcher: (user.is_researcher || user.is_staff) && user.totp_activated,
            staff: user.is_staff && user.totp_activated,
        }
    }
}

type Params = HashMap<String, String>;

/// The 1-based page asked for with `?page=` (or `?page[number]=`).
fn page(params: &Params) -> ApiResult<i64> {
    match params.get("page").or_else(|| params.get("page[number]")) {
        None => Ok(1),
        Some(raw) => raw.parse::<i64>().ok().filter(|p| *p >= 1).ok_or_else(|| {
            ApiError::bad_request(format!("page must be a positive integer, not {raw:?}"))
        }),
    }
}

/// A uuid filter such as `?child=` (or `?filter[child]=`).
fn uuid_filter(params: &Params, name: &str) -> ApiResult<Option<Uuid>> {
    let raw = params
        .get(name)
        .or_else(|| params.get(&format!("filter[{name}]")));
    raw.map(|raw| {
        Uuid::parse_str(raw).map_err(|_| {
            ApiError::bad_request(format!("filter {name} must be a uuid, not {raw:?}"))
        })
    })
    .transpose()
}

/// A page of resources with JSON:API links and DRF-style pagination meta.
fn list_document(path: &str, page: i64, total: i64, data: Vec<Value>) -> ApiResult<Document> {
    if data.is_empty() && page > 1 {
        return Err(ApiError::NotFound(format!(
            "invalid page {page}: there are no results on it"
        )));
    }
    let pages = ((total + PAGE_SIZE - 1) / PAGE_SIZE).max(1);
    let link = |p: i64| Value::String(format!("{BASE}{path}?page={p}"));
    Ok(Document(
        StatusCode::OK,
        json!({
            "links": {
                "first": link(1),
                "last": link(pages),
                "next": if page < pages { link(page + 1) } else { Value::Null },
                "prev": if page > 1 { link(page - 1) } else { Value::Null },
            },
            "data": data,
            "meta": {"pagination": {"page": page, "pages": pages, "count": total}},
        }),
    ))
}

fn single_document(status: StatusCode, data: Value) -> Document {
    Document(status, json!({ "data": data }))
}

fn relation(kind: &str, id: Uuid) -> Value {
    json!({
        "links": {"related": format!("{BASE}/{kind}/{id}/")},
        "data": {"type": kind, "id": id},
    })
}

/// Saturating: a page far past the end (`?page=9223372036854775806`) is an empty page (404), not
/// an overflow.
fn offset(page: i64) -> i64 {
    (page - 1).saturating_mul(PAGE_SIZE)
}

/// A read-only JSON:API resource backed by one table: how its rows are selected, who may see
/// them, and how one is rendered. [`visible`] and [`list`] serve every resource through it, so
/// the visibility rule of a resource is written once.
trait Resource: for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin {
    /// The table, selected as [`Self::ALIAS`].
    const TABLE: &'static str;
    const ALIAS: &'static str;
    /// The selected columns, qualified by the alias.
    const COLUMNS: &'static str;
    /// The rows the caller may see, over `$1` user id, `$2` researcher, `$3` staff ([`Scope`]).
    const VISIBLE: &'static str;
    /// The rows lists show, among the visible ones.
    const LISTED: &'static str = "true";
    /// What a 404 calls it.
    const NAME: &'static str;
    /// The `count(*) OVER ()` of a list query (0 for a single row).
    fn total(&self) -> i64;
    fn resource(&self) -> Value;
}

/// The resource `id` when the caller may see it; a 404 naming the resource otherwise.
async fn visible<R: Resource>(pool: &PgPool, scope: &Scope, id: Uuid) -> ApiResult<R> {
    sqlx::query_as(&format!(
        "SELECT {} FROM {} {alias} WHERE {} AND {alias}.id = $4",
        R::COLUMNS,
        R::TABLE,
        R::VISIBLE,
        alias = R::ALIAS,
    ))
    .bind(scope.user_id)
    .bind(scope.researcher)
    .bind(scope.staff)
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| ApiError::not_found(R::NAME))
}

/// The resource `id` as a JSON:API document, when the caller may see it.
async fn show<R: Resource>(state: &ApiState, user: &User, id: Uuid) -> ApiResult<Document> {
    let row: R = visible(state.pool(), &Scope::of(user), id).await?;
    Ok(single_document(StatusCode::OK, row.resource()))
}

/// A page of the listed resources the caller may see, as a JSON:API list document at `path`.
/// Each filter `(column, value)` keeps the rows whose column equals the value, when given.
async fn list<R: Resource>(
    pool: &PgPool,
    scope: &Scope,
    path: &str,
    params: &Params,
    filters: &[(&str, Option<Uuid>)],
) -> ApiResult<Document> {
    let page = page(params)?;
    let alias = R::ALIAS;
    let filtered: String = filters
        .iter()
        .enumerate()
        .map(|(i, (column, _))| format!(" AND (${n}::uuid IS NULL OR {column} = ${n})", n = i + 4))
        .collect();
    let sql = format!(
        "SELECT {}, count(*) OVER () AS total FROM {} {alias} WHERE {} AND {}{filtered} \
         ORDER BY {alias}.pk LIMIT {PAGE_SIZE} OFFSET ${}",
        R::COLUMNS,
        R::TABLE,
        R::VISIBLE,
        R::LISTED,
        filters.len() + 4,
    );
    let mut query = sqlx::query_as::<_, R>(&sql)
        .bind(scope.user_id)
        .bind(scope.researcher)
        .bind(scope.staff);
    for (_, value) in filters {
        query = query.bind(*value);
    }
    let rows = query.bind(offset(page)).fetch_all(pool).await?;
    let total = rows.first().map_or(0, R::total);
    list_document(path, page, total, rows.iter().map(R::resource).collect())
}

// ---- users -------------------------------------------------------------------------------

#[derive(sqlx::FromRow)]
struct UserRow {
    id: Uuid,
    pk: i64,
    username: String,
    given_name: String,
    family_name: String,
    is_researcher: bool,
    #[sqlx(default)]
    total: i64,
}

impl Resource for UserRow {
    const TABLE: &'static str = "users";
    const ALIAS: &'static str = "u";
    const COLUMNS: &'static str =
        "u.id, u.pk, u.username, u.given_name, u.family_name, u.is_researcher";
    /// The caller; every user for staff.
    const VISIBLE: &'static str = "(u.id = $1 OR $3)";
    const NAME: &'static str = "user";
    fn total(&self) -> i64 {
        self.total
    }
    fn resource(&self) -> Value {
        json!({
            "type": "users",
            "id": self.id,
            "attributes": {
                "pk": self.pk,
                "username": self.username,
                "given_name": self.given_name,
                "family_name": self.family_name,
                "is_researcher": self.is_researcher,
            },
            "relationships": {
                "children": {"links": {"related": format!("{BASE}/users/{}/children/", self.id)}},
            },
            "links": {"self": format!("{BASE}/users/{}/", self.id)},
        })
    }
}

#[utoipa::path(get, path = "/users/", tag = "jsonapi",
    params(("page" = Option<i64>, Query)),
    responses((status = 200, description = "the caller (staff: every user)")))]
async fn users_list(
    State(state): State<ApiState>,
    Caller(user): Caller,
    Query(params): Query<Params>,
) -> ApiResult<Document> {
    list::<UserRow>(state.pool(), &Scope::of(&user), "/users/", &params, &[]).await
}

#[utoipa::path(get, path = "/users/{id}/", tag = "jsonapi",
    params(("id" = Uuid, Path)),
    responses((status = 200, description = "one user"), (status = 404, description = "not found")))]
async fn users_get(
    State(state): State<ApiState>,
    Caller(user): Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Document> {
    show::<UserRow>(&state, &user, id).await
}

// ---- labs --------------------------------------------------------------------------------

#[derive(sqlx::FromRow)]
struct LabRow {
    id: Uuid,
    pk: i64,
    name: String,
    institution: String,
    contact_email: String,
    approved_to_test: bool,
    #[sqlx(default)]
    total: i64,
}

impl Resource for LabRow {
    const TABLE: &'static str = "labs";
    const ALIAS: &'static str = "l";
    const COLUMNS: &'static str =
        "l.id, l.pk, l.name, l.institution, l.contact_email, l.approved_to_test";
    /// Approved labs, for everyone.
    const VISIBLE: &'static str = "l.approved_to_test";
    const NAME: &'static str = "lab";
    fn total(&self) -> i64 {
        self.total
    }
    fn resource(&self) -> Value {
        json!({
            "type": "labs",
            "id": self.id,
            "attributes": {
                "pk": self.pk,
                "name": self.name,
                "institution": self.institution,
                "contact_email": self.contact_email,
                "approved_to_test": self.approved_to_test,
            },
            "links": {"self": format!("{BASE}/labs/{}/", self.id)},
        })
    }
}

#[utoipa::path(get, path = "/labs/", tag = "jsonapi", params(("page" = Option<i64>, Query)),
    responses((status = 200, description = "approved labs")))]
async fn labs_list(
    State(state): State<ApiState>,
    Caller(user): Caller,
    Query(params): Query<Params>,
) -> ApiResult<Document> {
    list::<LabRow>(state.pool(), &Scope::of(&user), "/labs/", &params, &[]).await
}

#[utoipa::path(get, path = "/labs/{id}/", tag = "jsonapi", params(("id" = Uuid, Path)),
    responses((status = 200, description = "one approved lab"), (status = 404, description = "not found")))]
async fn labs_get(
    State(state): State<ApiState>,
    Caller(user): Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Document> {
    show::<LabRow>(&state, &user, id).await
}

// ---- studies -----------------------------------------------------------------------------

#[derive(sqlx::FromRow)]
struct StudyRow {
    id: Uuid,
    pk: i64,
    name: String,
    lab_id: Uuid,
    study_type: i16,
    state: String,
    public: bool,
    structure: Value,
    created_at: DateTime<Utc>,
    #[sqlx(default)]
    total: i64,
}

impl Resource for StudyRow {
    const TABLE: &'static str = "studies";
    const ALIAS: &'static str = "s";
    const COLUMNS: &'static str =
        "s.id, s.pk, s.name, s.lab_id, s.study_type, s.state, s.public, s.structure, s.created_at";
    /// Active studies for everyone; any study of their labs for researchers; all for staff.
    const VISIBLE: &'static str = "(s.state = 'active' OR $3 OR ($2 AND s.lab_id IN \
        (SELECT lab_id FROM lab_researchers WHERE user_id = $1)))";
    /// Lists show the active studies only.
    const LISTED: &'static str = "s.state = 'active'";
    const NAME: &'static str = "study";
    fn total(&self) -> i64 {
        self.total
    }
    fn resource(&self) -> Value {
        json!({
            "type": "studies",
            "id": self.id,
            "attributes": {
                "pk": self.pk,
                "name": self.name,
                "study_type": self.study_type,
                "state": self.state,
                "public": self.public,
                "structure": self.structure,
                "date_created": self.created_at,
            },
            "relationships": {
                "lab": relation("labs", self.lab_id),
                "responses": {"links": {"related": format!("{BASE}/studies/{}/responses/", self.id)}},
            },
            "links": {"self": format!("{BASE}/studies/{}/", self.id)},
        })
    }
}

#[utoipa::path(get, path = "/studies/", tag = "jsonapi", params(("page" = Option<i64>, Query)),
    responses((status = 200, description = "active studies")))]
async fn studies_list(
    State(state): State<ApiState>,
    Caller(user): Caller,
    Query(params): Query<Params>,
) -> ApiResult<Document> {
    list::<StudyRow>(state.pool(), &Scope::of(&user), "/studies/", &params, &[]).await
}

#[utoipa::path(get, path = "/studies/{id}/", tag = "jsonapi", params(("id" = Uuid, Path)),
    responses((status = 200, description = "one study"), (status = 404, description = "not found")))]
async fn studies_get(
    State(state): State<ApiState>,
    Caller(user): Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Document> {
    show::<StudyRow>(&state, &user, id).await
}

// ---- children ----------------------------------------------------------------------------

#[derive(sqlx::FromRow)]
struct ChildRow {
    id: Uuid,
    pk: i64,
    user_id: Uuid,
    given_name: String,
    birthday: NaiveDate,
    #[sqlx(default)]
    total: i64,
}

impl Resource for ChildRow {
    const TABLE: &'static str = "children";
    const ALIAS: &'static str = "c";
    const COLUMNS: &'static str = "c.id, c.pk, c.user_id, c.given_name, c.birthday";
    /// Own children; children who took part in the caller's labs' studies; all for staff.
    const VISIBLE: &'static str = "(c.user_id = $1 OR $3 OR ($2 AND c.id IN (SELECT r.child_id \
        FROM responses r JOIN studies s ON s.id = r.study_id JOIN lab_researchers lr \
        ON lr.lab_id = s.lab_id WHERE lr.user_id = $1)))";
    const NAME: &'static str = "child";
    fn total(&self) -> i64 {
        self.total
    }
    fn resource(&self) -> Value {
        json!({
            "type": "children",
            "id": self.id,
            "attributes": {
                "pk": self.pk,
                "given_name": self.given_name,
                "birthday": self.birthday,
            },
            "relationships": {"user": relation("users", self.user_id)},
            "links": {"self": format!("{BASE}/children/{}/", self.id)},
        })
    }
}

#[utoipa::path(get, path = "/children/", tag = "jsonapi", params(("page" = Option<i64>, Query)),
    responses((status = 200, description = "children the caller may see")))]
async fn children_list(
    State(state): State<ApiState>,
    Caller(user): Caller,
    Query(params): Query<Params>,
) -> ApiResult<Document> {
    list::<ChildRow>(state.pool(), &Scope::of(&user), "/children/", &params, &[]).await
}

#[utoipa::path(get, path = "/children/{id}/", tag = "jsonapi", params(("id" = Uuid, Path)),
    responses((status = 200, description = "one child"), (status = 404, description = "not found")))]
async fn children_get(
    State(state): State<ApiState>,
    Caller(user): Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Document> {
    show::<ChildRow>(&state, &user, id).await
}

#[utoipa::path(get, path = "/users/{id}/children/", tag = "jsonapi",
    params(("id" = Uuid, Path), ("page" = Option<i64>, Query)),
    responses((status = 200, description = "a user's children"), (status = 404, description = "unknown user")))]
async fn user_children(
    State(state): State<ApiState>,
    Caller(user): Caller,
    Path(id): Path<Uuid>,
    Query(params): Query<Params>,
) -> ApiResult<Document> {
    let scope = Scope::of(&user);
    if id != scope.user_id && !scope.staff {
        return Err(ApiError::not_found("user"));
    }
    let path = format!("/users/{id}/children/");
    list::<ChildRow>(
        state.pool(),
        &scope,
        &path,
        &params,
        &[("c.user_id", Some(id))],
    )
    .await
}

// ---- responses ---------------------------------------------------------------------------

#[derive(sqlx::FromRow)]
struct ResponseRow {
    id: Uuid,
    pk: i64,
    study_id: Uuid,
    child_id: Uuid,
    completed: bool,
    completed_consent_frame: bool,
    exp_data: Value,
    conditions: Value,
    sequence: Value,
    global_event_timings: Value,
    is_preview: bool,
    recording_method: String,
    created_at: DateTime<Utc>,
    modified_at: DateTime<Utc>,
    #[sqlx(default)]
    total: i64,
}

impl Resource for ResponseRow {
    const TABLE: &'static str = "responses";
    const ALIAS: &'static str = "r";
    const COLUMNS: &'static str = RESPONSE_COLUMNS;
    /// Responses of own children; of the caller's labs' studies for researchers; all for staff.
    const VISIBLE: &'static str = "(r.child_id IN (SELECT id FROM children WHERE user_id = $1) \
        OR $3 OR ($2 AND r.study_id IN (SELECT s.id FROM studies s JOIN lab_researchers lr \
        ON lr.lab_id = s.lab_id WHERE lr.user_id = $1)))";
    const NAME: &'static str = "response";
    fn total(&self) -> i64 {
        self.total
    }
    fn resource(&self) -> Value {
        json!({
            "type": "responses",
            "id": self.id,
            "attributes": {
                "pk": self.pk,
                "completed": self.completed,
                "completed_consent_frame": self.completed_consent_frame,
                "exp_data": self.exp_data,
                "conditions": self.conditions,
                "sequence": self.sequence,
                "global_event_timings": self.global_event_timings,
                "is_preview": self.is_preview,
                "recording_method": self.recording_method,
                "created_on": self.created_at,
                "date_modified": self.modified_at,
            },
            "relationships": {
                "child": relation("children", self.child_id),
                "study": relation("studies", self.study_id),
            },
            "links": {"self": format!("{BASE}/responses/{}/", self.id)},
        })
    }
}

const RESPONSE_COLUMNS: &str = "r.id, r.pk, r.study_id, r.child_id, r.completed, \
    r.completed_consent_frame, r.exp_data, r.conditions, r.sequence, r.global_event_timings, \
    r.is_preview, r.recording_method, r.created_at, r.modified_at";
#[utoipa::path(get, path = "/responses/", tag = "jsonapi",
    params(("page" = Option<i64>, Query), ("child" = Option<Uuid>, Query), ("study" = Option<Uuid>, Query)),
    responses((status = 200, description = "responses the caller may see, filtered")))]
async fn responses_list(
    State(state): State<ApiState>,
    Caller(user): Caller,
    Query(params): Query<Params>,
) -> ApiResult<Document> {
    let filters = [
        ("r.child_id", uuid_filter(&params, "child")?),
        ("r.study_id", uuid_filter(&params, "study")?),
    ];
    list::<ResponseRow>(
        state.pool(),
        &Scope::of(&user),
        "/responses/",
        &params,
        &filters,
    )
    .await
}

#[utoipa::path(get, path = "/studies/{id}/responses/", tag = "jsonapi",
    params(("id" = Uuid, Path), ("page" = Option<i64>, Query)),
    responses((status = 200, description = "a study's responses the caller may see"),
              (status = 404, description = "unknown study")))]
async fn study_responses(
    State(state): State<ApiState>,
    Caller(user): Caller,
    Path(id): Path<Uuid>,
    Query(params): Query<Params>,
) -> ApiResult<Document> {
    let scope = Scope::of(&user);
    visible::<StudyRow>(state.pool(), &scope, id).await?;
    let path = format!("/studies/{id}/responses/");
    list::<ResponseRow>(
        state.pool(),
        &scope,
        &path,
        &params,
        &[("r.study_id", Some(id))],
    )
    .await
}

#[utoipa::path(get, path = "/responses/{id}/", tag = "jsonapi", params(("id" = Uuid, Path)),
    responses((status = 200, description = "one response"), (status = 404, description = "not found")))]
async fn responses_get(
    State(state): State<ApiState>,
    Caller(user): Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Document> {
    show::<ResponseRow>(&state, &user, id).await
}

/// The writable attributes of a response, each checked for its JSON type.
#[derive(Default)]
struct ResponseChanges {
    completed: Option<bool>,
    completed_consent_frame: Option<bool>,
    exp_data: Option<Value>,
    conditions: Option<Value>,
    sequence: Option<Value>,
    global_event_timings: Option<Value>,
    is_preview: Option<bool>,
    recording_method: Option<String>,
}

/// Attributes the frameplayer echoes back but the server owns; ignored on input.
const READ_ONLY: &[&str] = &[
    "pk",
    "created_on",
    "date_created",
    "date_modified",
    "hash_child_id",
    "survey_consent",
    "birthdate_difference",
    "eligibility",
];

impl ResponseChanges {
    fn parse(attributes: &Map<String, Value>) -> ApiResult<ResponseChanges> {
        let mut changes = ResponseChanges::default();
        for (key, value) in attributes {
            let name = key.replace('-', "_");
            let wrong = |expected: &str| {
                ApiError::bad_request(format!("attribute {key} must be {expected}"))
            };
            let boolean = || value.as_bool().ok_or_else(|| wrong("true or false"));
            let object = || {
                value
                    .is_object()
                    .then(|| value.clone())
                    .ok_or_else(|| wrong("an object"))
            };
            let array = || {
                value
                    .is_array()
                    .then(|| value.clone())
                    .ok_or_else(|| wrong("an array"))
            };
            match name.as_str() {
                "completed" => changes.completed = Some(boolean()?),
                "completed_consent_frame" => changes.completed_consent_frame = Some(boolean()?),
                "is_preview" => changes.is_preview = Some(boolean()?),
                "exp_data" => changes.exp_data = Some(object()?),
                "conditions" => changes.conditions = Some(object()?),
                "sequence" => changes.sequence = Some(array()?),
                "global_event_timings" => changes.global_event_timings = Some(array()?),
                "recording_method" => {
                    changes.recording_method =
                        Some(value.as_str().ok_or_else(|| wrong("a string"))?.to_string())
                }
                other if READ_ONLY.contains(&other) => {}
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "unknown attribute {key}; responses accept completed, \
                         completed_consent_frame, exp_data, conditions, sequence, \
                         global_event_timings, is_preview, recording_method"
                    )))
                }
            }
        }
        Ok(changes)
    }
}

/// The `data` member of a JSON:API write, with its type checked (409 on a mismatch, as the
/// spec says).
fn resource_data<'a>(body: &'a Value, kind: &str) -> ApiResult<&'a Map<String, Value>> {
    let data = body
        .get("data")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::bad_request("the body needs a `data` object"))?;
    match data.get("type").and_then(Value::as_str) {
        Some(t) if t == kind => Ok(data),
        Some(t) => Err(ApiError::Conflict(format!(
            "data.type is {t:?}; this endpoint takes {kind:?}"
        ))),
        None => Err(ApiError::bad_request(format!(
            "data.type is missing; it must be {kind:?}"
        ))),
    }
}

fn attributes(data: &Map<String, Value>) -> ApiResult<Map<String, Value>> {
    match data.get("attributes") {
        None => Ok(Map::new()),
        Some(Value::Object(map)) => Ok(map.clone()),
        Some(_) => Err(ApiError::bad_request("data.attributes must be an object")),
    }
}

/// The uuid of a to-one relationship `data.relationships.<name>.data.id`.
pub(crate) fn related_id(data: &Map<String, Value>, name: &str) -> ApiResult<Uuid> {
    let id = data
        .get("relationships")
        .and_then(|r| r.get(name))
        .and_then(|r| r.get("data"))
        .and_then(|d| d.get("id"))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "relationship {name} is missing (data.relationships.{name}.data.id)"
            ))
        })?;
    Uuid::parse_str(id)
        .map_err(|_| ApiError::bad_request(format!("relationship {name}: {id:?} is not a uuid")))
}

#[utoipa::path(post, path = "/responses/", tag = "jsonapi",
    request_body(content = Object, description = "JSON:API document of type responses with relationships child and study"),
    responses((status = 201, description = "the session was created"),
              (status = 400, description = "invalid attributes or relationships"),
              (status = 409, description = "wrong resource type")))]
async fn responses_create(
    State(state): State<ApiState>,
    Caller(user): Caller,
    Json(body): Json<Value>,
) -> ApiResult<Document> {
    let scope = Scope::of(&user);
    let pool = state.pool();
    let data = resource_data(&body, "responses")?;
    let changes = ResponseChanges::parse(&attributes(data)?)?;
    let child_id = related_id(data, "child")?;
    let study_id = related_id(data, "study")?;
    let owner: Option<Uuid> = sqlx::query_scalar("SELECT user_id FROM children WHERE id = $1")
        .bind(child_id)
        .fetch_optional(pool)
        .await?;
    match owner {
        Some(owner) if owner == scope.user_id || scope.staff => {}
        _ => return Err(ApiError::bad_request("child: not one of your children")),
    }
    // Participants answer active studies; researchers may preview their labs' studies.
    let study: StudyRow = visible(pool, &scope, study_id)
        .await
        .map_err(|_| ApiError::bad_request("study: no such study open to you"))?;
    let is_preview = changes.is_preview.unwrap_or(false) || study.state != "active";
    let row: ResponseRow = sqlx::query_as(&format!(
        "INSERT INTO responses AS r (id, study_id, child_id, completed, completed_consent_frame, \
         exp_data, conditions, sequence, global_event_timings, is_preview, recording_method) \
         VALUES ($1, $2, $3, coalesce($4, false), coalesce($5, false), coalesce($6, '{{}}'::jsonb), \
         coalesce($7, '{{}}'::jsonb), coalesce($8, '[]'::jsonb), coalesce($9, '[]'::jsonb), $10, \
         coalesce($11, 'pipe')) RETURNING {RESPONSE_COLUMNS}"
    ))
    .bind(Uuid::new_v4())
    .bind(study_id)
    .bind(child_id)
    .bind(changes.completed)
    .bind(changes.completed_consent_frame)
    .bind(changes.exp_data)
    .bind(changes.conditions)
    .bind(changes.sequence)
    .bind(changes.global_event_timings)
    .bind(is_preview)
    .bind(changes.recording_method)
    .fetch_one(pool)
    .await?;
    Ok(single_document(StatusCode::CREATED, row.resource()))
}

async fn update_response(
    state: &ApiState,
    user: &User,
    id: Uuid,
    body: &Value,
) -> ApiResult<Document> {
    let scope = Scope::of(user);
    let pool = state.pool();
    let data = resource_data(body, "responses")?;
    match data.get("id").and_then(Value::as_str) {
        Some(sent) if sent.eq_ignore_ascii_case(&id.to_string()) => {}
        Some(sent) => {
            return Err(ApiError::Conflict(format!(
                "data.id {sent:?} does not match the URL's {id}"
            )))
        }
        None => return Err(ApiError::bad_request("data.id is missing")),
    }
    let changes = ResponseChanges::parse(&attributes(data)?)?;
    // Only the child's family (or staff) write a session; researchers read it.
    let row: ResponseRow = sqlx::query_as(&format!(
        "UPDATE responses AS r SET completed = coalesce($4, completed), \
         completed_consent_frame = coalesce($5, completed_consent_frame), \
         exp_data = coalesce($6, exp_data), conditions = coalesce($7, conditions), \
         sequence = coalesce($8, sequence), global_event_timings = coalesce($9, global_event_timings), \
         is_preview = coalesce($10, is_preview), recording_method = coalesce($11, recording_method), \
         modified_at = now() \
         WHERE r.id = $1 AND (r.child_id IN (SELECT id FROM children WHERE user_id = $2) OR $3) \
         RETURNING {RESPONSE_COLUMNS}"
    ))
    .bind(id)
    .bind(scope.user_id)
    .bind(scope.staff)
    .bind(changes.completed)
    .bind(changes.completed_consent_frame)
    .bind(changes.exp_data)
    .bind(changes.conditions)
    .bind(changes.sequence)
    .bind(changes.global_event_timings)
    .bind(changes.is_preview)
    .bind(changes.recording_method)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| ApiError::not_found("response"))?;
    Ok(single_document(StatusCode::OK, row.resource()))
}

#[utoipa::path(patch, path = "/responses/{id}/", tag = "jsonapi", params(("id" = Uuid, Path)),
    request_body(content = Object, description = "JSON:API document with data.id and the attributes to change"),
    responses((status = 200, description = "updated"), (status = 404, description = "not found"),
              (status = 409, description = "type or id mismatch")))]
async fn responses_patch(
    State(state): State<ApiState>,
    Caller(user): Caller,
    Path(id): Path<Uuid>,
    Json(body): Json<Value>,
) -> ApiResult<Document> {
    update_response(&state, &user, id, &body).await
}

#[utoipa::path(put, path = "/responses/{id}/", tag = "jsonapi", params(("id" = Uuid, Path)),
    request_body(content = Object, description = "JSON:API document with data.id and attributes"),
    responses((status = 200, description = "updated"), (status = 404, description = "not found")))]
async fn responses_put(
    State(state): State<ApiState>,
    Caller(user): Caller,
    Path(id): Path<Uuid>,
    Json(body): Json<Value>,
) -> ApiResult<Document> {
    update_response(&state, &user, id, &body).await
}

// ---- demographics ------------------------------------------------------------------------

#[derive(sqlx::FromRow)]
struct DemographicsRow {
    id: Uuid,
    pk: i64,
    user_id: Uuid,
    country: String,
    state: String,
    density: String,
    languages_spoken_at_home: String,
    number_of_children: String,
    child_birthdays: Vec<NaiveDate>,
    number_of_guardians: String,
    race_identification: Vec<String>,
    age: String,
    gender: String,
    education_level: String,
    annual_income: String,
    number_of_books: Option<i32>,
    additional_comments: String,
    lookit_referrer: String,
    extra: Value,
    created_at: DateTime<Utc>,
    #[sqlx(default)]
    total: i64,
}

impl Resource for DemographicsRow {
    const TABLE: &'static str = "demographics";
    const ALIAS: &'static str = "d";
    const COLUMNS: &'static str = "d.id, d.pk, d.user_id, d.country, d.state, d.density, \
        d.languages_spoken_at_home, d.number_of_children, d.child_birthdays, \
        d.number_of_guardians, d.race_identification, d.age, d.gender, d.education_level, \
        d.annual_income, d.number_of_books, d.additional_comments, d.lookit_referrer, d.extra, \
        d.created_at";
    /// Only ever the caller's own, staff included.
    const VISIBLE: &'static str = "d.user_id = $1";
    const NAME: &'static str = "demographic data";
    fn total(&self) -> i64 {
        self.total
    }
    fn resource(&self) -> Value {
        json!({
            "type": "demographics",
            "id": self.id,
            "attributes": {
                "pk": self.pk,
                "country": self.country,
                "state": self.state,
                "density": self.density,
                "languages_spoken_at_home": self.languages_spoken_at_home,
                "number_of_children": self.number_of_children,
                "child_birthdays": self.child_birthdays,
                "number_of_guardians": self.number_of_guardians,
                "race_identification": self.race_identification,
                "age": self.age,
                "gender": self.gender,
                "education_level": self.education_level,
                "annual_income": self.annual_income,
                "number_of_books": self.number_of_books,
                "additional_comments": self.additional_comments,
                "lookit_referrer": self.lookit_referrer,
                "extra": self.extra,
                "date_created": self.created_at,
            },
            "relationships": {"user": relation("users", self.user_id)},
            "links": {"self": format!("{BASE}/demographics/{}/", self.id)},
        })
    }
}

#[utoipa::path(get, path = "/demographics/", tag = "jsonapi", params(("page" = Option<i64>, Query)),
    responses((status = 200, description = "the caller's own demographic snapshots, oldest first")))]
async fn demographics_list(
    State(state): State<ApiState>,
    Caller(user): Caller,
    Query(params): Query<Params>,
) -> ApiResult<Document> {
    list::<DemographicsRow>(
        state.pool(),
        &Scope::of(&user),
        "/demographics/",
        &params,
        &[],
    )
    .await
}

#[utoipa::path(get, path = "/demographics/{id}/", tag = "jsonapi", params(("id" = Uuid, Path)),
    responses((status = 200, description = "one of the caller's demographic snapshots"),
              (status = 404, description = "not found or someone else's")))]
async fn demographics_get(
    State(state): State<ApiState>,
    Caller(user): Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Document> {
    show::<DemographicsRow>(&state, &user, id).await
}

// ---- feedback ----------------------------------------------------------------------------

#[derive(sqlx::FromRow)]
struct FeedbackRow {
    id: Uuid,
    pk: i64,
    response_id: Uuid,
    researcher_id: Uuid,
    comment: String,
    created_at: DateTime<Utc>,
    #[sqlx(default)]
    total: i64,
}

impl Resource for FeedbackRow {
    const TABLE: &'static str = "feedback";
    const ALIAS: &'static str = "f";
    const COLUMNS: &'static str = FEEDBACK_COLUMNS;
    /// Seen by whoever sees its response (the participant, the lab's researchers, staff).
    const VISIBLE: &'static str = "f.response_id IN (SELECT r.id FROM responses r WHERE \
        (r.child_id IN (SELECT id FROM children WHERE user_id = $1) OR $3 OR ($2 AND r.study_id \
        IN (SELECT s.id FROM studies s JOIN lab_researchers lr ON lr.lab_id = s.lab_id \
        WHERE lr.user_id = $1))))";
    const NAME: &'static str = "feedback";
    fn total(&self) -> i64 {
        self.total
    }
    fn resource(&self) -> Value {
        json!({
            "type": "feedback",
            "id": self.id,
            "attributes": {
                "pk": self.pk,
                "comment": self.comment,
                "date_created": self.created_at,
            },
            "relationships": {
                "response": relation("responses", self.response_id),
                "researcher": relation("users", self.researcher_id),
            },
            "links": {"self": format!("{BASE}/feedback/{}/", self.id)},
        })
    }
}

const FEEDBACK_COLUMNS: &str =
    "f.id, f.pk, f.response_id, f.researcher_id, f.comment, f.created_at";
#[utoipa::path(get, path = "/feedback/", tag = "jsonapi",
    params(("page" = Option<i64>, Query), ("response" = Option<Uuid>, Query)),
    responses((status = 200, description = "feedback on responses the caller may see")))]
async fn feedback_list(
    State(state): State<ApiState>,
    Caller(user): Caller,
    Query(params): Query<Params>,
) -> ApiResult<Document> {
    let filters = [("f.response_id", uuid_filter(&params, "response")?)];
    list::<FeedbackRow>(
        state.pool(),
        &Scope::of(&user),
        "/feedback/",
        &params,
        &filters,
    )
    .await
}

#[utoipa::path(get, path = "/feedback/{id}/", tag = "jsonapi", params(("id" = Uuid, Path)),
    responses((status = 200, description = "one piece of feedback"), (status = 404, description = "not found")))]
async fn feedback_get(
    State(state): State<ApiState>,
    Caller(user): Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Document> {
    show::<FeedbackRow>(&state, &user, id).await
}

#[utoipa::path(post, path = "/feedback/", tag = "jsonapi",
    request_body(content = Object, description = "JSON:API document of type feedback with attribute comment and relationship response"),
    responses((status = 201, description = "the feedback was recorded"),
              (status = 400, description = "missing comment or a response outside the caller's labs"),
              (status = 403, description = "the caller is not a researcher with an activated authenticator"),
              (status = 409, description = "wrong resource type")))]
async fn feedback_create(
    State(state): State<ApiState>,
    Caller(user): Caller,
    Json(body): Json<Value>,
) -> ApiResult<Document> {
    let scope = Scope::of(&user);
    if !scope.researcher {
        return Err(ApiError::Forbidden(
            "only researchers with an activated authenticator give feedback".into(),
        ));
    }
    let data = resource_data(&body, "feedback")?;
    let attributes = attributes(data)?;
    if let Some(key) = attributes
        .keys()
        .find(|k| !["comment", "pk"].contains(&k.as_str()))
    {
        return Err(ApiError::bad_request(format!(
            "unknown attribute {key}; feedback accepts comment"
        )));
    }
    let comment = match attributes.get("comment") {
        Some(Value::String(c)) if !c.trim().is_empty() => c.clone(),
        Some(Value::String(_)) | None => {
            return Err(ApiError::bad_request(
                "attribute comment is missing or empty",
            ))
        }
        Some(_) => return Err(ApiError::bad_request("attribute comment must be a string")),
    };
    let response_id = related_id(data, "response")?;
    // Researchers write feedback on their labs' responses only (staff on any), never on their
    // own children's sessions as participants.
    let row: FeedbackRow = sqlx::query_as(&format!(
        "INSERT INTO feedback AS f (id, response_id, researcher_id, comment) \
         SELECT $3, r.id, $1, $4 FROM responses r WHERE r.id = $5 AND ($2 OR r.study_id IN \
         (SELECT s.id FROM studies s JOIN lab_researchers lr ON lr.lab_id = s.lab_id \
         WHERE lr.user_id = $1)) RETURNING {FEEDBACK_COLUMNS}"
    ))
    .bind(scope.user_id)
    .bind(scope.staff)
    .bind(Uuid::new_v4())
    .bind(comment)
    .bind(response_id)
    .fetch_optional(state.pool())
    .await?
    .ok_or_else(|| ApiError::bad_request("response: not a response of your labs' studies"))?;
    Ok(single_document(StatusCode::CREATED, row.resource()))
}

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(users_list))
        .routes(routes!(users_get))
        .routes(routes!(user_children))
        .routes(routes!(labs_list))
        .routes(routes!(labs_get))
        .routes(routes!(studies_list))
        .routes(routes!(studies_get))
        .routes(routes!(study_responses))
        .routes(routes!(children_list))
        .routes(routes!(children_get))
        .routes(routes!(responses_list, responses_create))
        .routes(routes!(responses_get, responses_patch, responses_put))
        .routes(routes!(demographics_list))
        .routes(routes!(demographics_get))
        .routes(routes!(feedback_list, feedback_create))
        .routes(routes!(feedback_get))
        .routes(routes!(crate::video::lambda_video))
}
