//! What the CLI asks of a home whether or not an instance runs there.

use std::time::Duration;

use anyhow::bail;
use secrecy::ExposeSecret;

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
    // No portable exit notification exists for a process that is not our child: poll.
    while nix::sys::signal::kill(pid, None).is_ok() {
        if tokio::time::Instant::now() >= deadline {
            bail!("the instance (pid {pid}) is still stopping after {limit:?}; see `lookit-local logs app`");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// `down --purge`: deletes the services' data. Refuses while an instance runs.
pub async fn purge(home: &Home, config: &Config) -> anyhow::Result<()> {
    if InstanceRecord::read_live(&home.instance_file())?.is_some() {
        bail!("an instance is still running; stop it first with `lookit-local down`");
    }
    lookit_stack::purge(home, config).await?;
    Ok(())
}

/// Connection settings in the variable names of Lookit's own `.env`, so the original Django
/// server can run against this stack. Uses the running instance's real addresses when one runs
/// (ports may have moved), the configured ones otherwise.
pub async fn lookit_env(
    home: &Home,
    config: &Config,
) -> anyhow::Result<Vec<(&'static str, String)>> {
    let secrets = Secrets::load_or_generate(&home.secrets_file())?;
    let report = status(home, config).await?;
    let address_of = |name: &str| {
        report
            .services
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.address.clone())
    };
    let split = |address: Option<String>, default_port: u16| -> (String, String) {
        match address.as_deref().and_then(|a| a.rsplit_once(':')) {
            Some((host, port)) => (host.to_string(), port.to_string()),
            None => ("127.0.0.1".to_string(), default_port.to_string()),
        }
    };
    let (
        db_host,
        db_port,
        db_user,
        db_password,
        db_name,
        rabbit_host,
        rabbit_port,
        rabbit_user,
        rabbit_password,
        vhost,
    );
    if config.stack.backend == Backend::External {
        let pg =
            config.postgres.url.as_ref().ok_or_else(|| {
                anyhow::anyhow!("`postgres.url` is not set for the external backend")
            })?;
        let mq =
            config.rabbitmq.url.as_ref().ok_or_else(|| {
                anyhow::anyhow!("`rabbitmq.url` is not set for the external backend")
            })?;
        db_host = pg.host_str().unwrap_or("127.0.0.1").to_string();
        db_port = pg.port().unwrap_or(5432).to_string();
        db_user = pg.username().to_string();
        db_password = pg.password().unwrap_or_default().to_string();
        db_name = pg.path().trim_start_matches('/').to_string();
        rabbit_host = mq.host_str().unwrap_or("127.0.0.1").to_string();
        rabbit_port = mq.port().unwrap_or(5672).to_string();
        rabbit_user = mq.username().to_string();
        rabbit_password = mq.password().unwrap_or_default().to_string();
        vhost = config.rabbitmq.vhost.clone();
    } else {
        (db_host, db_port) = split(address_of("postgres"), config.postgres.port.0);
        (rabbit_host, rabbit_port) = split(address_of("rabbitmq"), config.rabbitmq.port.0);
        db_user = config.postgres.user.to_string();
        db_password = secrets.postgres_password.expose_secret().to_string();
        db_name = config.postgres.database.to_string();
        rabbit_user = config.rabbitmq.user.to_string();
        rabbit_password = secrets.rabbitmq_password.expose_secret().to_string();
        vhost = config.rabbitmq.vhost.clone();
    }
    let mut broker_url = url::Url::parse("amqp://localhost/")?;
    let _ = broker_url.set_host(Some(&rabbit_host));
    let _ = broker_url.set_port(rabbit_port.parse().ok());
    let _ = broker_url.set_username(&rabbit_user);
    let _ = broker_url.set_password(Some(&rabbit_password));
    broker_url
        .path_segments_mut()
        .map_err(|_| anyhow::anyhow!("amqp URLs have a path"))?
        .clear()
        .push(&vhost);
    let base_url = report
        .api
        .url
        .clone()
        .unwrap_or_else(|| format!("https://localhost:{}", config.api.port.0));
    Ok(vec![
        ("DB_NAME", db_name),
        ("DB_HOST", db_host),
        ("DB_PORT", db_port),
        ("DB_USER", db_user),
        ("DB_PASSWORD", db_password),
        ("RABBITMQ_HOST", rabbit_host),
        ("RABBITMQ_PORT", rabbit_port),
        ("RABBITMQ_USERNAME", rabbit_user),
        ("RABBITMQ_PASSWORD", rabbit_password),
        ("RABBITMQ_VHOST", vhost),
        ("BROKER_URL", broker_url.to_string()),
        ("BASE_URL", base_url),
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
