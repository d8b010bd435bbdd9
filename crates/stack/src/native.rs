//! Private instances of the Postgres and RabbitMQ installed on this machine: own data, log and
//! config folders, own ports, own RabbitMQ node name. As root, the servers run as their service
//! users (`postgres`, `rabbitmq`), never as root.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context};
use lookit_config::{Config, Home};
use nix::sys::signal::Signal;
use nix::unistd::{Gid, Uid, User};
use secrecy::{ExposeSecret, SecretString};
use tokio::process::Command;
use tokio::sync::watch;

use crate::event::{Reporter, StepOutcome};
use crate::ports::choose_port;
use crate::running::Running;
use crate::ServiceKind;

/// Where data lives when the service user cannot reach the home (e.g. a home under /root).
const SYSTEM_DATA_ROOT: &str = "/var/lib/lookit-local";

/// The unprivileged account a server runs as when we are root.
#[derive(Debug, Clone)]
pub(crate) struct ServiceUser {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
}

impl ServiceUser {
    /// `None` when we are not root: the server then runs as the current user.
    fn for_service(kind: ServiceKind) -> anyhow::Result<Option<ServiceUser>> {
        if !Uid::effective().is_root() {
            return Ok(None);
        }
        let name = match kind {
            ServiceKind::Postgres => "postgres",
            ServiceKind::Rabbitmq => "rabbitmq",
        };
        let user = User::from_name(name)?.with_context(|| {
            format!("there is no `{name}` user to run {} as; install the package (`sudo apt-get install {}`)", kind.name(), package(kind))
        })?;
        Ok(Some(ServiceUser {
            name: name.into(),
            uid: user.uid,
            gid: user.gid,
        }))
    }
}

fn package(kind: ServiceKind) -> &'static str {
    match kind {
        ServiceKind::Postgres => "postgresql",
        ServiceKind::Rabbitmq => "rabbitmq-server",
    }
}

/// The data folder of a service and, when it is not under the home, why.
pub(crate) fn data_dir(
    home: &Home,
    kind: ServiceKind,
) -> anyhow::Result<(PathBuf, Option<String>)> {
    let in_home = home.services_dir().join(kind.name());
    let Some(user) = ServiceUser::for_service(kind)? else {
        return Ok((in_home, None));
    };
    if let Some(blocked) = untraversable_ancestor(&in_home, &user) {
        let elsewhere = system_data_root(home).join(kind.name());
        let why = format!(
            "user {} cannot enter {}, so the data of {} is kept in {}",
            user.name,
            blocked.display(),
            kind.name(),
            elsewhere.display()
        );
        return Ok((elsewhere, Some(why)));
    }
    Ok((in_home, None))
}

/// Per-home folder under /var/lib/lookit-local for data the service users must reach.
pub(crate) fn system_data_root(home: &Home) -> PathBuf {
    Path::new(SYSTEM_DATA_ROOT).join(home.tag())
}

/// The first existing ancestor of `path` that `user` may not traverse (no `x` bit for them).
fn untraversable_ancestor(path: &Path, user: &ServiceUser) -> Option<PathBuf> {
    let mut ancestors: Vec<&Path> = path.ancestors().skip(1).collect();
    ancestors.reverse();
    for dir in ancestors {
        let Ok(meta) = std::fs::metadata(dir) else {
            // Folders we still have to create get the default mode 0755.
            return None;
        };
        let mode = meta.permissions().mode();
        let bit = if meta.uid() == user.uid.as_raw() {
            0o100
        } else if meta.gid() == user.gid.as_raw() {
            0o010
        } else {
            0o001
        };
        if mode & bit == 0 {
            return Some(dir.to_path_buf());
        }
    }
    None
}

/// The newest installed Postgres server binaries (`/usr/lib/postgresql/<major>/bin`).
pub(crate) fn postgres_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").exists().then_some((major, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

pub(crate) const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

/// One native server of one home, with the ports it got (kept across restarts).
pub(crate) struct NativeServer {
    kind: ServiceKind,
    user: Option<ServiceUser>,
    data: PathBuf,
    log_file: PathBuf,
    node_name: String,
    wanted_port: u16,
    wanted_management_port: u16,
    pub port: Option<u16>,
    pub management_port: Option<u16>,
    dist_port: Option<u16>,
    user_name: String,
    password: SecretString,
}

