//! The guardian keeps an open tunnel up: it watches the provider for loss, probes the public URL
//! end to end, reconnects with exponential backoff, and publishes every change of state or
//! public URL on the status channel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lookit_status::{TunnelState, TunnelStatus};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use url::Url;
use uuid::Uuid;

use crate::inspector::{Inspector, PROBE_HEADER};
use crate::provider::{OpenTunnel, TunnelProvider};
use crate::settings::GuardianSettings;
use crate::store::TunnelStore;
use crate::TunnelError;

/// One hop of the path a request from the internet takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", content = "detail", rename_all = "snake_case")]
pub enum HopResult {
    Ok,
    Failed(String),
    /// An earlier hop failed, or there is nothing to check (no tunnel open, an API without a
    /// health route, a broker the API is not configured with).
    NotChecked,
}

/// The end-to-end check: public URL → inspector proxy → Lookit API → its database → its
/// broker, each hop on its own so the user sees which one fails. Fields are in path order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HopCheck {
    pub public_url: HopResult,
    pub proxy: HopResult,
    pub api: HopResult,
    pub database: HopResult,
    pub broker: HopResult,
}

impl HopCheck {
    /// Every hop in path order: its key (the field name), its name for the user, its result.
    pub fn hops(&self) -> [(&'static str, &'static str, &HopResult); 5] {
        [
            ("public_url", "public URL", &self.public_url),
            ("proxy", "inspector proxy", &self.proxy),
            ("api", "Lookit API", &self.api),
            ("database", "database", &self.database),
            ("broker", "broker", &self.broker),
        ]
    }

    /// No hop failed and the tunnel's own hops (public URL, proxy, API) answered. The database
    /// and broker may be unchecked: an API without a health route cannot report them.
    pub fn all_ok(&self) -> bool {
        let tunnel_hops = [&self.public_url, &self.proxy, &self.api];
        tunnel_hops.iter().all(|h| **h == HopResult::Ok)
            && !self
                .hops()
                .iter()
                .any(|(_, _, h)| matches!(h, HopResult::Failed(_)))
    }

    /// The first failing hop along the path, named for the user.
    pub fn first_failure(&self) -> Option<String> {
        self.hops()
            .into_iter()
            .find_map(|(_, hop, result)| match result {
                HopResult::Failed(why) => Some(format!("{hop}: {why}")),
                _ => None,
            })
    }
}

/// What the API's health route says about the hops behind it.
pub(crate) struct ApiHealth {
    pub api: HopResult,
    pub database: HopResult,
    pub broker: HopResult,
}

impl ApiHealth {
    /// The API did not answer (or not as the API): nothing behind it can be checked.
    pub fn unreachable(why: String) -> Self {
        ApiHealth {
            api: HopResult::Failed(why),
            database: HopResult::NotChecked,
            broker: HopResult::NotChecked,
        }
    }
}

/// Sends a probe through `base` (the public URL or the proxy) and checks that our own proxy
/// answered it, not some other server at that address.
pub(crate) async fn probe(
    client: &reqwest::Client,
    base: &str,
    nonce: &str,
    timeout: Duration,
) -> Result<(), String> {
    let response = client
        .get(base)
        .header(PROBE_HEADER, nonce)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| format!("no answer from {base}: {e}"))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|e| format!("reading the answer from {base}: {e}"))?;
    if status.is_success() && body == nonce {
        Ok(())
    } else {
        Err(format!(
            "{base} answered {status}, but not from this computer's tunnel"
        ))
    }
}

/// Checks every hop; hops after a failed one are not checked.
pub(crate) async fn check_hops(
    client: &reqwest::Client,
    inspector: &Inspector,
    proxy: SocketAddr,
    public_url: Option<&str>,
    timeout: Duration,
) -> HopCheck {
    let nonce = &inspector.probe_nonce;
    let proxy_result = probe(client, &format!("http://{proxy}/"), nonce, timeout).await;
    let health = inspector.check_api(timeout).await;
    let public_result = match (&proxy_result, public_url) {
        (Ok(()), Some(url)) => Some(probe(client, url, nonce, timeout).await),
        _ => None,
    };
    let hop = |r: Option<Result<(), String>>| match r {
        Some(Ok(())) => HopResult::Ok,
        Some(Err(e)) => HopResult::Failed(e),
        None => HopResult::NotChecked,
    };
    HopCheck {
        public_url: hop(public_result),
        proxy: hop(Some(proxy_result)),
        api: health.api,
        database: health.database,
        broker: health.broker,
    }
}

