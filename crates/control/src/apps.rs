//! The embedded applications that need the stack: the Lookit API (with its outbox relay) and the
//! worker. Started once Postgres and RabbitMQ are provisioned, stopped before them.
//!
//! Invariant: migrations have run before the API or the worker touches the database.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use lookit_api::{tls::LocalCa, ApiSettings, ApiState, PublicUrl};
use lookit_panel::{ActionError, NotificationLevel, PanelEvent, ServiceAction};
use lookit_stack::Connections;
use lookit_status::{Endpoint, ServiceState, ServiceStatus, StatusReport};
use lookit_worker::{WorkerEvent, WorkerSettings};

use crate::control_plane::InstanceCore;

/// The health route checks the database and the broker with real connections; ask it this often
/// at most, so an idle instance stays idle.
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

pub(crate) struct Apps {
    api_url: String,
    api_address: String,
    public_url: PublicUrl,
    started_at: chrono::DateTime<chrono::Utc>,
    stop: CancellationToken,
    tasks: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)>,
    health_client: reqwest::Client,
    health: Mutex<HealthCache>,
    worker_state: std::sync::Arc<Mutex<(ServiceState, Option<String>)>>,
}

#[derive(Default)]
struct HealthCache {
    checked: Option<Instant>,
    healthy: bool,
    message: Option<String>,
}

impl Apps {
    pub(crate) async fn start(
        core: &InstanceCore,
        connections: &Connections,
    ) -> anyhow::Result<Apps> {
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .connect(connections.postgres.url().expose_secret())
            .await
            .context("connect to the lookit database")?;
        lookit_contracts::MIGRATOR
            .run(&pool)
            .await
            .context("apply the database migrations")?;

        let ca = LocalCa::load_or_create(&core.home.certs_dir())
            .context("prepare the local HTTPS certificate")?;
        let tls = ca.server_config().context("load the HTTPS certificate")?;
        let listener = crate::instance::bind_loopback(core.config.api.port.0)
            .await
            .context("open the API port")?;
        let address = listener.local_addr()?;
        let api_url = format!("https://localhost:{}", address.port());
        let amqp_url = connections.rabbitmq.amqp_url();
        let settings = ApiSettings {
            public_url: core.config.api.public_url.clone(),
            environment: "local".into(),
            session_key: core.secrets.session_key.clone(),
            pipe_webhook_key: core.secrets.pipe_webhook_key.clone(),
            lambda_secret: core.secrets.lambda_secret.clone(),
            video_store: lookit_api::local_video_store(core.home.data_dir().join("videos"))?,
            amqp_url: Some(amqp_url.clone()),
            cookie_secure: true,
        };
        let state = ApiState::new(pool.clone(), settings);
        let public_url = state.public_url();
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();

        let api_stop = stop.clone();
        tasks.push((
            "api",
            tokio::spawn(lookit_api::run(listener, Some(tls), state, async move {
                api_stop.cancelled().await
            })),
        ));
        let relay_stop = stop.clone();
        tasks.push((
            "outbox relay",
            tokio::spawn(lookit_api::outbox::OutboxRelay::run(
                pool.clone(),
                amqp_url.clone(),
                async move { relay_stop.cancelled().await },
            )),
        ));

        let mut worker_settings = WorkerSettings::new(
            amqp_url,
            core.config.builds.builder_image.to_string(),
            core.home.builds_dir(),
        );
        worker_settings.build_time_limit = Duration::from_secs(core.config.builds.time_limit_secs);
        worker_settings.max_attempts = core.config.builds.max_attempts;
        worker_settings.from_address = core.config.email.from_address.clone();
        worker_settings.smtp_url = core
            .config
            .email
            .smtp_url
            .as_ref()
            .map(|url| secrecy::SecretString::from(url.to_string()));
        let (worker_events, receiver) = broadcast::channel(1024);
        let worker_state = std::sync::Arc::new(Mutex::new((ServiceState::Starting, None)));
        tokio::spawn(forward_worker_events(
            receiver,
            core.events().clone(),
            worker_state.clone(),
        ));
        tasks.push((
            "worker",
            tokio::spawn(lookit_worker::run(
                pool,
                worker_settings,
                worker_events,
                stop.clone(),
            )),
        ));

        let health_client = reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(ca.ca_pem().as_bytes())
                    .context("read the local CA certificate")?,
            )
            .timeout(Duration::from_secs(5))
            .build()
            .context("build the health-check client")?;
        Ok(Apps {
            api_url,
            api_address: address.to_string(),
            public_url,
            started_at: chrono::Utc::now(),
            stop,
            tasks,
            health_client,
            health: Mutex::new(HealthCache::default()),
            worker_state,
        })
    }

    /// Where the tunnel tells the API its public URL.
    #[allow(dead_code)]
    pub(crate) fn public_url(&self) -> &PublicUrl {
        &self.public_url
    }

    /// Adds the API and worker to `report`; true when the end-to-end check passed: the API
    /// answers its health route (database and broker reachable) and the worker consumes.
    pub(crate) async fn report_into(&self, report: &mut StatusReport) -> bool {
        let (api_healthy, api_message) = self.check_health().await;
        let api_running = self.task_running("api");
        report.api = Endpoint {
            url: Some(self.api_url.clone()),
        };
        report.services.push(ServiceStatus {
            name: "api".into(),
            state: match (api_running, api_healthy) {
                (false, _) => ServiceState::Failed,
                (true, true) => ServiceState::Ready,
                (true, false) => ServiceState::Starting,
            },
            backend: "embedded".into(),
            address: Some(self.api_address.clone()),
            started_at: Some(self.started_at),
            restarts: 0,
            cpu_percent: None,
            memory_bytes: None,
            message: api_message,
        });
        let (mut worker_state, worker_message) =
            self.worker_state.lock().expect("not poisoned").clone();
        if !self.task_running("worker") {
            worker_state = ServiceState::Failed;
        }
        report.services.push(ServiceStatus {
            name: "worker".into(),
            state: worker_state,
            backend: "embedded".into(),
            address: None,
            started_at: Some(self.started_at),
            restarts: 0,
            cpu_percent: None,
            memory_bytes: None,
            message: worker_message,
        });
        let consuming = report
            .queues
            .iter()
            .filter(|q| lookit_contracts::Queue::from_name(&q.name).is_some())
            .all(|q| q.consumers > 0);
        api_running && api_healthy && worker_state == ServiceState::Ready && consuming
    }

    fn task_running(&self, name: &str) -> bool {
        self.tasks
            .iter()
            .any(|(task, handle)| *task == name && !handle.is_finished())
    }

    async fn check_health(&self) -> (bool, Option<String>) {
        {
            let cache = self.health.lock().expect("not poisoned");
            if cache
                .checked
                .is_some_and(|at| at.elapsed() < HEALTH_INTERVAL)
            {
                return (cache.healthy, cache.message.clone());
            }
        }
        let url = format!("{}/api/health/", self.api_url);
        let (healthy, message) = match self.health_client.get(&url).send().await {
            Ok(response) if response.status().is_success() => (true, None),
            Ok(response) => {
                let body = response.text().await.unwrap_or_default();
                (false, Some(format!("health check: {body}")))
            }
            Err(e) => (false, Some(format!("health check failed: {e}"))),
        };
        let mut cache = self.health.lock().expect("not poisoned");
        *cache = HealthCache {
            checked: Some(Instant::now()),
            healthy,
            message: message.clone(),
        };
        (healthy, message)
    }

    /// The API and worker restart with the stack; they cannot be stopped alone (the instance
    /// would no longer be a Lookit). `None`: the service is not one of these.
    pub(crate) async fn service_action(
        &self,
        service: &str,
        _action: ServiceAction,
    ) -> Option<Result<(), ActionError>> {
        matches!(service, "api" | "worker").then(|| {
            Err(ActionError::Conflict(format!(
                "the {service} runs inside Lookit Local; stop or restart the whole stack instead"
            )))
        })
    }

    pub(crate) async fn shutdown(self) {
        self.stop.cancel();
        for (name, task) in self.tasks {
            match tokio::time::timeout(Duration::from_secs(30), task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!("{name} stopped with an error: {e:#}"),
                Ok(Err(e)) => tracing::warn!("{name} task failed: {e}"),
                Err(_) => tracing::warn!("{name} did not stop within 30 s"),
            }
        }
    }
}

