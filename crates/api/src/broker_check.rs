//! The health route's broker check.

use std::time::Duration;

use lapin::Connection;
use secrecy::{ExposeSecret, SecretString};

/// How long the database and the broker may each take to answer before health names them.
pub(crate) const ANSWER_WITHIN: Duration = Duration::from_secs(3);

/// Checks the broker with a round trip on a kept AMQP connection: a channel opened and closed,
/// which the broker must answer. Opening a connection per check (TCP, the AMQP handshake and a
/// reader thread each time) was most of an idle instance's own CPU, since the panel asks every
/// few seconds. A connection that failed or did not answer is dropped, and the next check logs
/// in again, so a restarted broker or changed credentials are seen by the next check.
pub(crate) struct BrokerCheck {
    url: SecretString,
    kept: tokio::sync::Mutex<Option<Connection>>,
}

impl BrokerCheck {
    pub(crate) fn new(url: SecretString) -> BrokerCheck {
        BrokerCheck {
            url,
            kept: tokio::sync::Mutex::new(None),
        }
    }

    /// `"ok"`, or why the broker is unreachable.
    pub(crate) async fn check(&self) -> String {
        let mut kept = self.kept.lock().await;
        let round_trip = async {
            if !kept.as_ref().is_some_and(|c| c.status().connected()) {
                let connection = lookit_contracts::connect_amqp(
                    self.url.expose_secret(),
                    "lookit-api health check",
                )
                .await?;
                *kept = Some(connection);
            }
            let connection = kept.as_ref().expect("connected above");
            connection
                .create_channel()
                .await?
                .close(200, "health check")
                .await
        };
        let outcome = match tokio::time::timeout(ANSWER_WITHIN, round_trip).await {
            Ok(Ok(())) => return "ok".to_string(),
            Ok(Err(e)) => format!("unreachable: {e}"),
            Err(_) => format!(
                "unreachable: no answer within {} s",
                ANSWER_WITHIN.as_secs()
            ),
        };
        *kept = None;
        outcome
    }

    /// Closes the kept connection (when the server stops), so the broker sees a clean goodbye.
    pub(crate) async fn close(&self) {
        if let Some(connection) = self.kept.lock().await.take() {
            let _ = tokio::time::timeout(ANSWER_WITHIN, connection.close(200, "API stopped")).await;
        }
    }
}
