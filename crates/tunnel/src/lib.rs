//! The one-click public tunnel to the Lookit API (issue 6, domain reference §4).
//!
//! ```text
//! internet ──▶ provider (ngrok | bore) ──▶ inspector proxy (127.0.0.1:0) ──▶ Lookit API
//! ```
//!
//! Invariants:
//! - The tunnel forwards to the inspector proxy only, and the proxy to the API address it was
//!   given only: nothing else on this computer (the control panel, Postgres…) is reachable.
//! - Every request through the tunnel is recorded, redacted unless capture is on; credentials
//!   are never stored, secrets (authtoken, bore secret) never logged.
//! - Every sharing session is in the audit trail with who started it, when, its URLs, how long
//!   it ran and how many requests it served.

mod bore;
mod error;
mod guardian;
mod inspector;
mod ngrok;
mod provider;
mod settings;
mod store;

use std::net::SocketAddr;
use std::sync::Arc;

use lookit_status::{TunnelState, TunnelStatus};
use sqlx::PgPool;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use url::Url;
use uuid::Uuid;

pub use crate::bore::{BoreProvider, BoreServer};
pub use crate::error::TunnelError;
pub use crate::guardian::{HopCheck, HopResult};
pub use crate::inspector::Inspector;
pub use crate::ngrok::{ngrok_authtoken_from_env, NgrokProvider};
pub use crate::provider::{OpenTunnel, TunnelProvider};
pub use crate::settings::{
    ApiTarget, BoreServerAddress, GuardianSettings, InspectorSettings, ProviderKind,
    ProviderSettings, TunnelSettings,
};
pub use crate::store::{RecordedRequest, SharingSession};

use crate::guardian::TunnelGuardian;
use crate::store::TunnelStore;

/// The URL to paste into Pipe's `video_copied_s3` webhook for a tunnel at `public_url`.
pub fn pipe_webhook_url(public_url: &Url) -> String {
    format!(
        "{}/exp/renamevideo/",
        public_url.as_str().trim_end_matches('/')
    )
}

/// The tunnel of one instance: at most one sharing session at a time.
pub struct Tunnel {
    store: TunnelStore,
    status: watch::Sender<TunnelStatus>,
    inspector: Arc<Inspector>,
    running: Mutex<Option<Running>>,
    client: reqwest::Client,
}

/// What exists while a sharing session runs.
struct Running {
    session_id: Uuid,
    proxy: SocketAddr,
    stop: CancellationToken,
    guardian: JoinHandle<()>,
    proxy_server: JoinHandle<()>,
    settings: GuardianSettings,
}

impl Drop for Running {
    /// A tunnel dropped without `stop` must not stay public.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Tunnel {
    /// `pool` must have the migrations applied (`0200_tunnel.sql`); `api` is where requests go.
    pub fn new(
        pool: PgPool,
        api: ApiTarget,
        inspector: InspectorSettings,
    ) -> Result<Self, TunnelError> {
        let store = TunnelStore::new(pool);
        let (status, status_rx) = watch::channel(TunnelStatus::default());
        let inspector = Inspector::new(api, inspector, store.clone(), status_rx)?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(anyhow::Error::from)?;
        Ok(Tunnel {
            store,
            status,
            inspector: Arc::new(inspector),
            running: Mutex::new(None),
            client,
        })
    }

