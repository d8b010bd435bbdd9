//! Postgres and RabbitMQ as Docker containers: images from config (pulled with progress), one
//! named container and one named volume per service and home, ports published on 127.0.0.1
//! only, a container left running by an earlier run adopted rather than duplicated.

use std::collections::HashMap;

use anyhow::Context;
use bollard::container::{
    Config as ContainerConfig, CreateContainerOptions, InspectContainerOptions, LogOutput,
    LogsOptions, RemoveContainerOptions,
};
use bollard::image::CreateImageOptions;
use bollard::models::{HostConfig, Mount, MountTypeEnum, PortBinding};
use bollard::Docker;
use futures::StreamExt;
use lookit_config::{Config, Home};
use secrecy::{ExposeSecret, SecretString};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::event::{LayerProgress, Reporter, StackEvent, StepOutcome};
use crate::ports::{choose_port, is_free};
use crate::running::Running;
use crate::{ServiceKind, StackError};

/// Label carrying the home tag on every container and volume we create.
pub(crate) const HOME_LABEL: &str = "org.lookit.local.home";
const SERVICE_LABEL: &str = "org.lookit.local.service";

/// Connects to the engine of `config` (`docker.host`, else `DOCKER_HOST` and the platform
/// default) and negotiates the API version.
pub(crate) async fn connect(config: &Config) -> Result<Docker, StackError> {
    let docker = match config.docker.host.as_deref() {
        Some(host) if host.starts_with("unix://") => {
            Docker::connect_with_unix(host, 120, bollard::API_DEFAULT_VERSION)
        }
        Some(host) => Docker::connect_with_http(host, 120, bollard::API_DEFAULT_VERSION),
        None => Docker::connect_with_local_defaults(),
    }
    .map_err(|e| StackError::DockerUnavailable(e.to_string()))?;
    let docker = docker
        .negotiate_version()
        .await
        .map_err(|e| StackError::DockerUnavailable(e.to_string()))?;
    docker
        .ping()
        .await
        .map_err(|e| StackError::DockerUnavailable(e.to_string()))?;
    Ok(docker)
}

pub(crate) fn container_name(home: &Home, kind: ServiceKind) -> String {
    format!("lookit-{}-{}", home.tag(), kind.name())
}

pub(crate) fn volume_name(home: &Home, kind: ServiceKind) -> String {
    format!("lookit-{}-{}-data", home.tag(), kind.name())
}

/// One service's container.
pub(crate) struct DockerServer {
    docker: Docker,
    kind: ServiceKind,
    tag: String,
    name: String,
    volume: String,
    image: String,
    env: Vec<String>,
    log_file: std::path::PathBuf,
    wanted_port: u16,
    wanted_management_port: u16,
    pub port: Option<u16>,
    pub management_port: Option<u16>,
}

impl DockerServer {
    pub fn new(
        docker: Docker,
        home: &Home,
        config: &Config,
        kind: ServiceKind,
        password: &SecretString,
    ) -> Self {
        let (image, env, wanted_port, wanted_management_port) = match kind {
            ServiceKind::Postgres => (
                config.postgres.image.to_string(),
                vec![
                    format!("POSTGRES_USER={}", config.postgres.user),
                    format!("POSTGRES_PASSWORD={}", password.expose_secret()),
                    format!("POSTGRES_DB={}", config.postgres.database),
                ],
                config.postgres.port.0,
                0,
            ),
            ServiceKind::Rabbitmq => (
                config.rabbitmq.image.to_string(),
                vec![
                    format!("RABBITMQ_DEFAULT_USER={}", config.rabbitmq.user),
                    format!("RABBITMQ_DEFAULT_PASS={}", password.expose_secret()),
                ],
                config.rabbitmq.port.0,
                config.rabbitmq.management_port.0,
            ),
        };
        Self {
            docker,
            kind,
            tag: home.tag(),
            name: container_name(home, kind),
            volume: volume_name(home, kind),
            image,
            env,
            log_file: home.logs_dir().join(format!("{}.log", kind.name())),
            wanted_port,
            wanted_management_port,
            port: None,
            management_port: None,
        }
    }