impl NativeServer {
    pub fn new(
        home: &Home,
        config: &Config,
        kind: ServiceKind,
        password: SecretString,
        reporter: &Reporter,
    ) -> anyhow::Result<Self> {
        let (data, moved) = data_dir(home, kind)?;
        match moved {
            Some(why) => reporter.step("data folder", StepOutcome::Done, why),
            None => reporter.step(
                "data folder",
                StepOutcome::Unchanged,
                format!("data in {}", data.display()),
            ),
        }
        let (wanted_port, wanted_management_port, user_name) = match kind {
            ServiceKind::Postgres => (config.postgres.port.0, 0, config.postgres.user.to_string()),
            ServiceKind::Rabbitmq => (
                config.rabbitmq.port.0,
                config.rabbitmq.management_port.0,
                config.rabbitmq.user.to_string(),
            ),
        };
        Ok(Self {
            kind,
            user: ServiceUser::for_service(kind)?,
            data,
            log_file: home.logs_dir().join(format!("{}.log", kind.name())),
            node_name: format!("lookit-{}@localhost", home.tag()),
            wanted_port,
            wanted_management_port,
            port: None,
            management_port: None,
            dist_port: None,
            user_name,
            password,
        })
    }

    /// Starts the server (initialising its data on first start). Returns port-change notes.
    pub async fn launch(&mut self, reporter: &Reporter) -> anyhow::Result<(Running, Vec<String>)> {
        stop_stale(&self.pid_file()).await?;
        self.make_dir(&self.data.clone())?;
        let mut notes = Vec::new();
        let (port, note) = choose_port(reporter, "main", self.wanted_port, self.port)?;
        self.port = Some(port);
        notes.extend(note);
        let command = match self.kind {
            ServiceKind::Postgres => self.postgres_command(reporter, port).await?,
            ServiceKind::Rabbitmq => {
                let (management, note) = choose_port(
                    reporter,
                    "management",
                    self.wanted_management_port,
                    self.management_port,
                )?;
                self.management_port = Some(management);
                notes.extend(note);
                let (dist, _) = choose_port(reporter, "distribution", 0, self.dist_port)?;
                self.dist_port = Some(dist);
                self.rabbitmq_command(port, management, dist)?
            }
        };
        let running = self.spawn(command)?;
        reporter.step(
            "process",
            StepOutcome::Done,
            format!(
                "started (pid {}), output in {}",
                running.pid().unwrap_or_default(),
                self.log_file.display()
            ),
        );
        Ok((running, notes))
    }

    fn pid_file(&self) -> PathBuf {
        match self.kind {
            ServiceKind::Postgres => self.data.join("postmaster.pid"),
            ServiceKind::Rabbitmq => self.data.join("rabbitmq.pid"),
        }
    }

    /// Creates `dir` owned by the service user.
    fn make_dir(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        self.chown(dir)
    }

    fn chown(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(user) = &self.user {
            nix::unistd::chown(path, Some(user.uid), Some(user.gid))
                .with_context(|| format!("cannot give {} to {}", path.display(), user.name))?;
        }
        Ok(())
    }

