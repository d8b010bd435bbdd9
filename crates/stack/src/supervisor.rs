//! One task per service: launch, wait until it accepts a real login, provision, then watch it.
//! A crash is reported and followed by a restart with backoff; a user stop is not.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use lookit_config::{Backend, Config, Home};
use lookit_status::{ServiceState, ServiceStatus};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::connections::Connections;
use crate::event::{Reporter, StackEvent, StepOutcome};
use crate::running::{ExitWatch, Running};
use crate::{docker, native, postgres, rabbitmq, ServiceKind, StackError};

/// How long a server may take from launch to accepting a login.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Restart backoff: doubles after each crash, back to the first step after a calm period.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const CALM_PERIOD: Duration = Duration::from_secs(60);

type Reply = oneshot::Sender<Result<(), StackError>>;

pub(crate) enum Command {
    Stop(Reply),
    Start(Reply),
    Restart(Reply),
    Shutdown(Reply),
}

/// State every supervisor writes and the [`crate::Stack`] reads.
pub(crate) struct Shared {
    statuses: Mutex<HashMap<ServiceKind, ServiceStatus>>,
    connections: Mutex<Connections>,
    pids: Mutex<HashMap<ServiceKind, u32>>,
}

impl Shared {
    pub fn new(backend: Backend, connections: Connections) -> Self {
        let statuses = ServiceKind::ALL
            .into_iter()
            .map(|kind| {
                let status = ServiceStatus {
                    name: kind.name().into(),
                    state: ServiceState::Stopped,
                    backend: backend.to_string(),
                    address: None,
                    started_at: None,
                    restarts: 0,
                    cpu_percent: None,
                    memory_bytes: None,
                    message: None,
                };
                (kind, status)
            })
            .collect();
        Self {
            statuses: Mutex::new(statuses),
            connections: Mutex::new(connections),
            pids: Mutex::new(HashMap::new()),
        }
    }

    pub fn statuses(&self) -> Vec<ServiceStatus> {
        let statuses = lock(&self.statuses);
        ServiceKind::ALL
            .iter()
            .filter_map(|kind| statuses.get(kind).cloned())
            .collect()
    }

    pub fn state(&self, kind: ServiceKind) -> Option<ServiceState> {
        lock(&self.statuses).get(&kind).map(|s| s.state)
    }

    pub fn connections(&self) -> Connections {
        lock(&self.connections).clone()
    }

    pub fn pid(&self, kind: ServiceKind) -> Option<u32> {
        lock(&self.pids).get(&kind).copied()
    }

    fn update(&self, kind: ServiceKind, change: impl FnOnce(&mut ServiceStatus)) {
        if let Some(status) = lock(&self.statuses).get_mut(&kind) {
            change(status);
        }
    }
}

/// A poisoned lock only means another task panicked mid-update of plain data; keep going.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What runs the server of a service.
pub(crate) enum Launcher {
    Native(native::NativeServer),
    Docker(docker::DockerServer),
    External,
}

pub(crate) struct Service {
    pub kind: ServiceKind,
    launcher: Launcher,
    reporter: Reporter,
    shared: Arc<Shared>,
    restarts: u32,
}

