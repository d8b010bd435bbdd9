//! RabbitMQ side of the worker: connecting, declaring the queues, consuming with manual
//! acknowledgement, and moving failed messages to the retry or dead-letter queue.
//!
//! Invariants:
//! - A message is acknowledged only after its job's effects are committed, or after it was
//!   republished (with a publisher confirm) to `<queue>.retry` or `<queue>.dead`.
//! - Queue arguments come from [`Queue`] only: a declaration with other arguments would be refused.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use lookit_contracts::{Queue, ATTEMPT_HEADER, LAST_ERROR_HEADER, REASON_HEADER};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{broadcast, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::settings::QueueLimits;
use crate::WorkerEvent;

/// Persistent messages survive a broker restart (the queues are durable too).
const PERSISTENT: u8 = 2;

/// Job messages carry ids and small fields only; a larger body is not a job of ours and goes to
/// the dead-letter queue unread.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Opens a broker connection whose I/O runs on the current tokio runtime.
pub async fn connect(url: &SecretString) -> Result<Connection, lapin::Error> {
    lookit_contracts::connect_amqp(url.expose_secret(), "lookit-worker").await
}

fn long_string(value: impl Into<String>) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.into()))
}

/// Declares, idempotently, every work queue with its dead-letter and retry queue.
pub async fn declare_queues(channel: &Channel) -> Result<(), lapin::Error> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    for queue in Queue::ALL {
        channel
            .queue_declare(&queue.dead_letter_name(), durable, FieldTable::default())
            .await?;
        let mut retry_arguments = FieldTable::default();
        retry_arguments.insert("x-dead-letter-exchange".into(), long_string(""));
        retry_arguments.insert(
            "x-dead-letter-routing-key".into(),
            long_string(queue.name()),
        );
        channel
            .queue_declare(&queue.retry_name(), durable, retry_arguments)
            .await?;
        let mut work_arguments = FieldTable::default();
        for (key, value) in queue.dead_letter_arguments() {
            work_arguments.insert(key.into(), long_string(value));
        }
        channel
            .queue_declare(queue.name(), durable, work_arguments)
            .await?;
    }
    Ok(())
}

/// A channel in confirm mode: a publish returns only once the broker has taken the message.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

impl Publisher {
    pub async fn open(connection: &Connection) -> Result<Publisher, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher { channel })
    }

    /// Publishes a job as a persistent JSON message to `queue` and waits for the confirm.
    pub async fn publish_job(&self, queue: Queue, job: &impl Serialize) -> anyhow::Result<()> {
        let body = serde_json::to_vec(job).context("encode the job")?;
        self.publish(queue.name(), &body, persistent_properties(), None)
            .await
    }

    async fn publish(
        &self,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        expiration: Option<Duration>,
    ) -> anyhow::Result<()> {
        let properties = match expiration {
            Some(delay) => properties.with_expiration(delay.as_millis().to_string().into()),
            None => properties,
        };
        let confirmation = self
            .channel
            .basic_publish(
                "",
                routing_key,
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .with_context(|| format!("publish to {routing_key}"))?
            .await
            .with_context(|| format!("confirm of the publish to {routing_key}"))?;
        anyhow::ensure!(
            confirmation.is_ack(),
            "the broker refused the message for {routing_key}"
        );
        Ok(())
    }
}

fn persistent_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(PERSISTENT)
}

/// How a job ended when it did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Worth another attempt later (broker, database, network, Docker daemon trouble).
    #[error("{0:#}")]
    Retry(anyhow::Error),
    /// Another attempt would fail the same way.
    #[error("{0:#}")]
    Permanent(anyhow::Error),
    /// The worker is shutting down: the message goes back to the queue untouched.
    #[error("interrupted by shutdown")]
    Interrupted,
}

/// Every database error is worth another attempt: the job's transaction rolled back, and what
/// stopped it passes with time or with someone's help (the server restarting, its disk full
/// (53100) until space is freed, too many connections or out of memory: class 53). The broker's
/// backoff gives it that time; the job is dead-lettered only once its attempts are spent.
impl From<sqlx::Error> for JobError {
    fn from(error: sqlx::Error) -> Self {
        JobError::Retry(error.into())
    }
}

