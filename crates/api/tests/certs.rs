//! The local certificate authority renews what is about to expire, and keeps what is not.

use lookit_api::tls::{LocalCa, CA_FILE, CA_KEY_FILE, SERVER_FILE, SERVER_KEY_FILE};
use rcgen::{CertificateParams, KeyPair};
use time::{Duration, OffsetDateTime};

fn not_after(pem: &str) -> OffsetDateTime {
    CertificateParams::from_ca_cert_pem(pem).unwrap().not_after
}

fn read(dir: &std::path::Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap()
}

/// Re-issues the server certificate in `dir` from the CA there, valid for `days` more days, as an
/// old installation would have it.
fn age_server_certificate(dir: &std::path::Path, days: i64) {
    let ca_key = KeyPair::from_pem(&read(dir, CA_KEY_FILE)).unwrap();
    let ca = CertificateParams::from_ca_cert_pem(&read(dir, CA_FILE))
        .unwrap()
        .self_signed(&ca_key)
        .unwrap();
    let key = KeyPair::from_pem(&read(dir, SERVER_KEY_FILE)).unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_before = OffsetDateTime::now_utc() - Duration::days(360);
    params.not_after = OffsetDateTime::now_utc() + Duration::days(days);
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    std::fs::write(dir.join(SERVER_FILE), cert.pem()).unwrap();
}

#[test]
fn a_server_certificate_about_to_expire_is_renewed_by_the_same_ca() {
    let certs = tempfile::tempdir().unwrap();
    let first = LocalCa::load_or_create(certs.path()).unwrap();
    age_server_certificate(certs.path(), 5);
    let aged = read(certs.path(), SERVER_FILE);

    let renewed = LocalCa::load_or_create(certs.path()).unwrap();
    let server = read(certs.path(), SERVER_FILE);
    assert_ne!(server, aged, "a certificate with 5 days left was kept");
    assert!(not_after(&server) > OffsetDateTime::now_utc() + Duration::days(300));
    // Browsers that trust the CA keep trusting the renewed certificate.
    assert_eq!(renewed.ca_pem(), first.ca_pem());
    renewed.server_config().unwrap();
}

#[test]
fn a_certificate_with_time_left_is_kept() {
    let certs = tempfile::tempdir().unwrap();
    LocalCa::load_or_create(certs.path()).unwrap();
    age_server_certificate(certs.path(), 200);
    let aged = read(certs.path(), SERVER_FILE);
    LocalCa::load_or_create(certs.path()).unwrap();
    assert_eq!(read(certs.path(), SERVER_FILE), aged);
}

#[test]
fn an_unreadable_certificate_is_replaced_not_fatal() {
    let certs = tempfile::tempdir().unwrap();
    LocalCa::load_or_create(certs.path()).unwrap();
    std::fs::write(certs.path().join(SERVER_FILE), "not a certificate").unwrap();
    let ca = LocalCa::load_or_create(certs.path()).unwrap();
    assert!(read(certs.path(), SERVER_FILE).starts_with("-----BEGIN CERTIFICATE-----"));
    ca.server_config().unwrap();
}

/// The SHA-256 fingerprint of a PEM certificate, as `openssl` prints it.
fn fingerprint(pem: &[u8]) -> String {
    use std::io::Write;
    let mut x509 = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    x509.stdin.take().unwrap().write_all(pem).unwrap();
    let out = x509.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Fingerprint="), "no certificate in: {text}");
    text
}

/// The fingerprint of the certificate the server at `port` presents (what a browser sees).
fn presented(port: u16) -> String {
    let client = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", "localhost"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    fingerprint(&client.stdout)
}

#[tokio::test]
async fn a_running_server_switches_to_the_renewed_certificate() {
    rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .ok();
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path().to_path_buf();
    let tls = LocalCa::load_or_create(&dir)
        .unwrap()
        .server_config()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(lookit_api::serve(listener, Some(tls.clone()), app, async {
        stopped.await.ok();
    }));
    let on_disk = |dir: &std::path::Path| fingerprint(read(dir, SERVER_FILE).as_bytes());
    let first = tokio::task::spawn_blocking(move || presented(port))
        .await
        .unwrap();
    assert_eq!(first, on_disk(&dir));
    assert!(
        !tls.renew_if_due().unwrap(),
        "a fresh certificate was renewed"
    );

    // Months later: the certificate has 5 days left.
    age_server_certificate(&dir, 5);
    assert!(
        tls.renew_if_due().unwrap(),
        "a certificate with 5 days left was not renewed"
    );
    let renewed = tokio::task::spawn_blocking(move || presented(port))
        .await
        .unwrap();
    assert_ne!(
        renewed, first,
        "the running server still presents the old certificate"
    );
    assert_eq!(
        renewed,
        on_disk(&dir),
        "the server presents another certificate than the renewed one"
    );
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
