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
use lookit_config::{Secrets, TunnelConfig, TunnelProviderChoice};
use lookit_contracts::BuildStatus;
use lookit_panel::{
    ActionError, HopOutcome, InspectedRequest, NotificationLevel, PanelEvent, ServiceAction,
    TunnelCheck, TunnelHop,
};
use lookit_stack::Connections;
use lookit_status::{Endpoint, ServiceState, ServiceStatus, StatusReport, TunnelState};
use lookit_tunnel::{
    ApiTarget, GuardianSettings, HopResult, InspectorSettings, ProviderSettings, Tunnel,
    TunnelSettings,
};
use lookit_worker::{BuilderImageProgress, WorkerEvent, WorkerSettings};

use crate::control_plane::InstanceCore;
use crate::videos::VideoStore;

/// The health route checks the database and the broker with real connections; ask it this often
/// at most, so an idle instance stays idle.
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

pub(crate) struct Apps {
    /// The lookit database, for what the panel reads (builds, emails, videos).
    pool: sqlx::PgPool,
    /// The store the API renames received videos in, for the panel to play them from.
    videos: VideoStore,
    api_url: String,
    api_address: String,
    tunnel: std::sync::Arc<Tunnel>,
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
        // A bounded wait for a connection: while Postgres is down or restarting, requests get a
        // 503 naming the database within seconds instead of hanging for sqlx's default 30 s.
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(5))
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
        let stores = lookit_storage::StoreLocations::from_config(
            &core.config.storage,
            &core.secrets,
            &core.home,
        );
        let videos = stores.videos.open().context("open the video storage")?;
        let settings = ApiSettings {
            public_url: core.config.api.public_url.clone(),
            environment: "local".into(),
            session_key: core.secrets.session_key.clone(),
            pipe_webhook_key: core.secrets.pipe_webhook_key.clone(),
            lambda_secret: core.secrets.lambda_secret.clone(),
            videos: videos.clone(),
            builds: stores
                .builds
                .open()
                .context("open the storage for built studies")?,
            amqp_url: Some(amqp_url.clone()),
            cookie_secure: true,
        };
        let state = ApiState::new(pool.clone(), settings);
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();

        // The tunnel forwards to the API and nothing else; 127.0.0.1 is in the certificate.
        let api_target = ApiTarget::new(
            url::Url::parse(&format!("https://127.0.0.1:{}", address.port()))?,
            Some(ca.ca_pem().as_bytes().to_vec()),
        )?;
        let tunnel_config = &core.config.tunnel;
        let tunnel = std::sync::Arc::new(Tunnel::new(
            pool.clone(),
            api_target,
            InspectorSettings {
                capture: tunnel_config.capture,
                body_cap_bytes: tunnel_config.body_cap_bytes,
                keep_requests: tunnel_config.keep_requests,
            },
        )?);
        tokio::spawn(follow_tunnel(
            tunnel.subscribe(),
            state.public_url(),
            core.config.api.public_url.clone(),
            core.events().clone(),
        ));

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

        let worker_settings = worker_settings(&core.config, stores, &core.home, amqp_url);
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
                pool.clone(),
                worker_settings,
                worker_events,
                stop.clone(),
            )),
        ));

        // The live development loop (issue 8): linked study folders and the config file.
        tasks.push((
            "watch",
            tokio::spawn(crate::watch::run(
                pool.clone(),
                core.home.clone(),
                core.config.clone(),
                core.events().clone(),
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
            pool,
            videos: VideoStore::new(videos),
            api_url,
            api_address: address.to_string(),
            tunnel,
            started_at: chrono::Utc::now(),
            stop,
            tasks,
            health_client,
            health: Mutex::new(HealthCache::default()),
            worker_state,
        })
    }

    pub(crate) fn pool(&self) -> &sqlx::PgPool {
        &self.pool
    }

    pub(crate) fn videos(&self) -> &VideoStore {
        &self.videos
    }

    /// Opens the public tunnel with the configured provider, as the user running the instance.
    pub(crate) async fn tunnel_start(
        &self,
        config: &TunnelConfig,
        secrets: &Secrets,
    ) -> Result<(), ActionError> {
        let provider = match config.provider {
            TunnelProviderChoice::Ngrok => ProviderSettings::Ngrok {
                authtoken: secrets
                    .ngrok_authtoken
                    .clone()
                    .or_else(lookit_tunnel::ngrok_authtoken_from_env),
                domain: config.ngrok_domain.clone(),
                server: None,
            },
            TunnelProviderChoice::Bore => ProviderSettings::Bore {
                server: config
                    .server
                    .as_deref()
                    .ok_or_else(|| {
                        ActionError::Invalid(
                            "the bore provider needs the lab's tunnel server: set `tunnel.server = \"host[:port]\"`".into(),
                        )
                    })?
                    .parse()
                    .map_err(|e: lookit_tunnel::TunnelError| ActionError::Invalid(e.to_string()))?,
                secret: secrets.bore_secret.clone(),
            },
        };
        let settings = TunnelSettings {
            provider,
            guardian: GuardianSettings {
                probe_interval: Duration::from_secs(config.probe_interval_secs.max(1)),
                ..GuardianSettings::default()
            },
        };
        self.tunnel
            .start(settings, &user_name())
            .await
            .map(|_| ())
            .map_err(|e| match e {
                // The user can fix these in the settings; the rest is the network's or provider's.
                lookit_tunnel::TunnelError::NoAuthtoken
                | lookit_tunnel::TunnelError::AuthtokenRejected { .. }
                | lookit_tunnel::TunnelError::InvalidSetting { .. } => {
                    ActionError::Invalid(e.to_string())
                }
                other => ActionError::Failed(other.to_string()),
            })
    }

    pub(crate) async fn tunnel_stop(&self) -> Result<(), ActionError> {
        self.tunnel
            .stop()
            .await
            .map_err(|e| ActionError::Failed(e.to_string()))
    }

    /// The open tunnel's end-to-end check, hop by hop along the path.
    pub(crate) async fn tunnel_check(&self) -> Result<TunnelCheck, ActionError> {
        let check = self.tunnel.check().await.map_err(|e| match e {
            lookit_tunnel::TunnelError::NotRunning => {
                ActionError::Conflict("the tunnel is not open: share first, then check it".into())
            }
            other => ActionError::Failed(other.to_string()),
        })?;
        let hops = check
            .hops()
            .into_iter()
            .map(|(hop, label, result)| {
                let (result, detail) = match result {
                    HopResult::Ok => (HopOutcome::Ok, None),
                    HopResult::Failed(why) => (HopOutcome::Failed, Some(why.clone())),
                    HopResult::NotChecked => (HopOutcome::NotChecked, None),
                };
                TunnelHop {
                    hop: hop.into(),
                    label: label.into(),
                    result,
                    detail,
                }
            })
            .collect();
        Ok(TunnelCheck {
            ok: check.all_ok(),
            first_failure: check.first_failure(),
            hops,
        })
    }

    /// The inspector's most recent requests, newest first.
    pub(crate) async fn tunnel_requests(&self) -> Result<Vec<InspectedRequest>, ActionError> {
        let recent = self
            .tunnel
            .inspector()
            .recent(200)
            .await
            .map_err(|e| ActionError::Failed(e.to_string()))?;
        Ok(recent
            .into_iter()
            .map(|r| InspectedRequest {
                id: r.id,
                received_at: r.received_at,
                method: r.method,
                path: r.target,
                status: r.status,
                duration_ms: u64::try_from(r.duration_ms).ok(),
            })
            .collect())
    }

    pub(crate) async fn replay_request(&self, id: i64) -> Result<(), ActionError> {
        self.tunnel
            .inspector()
            .replay(id)
            .await
            .map(|_| ())
            .map_err(|e| match e {
                lookit_tunnel::TunnelError::UnknownRequest(id) => {
                    ActionError::NotFound(format!("recorded request {id}"))
                }
                other => ActionError::Conflict(other.to_string()),
            })
    }

    /// Adds the API and worker to `report`; true when the end-to-end check passed: the API
    /// answers its health route (database and broker reachable) and the worker consumes.
    pub(crate) async fn report_into(&self, report: &mut StatusReport) -> bool {
        let (api_healthy, api_message) = self.check_health().await;
        let api_running = self.task_running("api");
        report.api = Endpoint {
            url: Some(self.api_url.clone()),
        };
        report.tunnel = self.tunnel.status();
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
        if let Err(e) = self.tunnel.stop().await {
            tracing::warn!("tunnel did not close cleanly: {e}");
        }
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
            WorkerEvent::BuildStatus {
                build_id,
                status,
                stage,
                ..
            } => {
                let finished = match status {
                    BuildStatus::Succeeded => {
                        Some((NotificationLevel::Success, "A study build succeeded"))
                    }
                    BuildStatus::Failed => Some((NotificationLevel::Error, "A study build failed")),
                    _ => None,
                };
                if let Some((level, title)) = finished {
                    let _ = panel.send(PanelEvent::Notification {
                        level,
                        title: title.into(),
                        body: match &stage {
                            Some(stage) => format!("build {build_id} at stage {stage}"),
                            None => format!("build {build_id}"),
                        },
                    });
                }
                let _ = panel.send(PanelEvent::BuildChanged {
                    build: build_id,
                    status,
                    stage,
                });
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
            WorkerEvent::BuilderImage { image, progress } => {
                // The steps' output lines go to the build log; the bar shows the step.
                if !matches!(progress, BuilderImageProgress::Output { .. }) {
                    let built = matches!(progress, BuilderImageProgress::Built { .. });
                    let _ = panel.send(PanelEvent::Progress {
                        id: format!("builder-image-{image}"),
                        label: format!("Builder image {image}: {progress}"),
                        fraction: progress.fraction(),
                        done: built,
                    });
                    if built {
                        let _ = panel.send(PanelEvent::Notification {
                            level: NotificationLevel::Success,
                            title: "The builder image is ready".into(),
                            body: progress.to_string(),
                        });
                    }
                }
            }
            WorkerEvent::BuilderImageFailed { image, error } => {
                let _ = panel.send(PanelEvent::Progress {
                    id: format!("builder-image-{image}"),
                    label: format!("Builder image {image}: failed"),
                    fraction: None,
                    done: true,
                });
                let _ = panel.send(PanelEvent::Notification {
                    level: NotificationLevel::Warning,
                    title: format!("The builder image {image} is not ready: builds will fail"),
                    body: error,
                });
            }
            other => tracing::debug!(?other, "worker event"),
        }
    }
}