/// What a queue's consumer does with its messages. Public so a job benchmark drives the real
/// consume path ([`consume`]) with its own handlers.
pub trait JobHandler: Send + Sync + 'static {
    const QUEUE: Queue;
    /// The message body; a body that does not parse goes to the dead-letter queue at once.
    type Job: DeserializeOwned + Send + Sync + 'static;

    fn job_id(job: &Self::Job) -> Uuid;

    /// Does the job, idempotently: a job already done is a success without effect.
    fn handle(
        &self,
        job: &Self::Job,
        publisher: &Publisher,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<(), JobError>> + Send;

    /// Records for users that the job failed for good (called once, before the dead-lettering).
    fn give_up(
        &self,
        job: &Self::Job,
        publisher: &Publisher,
        error: &str,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Retry policy: attempts and backoff.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff_base: Duration,
}

impl RetryPolicy {
    /// Delay before attempt `next_attempt` (2, 3, ...): base, 2·base, 4·base, ...
    fn delay_before(self, next_attempt: u32) -> Duration {
        let doublings = next_attempt.saturating_sub(2).min(16);
        self.backoff_base.saturating_mul(1 << doublings)
    }
}

/// Consumes one queue until the connection fails (an error) or `shutdown` fires (Ok). On
/// shutdown it stops taking messages and waits for the jobs in flight; jobs that observe the
/// cancellation put their message back.
pub async fn consume<H: JobHandler>(
    connection: &Connection,
    handler: Arc<H>,
    limits: QueueLimits,
    retry: RetryPolicy,
    events: broadcast::Sender<WorkerEvent>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let queue = H::QUEUE;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(limits.prefetch(), BasicQosOptions::default())
        .await?;
    let publisher = Publisher::open(connection).await?;
    let tag = format!("lookit-worker-{}-{}", queue.name(), Uuid::new_v4().simple());
    let mut consumer = channel
        .basic_consume(
            queue.name(),
            &tag,
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("consume {}", queue.name()))?;
    let slots = Arc::new(Semaphore::new(limits.concurrency()));
    let mut in_flight = JoinSet::new();
    let ended = loop {
        // A slot first, then a message: the broker keeps what we cannot start yet.
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            slot = slots.clone().acquire_owned() => slot.context("job slots closed")?,
        };
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => {
                    let job = Job {
                        handler: handler.clone(),
                        publisher: publisher.clone(),
                        retry,
                        events: events.clone(),
                        cancel: shutdown.child_token(),
                    };
                    in_flight.spawn(async move {
                        job.process(delivery).await;
                        drop(slot);
                    });
                }
                Some(Err(error)) => break Err(anyhow::Error::from(error)
                    .context(format!("consuming {}", queue.name()))),
                None => break Err(anyhow::anyhow!("the broker ended the consumer of {}", queue.name())),
            },
        }
        while in_flight.try_join_next().is_some() {}
    };
    if ended.is_ok() {
        // Stop deliveries, then let the jobs in flight finish (or requeue themselves).
        let _ = channel
            .basic_cancel(&tag, BasicCancelOptions::default())
            .await;
    }
    while in_flight.join_next().await.is_some() {}
    ended
}

/// One delivery being processed.
struct Job<H> {
    handler: Arc<H>,
    publisher: Publisher,
    retry: RetryPolicy,
    events: broadcast::Sender<WorkerEvent>,
    cancel: CancellationToken,
}