    /// Opens the tunnel and returns its status once the public URL answers through it. Errors
    /// of the first attempt are returned as they are (no authtoken, no network…); losses after
    /// that are handled by the guardian. Starting a running tunnel returns its status.
    pub async fn start(
        &self,
        settings: TunnelSettings,
        started_by: &str,
    ) -> Result<TunnelStatus, TunnelError> {
        let mut running = self.running.lock().await;
        if running.is_some() {
            return Ok(self.status());
        }
        let provider_name = settings.provider.kind().name();
        let failed = |e: TunnelError| {
            self.status.send_replace(TunnelStatus {
                state: TunnelState::Failed,
                provider: Some(provider_name.to_string()),
                public_url: None,
                message: Some(e.to_string()),
            });
            e
        };
        let provider = provider(&settings.provider).map_err(failed)?;
        self.status.send_replace(TunnelStatus {
            state: TunnelState::Starting,
            provider: Some(provider_name.to_string()),
            public_url: None,
            message: None,
        });

        let (listener, proxy) = inspector::bind().await.map_err(|e| failed(e.into()))?;
        let stop = CancellationToken::new();
        let proxy_server = tokio::spawn({
            let inspector = Arc::clone(&self.inspector);
            let stop = stop.clone();
            async move {
                if let Err(e) = inspector::run(listener, inspector, stop).await {
                    warn!("the inspector proxy stopped: {e:#}");
                }
            }
        });
        let opened = async {
            let tunnel = provider.open(proxy).await?;
            let check = guardian::probe(
                &self.client,
                tunnel.public_url().as_str(),
                &self.inspector.probe_nonce,
                settings.guardian.probe_timeout,
            )
            .await;
            if let Err(e) = check {
                return Err(TunnelError::Lost(format!(
                    "the tunnel opened at {} but requests do not come through: {e}",
                    tunnel.public_url()
                )));
            }
            Ok(tunnel)
        };
        let tunnel = match opened.await {
            Ok(tunnel) => tunnel,
            Err(e) => {
                stop.cancel();
                let _ = proxy_server.await;
                return Err(failed(e));
            }
        };

        let session_id = self
            .store
            .open_session(started_by, provider_name)
            .await
            .map_err(|e| failed(e.into()))?;
        self.store
            .add_session_url(session_id, tunnel.public_url().as_str())
            .await
            .map_err(|e| failed(e.into()))?;
        self.inspector.set_session(Some(session_id));

        let guardian = TunnelGuardian {
            provider,
            proxy,
            settings: settings.guardian,
            status: self.status.clone(),
            store: self.store.clone(),
            session_id,
            inspector: Arc::clone(&self.inspector),
            client: self.client.clone(),
        };
        let status = guardian.open_status(tunnel.public_url(), None);
        self.status.send_replace(status.clone());
        let guardian = tokio::spawn(guardian.run(tunnel, stop.clone()));
        *running = Some(Running {
            session_id,
            proxy,
            stop,
            guardian,
            proxy_server,
            settings: settings.guardian,
        });
        Ok(status)
    }

    /// Closes the tunnel and the proxy and ends the sharing session. Stopping a stopped tunnel
    /// does nothing.
    pub async fn stop(&self) -> Result<(), TunnelError> {
        let Some(running) = self.running.lock().await.take() else {
            return Ok(());
        };
        let mut running = running;
        running.stop.cancel();
        let _ = (&mut running.guardian).await;
        let _ = (&mut running.proxy_server).await;
        self.inspector.set_session(None);
        self.status.send_replace(TunnelStatus::default());
        self.store.end_session(running.session_id).await?;
        Ok(())
    }

    pub fn status(&self) -> TunnelStatus {
        self.status.borrow().clone()
    }

    /// Every change of state or public URL, as it happens.
    pub fn subscribe(&self) -> watch::Receiver<TunnelStatus> {
        self.status.subscribe()
    }

    /// The record of requests through the tunnel, and replay.
    pub fn inspector(&self) -> &Inspector {
        &self.inspector
    }

    /// The audit trail of sharing sessions, newest first.
    pub async fn sessions(&self) -> Result<Vec<SharingSession>, TunnelError> {
        Ok(self.store.sessions().await?)
    }

    /// Checks public URL → proxy → API → database → broker now, hop by hop.
    pub async fn check(&self) -> Result<HopCheck, TunnelError> {
        let running = self.running.lock().await;
        let running = running.as_ref().ok_or(TunnelError::NotRunning)?;
        let public_url = self.status.borrow().public_url.clone();
        Ok(guardian::check_hops(
            &self.client,
            &self.inspector,
            running.proxy,
            public_url.as_deref(),
            running.settings.probe_timeout,
        )
        .await)
    }
}

fn provider(settings: &ProviderSettings) -> Result<Box<dyn TunnelProvider>, TunnelError> {
    Ok(match settings {
        ProviderSettings::Ngrok {
            authtoken,
            domain,
            server,
        } => Box::new(NgrokProvider::new(
            authtoken.clone(),
            domain.clone(),
            server.clone(),
        )?),
        ProviderSettings::Bore { server, secret } => {
            Box::new(BoreProvider::new(server.clone(), secret.clone()))
        }
    })
}
