//! Runs the Postgres and RabbitMQ of one Lookit Local home: starts (or adopts) them with the
//! configured backend, provisions them as Lookit's setup guide asks (safely), supervises them
//! (crash → restart with backoff), reports their state and queue depths, and checks
//! prerequisites ([`doctor`]).
//!
//! Invariants:
//! - Every server listens on 127.0.0.1 only and every login needs a password (scram-sha-256
//!   for Postgres; RabbitMQ's `guest` is removed).
//! - Names of containers, volumes, nodes and data folders carry the home's tag, so two homes on
//!   one machine never share a service.
//! - A service the user stopped is not restarted; data is only deleted by [`purge`].
//! - Passwords never reach logs or `Debug` output.

mod connections;
mod docker;
mod doctor;
mod error;
mod event;
mod native;
mod ports;
mod postgres;
mod rabbitmq;
mod running;
mod supervisor;
mod usage;

use std::sync::Arc;
use std::time::Duration;

use lookit_config::{Backend, Config, Home, Secrets};
use lookit_status::{QueueDepth, ServiceState, ServiceStatus};
use secrecy::SecretString;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

pub use connections::{Connections, PostgresConnection, RabbitConnection};
pub use doctor::doctor;
pub use error::StackError;
pub use event::{LayerProgress, StackEvent, StepOutcome};
pub use lookit_status::{CheckOutcome, DoctorCheck};
pub use usage::{ProcessSampler, ResourceUsage};

use event::Reporter;
use supervisor::{Command, Launcher, Service, Shared};

/// The two services this crate runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ServiceKind {
    Postgres,
    Rabbitmq,
}

impl ServiceKind {
    pub const ALL: [ServiceKind; 2] = [ServiceKind::Postgres, ServiceKind::Rabbitmq];

    pub fn name(self) -> &'static str {
        match self {
            ServiceKind::Postgres => "postgres",
            ServiceKind::Rabbitmq => "rabbitmq",
        }
    }

    fn from_name(name: &str) -> Option<ServiceKind> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

/// How often the queue depths are read: a change shows on screen within about this (the
/// target is under a second from publish to screen; see BENCHMARKS.md). Half a second keeps the
/// worst case well under that target at half the idle work of a quarter second.
const DEPTH_INTERVAL: Duration = Duration::from_millis(500);

/// The running services of one home. Dropping it without [`Stack::shutdown`] still stops the
/// services (their supervisors see the stack gone), but without waiting for them.
pub struct Stack {
    shared: Arc<Shared>,
    supervisors: Vec<(ServiceKind, mpsc::Sender<Command>)>,
    depths: watch::Receiver<Vec<QueueDepth>>,
    depth_poller: tokio::task::JoinHandle<()>,
    usage: UsageSource,
}

/// Where the CPU and memory of the services are read.
enum UsageSource {
    /// The server processes (and their children) from `/proc`.
    Processes(ProcessSampler),
    /// The engine's stats of each service's container.
    Containers(bollard::Docker, Vec<(ServiceKind, String)>),
    /// Someone else's servers: nothing to read.
    None,
}

