//! RabbitMQ readiness, provisioning and queue depths, the same on every backend: the admin user
//! with its tag and permissions, no usable `guest`, the durable work queues with their
//! dead-letter queues, and the queue listing the setup guide asks for.

use anyhow::Context;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use lookit_contracts::Queue;
use lookit_status::QueueDepth;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;

use crate::connections::RabbitConnection;
use crate::event::{Reporter, StepOutcome};

/// The RabbitMQ management HTTP API, authenticated as the admin user.
pub(crate) struct Management<'a> {
    http: reqwest::Client,
    conn: &'a RabbitConnection,
    base: &'a url::Url,
}

/// An HTTP client for the management API. Building one reads every root certificate of the
/// system (hundreds of files), so what calls the API repeatedly keeps one ([`DepthReader`]).
fn management_client() -> Option<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .ok()
}

impl<'a> Management<'a> {
    /// `None` when no management URL is configured (or no HTTP client can be built).
    pub fn new(conn: &'a RabbitConnection) -> Option<Self> {
        Self::with_client(conn, management_client()?)
    }

    fn with_client(conn: &'a RabbitConnection, http: reqwest::Client) -> Option<Self> {
        let base = conn.management_url.as_ref()?;
        Some(Self { http, conn, base })
    }

    /// `base/api/<segments…>`, each segment percent-encoded (the vhost `/` becomes `%2F`).
    fn url(&self, segments: &[&str]) -> url::Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().push("api").extend(segments);
        }
        url
    }

    fn request(&self, method: reqwest::Method, segments: &[&str]) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(segments))
            .basic_auth(&self.conn.user, Some(self.conn.password.expose_secret()))
    }

    /// GET; `None` when the object does not exist.
    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        segments: &[&str],
    ) -> anyhow::Result<Option<T>> {
        let response = self
            .request(reqwest::Method::GET, segments)
            .send()
            .await
            .with_context(|| format!("the management API at {} does not answer", self.base))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response = response
            .error_for_status()
            .with_context(|| format!("management API GET /api/{}", segments.join("/")))?;
        Ok(Some(response.json().await?))
    }

    async fn put(&self, segments: &[&str], body: serde_json::Value) -> anyhow::Result<()> {
        self.request(reqwest::Method::PUT, segments)
            .json(&body)
            .send()
            .await?
            .error_for_status()
            .with_context(|| format!("management API PUT /api/{}", segments.join("/")))?;
        Ok(())
    }

    /// DELETE; false when there was nothing to delete.
    async fn delete(&self, segments: &[&str]) -> anyhow::Result<bool> {
        let response = self
            .request(reqwest::Method::DELETE, segments)
            .send()
            .await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(false);
        }
        response
            .error_for_status()
            .with_context(|| format!("management API DELETE /api/{}", segments.join("/")))?;
        Ok(true)
    }
}

pub(crate) async fn connect(conn: &RabbitConnection) -> anyhow::Result<Connection> {
    lookit_contracts::connect_amqp(conn.amqp_url().expose_secret(), "lookit-local")
        .await
        .with_context(|| format!("cannot log in to {} as {}", conn.address(), conn.user))
}

/// A real AMQP login as the admin user, plus the management API when there is one.
pub(crate) async fn probe(conn: &RabbitConnection) -> anyhow::Result<()> {
    connect(conn).await?.close(200, "probe").await?;
    if let Some(management) = Management::new(conn) {
        management
            .get::<serde_json::Value>(&["overview"])
            .await?
            .context("the management API has no /api/overview")?;
    }
    Ok(())
}

#[derive(Deserialize)]
struct UserInfo {
    /// A comma-separated string before RabbitMQ 3.11, a list since.
    tags: serde_json::Value,
}

impl UserInfo {
    fn has_tag(&self, tag: &str) -> bool {
        match &self.tags {
            serde_json::Value::String(tags) => tags.split(',').any(|t| t.trim() == tag),
            serde_json::Value::Array(tags) => tags.iter().any(|t| t.as_str() == Some(tag)),
            _ => false,
        }
    }
}

#[derive(Deserialize)]
struct Permissions {
    configure: String,
    write: String,
    read: String,
}

