//! Logging in (§5 of the domain reference): password (argon2) then, when the user has an
//! activated authenticator, a 6-digit TOTP code; researchers and staff must have one activated
//! to reach researcher routes. Browser sessions are cookies (Secure, HttpOnly, SameSite=Lax,
//! one day) with a CSRF token that every cookie-authenticated write must echo in
//! `X-CSRFToken`; scripts and the frameplayer may use `Authorization: Token <key>` instead.
//!
//! Invariants: only keyed hashes of session cookies and tokens are stored; a TOTP code is
//! accepted once; after [`MAX_FAILURES`] failed attempts in [`FAILURE_WINDOW_MINUTES`] a username
//! is locked out (429) even with the right password.

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, Secret, TOTP};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::extract::Json;
use crate::state::ApiState;

pub const SESSION_COOKIE: &str = "lookit_session";
pub const CSRF_HEADER: &str = "x-csrftoken";
const SESSION_SECONDS: i64 = 24 * 60 * 60;
pub const MAX_FAILURES: i64 = 5;
pub const FAILURE_WINDOW_MINUTES: i64 = 15;

/// A user as the login code needs it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct User {
    pub id: Uuid,
    pub username: String,
    pub password_hash: Option<String>,
    pub is_researcher: bool,
    pub is_staff: bool,
    pub totp_secret: Option<String>,
    pub totp_activated: bool,
}

const USER_COLUMNS: &str = "id, username, password_hash, \
    is_researcher, is_staff, totp_secret, totp_activated";

impl User {
    fn needs_authenticator(&self) -> bool {
        self.is_researcher || self.is_staff
    }
}

/// Password rules of §5: at least 10 characters, not only digits, not a common password.
pub fn check_password_rules(password: &str) -> Result<(), String> {
    const COMMON: &[&str] = &[
        "password123",
        "1234567890",
        "qwertyuiop",
        "password1234",
        "iloveyou12",
        "passw0rd123",
        "letmein1234",
        "welcome123",
        "abcdefghij",
        "administrator",
    ];
    if password.chars().count() < 10 {
        return Err("the password must have at least 10 characters".into());
    }
    if password.chars().all(|c| c.is_ascii_digit()) {
        return Err("the password must not be only digits".into());
    }
    if COMMON.contains(&password.to_lowercase().as_str()) {
        return Err("the password is too common".into());
    }
    Ok(())
}

/// Argon2id PHC string of a password (CPU-heavy: runs off the async threads).
pub async fn hash_password(password: SecretString) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.expose_secret().as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|e| anyhow::anyhow!("hash the password: {e}"))
    })
    .await?
}

async fn verify_password(password: SecretString, hash: String) -> anyhow::Result<bool> {
    tokio::task::spawn_blocking(move || {
        let parsed =
            PasswordHash::new(&hash).map_err(|e| anyhow::anyhow!("stored password hash: {e}"))?;
        Ok(Argon2::default()
            .verify_password(password.expose_secret().as_bytes(), &parsed)
            .is_ok())
    })
    .await?
}

/// A new authenticator secret: 20 random bytes, 32 base32 characters (Google Authenticator).
pub fn new_totp_secret() -> String {
    Secret::generate_secret().to_encoded().to_string()
}

/// The TOTP of a user: SHA-1, 6 digits, 30 s, issuer `Lookit-<environment>`.
pub fn totp(secret_base32: &str, environment: &str, account: &str) -> anyhow::Result<TOTP> {
    let secret = Secret::Encoded(secret_base32.to_string())
        .to_bytes()
        .map_err(|e| anyhow::anyhow!("authenticator secret is not base32: {e:?}"))?;
    TOTP::new(
        Algorithm::SHA1,
        6,
        1,
        30,
        secret,
        Some(format!("Lookit-{environment}")),
        account.to_string(),
    )
    .map_err(|e| anyhow::anyhow!("authenticator parameters: {e}"))
}