impl Stack {
    /// Starts (or adopts) the services of `home` with `config`, provisions them, returns when
    /// all are Ready. Progress goes to `events` as it happens.
    pub async fn start(
        home: &Home,
        config: &Config,
        secrets: &Secrets,
        events: broadcast::Sender<StackEvent>,
    ) -> Result<Stack, StackError> {
        let engine = resolve_backend(config, &events).await?;
        let backend = match engine {
            Engine::Docker(_) => Backend::Docker,
            Engine::Native => Backend::Native,
            Engine::External => Backend::External,
        };
        let connections = initial_connections(config, secrets, backend)?;
        let usage = match &engine {
            Engine::Docker(docker) => UsageSource::Containers(
                docker.clone(),
                ServiceKind::ALL
                    .into_iter()
                    .map(|kind| (kind, docker::container_name(home, kind)))
                    .collect(),
            ),
            Engine::Native => UsageSource::Processes(ProcessSampler::default()),
            Engine::External => UsageSource::None,
        };
        let shared = Arc::new(Shared::new(backend, connections));

        let mut services = Vec::new();
        for kind in ServiceKind::ALL {
            let reporter = Reporter {
                service: kind.name(),
                events: events.clone(),
            };
            let password = match kind {
                ServiceKind::Postgres => secrets.postgres_password.clone(),
                ServiceKind::Rabbitmq => secrets.rabbitmq_password.clone(),
            };
            let launcher = match &engine {
                Engine::Docker(docker) => Launcher::Docker(docker::DockerServer::new(
                    docker.clone(),
                    home,
                    config,
                    kind,
                    &password,
                )),
                Engine::Native => Launcher::Native(
                    native::NativeServer::new(home, config, kind, password, &reporter).map_err(
                        |source| StackError::Start {
                            service: kind.name().into(),
                            source,
                        },
                    )?,
                ),
                Engine::External => Launcher::External,
            };
            services.push(Service::new(kind, launcher, reporter, shared.clone()));
        }

        // Both services start in parallel; the stack is up when both are Ready.
        let mut supervisors = Vec::new();
        let mut started = Vec::new();
        for service in services {
            let kind = service.kind;
            let (commands, receiver) = mpsc::channel(8);
            let (ready_sender, ready) = oneshot::channel();
            tokio::spawn(supervisor::supervise(service, receiver, ready_sender));
            supervisors.push((kind, commands));
            started.push((kind, ready));
        }
        let mut failure = None;
        for (kind, ready) in started {
            let outcome = ready
                .await
                .unwrap_or_else(|_| Err(StackError::SupervisorGone(kind.name().into())));
            if let Err(error) = outcome {
                failure.get_or_insert(error);
            }
        }
        let (depth_sender, depths) = watch::channel(Vec::new());
        let stack = Stack {
            depth_poller: tokio::spawn(poll_depths(shared.clone(), depth_sender)),
            shared,
            supervisors,
            depths,
            usage,
        };
        if let Some(error) = failure {
            // Leave nothing half-started behind.
            let _ = stack.shutdown().await;
            return Err(error);
        }
        Ok(stack)
    }

    pub fn services(&self) -> Vec<ServiceStatus> {
        self.shared.statuses()
    }

    /// Live queue depths: ready and consumer counts refreshed every [`DEPTH_INTERVAL`] by
    /// passive declares; the listing, unacknowledged counts and rates from the management API
    /// (AMQP passive declares of Lookit's queues without it) every few seconds.
    pub fn queue_depths(&self) -> watch::Receiver<Vec<QueueDepth>> {
        self.depths.clone()
    }

    /// Connection settings of the provisioned services (they change when a restart had to move
    /// a service to another port).
    pub fn connections(&self) -> Connections {
        self.shared.connections()
    }

    /// CPU and memory of each running service, by name; services that do not run (or are not
    /// ours to measure) are left out. A container reading takes about a second (the engine
    /// samples twice), so call this from a background loop, not per request.
    pub async fn resource_usage(&self) -> std::collections::HashMap<String, ResourceUsage> {
        let running = |kind: ServiceKind| {
            matches!(
                self.shared.state(kind),
                Some(ServiceState::Ready | ServiceState::Starting | ServiceState::Stopping)
            )
        };
        match &self.usage {
            UsageSource::Processes(sampler) => {
                let pids: Vec<(ServiceKind, u32)> = ServiceKind::ALL
                    .into_iter()
                    .filter(|kind| running(*kind))
                    .filter_map(|kind| Some((kind, self.shared.pid(kind)?)))
                    .collect();
                let trees: Vec<(u32, bool)> = pids.iter().map(|(_, pid)| (*pid, true)).collect();
                let mut usage = sampler.sample(&trees);
                pids.into_iter()
                    .filter_map(|(kind, pid)| Some((kind.name().to_string(), usage.remove(&pid)?)))
                    .collect()
            }
            UsageSource::Containers(docker, names) => {
                let readings = names.iter().filter(|(kind, _)| running(*kind)).map(
                    |(kind, name)| async move {
                        Some((
                            kind.name().to_string(),
                            usage::container_usage(docker, name).await?,
                        ))
                    },
                );
                futures::future::join_all(readings)
                    .await
                    .into_iter()
                    .flatten()
                    .collect()
            }
            UsageSource::None => std::collections::HashMap::new(),
        }
    }

