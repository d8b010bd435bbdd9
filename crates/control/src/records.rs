//! What the panel reads from (and asks of) the lookit database: study builds and the email outbox
//! (received videos, which also need the video storage, are in `videos.rs`). The API and the
//! worker write these tables; this module only reads them, except for queueing and cancelling
//! builds, which go through the same rules as the API's.

use chrono::{DateTime, Utc};
use lookit_contracts::BuildStatus;
use lookit_panel::{
    ActionError, BuildSummary, EmailHeader, EmailMessage, EmailSummary, NewBuild, StudySummary,
};
use sqlx::PgPool;
use uuid::Uuid;

/// Most rows one list shows; older ones stay in the database.
pub(crate) const LIST_LIMIT: i64 = 200;

pub(crate) fn database_error(e: sqlx::Error) -> ActionError {
    ActionError::Failed(format!("the database: {e}"))
}

const BUILD_SELECT: &str = "SELECT b.id, s.name, b.study_id, b.status, b.stage, b.created_at, \
    b.started_at, b.finished_at, b.cache_hit, b.error FROM builds b JOIN studies s ON s.id = b.study_id";

type BuildRow = (
    Uuid,
    String,
    Uuid,
    BuildStatus,
    Option<String>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    bool,
    Option<String>,
);

fn build_summary(row: BuildRow) -> BuildSummary {
    let (id, study, study_id, status, stage, created_at, started_at, finished_at, cache_hit, error) =
        row;
    BuildSummary {
        id,
        study,
        study_id,
        status,
        stage,
        created_at,
        started_at,
        finished_at,
        cache_hit,
        message: error,
    }
}

/// Study builds, newest first.
pub(crate) async fn builds(pool: &PgPool) -> Result<Vec<BuildSummary>, ActionError> {
    let rows: Vec<BuildRow> = sqlx::query_as(&format!(
        "{BUILD_SELECT} ORDER BY b.created_at DESC LIMIT {LIST_LIMIT}"
    ))
    .fetch_all(pool)
    .await
    .map_err(database_error)?;
    Ok(rows.into_iter().map(build_summary).collect())
}

