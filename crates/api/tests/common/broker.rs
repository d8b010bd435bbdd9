//! RabbitMQ side of the tests: the work queues declared as the stack declares them, and a
//! consumer that waits for the next message.

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

pub async fn consumer(connection: &Connection, queue: Queue) -> Consumer {
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_consume(
            queue.name(),
            "test",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap()
}

/// The next message (acked): its message id, content type, delivery mode and body.
pub async fn next_message(consumer: &mut Consumer) -> (String, String, u8, serde_json::Value) {
    let delivery = tokio::time::timeout(std::time::Duration::from_secs(60), consumer.next())
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
