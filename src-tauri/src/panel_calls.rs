//! The tray's quick actions go through the panel API, exactly as the UI's buttons do.

use anyhow::Context;

pub struct PanelCalls {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl PanelCalls {
    /// From `http://127.0.0.1:<port>/#token=<token>`.
    pub fn from_dashboard_url(dashboard: &str) -> anyhow::Result<Self> {
        let (base, token) = dashboard
            .split_once("/#token=")
            .context("the dashboard URL has no token")?;
        Ok(Self {
            base: base.to_string(),
            token: token.to_string(),
            http: reqwest::Client::new(),
        })
    }

    /// `POST /api<path>`; the panel's own error message on refusal.
    pub async fn post(&self, path: &str) -> anyhow::Result<()> {
        let response = self
            .http
            .post(format!("{}/api{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .context("reach the control panel")?;
        if response.status().is_success() {
            return Ok(());
        }
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let reason = body["error"]
            .as_str()
            .unwrap_or("no reason given")
            .to_string();
        anyhow::bail!("{status}: {reason}")
    }
}