impl Service {
    pub fn new(
        kind: ServiceKind,
        launcher: Launcher,
        reporter: Reporter,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            kind,
            launcher,
            reporter,
            shared,
            restarts: 0,
        }
    }

    fn set_state(&self, state: ServiceState, message: Option<String>) {
        let address = (state == ServiceState::Ready).then(|| {
            let connections = self.shared.connections();
            match self.kind {
                ServiceKind::Postgres => connections.postgres.address(),
                ServiceKind::Rabbitmq => connections.rabbitmq.address(),
            }
        });
        let restarts = self.restarts;
        self.shared.update(self.kind, |status| {
            status.state = state;
            status.restarts = restarts;
            status.address = address;
            if state == ServiceState::Ready {
                status.started_at = Some(Utc::now());
            }
            if state == ServiceState::Stopped {
                status.started_at = None;
            }
            status.message = message.clone();
        });
        match state {
            ServiceState::Failed => tracing::warn!(service = self.kind.name(), ?message, "failed"),
            _ => tracing::info!(service = self.kind.name(), ?state, ?message, "state"),
        }
        self.reporter.send(StackEvent::State {
            service: self.kind.name().into(),
            state,
            message,
        });
    }

    /// Launches, waits for a real login, provisions. On failure nothing is left running.
    /// Returns the running instance and what the user should know (ports changed).
    async fn start(&mut self) -> anyhow::Result<(Running, Option<String>)> {
        let (mut running, notes) = match &mut self.launcher {
            Launcher::Native(server) => server.launch(&self.reporter).await?,
            Launcher::Docker(server) => server.launch(&self.reporter).await?,
            Launcher::External => (Running::external(), Vec::new()),
        };
        self.publish_ports(&running);
        match self.become_ready(running.exit_watch()).await {
            Ok(()) => {
                let note = (!notes.is_empty()).then(|| notes.join("; "));
                Ok((running, note))
            }
            Err(error) => {
                if let Err(stop_error) = running.stop().await {
                    tracing::warn!(
                        service = self.kind.name(),
                        "cannot stop after a failed start: {stop_error:#}"
                    );
                }
                Err(error)
            }
        }
    }

    /// Records the ports the launcher chose in the shared connection settings.
    fn publish_ports(&self, running: &Running) {
        let (port, management_port) = match &self.launcher {
            Launcher::Native(server) => (server.port, server.management_port),
            Launcher::Docker(server) => (server.port, server.management_port),
            Launcher::External => (None, None),
        };
        let mut connections = lock(&self.shared.connections);
        match self.kind {
            ServiceKind::Postgres => {
                if let Some(port) = port {
                    connections.postgres.port = port;
                }
            }
            ServiceKind::Rabbitmq => {
                if let Some(port) = port {
                    connections.rabbitmq.port = port;
                }
                if let Some(management) = management_port {
                    connections.rabbitmq.management_url =
                        url::Url::parse(&format!("http://127.0.0.1:{management}/")).ok();
                }
            }
        }
        drop(connections);
        let mut pids = lock(&self.shared.pids);
        match running.pid() {
            Some(pid) => pids.insert(self.kind, pid),
            None => pids.remove(&self.kind),
        };
    }

    async fn become_ready(&self, mut exit: ExitWatch) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let connections = self.shared.connections();
            let attempt = match self.kind {
                ServiceKind::Postgres => postgres::probe(&connections.postgres).await,
                ServiceKind::Rabbitmq => rabbitmq::probe(&connections.rabbitmq).await,
            };
            let error = match attempt {
                Ok(()) => break,
                Err(error) => error,
            };
            if let Some(reason) = exit.borrow().clone() {
                anyhow::bail!("it ended while starting ({reason}): {error:#}");
            }
            if Instant::now() > deadline {
                return Err(error.context(format!(
                    "not accepting logins after {}s",
                    READY_TIMEOUT.as_secs()
                )));
            }
            // No readiness event exists for a login; retry soon, or at once if it ended.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = exit.changed() => {}
            }
        }
        self.reporter.step(
            "ready",
            StepOutcome::Unchanged,
            "accepts a login as the provisioned user".to_string(),
        );
        let connections = self.shared.connections();
        match self.kind {
            ServiceKind::Postgres => {
                postgres::provision(&connections.postgres, &self.reporter).await
            }
            ServiceKind::Rabbitmq => {
                rabbitmq::provision(&connections.rabbitmq, &self.reporter).await
            }
        }
        .context("provisioning failed")
    }
}

fn start_error(kind: ServiceKind, source: anyhow::Error) -> StackError {
    StackError::Start {
        service: kind.name().into(),
        source,
    }
}

