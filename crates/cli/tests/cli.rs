//! The `lookit-local` binary as users run it: a bad config stops every command with the key, file
//! and line; `config` shows no secrets; `doctor` says what to run; and a whole `up` → `status` →
//! `env` → `down` cycle on the native backend (real Postgres and RabbitMQ).

mod common;

use std::process::Command;

use common::{build_the_demo_study, lookit, output, up_until_ready, BuiltDemo, TEST_BUILDER};

#[test]
fn a_bad_config_stops_every_command_with_key_file_and_line() {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("config.toml");
    std::fs::write(&file, "[api]\nport = 8000\n\n[postgres]\nport = \"five\"\n").unwrap();
    for args in [
        &["status"][..],
        &["doctor"],
        &["env"],
        &["config", "check"],
        &["config", "show"],
        &["up", "--headless"],
        &["down"],
    ] {
        let (ok, _, stderr) = output(lookit(home.path()).args(args));
        assert!(!ok, "`{}` accepted a bad config", args.join(" "));
        assert!(
            stderr.contains(&file.display().to_string())
                && stderr.contains("line 5")
                && stderr.contains("`postgres.port`"),
            "`{}` did not name the file, line and key: {stderr}",
            args.join(" ")
        );
    }
    std::fs::write(&file, "[api]\nport = 8000\nhost = \"0.0.0.0\"\n").unwrap();
    let (ok, _, stderr) = output(lookit(home.path()).args(["status"]));
    assert!(!ok);
    assert!(
        stderr.contains("`api.host`") && stderr.contains("line 3"),
        "{stderr}"
    );
}

#[test]
fn config_show_has_every_section_and_no_generated_secret() {
    let home = tempfile::tempdir().unwrap();
    // Generating the secrets first proves `config show` does not print them.
    let (ok, _, stderr) = output(lookit(home.path()).args(["env"]));
    assert!(ok, "{stderr}");
    let secrets = std::fs::read_to_string(home.path().join("secrets.toml")).unwrap();
    let (ok, shown, _) = output(lookit(home.path()).args(["config", "show"]));
    assert!(ok);
    for section in [
        "[stack]",
        "[postgres]",
        "[rabbitmq]",
        "[api]",
        "[panel]",
        "[builds]",
    ] {
        assert!(shown.contains(section), "missing {section} in:\n{shown}");
    }
    for line in secrets.lines() {
        let value = line.split('"').nth(1).unwrap();
        assert!(!shown.contains(value), "config show printed a secret");
    }
    let (ok, path, _) = output(lookit(home.path()).args(["config", "path"]));
    assert!(ok);
    assert_eq!(
        path.trim(),
        home.path().join("config.toml").display().to_string()
    );
}

#[test]
fn doctor_names_the_command_that_fixes_an_unreachable_docker_engine() {
    let home = tempfile::tempdir().unwrap();
    let (ok, stdout, _) = output(
        lookit(home.path())
            .env("LOOKIT_LOCAL__STACK__BACKEND", "docker")
            .env(
                "LOOKIT_LOCAL__DOCKER__HOST",
                "unix:///nonexistent/docker.sock",
            )
            .args(["doctor"]),
    );
    assert!(!ok, "doctor must fail when the chosen backend cannot work");
    assert!(stdout.contains("FAIL"), "{stdout}");
    assert!(stdout.to_lowercase().contains("docker"), "{stdout}");
    assert!(stdout.contains("fix: "), "no fix command in:\n{stdout}");
}

#[test]
fn up_status_env_and_down_on_the_native_backend() {
    let home = tempfile::tempdir().unwrap();
    let running = up_until_ready(home.path(), &[]);

    let (ok, json, stderr) = output(lookit(home.path()).args(["status", "--json"]));
    assert!(ok, "{stderr}");
    let status: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(status["ready"], true, "{json}");
    let names: Vec<&str> = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for wanted in ["postgres", "rabbitmq", "api", "worker"] {
        assert!(names.contains(&wanted), "{wanted} missing from {names:?}");
    }
    for queue in ["builds", "email", "cleanup"] {
        let q = status["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == queue)
            .unwrap_or_else(|| panic!("queue {queue} missing: {json}"));
        assert!(
            q["consumers"].as_u64().unwrap() >= 1,
            "nobody consumes {queue}: {json}"
        );
    }
    assert!(status["api"]["url"]
        .as_str()
        .unwrap()
        .starts_with("https://localhost:"));
    assert_eq!(status["tunnel"]["state"], "off");
    // A closed tunnel has no hops to check: `check` is there, and null.
    let (ok, json, stderr) = output(lookit(home.path()).args(["tunnel", "status", "--json"]));
    assert!(ok, "{stderr}");
    let tunnel: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(tunnel["tunnel"]["state"], "off", "{json}");
    assert_eq!(
        tunnel.get("check"),
        Some(&serde_json::Value::Null),
        "{json}"
    );

    // `env` gives the real (possibly moved) ports, and they accept the provisioned role.
    let (ok, env, _) = output(lookit(home.path()).args(["env"]));
    assert!(ok);
    let postgres = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "postgres")
        .unwrap();
    let port = postgres["address"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap();
    assert!(env.contains(&format!("DB_PORT={port}\n")), "{env}");
    assert!(env.contains("DB_NAME=lookit\n") && env.contains("RABBITMQ_USERNAME=lookit-admin\n"));
    assert!(env.contains("BROKER_URL=amqp://lookit-admin:"), "{env}");

    let (ok, _, stderr) = output(lookit(home.path()).args(["down"]));
    assert!(ok, "{stderr}");
    assert!(
        !home.path().join("instance.json").exists(),
        "the instance record must go with the instance"
    );
    let (ok, json, _) = output(lookit(home.path()).args(["status", "--json"]));
    assert!(ok);
    let status: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(status["running"], false);
    assert_eq!(status["ready"], false);
    drop(running);
}

#[test]
fn build_a_demo_study_from_a_player_folder_and_serve_it() {
    let home = tempfile::tempdir().unwrap();
    let running = up_until_ready(home.path(), &TEST_BUILDER);
    let BuiltDemo {
        study,
        player: _player,
        build_log: log,
        ..
    } = build_the_demo_study(home.path());
    assert!(
        log.contains("build finished"),
        "the builder's log was not followed:\n{log}"
    );
    assert!(log.contains("succeeded"), "{log}");

    // The API serves the built runner's files (the index only once the study is active).
    let (_, status, _) = output(lookit(home.path()).args(["status", "--json"]));
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let api = status["api"]["url"].as_str().unwrap().to_string();
    let ca = home.path().join("certs").join("ca.pem");
    let asset = Command::new("curl")
        .args([
            "-fsS",
            "-w",
            "\n%{content_type}",
            "--cacert",
            ca.to_str().unwrap(),
        ])
        .arg(format!("{api}/studies/{study}/assets/frameplayer.js"))
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&asset.stdout);
    assert!(
        asset.status.success(),
        "{}",
        String::from_utf8_lossy(&asset.stderr)
    );
    assert!(body.contains("console.log(\"frameplayer"), "{body}");
    assert!(
        body.contains("\ntext/javascript"),
        "wrong content type: {body}"
    );
    drop(running);
}