/// Worker events → the worker's state, build logs and notifications for the panel.
async fn forward_worker_events(
    mut receiver: broadcast::Receiver<WorkerEvent>,
    panel: broadcast::Sender<PanelEvent>,
    state: std::sync::Arc<Mutex<(ServiceState, Option<String>)>>,
) {
    loop {
        let event = match receiver.recv().await {
            Ok(event) => event,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        match event {
            WorkerEvent::BrokerConnected => {
                *state.lock().expect("not poisoned") = (ServiceState::Ready, None);
            }
            WorkerEvent::BrokerLost { error, retry_in_ms } => {
                *state.lock().expect("not poisoned") = (
                    ServiceState::Starting,
                    Some(format!(
                        "broker lost ({error}); retrying in {retry_in_ms} ms"
                    )),
                );
            }
            WorkerEvent::BuildLog { build_id, line } => {
                let _ = panel.send(PanelEvent::BuildLog {
                    build: build_id,
                    line,
                });
            }
            WorkerEvent::DeadLettered {
                queue,
                job_id,
                reason,
            } => {
                let _ = panel.send(PanelEvent::Notification {
                    level: NotificationLevel::Warning,
                    title: format!("A {} job was dead-lettered", queue.name()),
                    body: match job_id {
                        Some(id) => format!("job {id}: {reason}"),
                        None => reason,
                    },
                });
            }
            other => tracing::debug!(?other, "worker event"),
        }
    }
}
