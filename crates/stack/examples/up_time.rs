//! Benchmark: time from `Stack::start` to Ready, cold (first start) and warm (data exists),
//! next to each service's own boot (from its process/container start to its first accepted
//! login), measured in the same run. The ratio up / slowest boot is the figure.
//!
//! `cargo run --release -p lookit-stack --example up_time -- native|docker`
//! (docker uses the locally built `lookit-test/*` images).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lookit_config::{Backend, Config, Home, Secrets};
use lookit_stack::{Stack, StackEvent};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let backend = match std::env::args().nth(1).as_deref() {
        Some("docker") => Backend::Docker,
        Some("native") | None => Backend::Native,
        Some(other) => anyhow::bail!("unknown backend {other:?}: expected native or docker"),
    };
    let dir = tempfile::tempdir()?;
    let home = Home::at(dir.path());
    let mut config = Config::default();
    config.stack.backend = backend;
    config.postgres.port.0 = 0;
    config.rabbitmq.port.0 = 0;
    config.rabbitmq.management_port.0 = 0;
    config.postgres.image = "lookit-test/postgres:latest"
        .to_string()
        .try_into()
        .map_err(anyhow::Error::msg)?;
    config.rabbitmq.image = "lookit-test/rabbitmq:latest"
        .to_string()
        .try_into()
        .map_err(anyhow::Error::msg)?;
    let secrets = Secrets::load_or_generate(&home.secrets_file())?;

    println!("backend {backend}");
    for run in ["cold", "warm"] {
        let (events, mut received) = tokio::sync::broadcast::channel(4096);
        let started = Instant::now();
        // Timestamps each event as it arrives, while the stack starts.
        let recorder = tokio::spawn(async move {
            let mut launched = HashMap::new();
            let mut boot = HashMap::new();
            while let Ok(event) = received.recv().await {
                if let StackEvent::Step { service, step, .. } = event {
                    match step.as_str() {
                        "process" | "container" => {
                            launched.insert(service, Instant::now());
                        }
                        "ready" => {
                            if let Some(at) = launched.get(&service) {
                                boot.insert(service, at.elapsed());
                            }
                        }
                        _ => {}
                    }
                }
            }
            boot
        });
        let stack = Stack::start(&home, &config, &secrets, events).await?;
        let up = started.elapsed();
        stack.shutdown().await?;
        let boot: HashMap<String, Duration> = recorder.await?;
        let slowest = boot
            .values()
            .max()
            .copied()
            .ok_or_else(|| anyhow::anyhow!("no service reported its boot"))?;
        let mut services: Vec<_> = boot.iter().collect();
        services.sort();
        let boots = services
            .iter()
            .map(|(service, time)| format!("{service} {:.2}s", time.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "{run}: up {:.2}s; own boot: {boots}; ratio {:.2}",
            up.as_secs_f64(),
            up.as_secs_f64() / slowest.as_secs_f64()
        );
    }
    lookit_stack::purge(&home, &config).await?;
    Ok(())
}
