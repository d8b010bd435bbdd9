//! `lookit-local doctor`: every prerequisite, what is wrong with it and the exact fix.

use std::path::Path;

use lookit_config::{Backend, Config, Home};
use lookit_status::{CheckOutcome, DoctorCheck};

use crate::{docker, native, ports};

/// Free space below which builds and images are likely to fail.
const MIN_FREE_BYTES: u64 = 5 * 1024 * 1024 * 1024;

/// Every prerequisite with what is wrong and the exact fix command.
pub async fn doctor(home: &Home, config: &Config) -> Vec<DoctorCheck> {
    let sudo = if nix::unistd::Uid::effective().is_root() {
        ""
    } else {
        "sudo "
    };
    let mut checks = Vec::new();
    let docker_needed = matches!(config.stack.backend, Backend::Docker);
    match docker::connect(config).await {
        Ok(docker) => {
            let version = docker
                .version()
                .await
                .ok()
                .and_then(|v| v.version)
                .unwrap_or_default();
            checks.push(ok("docker engine", format!("Docker {version} answers")));
            checks.push(docker_disk_space(&docker).await);
        }
        Err(error) => {
            let installed = which("dockerd");
            let fix = if installed {
                format!("{sudo}systemctl start docker  (without systemd: {sudo}dockerd >/var/log/dockerd.log 2>&1 &)")
            } else {
                format!("{sudo}apt-get install -y docker.io && {sudo}systemctl start docker")
            };
            checks.push(DoctorCheck {
                name: "docker engine".into(),
                outcome: if docker_needed {
                    CheckOutcome::Failed
                } else {
                    CheckOutcome::Warning
                },
                detail: format!("{error}; study builds need Docker"),
                fix: Some(fix),
            });
        }
    }

    let native_needed = config.stack.backend == Backend::Native;
    let missing_outcome = if native_needed {
        CheckOutcome::Failed
    } else {
        CheckOutcome::Warning
    };
    checks.push(match native::postgres_bin_dir() {
        Some(bin) => ok("postgres binaries", format!("found in {}", bin.display())),
        None => DoctorCheck {
            name: "postgres binaries".into(),
            outcome: missing_outcome,
            detail: "no Postgres server under /usr/lib/postgresql (needed by the native backend)"
                .into(),
            fix: Some(format!("{sudo}apt-get install -y postgresql")),
        },
    });
    checks.push(if Path::new(native::RABBITMQ_SERVER).exists() {
        ok(
            "rabbitmq binaries",
            format!("found {}", native::RABBITMQ_SERVER),
        )
    } else {
        DoctorCheck {
            name: "rabbitmq binaries".into(),
            outcome: missing_outcome,
            detail: "rabbitmq-server is not installed (needed by the native backend)".into(),
            fix: Some(format!("{sudo}apt-get install -y rabbitmq-server")),
        }
    });

    let webkit = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
    ]
    .iter()
    .map(|dir| Path::new(dir).join("libwebkit2gtk-4.1.so.0"))
    .find(|path| path.exists());
    checks.push(match webkit {
        Some(path) => ok("webkit", format!("found {}", path.display())),
        None => DoctorCheck {
            name: "webkit".into(),
            outcome: CheckOutcome::Warning,
            detail:
                "libwebkit2gtk-4.1 is missing: the desktop window cannot open (headless mode works)"
                    .into(),
            fix: Some(format!("{sudo}apt-get install -y libwebkit2gtk-4.1-0")),
        },
    });

    let wanted_ports = [
        ("postgres", "postgres.port", config.postgres.port.0),
        ("rabbitmq", "rabbitmq.port", config.rabbitmq.port.0),
        (
            "rabbitmq management",
            "rabbitmq.management_port",
            config.rabbitmq.management_port.0,
        ),
        ("api", "api.port", config.api.port.0),
        ("panel", "panel.port", config.panel.port.0),
    ];
    for (service, key, port) in wanted_ports {
        if port == 0 {
            continue;
        }
        let name = format!("port {port} ({service})");
        if ports::is_free(port) {
            checks.push(ok(&name, "free".into()));
            continue;
        }
        let holder = ports::port_holder(port);
        let held_by = holder
            .as_deref()
            .map(|h| format!("held by {h}"))
            .unwrap_or_else(|| "held by another program (run as root to see which)".into());
        checks.push(DoctorCheck {
            name,
            outcome: CheckOutcome::Warning,
            detail: format!("{held_by}; Lookit Local will pick another free port"),
            fix: Some(format!(
                "stop that program, or set `{key} = <port>` (0 = any free port) in {}",
                home.config_file().display()
            )),
        });
    }

    checks.push(disk_space(
        "disk space (data)",
        existing_ancestor(home.data_dir()),
    ));
    checks
}

/// Free space where Docker keeps images and build layers.
pub(crate) async fn docker_disk_space(docker: &bollard::Docker) -> DoctorCheck {
    let root = docker
        .info()
        .await
        .ok()
        .and_then(|info| info.docker_root_dir)
        .unwrap_or_else(|| "/var/lib/docker".into());
    disk_space("disk space (docker)", Path::new(&root))
}

fn disk_space(name: &str, path: &Path) -> DoctorCheck {
    match nix::sys::statvfs::statvfs(path) {
        Ok(stats) => {
            let free = stats.blocks_available() * stats.fragment_size();
            let gib = free as f64 / (1024.0 * 1024.0 * 1024.0);
            if free >= MIN_FREE_BYTES {
                ok(name, format!("{gib:.1} GiB free in {}", path.display()))
            } else {
                DoctorCheck {
                    name: name.into(),
                    outcome: CheckOutcome::Warning,
                    detail: format!(
                        "only {gib:.1} GiB free in {}: images and study builds need about 5 GiB",
                        path.display()
                    ),
                    fix: Some(
                        "docker system prune  (removes unused images and stopped containers)"
                            .into(),
                    ),
                }
            }
        }
        Err(error) => DoctorCheck {
            name: name.into(),
            outcome: CheckOutcome::Warning,
            detail: format!("cannot read the free space of {}: {error}", path.display()),
            fix: None,
        },
    }
}

fn existing_ancestor(path: &Path) -> &Path {
    path.ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(program).is_file()
        || Path::new("/usr/bin").join(program).is_file()
}

fn ok(name: &str, detail: String) -> DoctorCheck {
    DoctorCheck {
        name: name.into(),
        outcome: CheckOutcome::Ok,
        detail,
        fix: None,
    }
}