    /// The server's process id on this machine (native backend), e.g. to show or inspect it.
    pub fn process_id(&self, name: &str) -> Option<u32> {
        self.shared.pid(ServiceKind::from_name(name)?)
    }

    /// A user stop: the service is not restarted until [`Stack::start_service`].
    pub async fn stop_service(&self, name: &str) -> Result<(), StackError> {
        self.command(name, Command::Stop).await
    }

    pub async fn start_service(&self, name: &str) -> Result<(), StackError> {
        self.command(name, Command::Start).await
    }

    pub async fn restart_service(&self, name: &str) -> Result<(), StackError> {
        self.command(name, Command::Restart).await
    }

    /// Graceful stop of every service (Postgres fast shutdown, RabbitMQ stop), in parallel.
    pub async fn shutdown(self) -> Result<(), StackError> {
        self.depth_poller.abort();
        let stops = self.supervisors.iter().map(|(kind, commands)| async move {
            let (reply, answer) = oneshot::channel();
            if commands.send(Command::Shutdown(reply)).await.is_err() {
                return Ok(());
            }
            answer
                .await
                .unwrap_or_else(|_| Err(StackError::SupervisorGone(kind.name().into())))
        });
        futures::future::join_all(stops)
            .await
            .into_iter()
            .collect::<Result<Vec<()>, _>>()?;
        Ok(())
    }

    async fn command(
        &self,
        name: &str,
        command: fn(oneshot::Sender<Result<(), StackError>>) -> Command,
    ) -> Result<(), StackError> {
        let kind =
            ServiceKind::from_name(name).ok_or_else(|| StackError::UnknownService(name.into()))?;
        let (_, commands) = self
            .supervisors
            .iter()
            .find(|(k, _)| *k == kind)
            .ok_or_else(|| StackError::UnknownService(name.into()))?;
        let (reply, answer) = oneshot::channel();
        commands
            .send(command(reply))
            .await
            .map_err(|_| StackError::SupervisorGone(name.into()))?;
        answer
            .await
            .unwrap_or_else(|_| Err(StackError::SupervisorGone(name.into())))
    }
}

/// What runs the services, once `auto` is decided.
enum Engine {
    Docker(bollard::Docker),
    Native,
    External,
}

/// `auto` becomes Docker when an engine answers, native otherwise.
async fn resolve_backend(
    config: &Config,
    events: &broadcast::Sender<StackEvent>,
) -> Result<Engine, StackError> {
    let reporter = Reporter {
        service: "docker",
        events: events.clone(),
    };
    let docker = match config.stack.backend {
        Backend::Native => return Ok(Engine::Native),
        Backend::External => return Ok(Engine::External),
        Backend::Docker => docker::connect(config).await?,
        Backend::Auto => match docker::connect(config).await {
            Ok(docker) => docker,
            Err(error) => {
                reporter.step(
                    "engine",
                    StepOutcome::Skipped,
                    format!("{error}; using the native backend"),
                );
                return Ok(Engine::Native);
            }
        },
    };
    let version = docker
        .version()
        .await
        .map_err(|e| StackError::DockerUnavailable(e.to_string()))?;
    reporter.step(
        "engine",
        StepOutcome::Unchanged,
        format!(
            "Docker {} answers (API {})",
            version.version.unwrap_or_default(),
            docker.client_version()
        ),
    );
    let check = doctor::docker_disk_space(&docker).await;
    let outcome = match check.outcome {
        CheckOutcome::Ok => StepOutcome::Unchanged,
        _ => StepOutcome::Failed,
    };
    reporter.step("disk space", outcome, check.detail);
    Ok(Engine::Docker(docker))
}

