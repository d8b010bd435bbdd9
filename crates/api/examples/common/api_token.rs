//! Shared by the API's examples (included with `#[path]`): an API token obtained the way a script
//! does it, through the login routes.

use anyhow::{ensure, Context};
use serde_json::{json, Value};

/// Logs in with password and authenticator code and asks for an API token, as a script would.
pub async fn api_token(
    client: &reqwest::Client,
    base: &str,
    username: &str,
    password: &str,
    totp_secret: &str,
) -> anyhow::Result<String> {
    let login = client
        .post(format!("{base}/api/auth/login/"))
        .json(&json!({"username": username, "password": password}))
        .send()
        .await?;
    ensure!(login.status() == 200, "login answered {}", login.status());
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("no session cookie")?
        .to_string();
    let body: Value = login.json().await?;
    let csrf = body["csrf_token"].as_str().context("no csrf_token")?;
    let code = totp_rs::TOTP::new(
        totp_rs::Algorithm::SHA1,
        6,
        1,
        30,
        totp_rs::Secret::Encoded(totp_secret.into())
            .to_bytes()
            .map_err(|e| anyhow::anyhow!("authenticator secret: {e:?}"))?,
        None,
        username.into(),
    )?
    .generate_current()?;
    let second = client
        .post(format!("{base}/api/auth/login/code/"))
        .header("cookie", &cookie)
        .header("x-csrftoken", csrf)
        .json(&json!({"code": code}))
        .send()
        .await?;
    ensure!(second.status() == 204, "code answered {}", second.status());
    let token = client
        .post(format!("{base}/api/auth/tokens/"))
        .header("cookie", &cookie)
        .header("x-csrftoken", csrf)
        .send()
        .await?;
    ensure!(token.status() == 201, "tokens answered {}", token.status());
    let token: Value = token.json().await?;
    Ok(token["token"]
        .as_str()
        .context("no token in the answer")?
        .to_string())
}
