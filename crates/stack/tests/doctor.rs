//! `doctor`: prerequisites with what is wrong and the exact fix.

use lookit_config::{Config, Home};
use lookit_stack::{doctor, CheckOutcome};

#[tokio::test]
async fn doctor_names_the_program_holding_a_port_and_says_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::at(dir.path());
    let holder = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let taken = holder.local_addr().unwrap().port();
    let mut config = Config::default();
    config.postgres.port.0 = taken;

    let checks = doctor(&home, &config).await;
    let port = checks
        .iter()
        .find(|c| c.name == format!("port {taken} (postgres)"))
        .expect("the postgres port is checked");
    assert_eq!(port.outcome, CheckOutcome::Warning);
    assert!(
        port.detail.contains(&format!("pid {}", std::process::id())),
        "{}",
        port.detail
    );
    assert!(port.fix.as_deref().unwrap().contains("postgres.port"));

    // On this machine the Debian packages are installed; every check serialises for `--json`.
    for name in [
        "postgres binaries",
        "rabbitmq binaries",
        "disk space (data)",
    ] {
        let check = checks.iter().find(|c| c.name == name).expect(name);
        assert_eq!(check.outcome, CheckOutcome::Ok, "{check:?}");
    }
    let json = serde_json::to_value(&checks).unwrap();
    assert!(json
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["name"].is_string() && c["outcome"].is_string()));
}
