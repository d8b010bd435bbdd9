//! One running Lookit Local: the panel first (so the user sees progress at once), then the stack,
//! then the parts that need it. The same [`Instance`] runs under `lookit-local up` and inside the
//! desktop shell.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use secrecy::SecretString;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use lookit_config::{random_token, Config, Home, Secrets};
use lookit_panel::{PanelEvent, PanelState};

use crate::control_plane::InstanceCore;
use crate::{InstanceRecord, RecordGuard};

/// What an instance needs to start.
#[derive(Debug, Clone)]
pub struct InstanceOptions {
    pub home: Home,
    pub config: Config,
}

impl InstanceOptions {
    /// The home of this process (`LOOKIT_LOCAL_HOME` or XDG) and its validated configuration.
    pub fn from_env() -> anyhow::Result<Self> {
        let home = Home::from_env()?;
        let config = lookit_config::Config::load(&home)?;
        Ok(Self { home, config })
    }
}

/// A running instance. Dropping it without [`Instance::shutdown`] stops the panel and lets the
/// services' supervisors stop them, but does not wait.
pub struct Instance {
    core: Arc<InstanceCore>,
    record: InstanceRecord,
    _record_guard: RecordGuard,
    panel_stop: CancellationToken,
    panel_task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Instance {
    /// Starts the panel at once and brings the stack up in the background; progress and
    /// readiness arrive as [`PanelEvent`]s ([`Instance::subscribe`]).
    pub async fn start(options: InstanceOptions) -> anyhow::Result<Instance> {
        let InstanceOptions { home, config } = options;
        if let Some(running) = InstanceRecord::read_live(&home.instance_file())? {
            bail!(
                "Lookit Local already runs for {} (pid {}); its dashboard: {}",
                home.data_dir().display(),
                running.pid,
                running.dashboard_url()
            );
        }
        let secrets = Secrets::load_or_generate(&home.secrets_file())?;
        let listener = bind_loopback(config.panel.port.0)
            .await
            .context("open the control panel's port")?;
        let panel_url = format!("http://{}", listener.local_addr()?);
        let token = random_token(43);
        let (events, _) = broadcast::channel(1024);
        let core = InstanceCore::new(home.clone(), config, secrets, events, panel_url.clone());
        let panel_stop = CancellationToken::new();
        let state = PanelState {
            control: core.clone(),
            token: SecretString::from(token.clone()),
        };
        let stop = panel_stop.clone();
        let panel_task = tokio::spawn(lookit_panel::run(listener, state, async move {
            stop.cancelled().await
        }));
        let record = InstanceRecord {
            pid: std::process::id(),
            panel_url,
            token,
            started_at: chrono::Utc::now(),
        };
        let record_guard = record.write(&home.instance_file())?;
        tokio::spawn(core.clone().bring_up());
        Ok(Instance {
            core,
            record,
            _record_guard: record_guard,
            panel_stop,
            panel_task,
        })
    }

    /// The dashboard URL with the token, for the desktop window or the terminal.
    pub fn panel_url(&self) -> String {
        self.record.dashboard_url()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<PanelEvent> {
        self.core.events().subscribe()
    }

    /// Resolves when someone asked the instance to stop (`lookit-local down`, the UI, the tray).
    pub async fn stop_requested(&self) {
        self.core.stop_requested().await
    }

    /// Resolves when the stack first becomes ready.
    pub async fn ready(&self) {
        self.core.ready().await
    }

    /// Stops the worker, the API and the managed services, then the panel.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let result = self.core.bring_down().await;
        self.panel_stop.cancel();
        match tokio::time::timeout(Duration::from_secs(10), self.panel_task).await {
            Ok(Ok(Err(e))) => tracing::warn!("control panel stopped with an error: {e:#}"),
            Ok(Err(e)) => tracing::warn!("control panel task failed: {e}"),
            _ => {}
        }
        result
    }
}

/// Binds `port` on 127.0.0.1; a taken non-zero port falls back to a free one (said in the log),
/// because the panel URL is always printed and written to the instance record anyway.
pub(crate) async fn bind_loopback(port: u16) -> anyhow::Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(listener) => Ok(listener),
        Err(e) if port != 0 && e.kind() == std::io::ErrorKind::AddrInUse => {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
            tracing::warn!(
                wanted = port,
                chosen = listener.local_addr()?.port(),
                "panel port taken; using another"
            );
            Ok(listener)
        }
        Err(e) => Err(e.into()),
    }
}

/// `lookit-local up`: runs an instance in the foreground until Ctrl-C, SIGTERM or a stop request.
pub async fn run_foreground(home: Home, config: Config, headless: bool) -> anyhow::Result<()> {
    let _log = crate::telemetry::init(&config.log, &home.logs_dir(), "lookit-local")?;
    let instance = Instance::start(InstanceOptions { home, config }).await?;
    // Printed on stdout, one line each, for people and for scripts (the e2e tests read them).
    println!("Dashboard: {}", instance.panel_url());
    if !headless {
        open_in_browser(&instance.panel_url());
    }
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listen for SIGTERM")?;
    let mut announced = false;
    loop {
        tokio::select! {
            _ = instance.ready(), if !announced => {
                announced = true;
                println!("Stack ready");
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
            _ = instance.stop_requested() => break,
        }
    }
    println!("Stopping…");
    instance.shutdown().await?;
    println!("Stopped.");
    Ok(())
}

/// Best effort: a desktop session gets the dashboard opened; without one, the printed URL is it.
fn open_in_browser(url: &str) {
    if std::env::var_os("DISPLAY").is_none() && std::env::var_os("WAYLAND_DISPLAY").is_none() {
        return;
    }
    if let Err(e) = std::process::Command::new("xdg-open")
        .arg(url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        tracing::info!("could not open a browser ({e}); open the dashboard URL yourself");
    }
}