/// Who started a sharing session, for the audit trail.
/// The worker's settings from the config, so the embedded worker and `lookit-local worker` (a
/// worker of its own, e.g. on another machine) work alike.
pub fn worker_settings(
    config: &lookit_config::Config,
    stores: lookit_storage::StoreLocations,
    home: &lookit_config::Home,
    amqp_url: secrecy::SecretString,
) -> WorkerSettings {
    let mut settings = WorkerSettings::new(
        amqp_url,
        config.builds.builder_image.to_string(),
        home.builds_dir(),
    );
    settings.build_time_limit = Duration::from_secs(config.builds.time_limit_secs);
    settings.builder_base_image = config.builds.builder_base_image.to_string();
    settings.builds_store = stores.builds;
    settings.videos_store = Some(stores.videos);
    settings.max_attempts = config.builds.max_attempts;
    settings.from_address = config.email.from_address.clone();
    settings.smtp_url = config
        .email
        .smtp_url
        .as_ref()
        .map(|url| secrecy::SecretString::from(url.to_string()));
    settings
}

fn user_name() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|user| user.name)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// Keeps the API's public URL equal to the tunnel's (Pipe signs over the URL it called) and tells
/// the user when the tunnel opens, drops or changes its URL. A configured `api.public_url` wins.
async fn follow_tunnel(
    mut status: tokio::sync::watch::Receiver<lookit_status::TunnelStatus>,
    public_url: PublicUrl,
    configured: Option<url::Url>,
    panel: broadcast::Sender<PanelEvent>,
) {
    let mut last_url: Option<String> = None;
    let mut last_state = TunnelState::Off;
    while status.changed().await.is_ok() {
        let current = status.borrow_and_update().clone();
        let url = current
            .public_url
            .clone()
            .filter(|_| current.state == TunnelState::Open);
        if configured.is_none() {
            public_url.set(url.as_deref().and_then(|u| url::Url::parse(u).ok()));
        }
        let notice = match (last_state, current.state) {
            (_, TunnelState::Open) if url != last_url => Some((
                NotificationLevel::Success,
                if last_url.is_some() {
                    "The public URL changed"
                } else {
                    "Sharing is on"
                },
                format!(
                    "{} — Pipe webhook: {}",
                    url.as_deref().unwrap_or_default(),
                    url.as_deref()
                        .and_then(|u| url::Url::parse(u).ok())
                        .map(|u| lookit_tunnel::pipe_webhook_url(&u))
                        .unwrap_or_default()
                ),
            )),
            (TunnelState::Open, TunnelState::Reconnecting) => Some((
                NotificationLevel::Warning,
                "The tunnel dropped",
                current
                    .message
                    .clone()
                    .unwrap_or_else(|| "reconnecting".into()),
            )),
            (previous, TunnelState::Failed) if previous != TunnelState::Failed => Some((
                NotificationLevel::Error,
                "The tunnel failed",
                current.message.clone().unwrap_or_default(),
            )),
            _ => None,
        };
        if let Some((level, title, body)) = notice {
            let _ = panel.send(PanelEvent::Notification {
                level,
                title: title.into(),
                body,
            });
        }
        if current.state == TunnelState::Open {
            last_url = url;
        }
        last_state = current.state;
    }
}