    /// Writes a file only the service user can read.
    fn write_private(&self, path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
        // A read-only file (the Erlang cookie) must be made writable before it is replaced.
        let _ = std::fs::remove_file(path);
        std::fs::write(path, contents)
            .with_context(|| format!("cannot write {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        self.chown(path)
    }

    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        // The service user may not be able to enter our working directory.
        command.current_dir(&self.data);
        if let Some(user) = &self.user {
            command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        command
    }

    async fn postgres_command(&self, reporter: &Reporter, port: u16) -> anyhow::Result<Command> {
        let bin = postgres_bin_dir()
            .context("Postgres is not installed: `sudo apt-get install postgresql`")?;
        if self.data.join("PG_VERSION").exists() {
            reporter.step(
                "initdb",
                StepOutcome::Unchanged,
                format!("cluster exists in {}", self.data.display()),
            );
        } else {
            // Beside the data folder: initdb wants that folder empty.
            let password_file = self.data.with_extension("initial-password");
            self.write_private(&password_file, self.password.expose_secret(), 0o600)?;
            let output = self
                .command(bin.join("initdb"))
                .arg("--pgdata")
                .arg(&self.data)
                .args(["--username", &self.user_name, "--pwfile"])
                .arg(&password_file)
                .args([
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                ])
                .output()
                .await;
            let _ = std::fs::remove_file(&password_file);
            let output = output.context("cannot run initdb")?;
            if !output.status.success() {
                bail!(
                    "initdb failed: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
            reporter.step(
                "initdb",
                StepOutcome::Done,
                format!(
                    "cluster created in {} with role {} (scram-sha-256)",
                    self.data.display(),
                    self.user_name
                ),
            );
        }
        // Only TCP on loopback with passwords; no Unix socket (nothing may log in by peer).
        self.write_private(
            &self.data.join("pg_hba.conf"),
            "# Written by Lookit Local: passwords (scram-sha-256) on loopback only.\n\
             host all all 127.0.0.1/32 scram-sha-256\n\
             host all all ::1/128 scram-sha-256\n",
            0o600,
        )?;
        let mut command = self.command(bin.join("postgres"));
        command.arg("-D").arg(&self.data).args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            &format!("port={port}"),
            "-c",
            "unix_socket_directories=",
            "-c",
            "password_encryption=scram-sha-256",
        ]);
        Ok(command)
    }

    fn rabbitmq_command(&self, port: u16, management: u16, dist: u16) -> anyhow::Result<Command> {
        if !Path::new(RABBITMQ_SERVER).exists() {
            bail!("RabbitMQ is not installed: `sudo apt-get install rabbitmq-server`");
        }
        for dir in ["mnesia", "log"] {
            self.make_dir(&self.data.join(dir))?;
        }
        let cookie = self.data.join(".erlang.cookie");
        if !cookie.exists() {
            // Our own cookie: CLI tools of another node on this machine cannot control ours.
            let value = rand::distributions::DistString::sample_string(
                &rand::distributions::Alphanumeric,
                &mut rand::rngs::OsRng,
                32,
            )
            .to_uppercase();
            self.write_private(&cookie, &value, 0o400)?;
        }
        let config = self.data.join("rabbitmq.conf");
        self.write_private(
            &config,
            &format!(
                "# Written by Lookit Local at every start.\n\
                 listeners.tcp.default = 127.0.0.1:{port}\n\
                 management.tcp.ip = 127.0.0.1\n\
                 management.tcp.port = {management}\n\
                 loopback_users.guest = true\n\
                 default_user = {user}\n\
                 default_pass = {password}\n\
                 default_user_tags.administrator = true\n",
                user = self.user_name,
                password = self.password.expose_secret(),
            ),
            0o600,
        )?;
        self.write_private(
            &self.data.join("enabled_plugins"),
            "[rabbitmq_management].\n",
            0o600,
        )?;
        self.write_private(&self.data.join("rabbitmq-env.conf"), "", 0o600)?;

        let mut command = self.command(RABBITMQ_SERVER);
        command
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("LANG", "C.UTF-8")
            .env("HOME", &self.data)
            // Exec the Erlang VM directly, so our SIGTERM reaches it and it stops cleanly.
            .env("RUNNING_UNDER_SYSTEMD", "true")
            .env("RABBITMQ_NODENAME", &self.node_name)
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .env(
                "RABBITMQ_CONF_ENV_FILE",
                self.data.join("rabbitmq-env.conf"),
            )
            .env("RABBITMQ_CONFIG_FILE", &config)
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.data.join("enabled_plugins"),
            )
            .env("RABBITMQ_MNESIA_BASE", self.data.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.data.join("log"))
            .env("RABBITMQ_LOGS", "-")
            .env("RABBITMQ_PID_FILE", self.pid_file());
        Ok(command)
    }

    fn spawn(&self, mut command: Command) -> anyhow::Result<Running> {
        if let Some(dir) = self.log_file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .with_context(|| format!("cannot open {}", self.log_file.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Own process group: a Ctrl-C in the terminal reaches us, and we stop it in order.
            .process_group(0)
            // If our process ends without a shutdown (a panic), the server must not linger.
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", self.kind.name()))?;
        let pid = child.id().context("the child has no process id")?;
        let (exit_sender, exit) = watch::channel(None);
        tokio::spawn(async move {
            let reason = match child.wait().await {
                Ok(status) => format!("the process {status}"),
                Err(error) => format!("waiting for the process failed: {error}"),
            };
            let _ = exit_sender.send(Some(reason));
        });
        let signal = match self.kind {
            ServiceKind::Postgres => Signal::SIGINT,
            ServiceKind::Rabbitmq => Signal::SIGTERM,
        };
        Ok(Running::process(pid, signal, exit))
    }
}

/// Stops a server an earlier run left behind (its pid file names a live process), so that ours
/// can use the data folder. Postgres and RabbitMQ both remove their pid file on a clean exit.
pub(crate) async fn stop_stale(pid_file: &Path) -> anyhow::Result<()> {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|text| text.lines().next()?.trim().parse::<i32>().ok())
    else {
        return Ok(());
    };
    // A reused pid may belong to anything: only stop the kind of server the file is about.
    let is_postgres = pid_file.ends_with("postmaster.pid");
    let program = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let expected = if is_postgres { "postgres" } else { "beam" };
    if !program.starts_with(expected) {
        return Ok(());
    }
    let pid = nix::unistd::Pid::from_raw(pid);
    let alive = || nix::sys::signal::kill(pid, None).is_ok();
    tracing::warn!(%pid, file = %pid_file.display(), "stopping a server left running by an earlier run");
    nix::sys::signal::kill(
        pid,
        if is_postgres {
            Signal::SIGINT
        } else {
            Signal::SIGTERM
        },
    )?;
    // Not our child: there is no exit event to wait on, so poll with a deadline.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while alive() {
        if tokio::time::Instant::now() > deadline {
            nix::sys::signal::kill(pid, Signal::SIGKILL)?;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(())
}