impl<H: JobHandler> Job<H> {
    async fn process(self, delivery: Delivery) {
        let queue = H::QUEUE;
        let attempt = attempt_of(&delivery);
        if delivery.data.len() > MAX_MESSAGE_BYTES {
            let reason = format!(
                "oversized message: {} bytes (a job message is at most {MAX_MESSAGE_BYTES})",
                delivery.data.len()
            );
            self.dead_letter(&delivery, None, &reason, None).await;
            return;
        }
        let job = match serde_json::from_slice::<H::Job>(&delivery.data) {
            Ok(job) => job,
            Err(error) => {
                let reason = format!("unparsable message: {error}");
                self.dead_letter(&delivery, None, &reason, None).await;
                return;
            }
        };
        let job_id = H::job_id(&job);
        let outcome = self
            .handler
            .handle(&job, &self.publisher, &self.cancel)
            .await;
        let result = match outcome {
            Ok(()) => delivery.acker.ack(BasicAckOptions::default()).await,
            Err(JobError::Interrupted) => {
                delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await
            }
            Err(JobError::Retry(error)) if attempt < self.retry.max_attempts => {
                let error = format!("{error:#}");
                tracing::warn!(queue = queue.name(), %job_id, attempt, %error, "job failed; retrying later");
                let next = attempt + 1;
                let properties = delivery.properties.clone().with_headers(with_header(
                    &delivery,
                    ATTEMPT_HEADER,
                    AMQPValue::LongUInt(next),
                ));
                match self
                    .publisher
                    .publish(
                        &queue.retry_name(),
                        &delivery.data,
                        properties,
                        Some(self.retry.delay_before(next)),
                    )
                    .await
                {
                    Ok(()) => delivery.acker.ack(BasicAckOptions::default()).await,
                    // Not acknowledged: the broker redelivers it (to us after a reconnect).
                    Err(publish_error) => {
                        tracing::warn!(queue = queue.name(), %job_id, error = %format!("{publish_error:#}"), "could not schedule the retry");
                        return;
                    }
                }
            }
            Err(error @ (JobError::Retry(_) | JobError::Permanent(_))) => {
                let error = error.to_string();
                if let Err(give_up_error) =
                    self.handler.give_up(&job, &self.publisher, &error).await
                {
                    // Not recorded: leave the message unacknowledged so this runs again.
                    tracing::warn!(queue = queue.name(), %job_id, error = %format!("{give_up_error:#}"), "could not record the failure");
                    return;
                }
                let reason = format!("failed after {attempt} attempt(s)");
                self.dead_letter(&delivery, Some(job_id), &reason, Some(&error))
                    .await;
                return;
            }
        };
        if let Err(error) = result {
            // The channel is gone; the broker will redeliver and the handler is idempotent.
            tracing::warn!(queue = queue.name(), %job_id, %error, "could not settle the message");
        }
    }

    /// Moves a message to `<queue>.dead` with the reason (and last error), then acknowledges it.
    async fn dead_letter(
        &self,
        delivery: &Delivery,
        job_id: Option<Uuid>,
        reason: &str,
        last_error: Option<&str>,
    ) {
        let queue = H::QUEUE;
        let mut headers = with_header(delivery, REASON_HEADER, long_string(reason));
        if let Some(last_error) = last_error {
            headers.insert(LAST_ERROR_HEADER.into(), long_string(last_error));
        }
        let properties = delivery.properties.clone().with_headers(headers);
        match self
            .publisher
            .publish(&queue.dead_letter_name(), &delivery.data, properties, None)
            .await
        {
            Ok(()) => {
                tracing::warn!(queue = queue.name(), ?job_id, reason, "dead-lettered");
                let _ = self.events.send(WorkerEvent::DeadLettered {
                    queue,
                    job_id,
                    reason: reason.to_string(),
                });
                if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
                    tracing::warn!(queue = queue.name(), %error, "could not settle the message");
                }
            }
            Err(error) => {
                tracing::warn!(queue = queue.name(), error = %format!("{error:#}"), "could not dead-letter; the broker will redeliver");
            }
        }
    }
}

/// The delivery attempt carried by the message (1 for a first delivery).
fn attempt_of(delivery: &Delivery) -> u32 {
    let value = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get(ATTEMPT_HEADER));
    let attempt = match value {
        Some(AMQPValue::LongUInt(n)) => i64::from(*n),
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::ShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortUInt(n)) => i64::from(*n),
        _ => 1,
    };
    u32::try_from(attempt.max(1)).unwrap_or(u32::MAX)
}

/// The delivery's headers with `key` set to `value`.
fn with_header(delivery: &Delivery, key: &str, value: AMQPValue) -> FieldTable {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(ShortString::from(key), value);
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base() {
        let policy = RetryPolicy {
            max_attempts: 5,
            backoff_base: Duration::from_millis(100),
        };
        let delays: Vec<_> = (2..=5).map(|n| policy.delay_before(n)).collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800].map(Duration::from_millis).to_vec()
        );
    }
}
