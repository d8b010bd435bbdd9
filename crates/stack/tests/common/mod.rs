//! Shared by the backend suites: a fresh home per test, and the checks a user would make
//! against a provisioned stack.

#![allow(dead_code)] // each suite uses a different part

use std::time::Duration;

use lookit_config::{Backend, Config, Home, Secrets};
use lookit_stack::{Connections, Stack, StackEvent};
use secrecy::ExposeSecret;
use sqlx::{Connection, PgConnection};
use tokio::sync::broadcast;

pub struct TestHome {
    pub dir: tempfile::TempDir,
    pub home: Home,
    pub config: Config,
    pub secrets: Secrets,
}

/// A new home in a temp dir with every port 0 (any free port), so tests never collide.
pub fn test_home(backend: Backend) -> TestHome {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let home = Home::at(dir.path());
    let mut config = Config::default();
    config.stack.backend = backend;
    config.postgres.port.0 = 0;
    config.rabbitmq.port.0 = 0;
    config.rabbitmq.management_port.0 = 0;
    config.postgres.image = "lookit-test/postgres:latest"
        .to_string()
        .try_into()
        .unwrap();
    config.rabbitmq.image = "lookit-test/rabbitmq:latest"
        .to_string()
        .try_into()
        .unwrap();
    let secrets = Secrets::load_or_generate(&home.secrets_file()).unwrap();
    TestHome {
        dir,
        home,
        config,
        secrets,
    }
}

impl TestHome {
    /// Starts the stack, keeping every event it sent.
    pub async fn start(&self) -> (Stack, broadcast::Receiver<StackEvent>) {
        let (events, received) = broadcast::channel(4096);
        let stack = Stack::start(&self.home, &self.config, &self.secrets, events)
            .await
            .expect("the stack starts");
        (stack, received)
    }
}

pub fn drain(received: &mut broadcast::Receiver<StackEvent>) -> Vec<StackEvent> {
    let mut events = Vec::new();
    while let Ok(event) = received.try_recv() {
        events.push(event);
    }
    events
}

/// The outcome of the named step of a service, from the events.
pub fn step_outcome(
    events: &[StackEvent],
    service: &str,
    name: &str,
) -> Option<lookit_stack::StepOutcome> {
    events.iter().find_map(|event| match event {
        StackEvent::Step {
            service: s,
            step,
            outcome,
            ..
        } if s == service && step == name => Some(*outcome),
        _ => None,
    })
}

/// Waits for the next state event of `service` with `state`.
pub async fn wait_for_state(
    received: &mut broadcast::Receiver<StackEvent>,
    service: &str,
    state: lookit_status::ServiceState,
) -> Option<String> {
    let wait = async {
        loop {
            match received.recv().await {
                Ok(StackEvent::State {
                    service: s,
                    state: st,
                    message,
                }) if s == service && st == state => return message,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => {
                    panic!("the stack stopped sending events")
                }
            }
        }
    };
    Some(
        tokio::time::timeout(Duration::from_secs(180), wait)
            .await
            .unwrap_or_else(|_| panic!("{service} never became {state:?}"))
            .unwrap_or_default(),
    )
}

pub async fn postgres(connections: &Connections) -> PgConnection {
    PgConnection::connect(connections.postgres.url().expose_secret())
        .await
        .expect("the lookit role logs in with its password")
}

/// The role logs in with its password; without one it is refused.
pub async fn assert_password_required(connections: &Connections) {
    let mut db = postgres(connections).await;
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(database, "lookit");
    let pg = &connections.postgres;
    let without = format!(
        "postgres://{}@{}:{}/{}",
        pg.user, pg.host, pg.port, pg.database
    );
    let refused = PgConnection::connect(&without).await;
    assert!(refused.is_err(), "a login without a password was accepted");
    let wrong = format!(
        "postgres://{}:wrong@{}:{}/{}",
        pg.user, pg.host, pg.port, pg.database
    );
    assert!(PgConnection::connect(&wrong).await.is_err());
}

