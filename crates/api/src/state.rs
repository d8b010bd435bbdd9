//! What every request handler shares: the database pool, the settings, the public URL (which the
//! tunnel may change at runtime) and the video and build storage.

use std::sync::{Arc, RwLock};

use lookit_storage::Storage;
use secrecy::SecretString;
use sqlx::PgPool;
use url::Url;

use crate::broker_check::BrokerCheck;

/// Plain settings of the API server; the CLI builds them from `lookit-config`.
#[derive(Clone)]
pub struct ApiSettings {
    /// Where the internet reaches this server (the tunnel's URL, or configured). Pipe signs
    /// its webhook over this URL.
    pub public_url: Option<Url>,
    /// Name of this installation (`local`): the authenticator issuer is `Lookit-<environment>`.
    pub environment: String,
    /// Key for hashing session cookies and API tokens before they are stored.
    pub session_key: SecretString,
    /// Pipe's webhook key (HMAC-SHA1 of `X-Pipe-Signature`).
    pub pipe_webhook_key: SecretString,
    /// Shared secret of the AWS Lambda (HMAC-SHA256 of `X-AWS-Lambda-HMAC-Sig`).
    pub lambda_secret: SecretString,
    /// Where Pipe's video objects live (`storage.videos`): a local folder by default, S3 or
    /// Google Cloud Storage when configured. The Pipe webhook renames objects here.
    pub videos: Storage,
    /// Where the worker uploads built studies (`storage.builds`); served from
    /// `experiments/<study_uuid>/` there.
    pub builds: Storage,
    /// The broker, for the health route. `None`: health reports the broker as not configured.
    pub amqp_url: Option<SecretString>,
    /// `Secure` attribute on the session cookie. Only plain-HTTP tests turn it off.
    pub cookie_secure: bool,
}

/// The public URL, shared between the server and whoever learns it later (the tunnel).
#[derive(Clone, Default)]
pub struct PublicUrl(Arc<RwLock<Option<Url>>>);

impl PublicUrl {
    pub fn set(&self, url: Option<Url>) {
        // A poisoned lock only means a writer panicked mid-assignment of an Option: the value
        // is still a valid Option, so keep using it.
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = url;
    }
    pub fn get(&self) -> Option<Url> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[derive(Clone)]
pub struct ApiState {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    settings: ApiSettings,
    public_url: PublicUrl,
    /// From `settings.amqp_url`.
    broker: Option<BrokerCheck>,
}

impl ApiState {
    pub fn new(pool: PgPool, settings: ApiSettings) -> Self {
        let public_url = PublicUrl::default();
        public_url.set(settings.public_url.clone());
        let broker = settings.amqp_url.clone().map(BrokerCheck::new);
        ApiState {
            inner: Arc::new(Inner {
                pool,
                settings,
                public_url,
                broker,
            }),
        }
    }

    /// A handle to change the public URL while the server runs (the tunnel sets it).
    pub fn public_url(&self) -> PublicUrl {
        self.inner.public_url.clone()
    }

    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    pub fn settings(&self) -> &ApiSettings {
        &self.inner.settings
    }

    /// The health route's broker check; `None` when no broker is configured.
    pub(crate) fn broker(&self) -> Option<&BrokerCheck> {
        self.inner.broker.as_ref()
    }
}
