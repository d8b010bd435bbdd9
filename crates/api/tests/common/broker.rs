//! RabbitMQ side of the tests: the work queues declared as the stack declares them, and a
//! reader of a queue that waits for the next message.

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Connection, ConnectionProperties, Consumer};
use lookit_contracts::Queue;

pub async fn declare_queues(amqp_url: &str) -> Connection {
    let connection = Connection::connect(amqp_url, ConnectionProperties::default())
        .await
        .expect("connect to the test broker");
    let channel = connection.create_channel().await.unwrap();
    for queue in Queue::ALL {
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(&queue.dead_letter_name(), durable, FieldTable::default())
            .await
            .unwrap();
        let mut arguments = FieldTable::default();
        for (key, value) in queue.dead_letter_arguments() {
            arguments.insert(
                ShortString::from(key),
                AMQPValue::LongString(LongString::from(value)),
            );
        }
        channel
            .queue_declare(queue.name(), durable, arguments)
            .await
            .unwrap();
    }
    connection
}

/// A consumer of one queue, on a connection of its own.
pub struct QueueReader {
    consumer: Consumer,
    _connection: Connection,
}

impl QueueReader {
    /// Starts consuming `queue` of the vhost at `amqp_url`.
    pub async fn open(amqp_url: &str, queue: Queue) -> QueueReader {
        let connection = Connection::connect(amqp_url, ConnectionProperties::default())
            .await
            .expect("connect to the test broker");
        let channel = connection.create_channel().await.unwrap();
        let consumer = channel
            .basic_consume(
                queue.name(),
                "test",
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        QueueReader {
            consumer,
            _connection: connection,
        }
    }

    /// The next message (acked): its message id, content type, delivery mode and body.
    pub async fn next_message(&mut self) -> (String, String, u8, serde_json::Value) {
        let delivery =
            tokio::time::timeout(std::time::Duration::from_secs(60), self.consumer.next())
                .await
                .expect("a message within a minute")
                .expect("the consumer is open")
                .expect("a delivery");
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        let properties = &delivery.properties;
        (
            properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            properties
                .content_type()
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            properties.delivery_mode().unwrap_or_default(),
            serde_json::from_slice(&delivery.data).unwrap(),
        )
    }

    /// The next message's build job.
    pub async fn next_build_job(&mut self) -> lookit_contracts::BuildJob {
        let (_, _, _, body) = self.next_message().await;
        serde_json::from_value(body).expect("a build job")
    }
}
