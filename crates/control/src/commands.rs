//! What the CLI asks of a home whether or not an instance runs there.

use std::time::Duration;

use anyhow::{bail, Context};
use secrecy::{ExposeSecret, SecretString};

use lookit_config::{Backend, Config, Home, Secrets};
use lookit_status::{Endpoint, StatusReport};

use crate::{InstanceRecord, PanelClient};

/// The status of `home`: from the running instance, or inspected directly when none runs.
pub async fn status(home: &Home, config: &Config) -> anyhow::Result<StatusReport> {
    if let Some(record) = InstanceRecord::read_live(&home.instance_file())? {
        return PanelClient::new(&record).get("/api/status").await;
    }
    Ok(StatusReport {
        ready: false,
        running: false,
        services: lookit_stack::inspect(home, config).await,
        panel: Endpoint { url: None },
        ..StatusReport::default()
    })
}

/// Waits until process `pid` has exited (after a stop request), up to `limit`.
pub async fn wait_for_exit(pid: u32, limit: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
    // No portable exit notification exists for a process that is not our child: poll. A zombie
    // has exited; only its parent has not collected it yet.
    while nix::sys::signal::kill(pid, None).is_ok() && !is_zombie(pid) {
        if tokio::time::Instant::now() >= deadline {
            bail!("the instance (pid {pid}) is still stopping after {limit:?}; see `lookit-local logs app`");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

fn is_zombie(pid: nix::unistd::Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The state follows the command name, which is in parentheses and may hold spaces.
            let after_name = stat.rsplit_once(')')?.1;
            after_name
                .split_whitespace()
                .next()
                .map(|state| state == "Z")
        })
        .unwrap_or(false)
}

/// `down --purge`: deletes the services' data. Refuses while an instance runs.
pub async fn purge(home: &Home, config: &Config) -> anyhow::Result<()> {
    if InstanceRecord::read_live(&home.instance_file())?.is_some() {
        bail!("an instance is still running; stop it first with `lookit-local down`");
    }
    lookit_stack::purge(home, config).await?;
    Ok(())
}

/// How to reach the services of `home`: the running instance's real addresses when one runs
/// (ports may have moved), the configured ones otherwise, and the external URLs for that backend.
pub struct ServiceAddresses {
    pub db_host: String,
    pub db_port: u16,
    pub db_user: String,
    pub db_password: String,
    pub db_name: String,
    pub rabbit_host: String,
    pub rabbit_port: u16,
    pub rabbit_user: String,
    pub rabbit_password: String,
    pub vhost: String,
    /// The API's URL when an instance runs, the configured one otherwise.
    pub base_url: String,
}

impl ServiceAddresses {
    pub async fn of(home: &Home, config: &Config, secrets: &Secrets) -> anyhow::Result<Self> {
        let report = status(home, config).await?;
        let address_of = |name: &str, default_port: u16| -> (String, u16) {
            report
                .services
                .iter()
                .find(|s| s.name == name)
                .and_then(|s| {
                    s.address
                        .as_deref()?
                        .rsplit_once(':')
                        .map(|(h, p)| (h.to_string(), p.parse().ok()))
                })
                .and_then(|(host, port)| Some((host, port?)))
                .unwrap_or_else(|| ("127.0.0.1".to_string(), default_port))
        };
        let base_url = report
            .api
            .url
            .clone()
            .unwrap_or_else(|| format!("https://localhost:{}", config.api.port.0));
        if config.stack.backend == Backend::External {
            let pg = config.postgres.url.as_ref().ok_or_else(|| {
                anyhow::anyhow!("`postgres.url` is not set, and the external backend needs it")
            })?;
            let mq = config.rabbitmq.url.as_ref().ok_or_else(|| {
                anyhow::anyhow!("`rabbitmq.url` is not set, and the external backend needs it")
            })?;
            return Ok(Self {
                db_host: pg.host_str().unwrap_or("127.0.0.1").to_string(),
                db_port: pg.port().unwrap_or(5432),
                db_user: pg.username().to_string(),
                db_password: pg.password().unwrap_or_default().to_string(),
                db_name: pg.path().trim_start_matches('/').to_string(),
                rabbit_host: mq.host_str().unwrap_or("127.0.0.1").to_string(),
                rabbit_port: mq.port().unwrap_or(5672),
                rabbit_user: mq.username().to_string(),
                rabbit_password: mq.password().unwrap_or_default().to_string(),
                vhost: config.rabbitmq.vhost.clone(),
                base_url,
            });
        }
        let (db_host, db_port) = address_of("postgres", config.postgres.port.0);
        let (rabbit_host, rabbit_port) = address_of("rabbitmq", config.rabbitmq.port.0);
        Ok(Self {
            db_host,
            db_port,
            db_user: config.postgres.user.to_string(),
            db_password: secrets.postgres_password.expose_secret().to_string(),
            db_name: config.postgres.database.to_string(),
            rabbit_host,
            rabbit_port,
            rabbit_user: config.rabbitmq.user.to_string(),
            rabbit_password: secrets.rabbitmq_password.expose_secret().to_string(),
            vhost: config.rabbitmq.vhost.clone(),
            base_url,
        })
    }

    pub fn database_url(&self) -> SecretString {
        let mut url = url::Url::parse("postgres://localhost/").expect("constant URL");
        let _ = url.set_host(Some(&self.db_host));
        let _ = url.set_port(Some(self.db_port));
        let _ = url.set_username(&self.db_user);
        let _ = url.set_password(Some(&self.db_password));
        url.set_path(&self.db_name);
        SecretString::from(url.to_string())
    }

    pub fn broker_url(&self) -> SecretString {
        let mut url = url::Url::parse("amqp://localhost/").expect("constant URL");
        let _ = url.set_host(Some(&self.rabbit_host));
        let _ = url.set_port(Some(self.rabbit_port));
        let _ = url.set_username(&self.rabbit_user);
        let _ = url.set_password(Some(&self.rabbit_password));
        if let Ok(mut path) = url.path_segments_mut() {
            path.clear().push(&self.vhost);
        }
        SecretString::from(url.to_string())
    }

    /// A pool on the `lookit` database, with the migrations applied.
    pub async fn database(&self) -> anyhow::Result<sqlx::PgPool> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(5)
            .connect(self.database_url().expose_secret())
            .await
            .with_context(|| {
                format!(
                    "connect to the lookit database at {}:{}; is the stack running (`lookit-local up`)?",
                    self.db_host, self.db_port
                )
            })?;
        lookit_contracts::MIGRATOR
            .run(&pool)
            .await
            .context("apply the database migrations")?;
        Ok(pool)
    }
}

