//! The instance's moving parts and the panel's view of them ([`ControlPlane`]).
//!
//! Invariants:
//! - The status snapshot is recomputed from the parts themselves (never edited by hand), and a
//!   `Status` event goes out whenever it changes.
//! - Starting and stopping the stack are serialized by one lock; service actions and status reads
//!   only need the stack to exist.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{broadcast, watch, RwLock};
use tokio_util::sync::CancellationToken;

use lookit_config::{Config, Home, Secrets};
use lookit_panel::{
    ActionError, BuildAction, BuildSummary, ControlPlane, EmailMessage, EmailSummary,
    InspectedRequest, NewBuild, NotificationLevel, PanelEvent, ServiceAction, ServiceName,
    StackAction, StudySummary, TunnelAction, TunnelCheck, TunnelOptions, VideoFile, VideoSummary,
};
use lookit_stack::{Stack, StackError, StackEvent, StepOutcome};
use lookit_status::{DoctorCheck, Endpoint, ServiceState, ServiceStatus, StatusReport};
use uuid::Uuid;

use crate::apps::Apps;
use crate::records;
use crate::telemetry::{ResourceTelemetry, USAGE_INTERVAL};
use crate::videos::{self, VideoStore};

/// How often the snapshot is recomputed even when no event arrived (CPU, memory). A change of
/// the queue depths recomputes it at once, so a queue change reaches the screen without
/// waiting for this tick.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

pub(crate) struct InstanceCore {
    /// Lets `&self` methods (the panel's) start work that outlives the call.
    me: Weak<InstanceCore>,
    pub(crate) home: Home,
    pub(crate) config: Config,
    pub(crate) secrets: Secrets,
    events: broadcast::Sender<PanelEvent>,
    panel_url: String,
    stack: RwLock<Option<Stack>>,
    apps: RwLock<Option<Apps>>,
    /// Serializes bringing the stack up and down.
    lifecycle: tokio::sync::Mutex<()>,
    /// Service states learnt from stack events while no `Stack` exists yet (or after it failed).
    early_states: Mutex<BTreeMap<String, ServiceStatus>>,
    snapshot: Mutex<StatusReport>,
    /// CPU and memory, read by [`InstanceCore::usage_loop`].
    usage: ResourceTelemetry,
    ready: watch::Sender<bool>,
    stop: CancellationToken,
    /// Stops the refresher when the instance ends.
    closing: CancellationToken,
}