/// The 30 s step whose code `code` is (this, the previous or the next one), if any.
fn matching_step(totp: &TOTP, code: &str) -> Option<u64> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    let step = now / totp.step;
    [step.saturating_sub(1), step, step + 1]
        .into_iter()
        .find(|s| {
            bool::from(
                totp.generate(s * totp.step)
                    .as_bytes()
                    .ct_eq(code.as_bytes()),
            )
        })
}

/// Hex HMAC-SHA256 of a cookie or token value under the session key: what the database stores.
pub fn keyed_hash(key: &SecretString, value: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.expose_secret().as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(value.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

async fn find_user_by_username(pool: &PgPool, username: &str) -> sqlx::Result<Option<User>> {
    sqlx::query_as(&format!(
        "SELECT {USER_COLUMNS} FROM users WHERE lower(username) = lower($1)"
    ))
    .bind(username)
    .fetch_optional(pool)
    .await
}

async fn find_user(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<User>> {
    sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// Refuses when the username has too many recent failures.
async fn check_lockout(pool: &PgPool, username: &str) -> ApiResult<()> {
    let (failures, oldest): (i64, Option<chrono::DateTime<chrono::Utc>>) = sqlx::query_as(
        "SELECT count(*), min(created_at) FROM login_failures \
         WHERE username = lower($1) AND created_at > now() - make_interval(mins => $2::int)",
    )
    .bind(username)
    .bind(FAILURE_WINDOW_MINUTES as i32)
    .fetch_one(pool)
    .await?;
    if failures >= MAX_FAILURES {
        let unlock = oldest.unwrap_or_else(chrono::Utc::now)
            + chrono::Duration::minutes(FAILURE_WINDOW_MINUTES);
        let retry_after_secs = (unlock - chrono::Utc::now()).num_seconds().max(1) as u64;
        return Err(ApiError::TooManyRequests {
            detail: format!(
                "too many failed login attempts for this account; try again in {} minutes",
                retry_after_secs.div_ceil(60)
            ),
            retry_after_secs,
        });
    }
    Ok(())
}

async fn record_failure(pool: &PgPool, username: &str) -> ApiResult<()> {
    sqlx::query("INSERT INTO login_failures (username) VALUES (lower($1))")
        .bind(username)
        .execute(pool)
        .await?;
    Ok(())
}

/// How a request authenticated.
#[derive(Debug, Clone)]
pub enum Via {
    Token,
    Session { id_hash: String, two_factor: bool },
}

/// A request with a session whose password step is done (the second factor may be pending).
/// Cookie-authenticated writes carry a matching CSRF token.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub user: User,
    pub via: Via,
}

impl Authenticated {
    /// Logged in completely: no second factor pending.
    fn is_complete(&self) -> bool {
        match &self.via {
            Via::Token => true,
            Via::Session { two_factor, .. } => *two_factor || !self.user.totp_activated,
        }
    }
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

impl FromRequestParts<ApiState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> ApiResult<Self> {
        let key = &state.settings().session_key;
        let pool = state.pool();
        if let Some(authorization) = parts.headers.get(header::AUTHORIZATION) {
            let token = authorization
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Token "))
                .ok_or_else(|| {
                    ApiError::Unauthorized("the Authorization header must be `Token <key>`".into())
                })?;
            // One round trip for token and user: this runs before every scripted request.
            let user: User = sqlx::query_as(&format!(
                "SELECT {USER_COLUMNS} FROM users \
                 WHERE id = (SELECT user_id FROM api_tokens WHERE token_hash = $1)"
            ))
            .bind(keyed_hash(key, token.trim()))
            .fetch_optional(pool)
            .await?
            .ok_or_else(|| ApiError::Unauthorized("invalid token".into()))?;
            return Ok(Authenticated {
                user,
                via: Via::Token,
            });
        }
        let cookie = cookie_value(&parts.headers, SESSION_COOKIE).ok_or_else(|| {
            ApiError::Unauthorized(
                "authentication required: log in (POST /api/auth/login/) or send a token".into(),
            )
        })?;
        let id_hash = keyed_hash(key, cookie);
        let session: Option<(Uuid, bool, String)> = sqlx::query_as(
            "SELECT user_id, two_factor, csrf_token FROM sessions \
             WHERE id_hash = $1 AND expires_at > now()",
        )
        .bind(&id_hash)
        .fetch_optional(pool)
        .await?;
        let (user_id, two_factor, csrf) = session.ok_or_else(|| {
            ApiError::Unauthorized("the session has expired; log in again".into())
        })?;
        let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        if !safe {
            let sent = parts
                .headers
                .get(CSRF_HEADER)
                .map(|v| v.as_bytes())
                .unwrap_or_default();
            if !bool::from(sent.ct_eq(csrf.as_bytes())) {
                return Err(ApiError::Forbidden(
                    "CSRF token missing or wrong: send the session's csrf_token in X-CSRFToken"
                        .into(),
                ));
            }
        }
        let user = find_user(pool, user_id)
            .await?
            .ok_or_else(|| ApiError::Unauthorized("the session's user no longer exists".into()))?;
        Ok(Authenticated {
            user,
            via: Via::Session {
                id_hash,
                two_factor,
            },
        })
    }
}

/// A completely logged-in user (any role).
#[derive(Debug, Clone)]
pub struct Caller(pub User);

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> ApiResult<Self> {
        let auth = Authenticated::from_request_parts(parts, state).await?;
        if !auth.is_complete() {
            return Err(ApiError::Unauthorized(
                "enter your authenticator code first (POST /api/auth/login/code/)".into(),
            ));
        }
        Ok(Caller(auth.user))
    }
}

/// A researcher or staff member logged in with the second factor.
#[derive(Debug, Clone)]
pub struct Researcher(pub User);

impl FromRequestParts<ApiState> for Researcher {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> ApiResult<Self> {
        let Caller(user) = Caller::from_request_parts(parts, state).await?;
        if !user.needs_authenticator() {
            return Err(ApiError::Forbidden("researcher access only".into()));
        }
        if !user.totp_activated {
            return Err(ApiError::Forbidden(
                "researchers need an activated authenticator app: set it up at GET /api/auth/totp/"
                    .into(),
            ));
        }
        Ok(Researcher(user))
    }
}

#[derive(Deserialize, ToSchema)]
pub struct LoginForm {
    username: String,
    #[schema(value_type = String)]
    password: SecretString,
}

/// What the client must do after the password step.
#[derive(Serialize, ToSchema, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
pub enum SecondFactor {
    /// Logged in.
    NotRequired,
    /// Send the authenticator code to `/api/auth/login/code/`.
    Required,
    /// A researcher without an activated authenticator: set one up at `/api/auth/totp/`.
    SetupRequired,
}

#[derive(Serialize, ToSchema)]
pub struct LoginOutcome {
    user_id: Uuid,
    second_factor: SecondFactor,
    /// Echo in `X-CSRFToken` on every write made with the session cookie.
    csrf_token: String,
}

fn session_cookie(state: &ApiState, value: &str, max_age: i64) -> HeaderValue {
    let secure = if state.settings().cookie_secure {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"
    ))
    .expect("cookie values are base64url")
}

#[utoipa::path(post, path = "/login/", tag = "auth", request_body = LoginForm,
    responses((status = 200, body = LoginOutcome, description = "password accepted; session cookie set"),
              (status = 401, description = "wrong username or password"),
              (status = 429, description = "locked out after too many failures")))]