/// GET on the management API as the admin user.
pub async fn management(connections: &Connections, path: &str) -> (u16, serde_json::Value) {
    let rabbit = &connections.rabbitmq;
    let base = rabbit.management_url.as_ref().expect("a management URL");
    let response = reqwest::Client::new()
        .get(format!("{}api/{path}", base))
        .basic_auth(&rabbit.user, Some(rabbit.password.expose_secret()))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// The guide's broker setup: admin tagged administrator with all permissions on `/`, no guest,
/// the three durable queues dead-lettering to their own dead-letter queues.
pub async fn assert_broker_provisioned(connections: &Connections) {
    let (_, user) = management(connections, "users/lookit-admin").await;
    assert!(user["tags"].to_string().contains("administrator"), "{user}");
    let (_, permissions) = management(connections, "permissions/%2F/lookit-admin").await;
    for kind in ["configure", "write", "read"] {
        assert_eq!(permissions[kind], ".*");
    }
    let (guest, _) = management(connections, "users/guest").await;
    assert_eq!(guest, 404, "the guest user still exists");
    for queue in ["builds", "email", "cleanup"] {
        let (status, info) = management(connections, &format!("queues/%2F/{queue}")).await;
        assert_eq!(status, 200, "queue {queue} is missing");
        assert_eq!(info["durable"], true);
        assert_eq!(
            info["arguments"]["x-dead-letter-routing-key"],
            format!("{queue}.dead")
        );
        let (status, dead) = management(connections, &format!("queues/%2F/{queue}.dead")).await;
        assert_eq!(status, 200, "dead-letter queue of {queue} is missing");
        assert_eq!(dead["durable"], true);
    }
}

/// Publishes one persistent message to `email` and waits until the depth stream shows it.
pub async fn assert_depth_stream_sees_a_message(stack: &Stack) {
    let connections = stack.connections();
    let amqp = lapin::Connection::connect(
        connections.rabbitmq.amqp_url().expose_secret(),
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let channel = amqp.create_channel().await.unwrap();
    channel
        .basic_publish(
            "",
            "email",
            lapin::options::BasicPublishOptions::default(),
            b"{}",
            lapin::BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let mut depths = stack.queue_depths();
    tokio::time::timeout(
        Duration::from_secs(60),
        depths.wait_for(|queues| queues.iter().any(|q| q.name == "email" && q.ready == 1)),
    )
    .await
    .expect("the depth stream shows the published message")
    .unwrap();
    amqp.close(200, "done").await.unwrap();
}

/// Writes a row that must survive a restart.
pub async fn write_row(connections: &Connections) {
    let mut db = postgres(connections).await;
    sqlx::query("CREATE TABLE kept (note text)")
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query("INSERT INTO kept VALUES ('written before the restart')")
        .execute(&mut db)
        .await
        .unwrap();
}

pub async fn read_row(connections: &Connections) -> String {
    let mut db = postgres(connections).await;
    sqlx::query_scalar("SELECT note FROM kept")
        .fetch_one(&mut db)
        .await
        .expect("the row written before the restart is there")
}

/// The status of one service of `stack`.
pub fn service(stack: &Stack, name: &str) -> lookit_status::ServiceStatus {
    stack
        .services()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no service {name}"))
}

/// A loopback port held by this test, so the stack must pick another one.
pub fn taken_port() -> (std::net::TcpListener, u16) {
    let holder = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = holder.local_addr().unwrap().port();
    (holder, port)
}

/// What a user checks on a freshly started stack of `backend`: every service ready, Postgres
/// asks for the password, the broker is provisioned and its depths stream; then a row is written
/// that the next start must still have.
pub async fn assert_ready_and_write_a_row(stack: &Stack, backend: &str) {
    let services = stack.services();
    assert!(
        services
            .iter()
            .all(|s| s.state == lookit_status::ServiceState::Ready && s.backend == backend),
        "{services:?}"
    );
    let connections = stack.connections();
    assert_password_required(&connections).await;
    assert_broker_provisioned(&connections).await;
    assert_depth_stream_sees_a_message(stack).await;
    write_row(&connections).await;
}
