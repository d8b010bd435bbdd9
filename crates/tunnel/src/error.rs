//! The one error type at the boundary of this crate. Messages are written for the person who
//! clicked "Share": they say what went wrong and what to do, and never contain a secret.

/// Why the tunnel could not be opened, was lost, or an inspector action failed.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error(
        "ngrok needs an authtoken: sign up (the free plan is enough) and copy yours from \
         https://dashboard.ngrok.com/get-started/your-authtoken, then set it as \
         `ngrok_authtoken` under [tunnel] or in the NGROK_AUTHTOKEN environment variable"
    )]
    NoAuthtoken,
    #[error(
        "ngrok refused the authtoken{}: check it at \
         https://dashboard.ngrok.com/get-started/your-authtoken ({message})",
        code_suffix(.code)
    )]
    AuthtokenRejected {
        code: Option<String>,
        message: String,
    },
    #[error(
        "cannot reach {service} at {address}: check that this computer is online (and that no \
         firewall blocks outgoing connections): {reason}"
    )]
    Unreachable {
        service: &'static str,
        address: String,
        reason: String,
    },
    #[error("{provider} refused to open the tunnel{}: {message}", code_suffix(.code))]
    Refused {
        provider: &'static str,
        code: Option<String>,
        message: String,
    },
    #[error("the tunnel was lost: {0}")]
    Lost(String),
    #[error("invalid tunnel setting `{key}`: {reason}")]
    InvalidSetting { key: &'static str, reason: String },
    #[error("the tunnel is not running")]
    NotRunning,
    #[error("no recorded request has id {0}")]
    UnknownRequest(i64),
    #[error("request {id} cannot be replayed: {reason}")]
    NotReplayable { id: i64, reason: &'static str },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

fn code_suffix(code: &Option<String>) -> String {
    code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default()
}

impl TunnelError {
    /// Whether trying again later may help (network trouble, a lost connection) as opposed to
    /// errors that need the user to change something first.
    pub fn is_transient(&self) -> bool {
        matches!(self, TunnelError::Unreachable { .. } | TunnelError::Lost(_))
    }
}
