//! The outbox relay: publishes the jobs that requests wrote to `job_outbox` (in the same
//! transaction as their own change) to RabbitMQ, and marks each one sent only after the broker
//! confirmed it. So no job is lost when the broker is down: the request succeeds, the row waits,
//! and the relay delivers it once the broker is back.
//!
//! Messages are persistent, `message_id` = job id, `application/json`, published to the default
//! exchange with the queue name as routing key and `mandatory`, so a queue that does not exist
//! (yet) is an error rather than a silent drop. The relay never declares queues (the stack does,
//! with their dead-letter arguments). It wakes on the `job_outbox` NOTIFY and also every
//! [`POLL_INTERVAL`], and reconnects with capped exponential backoff.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Connection};
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use uuid::Uuid;

pub const NOTIFY_CHANNEL: &str = "job_outbox";
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const BATCH: i64 = 100;

pub struct OutboxRelay;

impl OutboxRelay {
    /// Runs until `shutdown` completes. Errors of the broker or the database are logged and
    /// retried, never returned: the relay must outlive outages.
    pub async fn run(
        pool: PgPool,
        amqp_url: SecretString,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        let mut listener = None;
        let mut channel: Option<(Connection, Channel)> = None;
        let mut backoff = Duration::from_millis(200);
        loop {
            if listener.is_none() {
                listener = listen(&pool).await;
            }
            let result = async {
                if channel
                    .as_ref()
                    .is_none_or(|(c, _)| !c.status().connected())
                {
                    channel = Some(connect(&amqp_url).await?);
                }
                let (_, ch) = channel.as_ref().expect("connected above");
                publish_pending(&pool, ch).await
            }
            .await;
            let wait = match result {
                Ok(()) => {
                    backoff = Duration::from_millis(200);
                    POLL_INTERVAL
                }
                Err(error) => {
                    tracing::warn!(error = format!("{error:#}"), retry_in = ?backoff, "outbox relay");
                    channel = None;
                    let wait = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    wait
                }
            };
            tokio::select! {
                _ = &mut shutdown => break,
                woke = wait_for_notification(&mut listener), if listener.is_some() => {
                    if !woke {
                        listener = None;
                    }
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
        if let Some((connection, _)) = channel {
            let _ = connection.close(200, "shutting down").await;
        }
        Ok(())
    }
}

async fn listen(pool: &PgPool) -> Option<PgListener> {
    let mut listener = PgListener::connect_with(pool).await.ok()?;
    listener.listen(NOTIFY_CHANNEL).await.ok()?;
    Some(listener)
}

/// True on a notification, false when the listener broke.
async fn wait_for_notification(listener: &mut Option<PgListener>) -> bool {
    match listener {
        Some(listener) => listener.recv().await.is_ok(),
        None => std::future::pending().await,
    }
}

async fn connect(amqp_url: &SecretString) -> anyhow::Result<(Connection, Channel)> {
    let connection =
        lookit_contracts::connect_amqp(amqp_url.expose_secret(), "lookit-api outbox relay")
            .await
            .context("connect to RabbitMQ")?;
    let channel = connection
        .create_channel()
        .await
        .context("open a channel")?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("enable publisher confirms")?;
    tracing::info!("outbox relay connected to RabbitMQ");
    Ok((connection, channel))
}

/// Publishes every unpublished job, oldest first, each confirmed before it is marked. Rows are
/// locked (SKIP LOCKED) so two relays never send the same job twice at once.
async fn publish_pending(pool: &PgPool, channel: &Channel) -> anyhow::Result<()> {
    loop {
        let mut tx = pool.begin().await.context("begin")?;
        let jobs: Vec<(Uuid, String, serde_json::Value)> = sqlx::query_as(
            "SELECT id, queue, payload FROM job_outbox WHERE published_at IS NULL \
             ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await
        .context("read the outbox")?;
        if jobs.is_empty() {
            return Ok(());
        }
        let count = jobs.len();
        for (id, queue, payload) in jobs {
            match publish(channel, id, &queue, &payload).await {
                Ok(()) => {
                    sqlx::query("UPDATE job_outbox SET published_at = now(), attempts = attempts + 1, last_error = NULL WHERE id = $1")
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .context("mark a job published")?;
                }
                Err(error) => {
                    sqlx::query("UPDATE job_outbox SET attempts = attempts + 1, last_error = $2 WHERE id = $1")
                        .bind(id)
                        .bind(format!("{error:#}"))
                        .execute(&mut *tx)
                        .await
                        .context("record a failed publish")?;
                    tx.commit().await.context("commit")?;
                    return Err(error);
                }
            }
        }
        tx.commit().await.context("commit")?;
        if (count as i64) < BATCH {
            return Ok(());
        }
    }
}

async fn publish(
    channel: &Channel,
    id: Uuid,
    queue: &str,
    payload: &serde_json::Value,
) -> anyhow::Result<()> {
    let body = serde_json::to_vec(payload)?;
    let confirmation = channel
        .basic_publish(
            "",
            queue,
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &body,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type(ShortString::from("application/json"))
                .with_message_id(ShortString::from(id.to_string())),
        )
        .await
        .with_context(|| format!("publish job {id} to {queue}"))?
        .await
        .with_context(|| format!("confirmation of job {id}"))?;
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)) => {
            anyhow::bail!("queue {queue} does not exist on the broker (job {id} was returned)")
        }
        Confirmation::Nack(None) => anyhow::bail!("the broker refused job {id}"),
        Confirmation::NotRequested => anyhow::bail!("publisher confirms are off"),
    }
}
