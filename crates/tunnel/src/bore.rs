//! The self-hosted provider: the bore protocol (<https://github.com/ekzhang/bore>), client and
//! server. The wire format and secret handshake come from the `bore-cli` library, so this client
//! works with a stock `bore server` and stock `bore local` clients work with [`BoreServer`].
//! The loops are ours because bore's own bind the fixed control port and never stop.
//!
//! A bore tunnel is plain TCP: the public URL is `http://<server host>:<assigned port>/`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use bore_cli::auth::Authenticator;
use bore_cli::shared::{ClientMessage, Delimited, ServerMessage, NETWORK_TIMEOUT};
use secrecy::{ExposeSecret, SecretString};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use url::Url;
use uuid::Uuid;

use crate::provider::{OpenTunnel, TunnelProvider};
use crate::settings::BoreServerAddress;
use crate::TunnelError;

/// The server sends a heartbeat this often on every idle control connection.
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// A client that hears nothing for this long takes the server for gone (sleep, network change:
/// cases where no connection reset ever arrives).
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);
/// A public connection the client does not claim within this time is dropped.
const UNCLAIMED_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to a bore server and forwards the port it assigns to a local address.
pub struct BoreProvider {
    server: BoreServerAddress,
    secret: Option<SecretString>,
}

impl BoreProvider {
    pub fn new(server: BoreServerAddress, secret: Option<SecretString>) -> Self {
        BoreProvider { server, secret }
    }

    fn authenticator(&self) -> Option<Authenticator> {
        self.secret
            .as_ref()
            .map(|s| Authenticator::new(s.expose_secret()))
    }

    async fn connect_control(&self) -> Result<Delimited<TcpStream>, TunnelError> {
        let unreachable = |reason: String| TunnelError::Unreachable {
            service: "the bore server",
            address: self.server.to_string(),
            reason,
        };
        let stream = tokio::time::timeout(
            NETWORK_TIMEOUT,
            TcpStream::connect((self.server.connect_host(), self.server.port())),
        )
        .await
        .map_err(|_| unreachable("no answer within 3 s".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
        let mut control = Delimited::new(stream);
        if let Some(auth) = self.authenticator() {
            auth.client_handshake(&mut control)
                .await
                .map_err(|e| TunnelError::Refused {
                    provider: "bore",
                    code: None,
                    message: format!("the secret handshake failed: {e}"),
                })?;
        }
        Ok(control)
    }
}

#[async_trait]
impl TunnelProvider for BoreProvider {
    fn name(&self) -> &'static str {
        "bore"
    }

    async fn open(&self, local: SocketAddr) -> Result<OpenTunnel, TunnelError> {
        let mut control = self.connect_control().await?;
        let refused = |message: String| TunnelError::Refused {
            provider: "bore",
            code: None,
            message,
        };
        control
            .send(ClientMessage::Hello(0))
            .await
            .map_err(|e| refused(e.to_string()))?;
        let remote_port = match control.recv_timeout().await {
            Ok(Some(ServerMessage::Hello(port))) => port,
            Ok(Some(ServerMessage::Error(message))) => return Err(refused(message)),
            Ok(Some(ServerMessage::Challenge(_))) => {
                return Err(refused(
                    "the server requires a secret; set `bore_secret` under [tunnel]".into(),
                ))
            }
            Ok(Some(other)) => return Err(refused(format!("unexpected first message {other:?}"))),
            Ok(None) => return Err(refused("the server closed the connection".into())),
            Err(e) => return Err(refused(e.to_string())),
        };
        let public_url = Url::parse(&format!("http://{}:{remote_port}/", self.server.host()))
            .context("build the public URL")?;
        info!(%public_url, "bore tunnel open");

        let close = CancellationToken::new();
        let client = Arc::new(BoreConnector {
            server: self.server.clone(),
            authenticator: self.authenticator(),
            local,
        });
        let task = tokio::spawn(client.serve(control, close.clone()));
        Ok(OpenTunnel::new(public_url, task, close))
    }
}

/// What a running client needs to claim public connections.
struct BoreConnector {
    server: BoreServerAddress,
    authenticator: Option<Authenticator>,
    local: SocketAddr,
}

impl BoreConnector {
    async fn serve(
        self: Arc<Self>,
        mut control: Delimited<TcpStream>,
        close: CancellationToken,
    ) -> TunnelError {
        loop {
            let message = tokio::select! {
                _ = close.cancelled() => return TunnelError::Lost("closed".into()),
                message = tokio::time::timeout(HEARTBEAT_TIMEOUT, control.recv()) => message,
            };
            match message {
                Err(_) => {
                    return TunnelError::Lost(format!(
                        "no heartbeat from the bore server {} for {} s",
                        self.server,
                        HEARTBEAT_TIMEOUT.as_secs()
                    ))
                }
                Ok(Err(e)) => {
                    return TunnelError::Lost(format!("bore server {}: {e}", self.server))
                }
                Ok(Ok(None)) => {
                    return TunnelError::Lost(format!(
                        "the bore server {} closed the connection",
                        self.server
                    ))
                }
                Ok(Ok(Some(ServerMessage::Connection(id)))) => {
                    let this = Arc::clone(&self);
                    let close = close.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = close.cancelled() => {}
                            result = this.claim(id) => if let Err(e) = result {
                                debug!(%id, "public connection ended: {e:#}");
                            }
                        }
                    });
                }
                Ok(Ok(Some(ServerMessage::Heartbeat))) => {}
                Ok(Ok(Some(other))) => warn!(?other, "unexpected message from the bore server"),
            }
        }
    }

    /// Claims one public connection on a new control connection and splices it to `local`.
    async fn claim(&self, id: Uuid) -> anyhow::Result<()> {
        let stream = tokio::time::timeout(
            NETWORK_TIMEOUT,
            TcpStream::connect((self.server.connect_host(), self.server.port())),
        )
        .await
        .context("connect to the bore server: timed out")?
        .context("connect to the bore server")?;
        let mut remote = Delimited::new(stream);
        if let Some(auth) = &self.authenticator {
            auth.client_handshake(&mut remote).await?;
        }
        remote.send(ClientMessage::Accept(id)).await?;
        let mut local = TcpStream::connect(self.local)
            .await
            .with_context(|| format!("connect to the inspector proxy at {}", self.local))?;
        let mut parts = remote.into_parts();
        // Bytes the framing layer already read past the Accept frame belong to the caller.
        local.write_all(&parts.read_buf).await?;
        tokio::io::copy_bidirectional(&mut local, &mut parts.io).await?;
        Ok(())
    }
}