/// Idempotent provisioning; each step is reported with its outcome.
pub(crate) async fn provision(conn: &RabbitConnection, reporter: &Reporter) -> anyhow::Result<()> {
    match Management::new(conn) {
        Some(management) => provision_users(conn, &management, reporter).await?,
        None => reporter.step(
            "management plugin",
            StepOutcome::Skipped,
            "no management URL is configured: the admin's tag and permissions and the guest user cannot be checked".to_string(),
        ),
    }

    let amqp = connect(conn).await?;
    let channel = amqp.create_channel().await?;
    for queue in Queue::ALL {
        declare(&channel, &queue.dead_letter_name(), FieldTable::default()).await?;
        let mut arguments = FieldTable::default();
        for (key, value) in queue.dead_letter_arguments() {
            arguments.insert(key.into(), AMQPValue::LongString(value.into()));
        }
        declare(&channel, queue.name(), arguments)
            .await
            .with_context(|| {
                format!(
                    "queue {} exists with other arguments than dead-lettering to {}; delete it (it is empty unless jobs are waiting) and start again",
                    queue.name(),
                    queue.dead_letter_name()
                )
            })?;
        reporter.step(
            "queue",
            StepOutcome::Unchanged,
            format!(
                "{} is durable and dead-letters to {}",
                queue.name(),
                queue.dead_letter_name()
            ),
        );
    }
    let _ = amqp.close(200, "provisioned").await;

    let depths = queue_depths(conn, Management::new(conn)).await?;
    let listing = depths
        .iter()
        .map(|q| format!("{}: {} messages", q.name, q.ready + q.unacked))
        .collect::<Vec<_>>()
        .join(", ");
    reporter.step("list queues", StepOutcome::Unchanged, listing);
    Ok(())
}

async fn provision_users(
    conn: &RabbitConnection,
    management: &Management<'_>,
    reporter: &Reporter,
) -> anyhow::Result<()> {
    management
        .get::<serde_json::Value>(&["overview"])
        .await?
        .context("the management API has no /api/overview")?;
    reporter.step(
        "management plugin",
        StepOutcome::Unchanged,
        format!("management API answers at {}", management.base),
    );

    let user = conn.user.as_str();
    let existing: Option<UserInfo> = management.get(&["users", user]).await?;
    if existing.is_some_and(|info| info.has_tag("administrator")) {
        reporter.step(
            "admin user",
            StepOutcome::Unchanged,
            format!("{user} is tagged administrator"),
        );
    } else {
        management
            .put(
                &["users", user],
                json!({ "password": conn.password.expose_secret(), "tags": "administrator" }),
            )
            .await?;
        reporter.step(
            "admin user",
            StepOutcome::Done,
            format!("{user} tagged administrator"),
        );
    }

    let all = ".*";
    let permissions: Option<Permissions> =
        management.get(&["permissions", &conn.vhost, user]).await?;
    if permissions.is_some_and(|p| p.configure == all && p.write == all && p.read == all) {
        reporter.step(
            "permissions",
            StepOutcome::Unchanged,
            format!("{user} has \".*\" \".*\" \".*\" on vhost {}", conn.vhost),
        );
    } else {
        management
            .put(
                &["permissions", &conn.vhost, user],
                json!({ "configure": all, "write": all, "read": all }),
            )
            .await?;
        reporter.step(
            "permissions",
            StepOutcome::Done,
            format!(
                "{user} granted \".*\" \".*\" \".*\" on vhost {}",
                conn.vhost
            ),
        );
    }

    if user != "guest" && management.delete(&["users", "guest"]).await? {
        reporter.step("guest user", StepOutcome::Done, "guest removed".to_string());
    } else {
        reporter.step(
            "guest user",
            StepOutcome::Unchanged,
            "there is no guest user".to_string(),
        );
    }
    Ok(())
}

async fn declare(channel: &Channel, name: &str, arguments: FieldTable) -> anyhow::Result<()> {
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(name, options, arguments)
        .await
        .with_context(|| format!("cannot declare queue {name}"))?;
    Ok(())
}

#[derive(Deserialize)]
struct QueueInfo {
    name: String,
    #[serde(default)]
    messages_ready: u64,
    #[serde(default)]
    messages_unacknowledged: u64,
    #[serde(default)]
    consumers: u64,
    #[serde(default)]
    message_stats: Option<MessageStats>,
}

#[derive(Deserialize)]
struct MessageStats {
    publish_details: Option<Rate>,
    deliver_get_details: Option<Rate>,
}

#[derive(Deserialize)]
struct Rate {
    rate: f64,
}