async fn login(State(state): State<ApiState>, Json(form): Json<LoginForm>) -> ApiResult<Response> {
    let pool = state.pool();
    check_lockout(pool, &form.username).await?;
    let user = find_user_by_username(pool, &form.username).await?;
    let accepted = match user.as_ref().and_then(|u| u.password_hash.clone()) {
        Some(hash) => verify_password(form.password, hash).await?,
        None => false,
    };
    let user = match (user, accepted) {
        (Some(user), true) => user,
        _ => {
            record_failure(pool, &form.username).await?;
            return Err(ApiError::Unauthorized("wrong username or password".into()));
        }
    };
    let value = random_token();
    let csrf_token = random_token();
    sqlx::query(
        "INSERT INTO sessions (id_hash, user_id, csrf_token, expires_at) \
         VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
    )
    .bind(keyed_hash(&state.settings().session_key, &value))
    .bind(user.id)
    .bind(&csrf_token)
    .bind(SESSION_SECONDS as f64)
    .execute(pool)
    .await?;
    let second_factor = if user.totp_activated {
        SecondFactor::Required
    } else if user.needs_authenticator() {
        SecondFactor::SetupRequired
    } else {
        SecondFactor::NotRequired
    };
    let body = LoginOutcome {
        user_id: user.id,
        second_factor,
        csrf_token,
    };
    Ok((
        [(
            header::SET_COOKIE,
            session_cookie(&state, &value, SESSION_SECONDS),
        )],
        axum::Json(body),
    )
        .into_response())
}

