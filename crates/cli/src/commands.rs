//! One function per command. Commands talk to a running instance through its panel API (the
//! same API the UI uses), found through the instance record in the data home.

use std::io::{BufRead, IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};

use lookit_config::Secrets;
use lookit_config::{Config, Home};
use lookit_control::{InstanceRecord, PanelClient, ServiceAddresses, TunnelCheck};
use lookit_status::{StatusReport, TunnelState};
use secrecy::{ExposeSecret, SecretString};

use crate::{
    AdminAction, BuilderAction, CertsAction, Command, ConfigAction, DemoAction, Outcome,
    TunnelAction,
};

pub async fn run(command: Command, home: Home, config: Config) -> anyhow::Result<Outcome> {
    match command {
        Command::Up { headless, backend } => {
            let mut config = config;
            if let Some(backend) = backend {
                config.stack.backend = backend.into();
            }
            lookit_control::run_foreground(home, config, headless).await?;
            Ok(Outcome::Done)
        }
        Command::Down { purge, yes } => down(&home, &config, purge, yes).await,
        Command::Status { json } => status(&home, &config, json).await,
        Command::Doctor { json } => doctor(&home, &config, json).await,
        Command::Env => env(&home, &config).await,
        Command::Logs {
            service,
            follow,
            lines,
        } => logs(&home, &service, follow, lines).await,
        Command::Config { action } => config_command(&home, &config, action),
        Command::Tunnel { action } => tunnel(&home, action).await,
        Command::Admin {
            action: AdminAction::CreateResearcher { email },
        } => create_researcher(&home, &config, &email).await,
        Command::Demo {
            action: DemoAction::Seed { json },
        } => demo_seed(&home, &config, json).await,
        Command::Worker => worker(home, config).await,
        Command::Build {
            study,
            player,
            wait,
        } => build(&home, &config, &study, player.as_deref(), wait).await,
        Command::Builder {
            action: BuilderAction::Build { force },
        } => builder_build(&config, force).await,
        Command::Study { action } => study(&home, &config, action).await,
        Command::Certs {
            action: CertsAction::Trust,
        } => certs_trust(&home),
    }
}

fn config_command(home: &Home, config: &Config, action: ConfigAction) -> anyhow::Result<Outcome> {
    match action {
        ConfigAction::Show => print!("{}", config.to_toml()),
        ConfigAction::Path => println!("{}", home.config_file().display()),
        // Loading already validated it: reaching this point means it is valid.
        ConfigAction::Check => {
            let source = if home.config_file().exists() {
                home.config_file().display().to_string()
            } else {
                format!("defaults (no file at {})", home.config_file().display())
            };
            println!("configuration is valid: {source}");
        }
    }
    Ok(Outcome::Done)
}

async fn down(home: &Home, config: &Config, purge: bool, yes: bool) -> anyhow::Result<Outcome> {
    match InstanceRecord::read_live(&home.instance_file())? {
        Some(record) => {
            println!("Stopping Lookit Local (pid {})…", record.pid);
            PanelClient::new(&record).shutdown().await?;
            lookit_control::wait_for_exit(record.pid, Duration::from_secs(120)).await?;
            println!("Stopped. Data is kept.");
        }
        None => println!("No instance is running for {}.", home.data_dir().display()),
    }
    if purge {
        if !yes && !confirm_purge(home)? {
            println!("Nothing deleted.");
            return Ok(Outcome::Problems);
        }
        lookit_control::purge(home, config).await?;
        println!("All service data of {} deleted.", home.data_dir().display());
    }
    Ok(Outcome::Done)
}

fn confirm_purge(home: &Home) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!("`down --purge` deletes every database and queue of this home; run it in a terminal to confirm, or add --yes");
    }
    print!(
        "This deletes all Postgres and RabbitMQ data under {}. Type `purge` to confirm: ",
        home.data_dir().display()
    );
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(answer.trim() == "purge")
}