/// The connection settings before any service started: ports are the wanted ones until a
/// backend chooses others; external servers are taken from their URLs.
fn initial_connections(
    config: &Config,
    secrets: &Secrets,
    backend: Backend,
) -> Result<Connections, StackError> {
    let mut connections = Connections {
        backend,
        postgres: PostgresConnection {
            host: "127.0.0.1".into(),
            port: config.postgres.port.0,
            database: config.postgres.database.to_string(),
            user: config.postgres.user.to_string(),
            password: secrets.postgres_password.clone(),
        },
        rabbitmq: RabbitConnection {
            host: "127.0.0.1".into(),
            port: config.rabbitmq.port.0,
            user: config.rabbitmq.user.to_string(),
            password: secrets.rabbitmq_password.clone(),
            vhost: config.rabbitmq.vhost.clone(),
            management_url: None,
        },
    };
    if backend != Backend::External {
        return Ok(connections);
    }
    let missing = |key: &str| {
        StackError::Config(format!(
            "`stack.backend = \"external\"` needs `{key}` (the URL of the server to use)"
        ))
    };
    let url = config
        .postgres
        .url
        .as_ref()
        .ok_or_else(|| missing("postgres.url"))?;
    let pg = &mut connections.postgres;
    pg.host = url.host_str().unwrap_or("127.0.0.1").into();
    pg.port = url.port().unwrap_or(5432);
    if !url.username().is_empty() {
        pg.user = url.username().into();
    }
    if let Some(password) = url.password() {
        pg.password = SecretString::from(decode(password));
    }
    if let Some(database) = url.path().strip_prefix('/').filter(|d| !d.is_empty()) {
        pg.database = decode(database);
    }
    let url = config
        .rabbitmq
        .url
        .as_ref()
        .ok_or_else(|| missing("rabbitmq.url"))?;
    let rabbit = &mut connections.rabbitmq;
    rabbit.host = url.host_str().unwrap_or("127.0.0.1").into();
    rabbit.port = url.port().unwrap_or(5672);
    if !url.username().is_empty() {
        rabbit.user = decode(url.username());
    }
    if let Some(password) = url.password() {
        rabbit.password = SecretString::from(decode(password));
    }
    if let Some(vhost) = url.path().strip_prefix('/').filter(|v| !v.is_empty()) {
        rabbit.vhost = decode(vhost);
    }
    rabbit.management_url = config.rabbitmq.management_url.clone().map(|mut url| {
        // Credentials are sent as basic auth from the AMQP user, never kept in the URL.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        url
    });
    Ok(connections)
}

fn decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default()
}

async fn poll_depths(shared: Arc<Shared>, sender: watch::Sender<Vec<QueueDepth>>) {
    let mut interval = tokio::time::interval(DEPTH_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reader = rabbitmq::DepthReader::default();
    loop {
        interval.tick().await;
        if shared.state(ServiceKind::Rabbitmq) != Some(ServiceState::Ready) {
            // Reconnect (and list again) once it is back.
            reader = rabbitmq::DepthReader::default();
            continue;
        }
        match reader.read(&shared.connections().rabbitmq).await {
            Ok(depths) => {
                sender.send_if_modified(|current| {
                    let changed = *current != depths;
                    *current = depths;
                    changed
                });
            }
            Err(error) => tracing::debug!("queue depths unavailable: {error:#}"),
        }
    }
}

/// Status of the services of `home` when no instance of ours is running (e.g. the `status`
/// command): containers by name, native servers by their pid files and ports.
pub async fn inspect(home: &Home, config: &Config) -> Vec<ServiceStatus> {
    supervisor::inspect(home, config).await
}

/// `down --purge`: deletes the services' data of `home` (containers, volumes, native data).
/// Native servers left running for this home are stopped first.
pub async fn purge(home: &Home, config: &Config) -> Result<(), StackError> {
    if let Ok(docker) = docker::connect(config).await {
        docker::purge(&docker, home)
            .await
            .map_err(|source| StackError::Purge {
                what: "the Docker containers and volumes".into(),
                source,
            })?;
    }
    for kind in ServiceKind::ALL {
        let dir = home.services_dir().join(kind.name());
        let elsewhere = native::system_data_root(home).join(kind.name());
        for dir in [dir, elsewhere] {
            let pid_file = match kind {
                ServiceKind::Postgres => dir.join("postmaster.pid"),
                ServiceKind::Rabbitmq => dir.join("rabbitmq.pid"),
            };
            let removed = async {
                native::stop_stale(&pid_file).await?;
                match std::fs::remove_dir_all(&dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                    _ => Ok(()),
                }
            };
            removed
                .await
                .map_err(|source: anyhow::Error| StackError::Purge {
                    what: dir.display().to_string(),
                    source,
                })?;
        }
    }
    let _ = std::fs::remove_dir(native::system_data_root(home));
    Ok(())
}
