//! Running the builder container of §2 stage 5 through the Docker API: output streamed line by
//! line, a time limit, cancellation, and no container left behind.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use bollard::container::{
    AttachContainerOptions, Config, CreateContainerOptions, KillContainerOptions, LogOutput,
    RemoveContainerOptions, WaitContainerOptions,
};
use bollard::models::HostConfig;
use bollard::Docker;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Label on every builder container, so cleanup finds the stopped ones.
pub const BUILDER_LABEL: &str = "lookit-local.builder";

/// How a builder run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuilderExit {
    Exited(i64),
    TimedOut,
    Cancelled,
}

/// One builder container to run.
pub struct BuilderRun {
    pub image: String,
    /// Container name: one per build, so a restarted worker replaces a leftover container.
    pub name: String,
    pub env: Vec<String>,
    /// `host:container[:ro]` bind mounts.
    pub binds: Vec<String>,
    pub time_limit: Duration,
}

impl BuilderRun {
    /// Runs the container to its end, sending each output line to `lines`.
    pub async fn run(
        self,
        docker: &Docker,
        lines: mpsc::UnboundedSender<String>,
        cancel: &CancellationToken,
    ) -> anyhow::Result<BuilderExit> {
        remove(docker, &self.name).await?;
        let config = Config {
            image: Some(self.image.clone()),
            env: Some(self.env.clone()),
            user: Some(current_user()),
            labels: Some(HashMap::from([(
                BUILDER_LABEL.to_string(),
                "true".to_string(),
            )])),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            host_config: Some(HostConfig {
                binds: Some(self.binds.clone()),
                ..HostConfig::default()
            }),
            ..Config::default()
        };
        docker
            .create_container(
                Some(CreateContainerOptions {
                    name: self.name.clone(),
                    platform: None,
                }),
                config,
            )
            .await
            .with_context(|| format!("create the builder container from {}", self.image))?;
        let result = self.follow(docker, lines, cancel).await;
        // Whatever happened, the container goes: it holds nothing we need afterwards.
        let removed = remove(docker, &self.name).await;
        let exit = result?;
        removed?;
        Ok(exit)
    }

    async fn follow(
        &self,
        docker: &Docker,
        lines: mpsc::UnboundedSender<String>,
        cancel: &CancellationToken,
    ) -> anyhow::Result<BuilderExit> {
        // Attached before the start, so not one line of output is missed.
        let attached = docker
            .attach_container(
                &self.name,
                Some(AttachContainerOptions::<String> {
                    stdout: Some(true),
                    stderr: Some(true),
                    stream: Some(true),
                    logs: Some(true),
                    ..AttachContainerOptions::default()
                }),
            )
            .await
            .context("attach to the builder container")?;
        docker
            .start_container::<String>(&self.name, None)
            .await
            .context("start the builder container")?;
        let output = forward_lines(attached.output, lines);
        let run = async {
            let (_, exit) = tokio::join!(output, wait(docker, &self.name));
            exit
        };
        tokio::select! {
            exit = run => exit,
            _ = tokio::time::sleep(self.time_limit) => {
                kill(docker, &self.name).await?;
                Ok(BuilderExit::TimedOut)
            }
            _ = cancel.cancelled() => {
                kill(docker, &self.name).await?;
                Ok(BuilderExit::Cancelled)
            }
        }
    }
}

/// Splits the container's output into lines (chunks do not follow line boundaries).
async fn forward_lines(
    mut output: impl futures::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Unpin,
    lines: mpsc::UnboundedSender<String>,
) {
    let mut pending = Vec::new();
    while let Some(Ok(chunk)) = output.next().await {
        pending.extend_from_slice(&chunk.into_bytes());
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line[..end]);
            let _ = lines.send(text.trim_end_matches('\r').to_string());
        }
    }
    if !pending.is_empty() {
        let _ = lines.send(String::from_utf8_lossy(&pending).into_owned());
    }
}

async fn wait(docker: &Docker, name: &str) -> anyhow::Result<BuilderExit> {
    let mut waits = docker.wait_container(name, None::<WaitContainerOptions<String>>);
    match waits.next().await {
        Some(Ok(response)) => Ok(BuilderExit::Exited(response.status_code)),
        // bollard reports a non-zero exit as this error.
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
            Ok(BuilderExit::Exited(code))
        }
        Some(Err(error)) => Err(anyhow::Error::from(error).context("wait for the builder")),
        None => anyhow::bail!("the Docker engine ended the wait without an exit code"),
    }
}

async fn kill(docker: &Docker, name: &str) -> anyhow::Result<()> {
    match docker
        .kill_container(name, None::<KillContainerOptions<String>>)
        .await
    {
        Ok(()) => Ok(()),
        // Already stopped.
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404 | 409,
            ..
        }) => Ok(()),
        Err(error) => Err(anyhow::Error::from(error).context("stop the builder container")),
    }
}

/// Removes the container if it exists (running or not).
async fn remove(docker: &Docker, name: &str) -> anyhow::Result<()> {
    let options = RemoveContainerOptions {
        force: true,
        v: true,
        ..RemoveContainerOptions::default()
    };
    match docker.remove_container(name, Some(options)).await {
        Ok(()) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        // 409: removal already in progress (a leftover that Docker is removing).
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409, ..
        }) => Ok(()),
        Err(error) => Err(anyhow::Error::from(error).context(format!("remove container {name}"))),
    }
}

/// The builder writes into our folders as us, so we can clean them up without root.
fn current_user() -> String {
    format!("{}:{}", nix::unistd::getuid(), nix::unistd::getgid())
}