/// The supervisor task of one service. `first_start` is answered when the first start is done;
/// if it fails, the supervisor ends (the stack does not come up).
pub(crate) async fn supervise(
    mut service: Service,
    mut commands: mpsc::Receiver<Command>,
    first_start: Reply,
) {
    let kind = service.kind;
    let mut first_start = Some(first_start);
    let mut waiting: Vec<Reply> = Vec::new();
    let mut backoff = FIRST_BACKOFF;
    loop {
        service.set_state(ServiceState::Starting, None);
        let (mut running, note) = match service.start().await {
            Ok(started) => started,
            Err(error) => {
                let message = format!("{error:#}");
                service.set_state(ServiceState::Failed, Some(message.clone()));
                if let Some(reply) = first_start.take() {
                    let _ = reply.send(Err(start_error(kind, error)));
                    return;
                }
                for reply in waiting.drain(..) {
                    let _ = reply.send(Err(start_error(kind, anyhow::anyhow!(message.clone()))));
                }
                match wait_out_backoff(&mut commands, &mut backoff).await {
                    AfterBackoff::Retry(reply) => waiting.extend(reply),
                    AfterBackoff::Stopped(reply) => {
                        service.set_state(ServiceState::Stopped, Some(message));
                        let _ = reply.send(Ok(()));
                        match wait_for_start(&mut commands).await {
                            Some(reply) => waiting.push(reply),
                            None => return,
                        }
                    }
                    AfterBackoff::Shutdown(reply) => {
                        service.set_state(ServiceState::Stopped, None);
                        if let Some(reply) = reply {
                            let _ = reply.send(Ok(()));
                        }
                        return;
                    }
                }
                continue;
            }
        };
        service.set_state(ServiceState::Ready, note);
        let ready_since = Instant::now();
        for reply in first_start.take().into_iter().chain(waiting.drain(..)) {
            let _ = reply.send(Ok(()));
        }

        // Watch the instance until it ends by itself or a command (other than a start of this
        // already running service) ends it.
        let command = loop {
            tokio::select! {
                reason = running.exited() => break Err(reason),
                command = commands.recv() => match command {
                    Some(Command::Start(reply)) => { let _ = reply.send(Ok(())); }
                    other => break Ok(other),
                },
            }
        };
        match command {
            Err(reason) => {
                if ready_since.elapsed() > CALM_PERIOD {
                    backoff = FIRST_BACKOFF;
                }
                service.restarts += 1;
                service.set_state(
                    ServiceState::Failed,
                    Some(format!(
                        "stopped unexpectedly ({reason}); restarting in {}s",
                        backoff.as_secs()
                    )),
                );
                match wait_out_backoff(&mut commands, &mut backoff).await {
                    AfterBackoff::Retry(reply) => waiting.extend(reply),
                    AfterBackoff::Stopped(reply) => {
                        service.set_state(ServiceState::Stopped, None);
                        let _ = reply.send(Ok(()));
                        match wait_for_start(&mut commands).await {
                            Some(reply) => waiting.push(reply),
                            None => return,
                        }
                    }
                    AfterBackoff::Shutdown(reply) => {
                        service.set_state(ServiceState::Stopped, None);
                        if let Some(reply) = reply {
                            let _ = reply.send(Ok(()));
                        }
                        return;
                    }
                }
            }
            Ok(command) => {
                let stopped = stop(&service, &mut running).await;
                match command {
                    Some(Command::Restart(reply)) => match stopped {
                        Ok(()) => waiting.push(reply),
                        Err(error) => {
                            let _ = reply.send(Err(error));
                        }
                    },
                    Some(Command::Stop(reply)) => {
                        let failed = stopped.is_err();
                        let _ = reply.send(stopped);
                        if failed {
                            continue;
                        }
                        match wait_for_start(&mut commands).await {
                            Some(reply) => waiting.push(reply),
                            None => return,
                        }
                    }
                    Some(Command::Shutdown(reply)) => {
                        let _ = reply.send(stopped);
                        return;
                    }
                    // Handled in the watch loop above; the stack is gone otherwise.
                    Some(Command::Start(_)) | None => return,
                }
            }
        }
    }
}