#[derive(Deserialize, ToSchema)]
pub struct CodeForm {
    /// The 6 digits the authenticator app shows.
    code: String,
}

/// Checks a code against the user's secret, once per step; failures count towards the lockout.
async fn accept_code(state: &ApiState, user: &User, code: &str) -> ApiResult<()> {
    let pool = state.pool();
    check_lockout(pool, &user.username).await?;
    let secret = user
        .totp_secret
        .as_deref()
        .ok_or_else(|| ApiError::Conflict("no authenticator is set up for this account".into()))?;
    let totp = totp(secret, &state.settings().environment, &user.username)?;
    let step = matching_step(&totp, code.trim());
    let fresh = match step {
        Some(step) => {
            sqlx::query(
                "UPDATE users SET totp_last_step = $2 \
             WHERE id = $1 AND (totp_last_step IS NULL OR totp_last_step < $2)",
            )
            .bind(user.id)
            .bind(step as i64)
            .execute(pool)
            .await?
            .rows_affected()
                == 1
        }
        None => false,
    };
    if !fresh {
        record_failure(pool, &user.username).await?;
        return Err(ApiError::Unauthorized(if step.is_some() {
            "this authenticator code was already used; wait for the next one".into()
        } else {
            "wrong authenticator code".into()
        }));
    }
    Ok(())
}

fn session_hash(auth: &Authenticated) -> ApiResult<&str> {
    match &auth.via {
        Via::Session { id_hash, .. } => Ok(id_hash),
        Via::Token => Err(ApiError::BadRequest(
            "this step belongs to a browser session, not a token".into(),
        )),
    }
}

async fn mark_two_factor(pool: &PgPool, id_hash: &str) -> ApiResult<()> {
    sqlx::query("UPDATE sessions SET two_factor = true WHERE id_hash = $1")
        .bind(id_hash)
        .execute(pool)
        .await?;
    Ok(())
}

#[utoipa::path(post, path = "/login/code/", tag = "auth", request_body = CodeForm,
    responses((status = 204, description = "second factor accepted"),
              (status = 401, description = "wrong or reused code"),
              (status = 429, description = "locked out")))]
async fn login_code(
    State(state): State<ApiState>,
    auth: Authenticated,
    Json(form): Json<CodeForm>,
) -> ApiResult<StatusCode> {
    let id_hash = session_hash(&auth)?;
    if !auth.user.totp_activated {
        return Err(ApiError::Conflict(
            "no activated authenticator: set one up at /api/auth/totp/".into(),
        ));
    }
    accept_code(&state, &auth.user, &form.code).await?;
    mark_two_factor(state.pool(), id_hash).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
pub struct TotpSetup {
    /// `otpauth://totp/...` for the authenticator app (show as a QR code).
    otpauth_uri: String,
    secret: String,
}

#[utoipa::path(get, path = "/totp/", tag = "auth",
    responses((status = 200, body = TotpSetup), (status = 409, description = "already activated")))]
