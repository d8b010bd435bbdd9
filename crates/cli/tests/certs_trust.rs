//! `lookit-local certs trust` on this machine: afterwards the system's trust store and the user's
//! browser (NSS) store accept the API's certificate. It changes the system store, so it runs only
//! as root (as CI does) and takes the CA out again when it ends, even when it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use assert_cmd::cargo::CommandCargoExt;

const SYSTEM_FILE: &str = "/usr/local/share/ca-certificates/lookit-local-ca.crt";

/// Takes the test's CA out of the system store when the test ends.
struct SystemStoreCleanup;

impl Drop for SystemStoreCleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(SYSTEM_FILE);
        let _ = Command::new("update-ca-certificates")
            .arg("--fresh")
            .output();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

/// Whether `openssl verify`, with only the system's trust store, accepts `certificate`.
fn system_store_accepts(certificate: &Path) -> bool {
    Command::new("openssl")
        .args(["verify", "-CApath", "/etc/ssl/certs"])
        .arg(certificate)
        .output()
        .is_ok_and(|out| out.status.success())
}

#[test]
fn certs_trust_makes_the_system_and_the_browser_store_accept_the_api() {
    if !is_root() {
        eprintln!("skipped: `certs trust` changes the system trust store; run as root (CI does)");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let user_home = tempfile::tempdir().unwrap();
    let _cleanup = SystemStoreCleanup;
    let out = Command::cargo_bin("lookit-local")
        .unwrap()
        .env("LOOKIT_LOCAL_HOME", home.path())
        .env("HOME", user_home.path())
        .args(["certs", "trust"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "certs trust failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("is trusted"), "{stdout}");

    let server: PathBuf = home.path().join("certs/server.pem");
    assert!(
        system_store_accepts(&server),
        "the system store does not accept the API's certificate after `certs trust`"
    );
    let nss = Command::new("certutil")
        .arg("-d")
        .arg(format!(
            "sql:{}",
            user_home.path().join(".pki/nssdb").display()
        ))
        .args(["-L", "-n", "Lookit Local CA"])
        .output()
        .unwrap();
    assert!(
        nss.status.success(),
        "the browser store has no Lookit Local CA: {}",
        String::from_utf8_lossy(&nss.stderr)
    );
}