/// A bore server (for labs that host their own tunnel endpoint, and for the tests).
pub struct BoreServer {
    /// Where public tunnel ports are opened.
    tunnel_host: IpAddr,
    authenticator: Option<Authenticator>,
    /// Public connections waiting for the client to claim them.
    unclaimed: Mutex<HashMap<Uuid, TcpStream>>,
}

impl BoreServer {
    pub fn new(tunnel_host: IpAddr, secret: Option<&SecretString>) -> Self {
        BoreServer {
            tunnel_host,
            authenticator: secret.map(|s| Authenticator::new(s.expose_secret())),
            unclaimed: Mutex::new(HashMap::new()),
        }
    }

    /// Serves clients on `control` until `shutdown`; then every tunnel and connection closes.
    pub async fn run(
        self,
        control: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let this = Arc::new(self);
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                accepted = control.accept() => accepted.context("accept a bore control connection")?,
            };
            let this = Arc::clone(&this);
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    result = this.handle(stream) => if let Err(e) = result {
                        debug!(%peer, "bore control connection ended: {e:#}");
                    }
                }
            });
        }
    }

    fn unclaimed(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, TcpStream>> {
        // A poisoned map only means another connection panicked; its entries are still valid.
        self.unclaimed.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn handle(self: Arc<Self>, stream: TcpStream) -> anyhow::Result<()> {
        let mut control = Delimited::new(stream);
        if let Some(auth) = &self.authenticator {
            if let Err(e) = auth.server_handshake(&mut control).await {
                control.send(ServerMessage::Error(e.to_string())).await?;
                return Ok(());
            }
        }
        match control.recv_timeout::<ClientMessage>().await? {
            Some(ClientMessage::Hello(port)) => self.serve_tunnel(control, port).await,
            Some(ClientMessage::Accept(id)) => {
                let waiting = self.unclaimed().remove(&id);
                let Some(mut public) = waiting else {
                    anyhow::bail!("no public connection {id} is waiting");
                };
                let mut parts = control.into_parts();
                public.write_all(&parts.read_buf).await?;
                tokio::io::copy_bidirectional(&mut parts.io, &mut public).await?;
                Ok(())
            }
            Some(ClientMessage::Authenticate(_)) | None => Ok(()),
        }
    }

    async fn serve_tunnel(
        self: &Arc<Self>,
        mut control: Delimited<TcpStream>,
        port: u16,
    ) -> anyhow::Result<()> {
        let listener = match TcpListener::bind((self.tunnel_host, port)).await {
            Ok(listener) => listener,
            Err(e) => {
                control
                    .send(ServerMessage::Error(format!(
                        "cannot open port {port}: {e}"
                    )))
                    .await?;
                return Ok(());
            }
        };
        let port = listener.local_addr()?.port();
        control.send(ServerMessage::Hello(port)).await?;
        info!(port, "bore tunnel opened for a client");
        let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
        let mut issued = IssuedConnections {
            server: Arc::clone(self),
            ids: Vec::new(),
        };
        loop {
            tokio::select! {
                _ = heartbeat.tick() => control.send(ServerMessage::Heartbeat).await?,
                accepted = listener.accept() => {
                    let (public, _) = accepted?;
                    let id = Uuid::new_v4();
                    self.unclaimed().insert(id, public);
                    issued.ids.push(id);
                    let this = Arc::clone(self);
                    tokio::spawn(async move {
                        tokio::time::sleep(UNCLAIMED_CONNECTION_TIMEOUT).await;
                        this.unclaimed().remove(&id);
                    });
                    control.send(ServerMessage::Connection(id)).await?;
                }
            }
        }
    }
}

/// The public connections one tunnel announced. When the tunnel ends (client gone, server
/// shutting down) the ones nobody claimed are closed at once, so callers get an error right away
/// rather than after the unclaimed-connection timeout.
struct IssuedConnections {
    server: Arc<BoreServer>,
    ids: Vec<Uuid>,
}

impl Drop for IssuedConnections {
    fn drop(&mut self) {
        let mut unclaimed = self.server.unclaimed();
        for id in &self.ids {
            unclaimed.remove(id);
        }
    }
}