async fn totp_setup(
    State(state): State<ApiState>,
    auth: Authenticated,
) -> ApiResult<Json<TotpSetup>> {
    if auth.user.totp_activated {
        return Err(ApiError::Conflict(
            "the authenticator is already activated".into(),
        ));
    }
    let secret = match auth.user.totp_secret.clone() {
        Some(secret) => secret,
        None => {
            let secret = new_totp_secret();
            sqlx::query("UPDATE users SET totp_secret = $2 WHERE id = $1")
                .bind(auth.user.id)
                .bind(&secret)
                .execute(state.pool())
                .await?;
            secret
        }
    };
    let uri = totp(&secret, &state.settings().environment, &auth.user.username)?.get_url();
    Ok(Json(TotpSetup {
        otpauth_uri: uri,
        secret,
    }))
}

#[utoipa::path(post, path = "/totp/activate/", tag = "auth", request_body = CodeForm,
    responses((status = 204, description = "activated; the session counts as two-factor"),
              (status = 401, description = "wrong code")))]
async fn totp_activate(
    State(state): State<ApiState>,
    auth: Authenticated,
    Json(form): Json<CodeForm>,
) -> ApiResult<StatusCode> {
    let id_hash = session_hash(&auth)?;
    if auth.user.totp_activated {
        return Err(ApiError::Conflict(
            "the authenticator is already activated".into(),
        ));
    }
    accept_code(&state, &auth.user, &form.code).await?;
    sqlx::query("UPDATE users SET totp_activated = true WHERE id = $1")
        .bind(auth.user.id)
        .execute(state.pool())
        .await?;
    mark_two_factor(state.pool(), id_hash).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/logout/", tag = "auth",
    responses((status = 204, description = "session ended")))]
async fn logout(State(state): State<ApiState>, auth: Authenticated) -> ApiResult<Response> {
    let id_hash = session_hash(&auth)?;
    sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
        .bind(id_hash)
        .execute(state.pool())
        .await?;
    Ok((
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, session_cookie(&state, "", 0))],
    )
        .into_response())
}

#[derive(Serialize, ToSchema)]
pub struct Me {
    id: Uuid,
    username: String,
    is_researcher: bool,
    is_staff: bool,
    totp_activated: bool,
}

#[utoipa::path(get, path = "/me/", tag = "auth", responses((status = 200, body = Me)))]
async fn me(Caller(user): Caller) -> Json<Me> {
    Json(Me {
        id: user.id,
        username: user.username,
        is_researcher: user.is_researcher,
        is_staff: user.is_staff,
        totp_activated: user.totp_activated,
    })
}

#[derive(Serialize, ToSchema)]
pub struct NewToken {
    /// Send as `Authorization: Token <token>`; shown only now.
    token: String,
}

#[utoipa::path(post, path = "/tokens/", tag = "auth",
    responses((status = 201, body = NewToken)))]
async fn create_token(
    State(state): State<ApiState>,
    Caller(user): Caller,
) -> ApiResult<(StatusCode, Json<NewToken>)> {
    if user.needs_authenticator() && !user.totp_activated {
        return Err(ApiError::Forbidden(
            "activate your authenticator before creating tokens".into(),
        ));
    }
    let token = random_token();
    sqlx::query("INSERT INTO api_tokens (token_hash, user_id) VALUES ($1, $2)")
        .bind(keyed_hash(&state.settings().session_key, &token))
        .bind(user.id)
        .execute(state.pool())
        .await?;
    Ok((StatusCode::CREATED, Json(NewToken { token })))
}

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(login_code))
        .routes(routes!(totp_setup))
        .routes(routes!(totp_activate))
        .routes(routes!(logout))
        .routes(routes!(me))
        .routes(routes!(create_token))
}