async fn build(pool: &PgPool, id: Uuid) -> Result<BuildSummary, ActionError> {
    let row: Option<BuildRow> = sqlx::query_as(&format!("{BUILD_SELECT} WHERE b.id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(database_error)?;
    row.map(build_summary)
        .ok_or_else(|| ActionError::NotFound(format!("build {id}")))
}

/// The log of the build's current (or last) attempt.
pub(crate) async fn build_log(pool: &PgPool, id: Uuid) -> Result<Vec<String>, ActionError> {
    let log: Option<String> = sqlx::query_scalar("SELECT log FROM builds WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(database_error)?;
    let log = log.ok_or_else(|| ActionError::NotFound(format!("build {id}")))?;
    Ok(log.lines().map(String::from).collect())
}

/// Cancels a queued or running build (through the database, so a worker in another process
/// stops it too); a finished one, or one already publishing its output, is a conflict.
pub(crate) async fn cancel_build(pool: &PgPool, id: Uuid) -> Result<BuildSummary, ActionError> {
    lookit_worker::cancel_build(pool, id)
        .await
        .map_err(|error| match error {
            lookit_worker::CancelBuildError::NotFound(_) => {
                ActionError::NotFound(format!("build {id}"))
            }
            lookit_worker::CancelBuildError::Database(e) => database_error(e),
            refused => ActionError::Conflict(refused.to_string()),
        })?;
    build(pool, id).await
}

/// Queues a new build of the same study as `id`.
pub(crate) async fn rebuild(pool: &PgPool, id: Uuid) -> Result<BuildSummary, ActionError> {
    let study = build(pool, id).await?.study_id;
    queue(pool, study).await
}

async fn queue(pool: &PgPool, study: Uuid) -> Result<BuildSummary, ActionError> {
    let queued = lookit_api::queue_study_build(pool, study)
        .await
        .map_err(|e| queue_error(study, e))?;
    build(pool, queued.id).await
}

/// The API's refusal of a build, as the panel says it.
fn queue_error(study: Uuid, error: lookit_api::ApiError) -> ActionError {
    match error {
        lookit_api::ApiError::NotFound(_) => ActionError::NotFound(format!("study {study}")),
        lookit_api::ApiError::Conflict(why) => ActionError::Conflict(why),
        lookit_api::ApiError::BadRequest(why) => ActionError::Invalid(why),
        other => ActionError::Failed(other.to_string()),
    }
}

/// Sets the study's player when one is given (as `lookit-local build --player` does), then
/// queues the build.
pub(crate) async fn start_build(
    pool: &PgPool,
    request: NewBuild,
) -> Result<BuildSummary, ActionError> {
    let Some(player) = request.player.as_deref().filter(|p| !p.trim().is_empty()) else {
        return queue(pool, request.study).await;
    };
    let player = lookit_watch::Player::parse(player.trim())
        .map_err(|e| ActionError::Invalid(e.to_string()))?;
    let queued = lookit_watch::queue_build_with_player(pool, request.study, &player)
        .await
        .map_err(|e| queue_error(request.study, e))?;
    build(pool, queued.id).await
}

/// The studies, newest first, with the player their next build uses.
pub(crate) async fn studies(pool: &PgPool) -> Result<Vec<StudySummary>, ActionError> {
    let rows: Vec<(Uuid, String, Option<String>)> = sqlx::query_as(&format!(
        "SELECT id, name, NULLIF(metadata->>'player_repo_url', '') FROM studies \
         ORDER BY created_at DESC LIMIT {LIST_LIMIT}"
    ))
    .fetch_all(pool)
    .await
    .map_err(database_error)?;
    Ok(rows
        .into_iter()
        .map(|(id, name, player)| StudySummary { id, name, player })
        .collect())
}

const EMAIL_SELECT: &str =
    "SELECT id, template, to_addresses, subject, status, created_at, sent_at FROM emails";

type EmailRow = (
    Uuid,
    String,
    Vec<String>,
    Option<String>,
    String,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

fn email_summary(row: EmailRow) -> EmailSummary {
    let (id, template, to, subject, status, created_at, sent_at) = row;
    EmailSummary {
        id,
        template,
        to,
        subject,
        status,
        created_at,
        sent_at,
    }
}

/// The email outbox, newest first.
pub(crate) async fn emails(pool: &PgPool) -> Result<Vec<EmailSummary>, ActionError> {
    let rows: Vec<EmailRow> = sqlx::query_as(&format!(
        "{EMAIL_SELECT} ORDER BY created_at DESC LIMIT {LIST_LIMIT}"
    ))
    .fetch_all(pool)
    .await
    .map_err(database_error)?;
    Ok(rows.into_iter().map(email_summary).collect())
}

/// One message with its headers as the worker sends them: `From` (the configured sender), `To`,
/// `Subject`, `Date`, then the message's own extra headers.
pub(crate) async fn email(
    pool: &PgPool,
    id: Uuid,
    from_address: &str,
) -> Result<EmailMessage, ActionError> {
    let row: Option<EmailRow> = sqlx::query_as(&format!("{EMAIL_SELECT} WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(database_error)?;
    let summary = email_summary(row.ok_or_else(|| ActionError::NotFound(format!("email {id}")))?);
    let (extra, text, html, error): (
        serde_json::Value,
        Option<String>,
        Option<String>,
        Option<String>,
    ) = sqlx::query_as("SELECT headers, body_text, body_html, error FROM emails WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .map_err(database_error)?;
    let header = |name: &str, value: String| EmailHeader {
        name: name.into(),
        value,
    };
    let mut headers = vec![
        header("From", from_address.to_string()),
        header("To", summary.to.join(", ")),
    ];
    if let Some(subject) = &summary.subject {
        headers.push(header("Subject", subject.clone()));
    }
    headers.push(header(
        "Date",
        summary.sent_at.unwrap_or(summary.created_at).to_rfc2822(),
    ));
    headers.extend(
        extra_headers(&extra)
            .into_iter()
            .map(|(n, v)| header(&n, v)),
    );
    Ok(EmailMessage {
        summary,
        headers,
        text,
        html,
        error,
    })
}

/// The `headers` column: an object of header name → value (strings; anything else as JSON).
fn extra_headers(value: &serde_json::Value) -> Vec<(String, String)> {
    let Some(object) = value.as_object() else {
        return Vec::new();
    };
    object
        .iter()
        .map(|(name, value)| {
            let text = match value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (name.clone(), text)
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A migrated database with the demo lab, study and response.
    pub(crate) async fn demo_database() -> (
        lookit_testkit::TestDatabase,
        PgPool,
        lookit_api::demo::DemoIds,
    ) {
        let (database, pool) = lookit_testkit::migrated_database().await;
        let ids = lookit_api::demo::seed(&pool).await.unwrap();
        (database, pool, ids)
    }

    #[tokio::test]
    async fn a_build_started_with_a_player_folder_is_listed_and_cancellable_until_it_publishes() {
        let (_database, pool, ids) = demo_database().await;
        let player = tempfile::tempdir().unwrap();
        let listed = studies(&pool).await.unwrap();
        assert_eq!(listed[0].id, ids.study);
        assert_eq!(listed[0].player, None);

        let build = start_build(
            &pool,
            NewBuild {
                study: ids.study,
                player: Some(player.path().display().to_string()),
            },
        )
        .await
        .unwrap();
        assert_eq!(build.status, BuildStatus::Queued);
        assert_eq!(build.study, "Demo study");
        // The player is now the study's, as with `lookit-local build --player`.
        let player_path = player.path().canonicalize().unwrap().display().to_string();
        assert_eq!(
            studies(&pool).await.unwrap()[0].player.as_deref(),
            Some(player_path.as_str())
        );
        assert_eq!(builds(&pool).await.unwrap()[0].id, build.id);
        assert!(build_log(&pool, build.id).await.unwrap().is_empty());

        // One unfinished build per study.
        let again = start_build(
            &pool,
            NewBuild {
                study: ids.study,
                player: None,
            },
        )
        .await
        .unwrap_err();
        assert!(matches!(again, ActionError::Conflict(_)), "{again:?}");

        let cancelled = cancel_build(&pool, build.id).await.unwrap();
        assert_eq!(cancelled.status, BuildStatus::Cancelled);
        assert_eq!(cancelled.message.as_deref(), Some("cancelled by the user"));
        let twice = cancel_build(&pool, build.id).await.unwrap_err();
        assert_eq!(
            twice,
            ActionError::Conflict(
                "the build is already cancelled: only a queued or running build can be cancelled"
                    .into()
            )
        );
        let rebuilt = rebuild(&pool, build.id).await.unwrap();
        assert_ne!(rebuilt.id, build.id);
        assert_eq!(rebuilt.status, BuildStatus::Queued);

        // A running build is cancelled too (its worker stops it), until it publishes its output.
        let run = |stage: &'static str| {
            let pool = pool.clone();
            async move {
                sqlx::query(
                    "UPDATE builds SET status = 'running', stage = $2, started_at = now() \
                     WHERE id = $1",
                )
                .bind(rebuilt.id)
                .bind(stage)
                .execute(&pool)
                .await
                .unwrap();
            }
        };
        run("build").await;
        let stopped = cancel_build(&pool, rebuilt.id).await.unwrap();
        assert_eq!(stopped.status, BuildStatus::Cancelled);
        assert_eq!(stopped.stage.as_deref(), Some("build"));
        assert!(stopped.finished_at.is_some());
        run("upload").await;
        let publishing = cancel_build(&pool, rebuilt.id).await.unwrap_err();
        assert!(
            matches!(&publishing, ActionError::Conflict(why) if why.contains("publishing its output")),
            "{publishing:?}"
        );
        let missing = cancel_build(&pool, Uuid::new_v4()).await.unwrap_err();
        assert!(matches!(missing, ActionError::NotFound(_)), "{missing:?}");

        let unknown = start_build(
            &pool,
            NewBuild {
                study: Uuid::new_v4(),
                player: Some("/no/such/folder".into()),
            },
        )
        .await
        .unwrap_err();
        assert!(matches!(unknown, ActionError::Invalid(_)), "{unknown:?}");
    }

    #[tokio::test]
    async fn the_outbox_shows_a_kept_message_with_its_headers() {
        let (_database, pool, _) = demo_database().await;
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO emails (id, template, to_addresses, headers, subject, body_text, body_html, status, sent_at) \
             VALUES ($1, 'build_succeeded', ARRAY['ada@lab.example'], '{\"List-Unsubscribe\": \"<https://x/u>\"}', \
             'Built', 'It is built.', '<p>It is built.</p>', 'kept', now())",
        )
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
        let list = emails(&pool).await.unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].subject.as_deref(), Some("Built"));
        let message = email(&pool, id, "lookit@lab.example").await.unwrap();
        let names: Vec<&str> = message.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["From", "To", "Subject", "Date", "List-Unsubscribe"]);
        assert_eq!(message.headers[0].value, "lookit@lab.example");
        assert_eq!(message.html.as_deref(), Some("<p>It is built.</p>"));
        let missing = email(&pool, Uuid::new_v4(), "x").await.unwrap_err();
        assert!(matches!(missing, ActionError::NotFound(_)), "{missing:?}");
    }

    #[test]
    fn extra_headers_keep_names_and_show_values_as_text() {
        let headers = extra_headers(&serde_json::json!({
            "List-Unsubscribe": "<https://lookit.local/u/1>",
            "X-Count": 3
        }));
        assert_eq!(
            headers,
            [
                (
                    "List-Unsubscribe".into(),
                    "<https://lookit.local/u/1>".into()
                ),
                ("X-Count".into(), "3".into())
            ]
        );
    }
}
