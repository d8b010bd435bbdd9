//! The ngrok provider: an HTTPS endpoint on ngrok's edge (a random or reserved domain) that
//! forwards to the inspector proxy through the ngrok agent library.

use std::net::SocketAddr;

use async_trait::async_trait;
use ngrok::config::ForwarderBuilder;
use ngrok::prelude::EndpointInfo;
use ngrok::Error as _;
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;
use tracing::info;
use url::Url;

use crate::provider::{OpenTunnel, TunnelProvider};
use crate::TunnelError;

const DEFAULT_SERVER: &str = "connect.ngrok-agent.com:443";

/// The authtoken in the `NGROK_AUTHTOKEN` environment variable, for when the config and the
/// keyring have none.
pub fn ngrok_authtoken_from_env() -> Option<SecretString> {
    std::env::var("NGROK_AUTHTOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .map(SecretString::from)
}

pub struct NgrokProvider {
    authtoken: SecretString,
    domain: Option<String>,
    server: Option<String>,
}

impl NgrokProvider {
    /// Fails at once, before any network traffic, when there is no authtoken: ngrok refuses
    /// anonymous agents, and the user needs to know where to get one.
    pub fn new(
        authtoken: Option<SecretString>,
        domain: Option<String>,
        server: Option<String>,
    ) -> Result<Self, TunnelError> {
        let authtoken = authtoken
            .filter(|t| !t.expose_secret().trim().is_empty())
            .ok_or(TunnelError::NoAuthtoken)?;
        Ok(NgrokProvider {
            authtoken,
            domain,
            server,
        })
    }

    fn server(&self) -> &str {
        self.server.as_deref().unwrap_or(DEFAULT_SERVER)
    }
}

#[async_trait]
impl TunnelProvider for NgrokProvider {
    fn name(&self) -> &'static str {
        "ngrok"
    }

    async fn open(&self, local: SocketAddr) -> Result<OpenTunnel, TunnelError> {
        let mut builder = ngrok::Session::builder();
        builder.authtoken(self.authtoken.expose_secret());
        if let Some(server) = &self.server {
            builder
                .server_addr(server)
                .map_err(|e| TunnelError::InvalidSetting {
                    key: "ngrok_server",
                    reason: e.to_string(),
                })?;
        }
        let session = builder
            .connect()
            .await
            .map_err(|e| connect_error(e, self.server()))?;
        let mut endpoint = session.http_endpoint();
        if let Some(domain) = &self.domain {
            endpoint.domain(domain);
        }
        let local_url = Url::parse(&format!("http://{local}")).map_err(anyhow::Error::from)?;
        let mut forwarder =
            endpoint
                .listen_and_forward(local_url)
                .await
                .map_err(|e| TunnelError::Refused {
                    provider: "ngrok",
                    code: e.error_code().map(str::to_string),
                    message: e.msg(),
                })?;
        let public_url = Url::parse(forwarder.url()).map_err(anyhow::Error::from)?;
        info!(%public_url, "ngrok tunnel open");

        let close = CancellationToken::new();
        let closed = close.clone();
        let task = tokio::spawn(async move {
            // The session must live as long as the tunnel.
            let _session = session;
            tokio::select! {
                _ = closed.cancelled() => TunnelError::Lost("closed".into()),
                ended = forwarder.join() => TunnelError::Lost(match ended {
                    Ok(Ok(())) => "ngrok closed the tunnel".into(),
                    Ok(Err(e)) => format!("ngrok: {e}"),
                    Err(e) => format!("the ngrok forwarder stopped: {e}"),
                }),
            }
        });
        Ok(OpenTunnel::new(public_url, task, close))
    }

    fn notice(&self, public_url: &Url) -> Option<String> {
        let host = public_url.host_str()?;
        let free = [".ngrok-free.app", ".ngrok-free.dev"]
            .iter()
            .any(|suffix| host.ends_with(suffix));
        free.then(|| {
            "ngrok free plan: people opening this URL in a browser first see ngrok's warning page \
             and must click \"Visit Site\"; webhooks (Pipe, the Lambda) are not affected. A paid \
             plan or the self-hosted provider avoids the page."
                .to_string()
        })
    }
}

fn connect_error(e: ngrok::session::ConnectError, server: &str) -> TunnelError {
    use ngrok::session::ConnectError;
    match e {
        ConnectError::Tcp(io) => TunnelError::Unreachable {
            service: "ngrok",
            address: server.to_string(),
            reason: io.to_string(),
        },
        ConnectError::Tls(io) => TunnelError::Unreachable {
            service: "ngrok",
            address: server.to_string(),
            reason: format!("TLS handshake failed (a proxy or captive portal?): {io}"),
        },
        ConnectError::ProxyConnect(err) => TunnelError::Unreachable {
            service: "ngrok",
            address: server.to_string(),
            reason: format!("through the proxy: {err}"),
        },
        ConnectError::Auth(ref rpc) => TunnelError::AuthtokenRejected {
            code: rpc.error_code().map(str::to_string),
            message: rpc.msg(),
        },
        other => TunnelError::Refused {
            provider: "ngrok",
            code: other.error_code().map(str::to_string),
            message: other.msg(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_plan_domains_warn_about_the_browser_page() {
        let provider =
            NgrokProvider::new(Some(SecretString::from("token")), None, None).expect("a token");
        let free = Url::parse("https://abcd-1-2-3-4.ngrok-free.app/").unwrap();
        let notice = provider.notice(&free).expect("a notice on the free plan");
        assert!(notice.contains("warning page"), "{notice}");
        assert!(
            notice.contains("webhooks (Pipe, the Lambda) are not affected"),
            "{notice}"
        );
        let reserved = Url::parse("https://lab.ngrok.app/").unwrap();
        assert_eq!(provider.notice(&reserved), None);
    }
}
