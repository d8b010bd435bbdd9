//! How commands reach a running instance: its panel API, with the token from the instance
//! record — the same API and the same checks the UI goes through.

use anyhow::Context;
use serde::de::DeserializeOwned;

use crate::InstanceRecord;

pub struct PanelClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl PanelClient {
    pub fn new(record: &InstanceRecord) -> Self {
        Self {
            base: record.panel_url.trim_end_matches('/').to_string(),
            token: record.token.clone(),
            http: reqwest::Client::new(),
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.http.get(format!("{}{path}", self.base)), path)
            .await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<T> {
        self.send(
            self.http.post(format!("{}{path}", self.base)).json(body),
            path,
        )
        .await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        path: &str,
    ) -> anyhow::Result<T> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("reach the running instance at {}", self.base))?;
        Self::check(response, path)
            .await?
            .json()
            .await
            .with_context(|| format!("read the answer of {path}"))
    }

    /// Asks the instance to stop everything it runs.
    pub async fn shutdown(&self) -> anyhow::Result<()> {
        let _: serde_json::Value = self.post("/api/shutdown", &serde_json::json!({})).await?;
        Ok(())
    }

    async fn check(response: reqwest::Response, path: &str) -> anyhow::Result<reqwest::Response> {
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let reason = body
            .get("error")
            .and_then(|e| e.as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| body.to_string());
        anyhow::bail!("the running instance refused {path}: {status}: {reason}")
    }
}