async fn status(home: &Home, config: &Config, json: bool) -> anyhow::Result<Outcome> {
    let report = lookit_control::status(home, config).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", lookit_control::render_status(&report));
    }
    Ok(Outcome::Done)
}

async fn doctor(home: &Home, config: &Config, json: bool) -> anyhow::Result<Outcome> {
    let checks = lookit_control::doctor(home, config).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        print!("{}", lookit_control::render_doctor(&checks));
    }
    Ok(
        if checks
            .iter()
            .all(|c| c.outcome != lookit_status::CheckOutcome::Failed)
        {
            Outcome::Done
        } else {
            Outcome::Problems
        },
    )
}

async fn env(home: &Home, config: &Config) -> anyhow::Result<Outcome> {
    for (name, value) in lookit_control::lookit_env(home, config).await? {
        println!("{name}={value}");
    }
    Ok(Outcome::Done)
}

/// Log files: one per managed service, and the app's own daily JSON files (`app`).
fn log_file(home: &Home, service: &str) -> anyhow::Result<PathBuf> {
    let dir = home.logs_dir();
    if service == "app" {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("no logs yet in {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .collect();
        files.sort();
        return files
            .pop()
            .with_context(|| format!("no app log in {}", dir.display()));
    }
    let path = dir.join(format!("{service}.log"));
    if path.exists() {
        return Ok(path);
    }
    let known: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_suffix(".log")
                        .map(String::from)
                })
                .collect()
        })
        .unwrap_or_default();
    bail!(
        "no log for `{service}` in {}; available: app{}",
        dir.display(),
        known.iter().map(|k| format!(", {k}")).collect::<String>()
    )
}

async fn logs(home: &Home, service: &str, follow: bool, lines: usize) -> anyhow::Result<Outcome> {
    let path = log_file(home, service)?;
    let mut file =
        std::fs::File::open(&path).with_context(|| format!("open {}", path.display()))?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    let all: Vec<&str> = text.lines().collect();
    for line in &all[all.len().saturating_sub(lines)..] {
        println!("{line}");
    }
    if follow {
        follow_file(&path, file).await?;
    }
    Ok(Outcome::Done)
}

/// Prints what is appended to `path` until Ctrl-C; starts over when the file is rotated.
async fn follow_file(path: &Path, mut file: std::fs::File) -> anyhow::Result<()> {
    let mut position = file.stream_position()?;
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = ticker.tick() => {}
        }
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if len < position {
            file = std::fs::File::open(path)?;
            position = 0;
        }
        if len > position {
            file.seek(SeekFrom::Start(position))?;
            let mut chunk = String::new();
            position += file.read_to_string(&mut chunk)? as u64;
            print!("{chunk}");
            std::io::stdout().flush()?;
        }
    }
}

/// The panel of the running instance, or a clear error saying how to start one.
fn running_instance(home: &Home) -> anyhow::Result<PanelClient> {
    match InstanceRecord::read_live(&home.instance_file())? {
        Some(record) => Ok(PanelClient::new(&record)),
        None => bail!(
            "Lookit Local is not running for {}; start it with `lookit-local up`",
            home.data_dir().display()
        ),
    }
}

async fn tunnel(home: &Home, action: TunnelAction) -> anyhow::Result<Outcome> {
    let panel = running_instance(home)?;
    match action {
        TunnelAction::Start { provider, server } => {
            let body = serde_json::json!({ "provider": provider, "server": server });
            let _: serde_json::Value = panel.post("/api/tunnel/start", &body).await?;
            let report: StatusReport = panel.get("/api/status").await?;
            match &report.tunnel.public_url {
                Some(url) => {
                    println!("Sharing at {url}");
                    println!(
                        "Pipe webhook URL: {}/exp/renamevideo/",
                        url.trim_end_matches('/')
                    );
                }
                None => println!("Tunnel: {:?}", report.tunnel.state),
            }
        }
        TunnelAction::Stop => {
            let _: serde_json::Value = panel
                .post("/api/tunnel/stop", &serde_json::json!({}))
                .await?;
            println!("Sharing stopped.");
        }
        TunnelAction::Status { json } => {
            let report: StatusReport = panel.get("/api/status").await?;
            // Only an open (or reconnecting) tunnel has hops to check.
            let check: Option<TunnelCheck> = match report.tunnel.state {
                TunnelState::Open | TunnelState::Reconnecting => Some(
                    panel
                        .get("/api/tunnel/check")
                        .await
                        .context("check the tunnel end to end")?,
                ),
                _ => None,
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "tunnel": report.tunnel, "check": check })
                    )?
                );
            } else {
                println!(
                    "{:?}{}",
                    report.tunnel.state,
                    report
                        .tunnel
                        .public_url
                        .map(|u| format!(" at {u}"))
                        .unwrap_or_default()
                );
                if let Some(check) = &check {
                    print!("{}", lookit_control::render_tunnel_check(check));
                }
            }
        }
    }
    Ok(Outcome::Done)
}