#[cfg(test)]
mod builder_image_events_tests {
    use super::*;

    #[tokio::test]
    async fn the_panel_shows_the_builder_image_build_as_a_progress_bar_and_its_failure() {
        let (worker, receiver) = broadcast::channel(16);
        let (panel, mut shown) = broadcast::channel(16);
        let state = std::sync::Arc::new(Mutex::new((ServiceState::Starting, None)));
        let forwarding = tokio::spawn(forward_worker_events(receiver, panel, state));
        let image = "lookit/ember-builder:latest".to_string();
        for progress in [
            BuilderImageProgress::Step {
                number: 3,
                total: 4,
                instruction: "RUN npm install --global bower@1.8.14".into(),
            },
            BuilderImageProgress::Output {
                line: "added 1 package".into(),
            },
        ] {
            worker
                .send(WorkerEvent::BuilderImage {
                    image: image.clone(),
                    progress,
                })
                .unwrap();
        }
        worker
            .send(WorkerEvent::BuilderImageFailed {
                image: image.clone(),
                error: "no container registry is reachable; set `builds.builder_base_image`".into(),
            })
            .unwrap();
        drop(worker);
        forwarding.await.unwrap();

        let mut events = Vec::new();
        while let Ok(event) = shown.try_recv() {
            events.push(event);
        }
        assert!(
            matches!(&events[0], PanelEvent::Progress { label, fraction: Some(f), done: false, .. }
                if label.contains("step 3/4") && (*f - 0.5).abs() < 1e-9),
            "{events:?}"
        );
        assert!(
            matches!(&events[1], PanelEvent::Progress { done: true, .. }),
            "the output line is not a bar of its own: {events:?}"
        );
        assert!(
            matches!(&events[2], PanelEvent::Notification { level: NotificationLevel::Warning, body, .. }
                if body.contains("builds.builder_base_image")),
            "{events:?}"
        );
        assert_eq!(events.len(), 3, "{events:?}");
    }
}
