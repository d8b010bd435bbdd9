//! The interface every tunnel provider implements: open a public endpoint that forwards to one
//! local TCP address, say its public URL, and report when it is lost.

use std::net::SocketAddr;

use async_trait::async_trait;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::TunnelError;

#[async_trait]
pub trait TunnelProvider: Send + Sync {
    /// Stable name shown to users: `ngrok`, `bore`.
    fn name(&self) -> &'static str;

    /// Opens a public endpoint forwarding every connection to `local`. Returns once the public
    /// URL is known; the tunnel then runs until closed or lost.
    async fn open(&self, local: SocketAddr) -> Result<OpenTunnel, TunnelError>;

    /// A limit of the provider that users of `public_url` will notice, if any.
    fn notice(&self, _public_url: &Url) -> Option<String> {
        None
    }
}

/// A tunnel that is up. Dropping it closes it.
pub struct OpenTunnel {
    public_url: Url,
    /// Runs the tunnel; ends with the reason the tunnel went away (only when it was lost: a
    /// closed tunnel's task is cancelled through `close`).
    task: JoinHandle<TunnelError>,
    close: CancellationToken,
}

impl OpenTunnel {
    /// `task` must end when `close` is cancelled.
    pub fn new(public_url: Url, task: JoinHandle<TunnelError>, close: CancellationToken) -> Self {
        OpenTunnel {
            public_url,
            task,
            close,
        }
    }

    pub fn public_url(&self) -> &Url {
        &self.public_url
    }

    /// Waits until the provider reports the tunnel lost, and says why.
    pub async fn lost(&mut self) -> TunnelError {
        match (&mut self.task).await {
            Ok(reason) => reason,
            Err(e) => TunnelError::Lost(format!("the tunnel task stopped: {e}")),
        }
    }

    pub async fn close(mut self) {
        self.close.cancel();
        let _ = (&mut self.task).await;
    }
}

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.close.cancel();
    }
}
