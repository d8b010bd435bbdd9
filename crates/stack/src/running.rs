//! A started server instance, whatever runs it: how to learn that it ended and how to stop it.

use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;

/// Set to `Some(reason)` when the instance ends (by itself or because it was stopped).
pub(crate) type ExitWatch = watch::Receiver<Option<String>>;

pub(crate) struct Running {
    exit: ExitWatch,
    stopper: Stopper,
    /// Keeps the exit watch open for instances nobody watches (external servers).
    _never_exits: Option<watch::Sender<Option<String>>>,
}

enum Stopper {
    /// A child process stopped by a signal (SIGINT is Postgres' fast shutdown, SIGTERM makes
    /// the Erlang VM stop RabbitMQ cleanly).
    Process { pid: Pid, signal: Signal },
    Container {
        docker: bollard::Docker,
        name: String,
    },
    /// Someone else's server: never stopped by us.
    External,
}

/// How long a graceful stop may take before the process is killed.
const STOP_GRACE: Duration = Duration::from_secs(60);

impl Running {
    pub fn process(pid: u32, signal: Signal, exit: ExitWatch) -> Self {
        Self {
            exit,
            stopper: Stopper::Process {
                pid: Pid::from_raw(pid as i32),
                signal,
            },
            _never_exits: None,
        }
    }

    pub fn container(docker: bollard::Docker, name: String, exit: ExitWatch) -> Self {
        Self {
            exit,
            stopper: Stopper::Container { docker, name },
            _never_exits: None,
        }
    }

    pub fn external() -> Self {
        let (sender, exit) = watch::channel(None);
        Self {
            exit,
            stopper: Stopper::External,
            _never_exits: Some(sender),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        match self.stopper {
            Stopper::Process { pid, .. } => u32::try_from(pid.as_raw()).ok(),
            _ => None,
        }
    }

    pub fn exit_watch(&self) -> ExitWatch {
        self.exit.clone()
    }

    /// Resolves when the instance has ended, with the reason. Cancel-safe.
    pub async fn exited(&mut self) -> String {
        match self.exit.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => "its watcher ended".into(),
        }
    }

    /// Graceful stop; waits until the instance has ended.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if self.exit.borrow().is_some() {
            return Ok(());
        }
        match &self.stopper {
            Stopper::External => return Ok(()),
            Stopper::Process { pid, signal } => {
                let (pid, signal) = (*pid, *signal);
                kill(pid, signal).with_context(|| format!("cannot signal process {pid}"))?;
                if tokio::time::timeout(STOP_GRACE, self.exited())
                    .await
                    .is_err()
                {
                    tracing::warn!(%pid, "did not stop within {STOP_GRACE:?}; killing it");
                    kill(pid, Signal::SIGKILL)?;
                    self.exited().await;
                }
            }
            Stopper::Container { docker, name } => {
                let (docker, name) = (docker.clone(), name.clone());
                let options = bollard::container::StopContainerOptions {
                    t: STOP_GRACE.as_secs() as i64,
                };
                docker
                    .stop_container(&name, Some(options))
                    .await
                    .with_context(|| format!("cannot stop container {name}"))?;
                self.exited().await;
            }
        }
        Ok(())
    }
}
