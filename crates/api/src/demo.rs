//! `lookit-local demo seed`: a lab, a researcher, a study, a participant with a child, and a
//! response, so a new user (and the end-to-end tests) has something to click on. Seeding again
//! reuses the demo users and adds a new lab, study and response.

use anyhow::Context;
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

pub const DEMO_RESEARCHER: &str = "demo-researcher@lookit.local";
pub const DEMO_PARTICIPANT: &str = "demo-participant@lookit.local";

#[derive(Debug, Clone, Serialize)]
pub struct DemoIds {
    pub lab: Uuid,
    pub researcher: Uuid,
    pub participant: Uuid,
    pub study: Uuid,
    pub child: Uuid,
    pub response: Uuid,
}

async fn user(
    tx: &mut sqlx::PgConnection,
    username: &str,
    researcher: bool,
) -> anyhow::Result<Uuid> {
    Ok(sqlx::query_scalar(
        "INSERT INTO users (id, username, given_name, is_researcher) VALUES ($1, $2, 'Demo', $3) \
         ON CONFLICT (lower(username)) DO UPDATE SET is_researcher = EXCLUDED.is_researcher \
         RETURNING id",
    )
    .bind(Uuid::new_v4())
    .bind(username)
    .bind(researcher)
    .fetch_one(tx)
    .await?)
}

pub async fn seed(pool: &PgPool) -> anyhow::Result<DemoIds> {
    let mut tx = pool.begin().await.context("begin")?;
    let researcher = user(&mut tx, DEMO_RESEARCHER, true)
        .await
        .context("demo researcher")?;
    let participant = user(&mut tx, DEMO_PARTICIPANT, false)
        .await
        .context("demo participant")?;
    let lab = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO labs (id, name, institution, contact_email, approved_to_test) \
         VALUES ($1, 'Demo Lab', 'Lookit Local', $2, true)",
    )
    .bind(lab)
    .bind(DEMO_RESEARCHER)
    .execute(&mut *tx)
    .await
    .context("demo lab")?;
    sqlx::query("INSERT INTO lab_researchers (lab_id, user_id, is_admin) VALUES ($1, $2, true)")
        .bind(lab)
        .bind(researcher)
        .execute(&mut *tx)
        .await?;
    let study = Uuid::new_v4();
    let structure = json!({
        "frames": {
            "0-intro": {"kind": "exp-lookit-text", "blocks": [{"title": "Welcome to the demo study"}]},
            "1-video-consent": {"kind": "exp-lookit-video-consent", "PIName": "Demo", "purpose": "A demo."},
        },
        "sequence": ["0-intro", "1-video-consent"],
    });
    sqlx::query(
        "INSERT INTO studies (id, name, lab_id, creator_id, state, public, structure) \
         VALUES ($1, 'Demo study', $2, $3, 'created', true, $4)",
    )
    .bind(study)
    .bind(lab)
    .bind(researcher)
    .bind(structure)
    .execute(&mut *tx)
    .await
    .context("demo study")?;
    sqlx::query("INSERT INTO study_admins (study_id, user_id) VALUES ($1, $2)")
        .bind(study)
        .bind(researcher)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO study_logs (study_id, user_id, action) VALUES ($1, $2, 'created')")
        .bind(study)
        .bind(researcher)
        .execute(&mut *tx)
        .await?;
    let child = Uuid::new_v4();
    sqlx::query("INSERT INTO children (id, user_id, given_name, birthday) VALUES ($1, $2, 'Demo child', current_date - 400)")
        .bind(child)
        .bind(participant)
        .execute(&mut *tx)
        .await
        .context("demo child")?;
    let response = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO responses (id, study_id, child_id, is_preview, sequence, exp_data) \
         VALUES ($1, $2, $3, true, '[\"0-intro\"]', $4)",
    )
    .bind(response)
    .bind(study)
    .bind(child)
    .bind(json!({"0-intro": {"frameType": "DEFAULT"}}))
    .execute(&mut *tx)
    .await
    .context("demo response")?;
    tx.commit().await.context("commit")?;
    Ok(DemoIds {
        lab,
        researcher,
        participant,
        study,
        child,
        response,
    })
}