/// How often the full listing (every queue, unacknowledged counts, rates) is read again.
/// RabbitMQ refreshes those statistics only every few seconds (5 s by default), so reading
/// them more often shows nothing new.
const LISTING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads queue depths often and cheaply: the ready and consumer counts of every listed queue
/// come from passive declares on one kept AMQP channel (exact the moment a message arrives),
/// over the slower listing of [`queue_depths`] (the management API's statistics lag by seconds).
#[derive(Default)]
pub(crate) struct DepthReader {
    amqp: Option<(Connection, Channel)>,
    /// Kept for the listing every [`LISTING_INTERVAL`]; see [`management_client`].
    http: Option<reqwest::Client>,
    listing: Vec<QueueDepth>,
    listed_at: Option<std::time::Instant>,
}

impl DepthReader {
    pub(crate) async fn read(
        &mut self,
        conn: &RabbitConnection,
    ) -> anyhow::Result<Vec<QueueDepth>> {
        if self
            .listed_at
            .is_none_or(|at| at.elapsed() >= LISTING_INTERVAL)
        {
            if self.http.is_none() {
                self.http = management_client();
            }
            let management = self
                .http
                .clone()
                .and_then(|http| Management::with_client(conn, http));
            self.listing = queue_depths(conn, management).await?;
            self.listed_at = Some(std::time::Instant::now());
        }
        let mut depths = self.listing.clone();
        let channel = self.channel(conn).await?;
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        // All declares at once: the broker answers them in order, and the answers arrive
        // together instead of waking this task and lapin's reader once per queue.
        let declared = futures::future::join_all(
            depths
                .iter()
                .map(|depth| channel.queue_declare(&depth.name, options, FieldTable::default())),
        )
        .await;
        for (depth, declared) in depths.iter_mut().zip(declared) {
            match declared {
                Ok(declared) => {
                    depth.ready = u64::from(declared.message_count());
                    depth.consumers = u64::from(declared.consumer_count());
                }
                // Deleted since the listing (the failure closed the channel, so the declares
                // after it fail too; a new channel comes next): list again on the next read,
                // and keep the listing's figures until then.
                Err(_) => self.listed_at = None,
            }
        }
        Ok(depths)
    }

    /// The kept channel; a new one after a failed declare closed it, a new connection after
    /// the broker went away.
    async fn channel(&mut self, conn: &RabbitConnection) -> anyhow::Result<Channel> {
        if let Some((connection, channel)) = &mut self.amqp {
            if connection.status().connected() {
                if !channel.status().connected() {
                    *channel = connection.create_channel().await?;
                }
                return Ok(channel.clone());
            }
        }
        let connection = connect(conn).await?;
        let channel = connection.create_channel().await?;
        self.amqp = Some((connection, channel.clone()));
        Ok(channel)
    }
}

/// Depth of every queue of the vhost: from the management API when there is one (with rates),
/// otherwise from passive declares of Lookit's queues (ready messages and consumers only).
pub(crate) async fn queue_depths(
    conn: &RabbitConnection,
    management: Option<Management<'_>>,
) -> anyhow::Result<Vec<QueueDepth>> {
    if let Some(management) = management {
        let queues: Vec<QueueInfo> = management
            .get(&["queues", &conn.vhost])
            .await?
            .unwrap_or_default();
        return Ok(queues
            .into_iter()
            .map(|q| QueueDepth {
                name: q.name,
                ready: q.messages_ready,
                unacked: q.messages_unacknowledged,
                consumers: q.consumers,
                publish_rate: q
                    .message_stats
                    .as_ref()
                    .and_then(|s| s.publish_details.as_ref())
                    .map(|r| r.rate),
                deliver_rate: q
                    .message_stats
                    .as_ref()
                    .and_then(|s| s.deliver_get_details.as_ref())
                    .map(|r| r.rate),
            })
            .collect());
    }
    let amqp = connect(conn).await?;
    let mut depths = Vec::new();
    for queue in Queue::ALL {
        for name in [queue.name().to_string(), queue.dead_letter_name()] {
            // A failed passive declare closes the channel, so each queue gets its own.
            let channel = amqp.create_channel().await?;
            let options = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            if let Ok(declared) = channel
                .queue_declare(&name, options, FieldTable::default())
                .await
            {
                depths.push(QueueDepth {
                    name,
                    ready: u64::from(declared.message_count()),
                    unacked: 0,
                    consumers: u64::from(declared.consumer_count()),
                    publish_rate: None,
                    deliver_rate: None,
                });
                let _ = channel.close(200, "depth read").await;
            }
        }
    }
    let _ = amqp.close(200, "depths read").await;
    Ok(depths)
}