async fn database(home: &Home, config: &Config) -> anyhow::Result<sqlx::PgPool> {
    let secrets = Secrets::load_or_generate(&home.secrets_file())?;
    ServiceAddresses::of(home, config, &secrets)
        .await?
        .database()
        .await
}

async fn create_researcher(home: &Home, config: &Config, email: &str) -> anyhow::Result<Outcome> {
    // A password piped on stdin is used; in a terminal, one is generated and shown once.
    let password = if std::io::stdin().is_terminal() {
        None
    } else {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        let text = text.trim_end_matches(['\r', '\n']).to_string();
        (!text.is_empty()).then(|| SecretString::from(text))
    };
    let pool = database(home, config).await?;
    let created = lookit_api::admin::create_researcher(&pool, "local", email, password).await?;
    println!("Researcher {email} created (id {}).", created.id);
    if let Some(password) = &created.generated_password {
        println!("Password (shown once): {}", password.expose_secret());
    }
    println!("\nScan this with an authenticator app, then log in to activate it:\n");
    println!(
        "{}",
        lookit_api::admin::render_qr_terminal(&created.otpauth_uri)?
    );
    println!("{}", created.otpauth_uri);
    Ok(Outcome::Done)
}

async fn demo_seed(home: &Home, config: &Config, json: bool) -> anyhow::Result<Outcome> {
    let pool = database(home, config).await?;
    let ids = lookit_api::demo::seed(&pool).await?;
    let value = serde_json::to_value(&ids)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else if let Some(fields) = value.as_object() {
        println!("Demo data created:");
        for (name, id) in fields {
            println!(
                "  {name:<12} {}",
                id.as_str()
                    .map(String::from)
                    .unwrap_or_else(|| id.to_string())
            );
        }
    }
    Ok(Outcome::Done)
}

/// A worker of its own, for labs that run several on several machines against one broker.
async fn worker(home: Home, config: Config) -> anyhow::Result<Outcome> {
    let _log = lookit_control::telemetry::init(&config.log, &home.logs_dir(), "worker")?;
    let secrets = Secrets::load_or_generate(&home.secrets_file())?;
    let addresses = ServiceAddresses::of(&home, &config, &secrets).await?;
    let pool = addresses.database().await?;
    let stores = lookit_control::StoreLocations::from_config(&config.storage, &secrets, &home);
    let settings = lookit_control::worker_settings(&config, stores, &home, addresses.broker_url());
    let (events, _) = tokio::sync::broadcast::channel(1024);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match terminate.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        stop.cancel();
    });
    println!("Worker consuming builds, email and cleanup (Ctrl-C to stop).");
    lookit_worker::run(pool, settings, events, shutdown).await?;
    Ok(Outcome::Done)
}

/// Builds the builder image (when missing, or always with `force`), printing each step, the
/// steps' output and the base image's download as they happen.
async fn builder_build(config: &Config, force: bool) -> anyhow::Result<Outcome> {
    let image = lookit_worker::BuilderImage::connect(
        config.builds.builder_image.to_string(),
        config.builds.builder_base_image.to_string(),
    )?;
    let print = |progress: lookit_worker::BuilderImageProgress| println!("{progress}");
    let ready = if force {
        image.rebuild(print).await?
    } else {
        image.ensure(print).await?
    };
    if !ready.built {
        println!(
            "{} is already on this machine ({}); `--force` rebuilds it.",
            image.name(),
            ready.id
        );
    }
    Ok(Outcome::Done)
}