impl InstanceCore {
    pub(crate) fn new(
        home: Home,
        config: Config,
        secrets: Secrets,
        events: broadcast::Sender<PanelEvent>,
        panel_url: String,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            home,
            config,
            secrets,
            events,
            panel_url,
            stack: RwLock::new(None),
            apps: RwLock::new(None),
            lifecycle: tokio::sync::Mutex::new(()),
            early_states: Mutex::new(BTreeMap::new()),
            snapshot: Mutex::new(StatusReport::default()),
            usage: ResourceTelemetry::default(),
            ready: watch::channel(false).0,
            stop: CancellationToken::new(),
            closing: CancellationToken::new(),
        })
    }

    pub(crate) fn events(&self) -> &broadcast::Sender<PanelEvent> {
        &self.events
    }

    pub(crate) async fn stop_requested(&self) {
        self.stop.cancelled().await
    }

    pub(crate) async fn ready(&self) {
        let mut ready = self.ready.subscribe();
        let _ = ready.wait_for(|ready| *ready).await;
    }

    /// Starts the stack and the parts that need it, and keeps the snapshot fresh until closing.
    pub(crate) async fn bring_up(self: Arc<Self>) {
        tokio::spawn(self.clone().refresh_loop());
        tokio::spawn(self.clone().usage_loop());
        if let Err(message) = self.start_stack().await {
            self.notify(
                NotificationLevel::Error,
                "The stack did not start",
                &message,
            );
        }
    }

    async fn start_stack(&self) -> Result<(), String> {
        let _lifecycle = self.lifecycle.lock().await;
        if self.stack.read().await.is_some() {
            return Ok(());
        }
        let me = self.me.upgrade().ok_or("the instance is shutting down")?;
        let (stack_events, receiver) = broadcast::channel(256);
        tokio::spawn(me.forward_stack_events(receiver));
        let stack = Stack::start(&self.home, &self.config, &self.secrets, stack_events)
            .await
            .map_err(|e| e.to_string())?;
        let connections = stack.connections();
        *self.stack.write().await = Some(stack);
        self.refresh().await;
        let apps = Apps::start(self, &connections)
            .await
            .map_err(|e| format!("{e:#}"))?;
        *self.apps.write().await = Some(apps);
        self.refresh().await;
        Ok(())
    }

    async fn stop_stack(&self) -> Result<(), String> {
        let _lifecycle = self.lifecycle.lock().await;
        if let Some(apps) = self.apps.write().await.take() {
            apps.shutdown().await;
        }
        let stack = self.stack.write().await.take();
        let result = match stack {
            Some(stack) => stack.shutdown().await.map_err(|e| e.to_string()),
            None => Ok(()),
        };
        self.early_states.lock().expect("not poisoned").clear();
        self.refresh().await;
        result
    }

    /// Stops everything; the panel is stopped by the caller afterwards.
    pub(crate) async fn bring_down(&self) -> anyhow::Result<()> {
        let result = self.stop_stack().await;
        self.closing.cancel();
        result.map_err(anyhow::Error::msg)
    }

    /// Stack progress → panel events (progress bars, notifications) and fresh snapshots.
    async fn forward_stack_events(self: Arc<Self>, mut receiver: broadcast::Receiver<StackEvent>) {
        loop {
            let event = match receiver.recv().await {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            };
            match &event {
                StackEvent::Pull {
                    service,
                    image,
                    fraction,
                    ..
                } => {
                    let _ = self.events.send(PanelEvent::Progress {
                        id: format!("pull-{service}"),
                        label: format!("Pulling {image}"),
                        fraction: *fraction,
                        done: fraction.is_some_and(|f| f >= 1.0),
                    });
                }
                StackEvent::Step {
                    service,
                    step,
                    outcome: StepOutcome::Failed,
                    detail,
                } => self.notify(
                    NotificationLevel::Error,
                    &format!("{service}: {step} failed"),
                    detail.as_deref().unwrap_or(""),
                ),
                StackEvent::State {
                    service,
                    state,
                    message,
                } => {
                    if *state == ServiceState::Failed {
                        self.notify(
                            NotificationLevel::Error,
                            &format!("{service} failed"),
                            message.as_deref().unwrap_or("it will be restarted"),
                        );
                    }
                    let backend = self.config.stack.backend.to_string();
                    self.early_states.lock().expect("not poisoned").insert(
                        service.clone(),
                        ServiceStatus {
                            name: service.clone(),
                            state: *state,
                            backend,
                            address: None,
                            started_at: None,
                            restarts: 0,
                            cpu_percent: None,
                            memory_bytes: None,
                            message: message.clone(),
                        },
                    );
                }
                StackEvent::PortChanged {
                    service,
                    purpose,
                    wanted,
                    chosen,
                } => self.notify(
                    NotificationLevel::Warning,
                    &format!("{service}: port {wanted} is taken"),
                    &format!("{purpose} uses port {chosen} instead"),
                ),
                _ => {}
            }
            self.refresh().await;
        }
    }

    async fn refresh_loop(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(REFRESH_INTERVAL);
        // The running stack's depths; taken again when a stack (re)appears.
        let mut depths: Option<watch::Receiver<Vec<lookit_status::QueueDepth>>> = None;
        loop {
            let depths_changed = async {
                match depths.as_mut() {
                    Some(receiver) => receiver.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            let ticked = tokio::select! {
                _ = self.closing.cancelled() => return,
                _ = ticker.tick() => true,
                alive = depths_changed => {
                    if !alive {
                        // That stack's poller ended: look for a stack again at the next tick
                        // (not at once, which would spin while a stopped stack is still held).
                        depths = None;
                    }
                    false
                }
            };
            if ticked && depths.is_none() {
                depths = self.stack.read().await.as_ref().map(Stack::queue_depths);
            }
            self.refresh().await;
        }
    }

    /// Reads CPU and memory in the background, so a status request never waits for it.
    async fn usage_loop(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(USAGE_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.closing.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let stack = self.stack.read().await;
            self.usage.sample(stack.as_ref()).await;
            drop(stack);
            self.refresh().await;
        }
    }

    /// Recomputes the snapshot; sends it to the panel when it changed.
    async fn refresh(&self) {
        let report = self.compute().await;
        let changed = {
            let mut snapshot = self.snapshot.lock().expect("not poisoned");
            let changed = *snapshot != report;
            *snapshot = report.clone();
            changed
        };
        if changed {
            self.ready.send_if_modified(|ready| {
                let was = *ready;
                *ready = report.ready;
                was != report.ready
            });
            let _ = self.events.send(PanelEvent::Status { report });
        }
    }

    async fn compute(&self) -> StatusReport {
        let mut report = StatusReport {
            running: true,
            panel: Endpoint {
                url: Some(self.panel_url.clone()),
            },
            ..StatusReport::default()
        };
        match &*self.stack.read().await {
            Some(stack) => {
                report.services = stack.services();
                report.queues = stack.queue_depths().borrow().clone();
            }
            None => {
                report.services = self
                    .early_states
                    .lock()
                    .expect("not poisoned")
                    .values()
                    .cloned()
                    .collect()
            }
        }
        let stack_ready = !report.services.is_empty()
            && report
                .services
                .iter()
                .all(|s| s.state == ServiceState::Ready);
        let apps_ready = match &*self.apps.read().await {
            Some(apps) => apps.report_into(&mut report).await,
            None => false,
        };
        report.ready = stack_ready && apps_ready;
        self.usage.apply(&mut report.services);
        report
    }

    /// The lookit database, while the API runs (it applies the migrations first).
    async fn database(&self) -> Result<sqlx::PgPool, ActionError> {
        match &*self.apps.read().await {
            Some(apps) => Ok(apps.pool().clone()),
            None => Err(ActionError::Conflict(
                "the stack is not running; start it first".into(),
            )),
        }
    }

    /// The lookit database and the video storage, while the API runs.
    async fn received_videos(&self) -> Result<(sqlx::PgPool, VideoStore), ActionError> {
        match &*self.apps.read().await {
            Some(apps) => Ok((apps.pool().clone(), apps.videos().clone())),
            None => Err(ActionError::Conflict(
                "the stack is not running; start it first".into(),
            )),
        }
    }

    /// Tells the Builds page about a build it did not learn of from the worker.
    fn build_changed(&self, build: &BuildSummary) {
        let _ = self.events.send(PanelEvent::BuildChanged {
            build: build.id,
            status: build.status,
            stage: build.stage.clone(),
        });
    }

    fn notify(&self, level: NotificationLevel, title: &str, body: &str) {
        let _ = self.events.send(PanelEvent::Notification {
            level,
            title: title.to_string(),
            body: body.to_string(),
        });
    }
}

/// The `[tunnel]` configuration with one session's overrides, validated like the config file.
fn tunnel_config_with(
    config: &lookit_config::TunnelConfig,
    options: TunnelOptions,
) -> Result<lookit_config::TunnelConfig, ActionError> {
    let mut config = config.clone();
    if let Some(provider) = options.provider {
        config.provider = match provider.as_str() {
            "ngrok" => lookit_config::TunnelProviderChoice::Ngrok,
            "bore" => lookit_config::TunnelProviderChoice::Bore,
            other => {
                return Err(ActionError::Invalid(format!(
                    "`{other}` is not a tunnel provider: use `ngrok` or `bore`"
                )))
            }
        };
    }
    if let Some(server) = options.server {
        config.server = Some(server);
    }
    Ok(config)
}

fn stack_action_error(e: StackError) -> ActionError {
    match e {
        StackError::UnknownService(name) => ActionError::UnknownService(name),
        other => ActionError::Failed(other.to_string()),
    }
}

#[async_trait::async_trait]
impl ControlPlane for InstanceCore {
    async fn status(&self) -> StatusReport {
        self.snapshot.lock().expect("not poisoned").clone()
    }

    fn subscribe(&self) -> broadcast::Receiver<PanelEvent> {
        self.events.subscribe()
    }

    async fn service_action(
        &self,
        service: &ServiceName,
        action: ServiceAction,
    ) -> Result<(), ActionError> {
        if let Some(apps) = &*self.apps.read().await {
            if let Some(result) = apps.service_action(service.as_str(), action).await {
                self.refresh().await;
                return result;
            }
        }
        let guard = self.stack.read().await;
        let Some(stack) = guard.as_ref() else {
            return Err(ActionError::Conflict(
                "the stack is not running; start it first".into(),
            ));
        };
        let result = match action {
            ServiceAction::Start => stack.start_service(service.as_str()).await,
            ServiceAction::Stop => stack.stop_service(service.as_str()).await,
            ServiceAction::Restart => stack.restart_service(service.as_str()).await,
        };
        drop(guard);
        self.refresh().await;
        result.map_err(stack_action_error)
    }

    async fn stack_action(&self, action: StackAction) -> Result<(), ActionError> {
        match action {
            StackAction::Stop => self.stop_stack().await.map_err(ActionError::Failed),
            StackAction::Start => self.start_stack().await.map_err(ActionError::Failed),
        }
    }

    async fn logs(&self, service: &ServiceName, tail: usize) -> Result<Vec<String>, ActionError> {
        let path = self.home.logs_dir().join(format!("{service}.log"));
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ActionError::NotFound(format!("a log for {service}")))
            }
            Err(e) => return Err(ActionError::Failed(format!("read {}: {e}", path.display()))),
        };
        let lines: Vec<String> = text.lines().map(String::from).collect();
        Ok(lines[lines.len().saturating_sub(tail)..].to_vec())
    }

    async fn shutdown(&self) {
        self.stop.cancel();
    }

    async fn tunnel_action(
        &self,
        action: TunnelAction,
        options: TunnelOptions,
    ) -> Result<(), ActionError> {
        let guard = self.apps.read().await;
        let apps = guard.as_ref().ok_or_else(|| {
            ActionError::Conflict("the API is not running yet; start the stack first".into())
        })?;
        let result = match action {
            TunnelAction::Start => {
                let config = tunnel_config_with(&self.config.tunnel, options)?;
                apps.tunnel_start(&config, &self.secrets).await
            }
            TunnelAction::Stop => apps.tunnel_stop().await,
        };
        drop(guard);
        self.refresh().await;
        result
    }

    async fn tunnel_requests(&self) -> Result<Vec<InspectedRequest>, ActionError> {
        match &*self.apps.read().await {
            Some(apps) => apps.tunnel_requests().await,
            None => Ok(Vec::new()),
        }
    }

    async fn tunnel_check(&self) -> Result<TunnelCheck, ActionError> {
        match &*self.apps.read().await {
            Some(apps) => apps.tunnel_check().await,
            None => Err(ActionError::Conflict(
                "the API is not running; start the stack and share first".into(),
            )),
        }
    }

    async fn replay_request(&self, id: i64) -> Result<(), ActionError> {
        match &*self.apps.read().await {
            Some(apps) => apps.replay_request(id).await,
            None => Err(ActionError::Conflict("the API is not running".into())),
        }
    }

    async fn doctor(&self) -> Result<Vec<DoctorCheck>, ActionError> {
        Ok(lookit_stack::doctor(&self.home, &self.config).await)
    }

    async fn builds(&self) -> Result<Vec<BuildSummary>, ActionError> {
        records::builds(&self.database().await?).await
    }

    async fn build_log(&self, id: Uuid) -> Result<Vec<String>, ActionError> {
        records::build_log(&self.database().await?, id).await
    }

    async fn build_action(&self, id: Uuid, action: BuildAction) -> Result<(), ActionError> {
        let pool = self.database().await?;
        let build = match action {
            BuildAction::Rebuild => records::rebuild(&pool, id).await?,
            BuildAction::Cancel => records::cancel_build(&pool, id).await?,
        };
        self.build_changed(&build);
        Ok(())
    }

    async fn studies(&self) -> Result<Vec<StudySummary>, ActionError> {
        records::studies(&self.database().await?).await
    }

    async fn start_build(&self, request: NewBuild) -> Result<BuildSummary, ActionError> {
        let build = records::start_build(&self.database().await?, request).await?;
        self.build_changed(&build);
        Ok(build)
    }

    async fn emails(&self) -> Result<Vec<EmailSummary>, ActionError> {
        records::emails(&self.database().await?).await
    }

    async fn email(&self, id: Uuid) -> Result<EmailMessage, ActionError> {
        records::email(&self.database().await?, id, &self.config.email.from_address).await
    }

    async fn videos(&self) -> Result<Vec<VideoSummary>, ActionError> {
        let (pool, store) = self.received_videos().await?;
        videos::videos(&pool, &store).await
    }

    async fn video_file(&self, id: Uuid) -> Result<VideoFile, ActionError> {
        let (pool, store) = self.received_videos().await?;
        videos::video_file(&pool, &store, id).await
    }
}