    fn container_ports(&self) -> Vec<&'static str> {
        match self.kind {
            ServiceKind::Postgres => vec!["5432/tcp"],
            ServiceKind::Rabbitmq => vec!["5672/tcp", "15672/tcp"],
        }
    }

    fn data_path(&self) -> &'static str {
        match self.kind {
            ServiceKind::Postgres => "/var/lib/postgresql/data",
            ServiceKind::Rabbitmq => "/var/lib/rabbitmq",
        }
    }

    /// Starts (or adopts) the container. Returns port-change notes.
    pub async fn launch(&mut self, reporter: &Reporter) -> anyhow::Result<(Running, Vec<String>)> {
        self.ensure_image(reporter).await?;
        let mut notes = Vec::new();
        let existing = match self
            .docker
            .inspect_container(&self.name, None::<InspectContainerOptions>)
            .await
        {
            Ok(container) => Some(container),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => None,
            Err(e) => return Err(e).context("cannot inspect the container"),
        };
        let mut adopt = false;
        if let Some(container) = existing {
            let labels = container
                .config
                .as_ref()
                .and_then(|c| c.labels.clone())
                .unwrap_or_default();
            if labels.get(HOME_LABEL) != Some(&self.tag) {
                anyhow::bail!(
                    "a container named {} exists that Lookit Local did not create; remove it (`docker rm -f {}`)",
                    self.name,
                    self.name
                );
            }
            let published = published_ports(&container);
            let same_image =
                container.config.as_ref().and_then(|c| c.image.as_deref()) == Some(&self.image);
            let running = container
                .state
                .as_ref()
                .and_then(|s| s.running)
                .unwrap_or(false);
            if running && same_image {
                self.port = published.first().copied();
                self.management_port = published.get(1).copied();
                reporter.step(
                    "container",
                    StepOutcome::Unchanged,
                    format!("adopted the running container {}", self.name),
                );
                adopt = true;
            } else if same_image && !published.is_empty() && published.iter().all(|p| is_free(*p)) {
                self.port = published.first().copied();
                self.management_port = published.get(1).copied();
                reporter.step(
                    "container",
                    StepOutcome::Unchanged,
                    format!("starting the existing container {}", self.name),
                );
                adopt = true;
            } else {
                // Another image or its ports are taken now: recreate it; the volume keeps the data.
                self.docker
                    .remove_container(
                        &self.name,
                        Some(RemoveContainerOptions {
                            force: true,
                            ..Default::default()
                        }),
                    )
                    .await
                    .context("cannot remove the outdated container")?;
            }
        }
        if !adopt {
            let (port, note) = choose_port(reporter, "main", self.wanted_port, self.port)?;
            notes.extend(note);
            self.port = Some(port);
            let mut host_ports = vec![port];
            if self.kind == ServiceKind::Rabbitmq {
                let (management, note) = choose_port(
                    reporter,
                    "management",
                    self.wanted_management_port,
                    self.management_port,
                )?;
                notes.extend(note);
                self.management_port = Some(management);
                host_ports.push(management);
            }
            self.create(&host_ports).await?;
            reporter.step(
                "container",
                StepOutcome::Done,
                format!("created {} from {}", self.name, self.image),
            );
        }
        // Start it (a no-op for a running one) and watch for its end from now on.
        let (exit_sender, exit) = watch::channel(None);
        let running = Running::container(self.docker.clone(), self.name.clone(), exit);
        match self
            .docker
            .start_container::<String>(&self.name, None)
            .await
        {
            Ok(()) => {}
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => {}
            Err(e) => return Err(e).context("cannot start the container"),
        }
        self.watch_exit(exit_sender);
        self.copy_logs();
        Ok((running, notes))
    }

    async fn ensure_image(&self, reporter: &Reporter) -> anyhow::Result<()> {
        if self.docker.inspect_image(&self.image).await.is_ok() {
            reporter.step(
                "image",
                StepOutcome::Unchanged,
                format!("{} is on this machine", self.image),
            );
            return Ok(());
        }
        let options = CreateImageOptions {
            from_image: self.image.clone(),
            ..Default::default()
        };
        let mut layers: Vec<LayerProgress> = Vec::new();
        let mut pull = self.docker.create_image(Some(options), None, None);
        while let Some(message) = pull.next().await {
            let info = message.map_err(|e| StackError::ImageMissing {
                service: self.kind.name().into(),
                image: self.image.clone(),
                reason: e.to_string(),
            })?;
            let Some(id) = info.id else { continue };
            let detail = info.progress_detail.unwrap_or_default();
            let layer = LayerProgress {
                id: id.clone(),
                status: info.status.unwrap_or_default(),
                current: detail
                    .current
                    .and_then(|c| u64::try_from(c).ok())
                    .unwrap_or(0),
                total: detail.total.and_then(|t| u64::try_from(t).ok()),
            };
            match layers.iter_mut().find(|l| l.id == id) {
                Some(known) => {
                    known.status = layer.status;
                    if layer.total.is_some() {
                        known.current = layer.current;
                        known.total = layer.total;
                    }
                }
                None => layers.push(layer),
            }
            let total: u64 = layers.iter().filter_map(|l| l.total).sum();
            let current: u64 = layers.iter().map(|l| l.current).sum();
            reporter.send(StackEvent::Pull {
                service: reporter.service.into(),
                image: self.image.clone(),
                layers: layers.clone(),
                fraction: (total > 0).then(|| current as f64 / total as f64),
            });
        }
        reporter.step("image", StepOutcome::Done, format!("pulled {}", self.image));
        Ok(())
    }

    async fn create(&self, host_ports: &[u16]) -> anyhow::Result<()> {
        let labels = HashMap::from([
            (HOME_LABEL.to_string(), self.tag.clone()),
            (SERVICE_LABEL.to_string(), self.kind.name().to_string()),
        ]);
        let _ = self
            .docker
            .create_volume(bollard::volume::CreateVolumeOptions {
                name: self.volume.clone(),
                labels: labels.clone(),
                ..Default::default()
            })
            .await
            .context("cannot create the data volume")?;
        let mut exposed = HashMap::new();
        let mut bindings = HashMap::new();
        for (container_port, host_port) in self.container_ports().into_iter().zip(host_ports) {
            exposed.insert(container_port.to_string(), HashMap::new());
            bindings.insert(
                container_port.to_string(),
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(host_port.to_string()),
                }]),
            );
        }
        let config = ContainerConfig {
            image: Some(self.image.clone()),
            // A stable host name keeps RabbitMQ's node name, and with it its data, across
            // re-created containers.
            hostname: Some(self.name.clone()),
            env: Some(self.env.clone()),
            labels: Some(labels),
            exposed_ports: Some(exposed),
            host_config: Some(HostConfig {
                port_bindings: Some(bindings),
                mounts: Some(vec![Mount {
                    target: Some(self.data_path().into()),
                    source: Some(self.volume.clone()),
                    typ: Some(MountTypeEnum::VOLUME),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.docker
            .create_container(
                Some(CreateContainerOptions {
                    name: self.name.clone(),
                    platform: None,
                }),
                config,
            )
            .await
            .context("cannot create the container")?;
        Ok(())
    }

    fn watch_exit(&self, exit: watch::Sender<Option<String>>) {
        let docker = self.docker.clone();
        let name = self.name.clone();
        tokio::spawn(async move {
            let mut wait = docker.wait_container::<String>(&name, None);
            let reason = match wait.next().await {
                Some(Ok(response)) => {
                    format!("the container exited with code {}", response.status_code)
                }
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
                    format!("the container exited with code {code}")
                }
                Some(Err(e)) => format!("lost track of the container: {e}"),
                None => "lost track of the container".into(),
            };
            let _ = exit.send(Some(reason));
        });
    }

    /// Appends the container's output from now on to `logs/<service>.log`.
    fn copy_logs(&self) {
        let docker = self.docker.clone();
        let name = self.name.clone();
        let path = self.log_file.clone();
        tokio::spawn(async move {
            if let Some(dir) = path.parent() {
                let _ = tokio::fs::create_dir_all(dir).await;
            }
            let Ok(mut file) = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .await
            else {
                return;
            };
            let options = LogsOptions::<String> {
                follow: true,
                stdout: true,
                stderr: true,
                since: chrono::Utc::now().timestamp(),
                ..Default::default()
            };
            let mut logs = docker.logs(&name, Some(options));
            while let Some(Ok(output)) = logs.next().await {
                let bytes = match output {
                    LogOutput::StdOut { message }
                    | LogOutput::StdErr { message }
                    | LogOutput::Console { message }
                    | LogOutput::StdIn { message } => message,
                };
                if file.write_all(&bytes).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// Host ports the container publishes, in the order of its container ports (main first).
fn published_ports(container: &bollard::models::ContainerInspectResponse) -> Vec<u16> {
    let Some(bindings) = container
        .host_config
        .as_ref()
        .and_then(|h| h.port_bindings.as_ref())
    else {
        return Vec::new();
    };
    let mut ports: Vec<(u16, u16)> = bindings
        .iter()
        .filter_map(|(container_port, hosts)| {
            let container_port = container_port.split('/').next()?.parse().ok()?;
            let host = hosts.as_ref()?.first()?.host_port.as_ref()?.parse().ok()?;
            Some((container_port, host))
        })
        .collect();
    // 5432 / 5672 sort before 15672, so the main port comes first.
    ports.sort();
    ports.into_iter().map(|(_, host)| host).collect()
}

/// Removes the containers and volumes of `home`.
pub(crate) async fn purge(docker: &Docker, home: &Home) -> anyhow::Result<()> {
    for kind in ServiceKind::ALL {
        match docker
            .remove_container(
                &container_name(home, kind),
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
            .await
        {
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(e).context("cannot remove a container"),
        }
        match docker.remove_volume(&volume_name(home, kind), None).await {
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(e).context("cannot remove a volume"),
        }
    }
    Ok(())
}