/// Connection settings in the variable names of Lookit's own `.env`, so the original Django
/// server can run against this stack.
pub async fn lookit_env(
    home: &Home,
    config: &Config,
) -> anyhow::Result<Vec<(&'static str, String)>> {
    let secrets = Secrets::load_or_generate(&home.secrets_file())?;
    let a = ServiceAddresses::of(home, config, &secrets).await?;
    Ok(vec![
        ("DB_NAME", a.db_name.clone()),
        ("DB_HOST", a.db_host.clone()),
        ("DB_PORT", a.db_port.to_string()),
        ("DB_USER", a.db_user.clone()),
        ("DB_PASSWORD", a.db_password.clone()),
        ("RABBITMQ_HOST", a.rabbit_host.clone()),
        ("RABBITMQ_PORT", a.rabbit_port.to_string()),
        ("RABBITMQ_USERNAME", a.rabbit_user.clone()),
        ("RABBITMQ_PASSWORD", a.rabbit_password.clone()),
        ("RABBITMQ_VHOST", a.vhost.clone()),
        ("BROKER_URL", a.broker_url().expose_secret().to_string()),
        ("BASE_URL", a.base_url.clone()),
        (
            "PIPE_WEBHOOK_KEY",
            secrets.pipe_webhook_key.expose_secret().to_string(),
        ),
        (
            "AWS_LAMBDA_SECRET_ACCESS_KEY",
            secrets.lambda_secret.expose_secret().to_string(),
        ),
    ])
}