pub(crate) struct TunnelGuardian {
    pub provider: Box<dyn TunnelProvider>,
    pub proxy: SocketAddr,
    pub settings: GuardianSettings,
    pub status: watch::Sender<TunnelStatus>,
    pub store: TunnelStore,
    pub session_id: Uuid,
    pub inspector: Arc<Inspector>,
    pub client: reqwest::Client,
}

impl TunnelGuardian {
    /// The status to publish for an open tunnel at `url`, with `message` (or the provider's
    /// notice) for the user.
    pub fn open_status(&self, url: &Url, message: Option<String>) -> TunnelStatus {
        TunnelStatus {
            state: TunnelState::Open,
            provider: Some(self.provider.name().to_string()),
            public_url: Some(url.to_string()),
            message: message.or_else(|| self.provider.notice(url)),
        }
    }

    fn publish(&self, state: TunnelState, public_url: Option<String>, message: String) {
        self.status.send_replace(TunnelStatus {
            state,
            provider: Some(self.provider.name().to_string()),
            public_url,
            message: Some(message),
        });
    }

    /// Runs until `stop`, starting from the tunnel `start` opened.
    pub async fn run(self, mut tunnel: OpenTunnel, stop: CancellationToken) {
        loop {
            let url = tunnel.public_url().clone();
            let reason = tokio::select! {
                _ = stop.cancelled() => {
                    tunnel.close().await;
                    return;
                }
                reason = tunnel.lost() => reason.to_string(),
                reason = self.probe_until_failure(&url) => reason,
            };
            drop(tunnel);
            warn!("tunnel lost: {reason}");
            self.publish(
                TunnelState::Reconnecting,
                None,
                format!("The tunnel was lost ({reason}); reconnecting."),
            );
            tunnel = match self.reopen(&stop).await {
                Some(tunnel) => tunnel,
                None => return,
            };
            let new_url = tunnel.public_url().clone();
            let message = (new_url != url).then(|| {
                format!(
                    "The public URL changed from {url} to {new_url}: give out the new one and \
                     update the Pipe webhook to {}",
                    crate::pipe_webhook_url(&new_url)
                )
            });
            if let Err(e) = self
                .store
                .add_session_url(self.session_id, new_url.as_str())
                .await
            {
                warn!("could not record the new public URL: {e:#}");
            }
            info!(%new_url, "tunnel reconnected");
            self.status
                .send_replace(self.open_status(&new_url, message));
        }
    }

    /// Reopens the tunnel with exponential backoff; `None` when stopped first.
    async fn reopen(&self, stop: &CancellationToken) -> Option<OpenTunnel> {
        let mut backoff = self.settings.initial_backoff;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep(backoff) => {}
            }
            let attempt = tokio::select! {
                _ = stop.cancelled() => return None,
                attempt = self.provider.open(self.proxy) => attempt,
            };
            match attempt {
                Ok(tunnel) => return Some(tunnel),
                Err(e) => {
                    backoff = (backoff * 2).min(self.settings.max_backoff);
                    self.publish(
                        TunnelState::from(&e),
                        None,
                        format!("{e} (trying again in {} s)", backoff.as_secs().max(1)),
                    );
                }
            }
        }
    }

    /// Probes the public URL every `probe_interval`; returns why the first failing probe failed.
    async fn probe_until_failure(&self, url: &Url) -> String {
        let mut interval = tokio::time::interval(self.settings.probe_interval);
        // The first tick is immediate; the tunnel was just checked by opening it.
        interval.tick().await;
        loop {
            interval.tick().await;
            if let Err(e) = probe(
                &self.client,
                url.as_str(),
                &self.inspector.probe_nonce,
                self.settings.probe_timeout,
            )
            .await
            {
                return format!("the public URL stopped answering: {e}");
            }
        }
    }
}

/// Transient errors leave hope (reconnecting); the others need the user (failed).
impl From<&TunnelError> for TunnelState {
    fn from(e: &TunnelError) -> Self {
        if e.is_transient() {
            TunnelState::Reconnecting
        } else {
            TunnelState::Failed
        }
    }
}