fn certs_trust(home: &Home) -> anyhow::Result<Outcome> {
    let ca = lookit_api::tls::LocalCa::load_or_create(&home.certs_dir())?;
    let report = ca.trust();
    for done in &report.done {
        println!("done: {done}");
    }
    if report.commands.is_empty() {
        println!(
            "The local CA ({}) is trusted.",
            ca.ca_certificate_path().display()
        );
        return Ok(Outcome::Done);
    }
    println!("Run these to finish trusting the local CA:");
    for command in &report.commands {
        println!("  {command}");
    }
    Ok(Outcome::Problems)
}

async fn build(
    home: &Home,
    config: &Config,
    study: &str,
    player: Option<&str>,
    wait: bool,
) -> anyhow::Result<Outcome> {
    let study = study_id(study)?;
    let pool = database(home, config).await?;
    let queued = match player {
        Some(player) => {
            let player = lookit_watch::Player::parse(player).context("--player")?;
            lookit_watch::queue_build_with_player(&pool, study, &player).await
        }
        None => lookit_api::queue_study_build(&pool, study).await,
    }
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("Build {} queued.", queued.id);
    if InstanceRecord::read_live(&home.instance_file())?.is_none() {
        println!("Lookit Local is not running: the build starts when it is (`lookit-local up`).");
    }
    if !wait {
        return Ok(Outcome::Done);
    }
    let outcome = lookit_worker::follow_build(&pool, queued.id, |line| println!("{line}")).await?;
    match outcome.status {
        lookit_contracts::BuildStatus::Succeeded => {
            println!("Build {} succeeded.", queued.id);
            Ok(Outcome::Done)
        }
        status => {
            eprintln!(
                "Build {} {}{}{}",
                queued.id,
                serde_json::to_value(status)?.as_str().unwrap_or("ended"),
                outcome
                    .stage
                    .map(|s| format!(" at stage {s}"))
                    .unwrap_or_default(),
                outcome.error.map(|e| format!(": {e}")).unwrap_or_default()
            );
            Ok(Outcome::Problems)
        }
    }
}

fn study_id(study: &str) -> anyhow::Result<uuid::Uuid> {
    study
        .parse()
        .map_err(|_| anyhow::anyhow!("{study:?} is not a study id (a UUID, as `demo seed` prints)"))
}

/// `study watch` / `study unwatch`: the link is stored; the running app (if any) follows it.
async fn study(
    home: &Home,
    config: &Config,
    action: crate::StudyAction,
) -> anyhow::Result<Outcome> {
    let running = InstanceRecord::read_live(&home.instance_file())?.is_some();
    match action {
        crate::StudyAction::Watch {
            study,
            player,
            protocol,
        } => {
            let study = study_id(&study)?;
            let pool = database(home, config).await?;
            let link =
                lookit_watch::link_study(&pool, study, player.as_deref(), protocol.as_deref())
                    .await?;
            if let Some(player) = &link.player_folder {
                println!("Player folder: {player} (each burst of changes rebuilds the study)");
            }
            if let Some(protocol) = &link.protocol_folder {
                println!(
                    "Protocol folder: {protocol} (valid changes become the study's structure)"
                );
            }
            if !running {
                println!("Lookit Local is not running: watching starts with `lookit-local up`.");
            }
        }
        crate::StudyAction::Unwatch { study } => {
            let study = study_id(&study)?;
            let pool = database(home, config).await?;
            if lookit_watch::unlink_study(&pool, study).await? {
                println!("Study {study} is no longer watched.");
            } else {
                println!("Study {study} had no watched folders.");
            }
        }
    }
    Ok(Outcome::Done)
}