/// Stops the running instance on request, reporting Stopping then Stopped.
async fn stop(service: &Service, running: &mut Running) -> Result<(), StackError> {
    service.set_state(ServiceState::Stopping, None);
    match running.stop().await {
        Ok(()) => {
            service.set_state(ServiceState::Stopped, None);
            Ok(())
        }
        Err(source) => {
            service.set_state(ServiceState::Failed, Some(format!("{source:#}")));
            Err(StackError::Stop {
                service: service.kind.name().into(),
                source,
            })
        }
    }
}

enum AfterBackoff {
    /// Time to try again (early, when a start or restart was asked for).
    Retry(Option<Reply>),
    Stopped(Reply),
    Shutdown(Option<Reply>),
}

/// Waits out the restart backoff, unless the user asks for something first.
async fn wait_out_backoff(
    commands: &mut mpsc::Receiver<Command>,
    backoff: &mut Duration,
) -> AfterBackoff {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    tokio::select! {
        _ = tokio::time::sleep(wait) => AfterBackoff::Retry(None),
        command = commands.recv() => match command {
            Some(Command::Start(reply) | Command::Restart(reply)) => AfterBackoff::Retry(Some(reply)),
            Some(Command::Stop(reply)) => AfterBackoff::Stopped(reply),
            Some(Command::Shutdown(reply)) => AfterBackoff::Shutdown(Some(reply)),
            None => AfterBackoff::Shutdown(None),
        }
    }
}

/// After a user stop: waits for a start or restart (answering further stops at once).
/// `None` when the stack shuts down.
async fn wait_for_start(commands: &mut mpsc::Receiver<Command>) -> Option<Reply> {
    while let Some(command) = commands.recv().await {
        match command {
            Command::Start(reply) | Command::Restart(reply) => return Some(reply),
            Command::Stop(reply) => {
                let _ = reply.send(Ok(()));
            }
            Command::Shutdown(reply) => {
                let _ = reply.send(Ok(()));
                return None;
            }
        }
    }
    None
}

/// Status without a running instance: Docker containers by name, native servers by port.
pub(crate) async fn inspect(home: &Home, config: &Config) -> Vec<ServiceStatus> {
    let docker = match config.stack.backend {
        Backend::Docker | Backend::Auto => docker::connect(config).await.ok(),
        _ => None,
    };
    let mut statuses = Vec::new();
    for kind in ServiceKind::ALL {
        let mut status = ServiceStatus {
            name: kind.name().into(),
            state: ServiceState::Stopped,
            backend: config.stack.backend.to_string(),
            address: None,
            started_at: None,
            restarts: 0,
            cpu_percent: None,
            memory_bytes: None,
            message: None,
        };
        let container = match &docker {
            Some(docker) => docker
                .inspect_container(&docker::container_name(home, kind), None)
                .await
                .ok(),
            None => None,
        };
        if let Some(container) = container {
            status.backend = Backend::Docker.to_string();
            let state = container.state.unwrap_or_default();
            if state.running == Some(true) {
                status.state = ServiceState::Ready;
                status.started_at = state
                    .started_at
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
                    .map(|t| t.with_timezone(&Utc));
                status.message = Some("the container runs without a Lookit Local instance".into());
            }
        } else if config.stack.backend == Backend::External {
            status.message = Some("run by someone else".into());
        } else if let Ok((dir, _)) = native::data_dir(home, kind) {
            status.backend = Backend::Native.to_string();
            let pid_file = match kind {
                ServiceKind::Postgres => dir.join("postmaster.pid"),
                ServiceKind::Rabbitmq => dir.join("rabbitmq.pid"),
            };
            let pid = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|text| text.lines().next()?.trim().parse::<i32>().ok());
            if let Some(pid) = pid.filter(|pid| {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), None).is_ok()
            }) {
                status.state = ServiceState::Ready;
                status.message = Some(format!(
                    "process {pid} runs without a Lookit Local instance"
                ));
            }
        }
        statuses.push(status);
    }
    statuses
}
