//! `lookit-local admin create-researcher <email>`: a researcher account with a password (given
//! or generated) and a fresh authenticator secret to scan.

use anyhow::Context;
use rand::distributions::{Alphanumeric, DistString};
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use uuid::Uuid;

use crate::auth::{check_password_rules, hash_password, new_totp_secret, totp};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0:?} is not an email address")]
    InvalidEmail(String),
    #[error("a user {0} already exists")]
    Exists(String),
    #[error("password not accepted: {0}")]
    WeakPassword(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// The new researcher and what they need to log in the first time.
#[derive(Debug)]
pub struct CreatedResearcher {
    pub id: Uuid,
    /// `otpauth://` URI for the authenticator app; the researcher activates it at first login.
    pub otpauth_uri: String,
    /// The generated password, when none was given.
    pub generated_password: Option<SecretString>,
}

fn valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !email.chars().any(|c| c.is_whitespace() || c == ':')
}

/// Creates a researcher (the environment name is the authenticator issuer's suffix).
pub async fn create_researcher(
    pool: &PgPool,
    environment: &str,
    email: &str,
    password: Option<SecretString>,
) -> Result<CreatedResearcher, AdminError> {
    let email = email.trim();
    if !valid_email(email) {
        return Err(AdminError::InvalidEmail(email.to_string()));
    }
    let (password, generated_password) = match password {
        Some(password) => {
            check_password_rules(password.expose_secret()).map_err(AdminError::WeakPassword)?;
            (password, None)
        }
        None => {
            let generated: SecretString = Alphanumeric
                .sample_string(&mut rand::thread_rng(), 20)
                .into();
            (generated.clone(), Some(generated))
        }
    };
    let hash = hash_password(password).await?;
    let secret = new_totp_secret();
    let id = Uuid::new_v4();
    let inserted = sqlx::query(
        "INSERT INTO users (id, username, password_hash, is_researcher, totp_secret) \
         VALUES ($1, $2, $3, true, $4) ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(email)
    .bind(&hash)
    .bind(&secret)
    .execute(pool)
    .await
    .context("insert the researcher")?;
    if inserted.rows_affected() == 0 {
        return Err(AdminError::Exists(email.to_string()));
    }
    let otpauth_uri = totp(&secret, environment, email)?.get_url();
    Ok(CreatedResearcher {
        id,
        otpauth_uri,
        generated_password,
    })
}

/// The URI as a QR code of Unicode half blocks, light on dark, for a terminal.
pub fn render_qr_terminal(uri: &str) -> anyhow::Result<String> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::new(uri.as_bytes()).context("encode the QR code")?;
    Ok(code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}
