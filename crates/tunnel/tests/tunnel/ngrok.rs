//! The ngrok adapter: its clear errors always, a real tunnel only with `NGROK_AUTHTOKEN`.

use lookit_status::TunnelState;
use lookit_tunnel::{
    ngrok_authtoken_from_env, NgrokProvider, ProviderSettings, TunnelError, TunnelProvider,
    TunnelSettings,
};
use secrecy::SecretString;
use serde_json::Value;

#[tokio::test]
async fn without_an_authtoken_the_user_is_told_where_to_get_one() {
    let (_db, pool) = lookit_testkit::migrated_database().await;
    let (api, _, _, _stop) = crate::common::start_api().await;
    let tunnel = crate::common::tunnel_to(pool, &format!("http://{api}"), None, Default::default());
    let settings = TunnelSettings {
        provider: ProviderSettings::Ngrok {
            authtoken: None,
            domain: None,
            server: None,
        },
        guardian: crate::common::fast_guardian(),
    };
    let err = tunnel.start(settings, "ada@lab.example").await.unwrap_err();
    assert!(matches!(err, TunnelError::NoAuthtoken), "{err}");
    let status = tunnel.status();
    assert_eq!(status.state, TunnelState::Failed);
    let message = status.message.unwrap();
    assert!(
        message.contains("https://dashboard.ngrok.com/get-started/your-authtoken"),
        "{message}"
    );
    assert!(message.contains("NGROK_AUTHTOKEN"), "{message}");
    assert!(
        tunnel.sessions().await.unwrap().is_empty(),
        "nothing was shared"
    );

    let blank = NgrokProvider::new(Some(SecretString::from("  ")), None, None).err();
    assert!(matches!(blank, Some(TunnelError::NoAuthtoken)));
}

#[tokio::test]
async fn without_network_the_user_is_told_to_check_the_connection() {
    lookit_testkit::install_crypto_provider();
    // Port 1 on loopback refuses connections, as an offline ingress would.
    let provider = NgrokProvider::new(
        Some(SecretString::from("2abcdefghijklmnop_not-a-real-token")),
        None,
        Some("127.0.0.1:1".into()),
    )
    .unwrap();
    let (api, _, _, _stop) = crate::common::start_api().await;
    let err = provider
        .open(api)
        .await
        .err()
        .expect("no ngrok without network");
    assert!(
        matches!(
            err,
            TunnelError::Unreachable {
                service: "ngrok",
                ..
            }
        ),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.contains("check that this computer is online"),
        "{message}"
    );
    assert!(
        !message.contains("not-a-real-token"),
        "the authtoken never shows: {message}"
    );
    assert!(
        err.is_transient(),
        "the guardian keeps trying when the network returns"
    );
}

#[tokio::test]
async fn with_an_authtoken_ngrok_serves_the_api_at_a_public_url() {
    let Some(authtoken) = ngrok_authtoken_from_env() else {
        eprintln!("skipped: NGROK_AUTHTOKEN is not set, so no real ngrok tunnel can be opened");
        return;
    };
    lookit_testkit::install_crypto_provider();
    let (api, log, _, _stop) = crate::common::start_api().await;
    let provider = NgrokProvider::new(Some(authtoken), None, None).unwrap();
    let tunnel = provider.open(api).await.unwrap();
    let url = tunnel.public_url().clone();
    assert_eq!(url.scheme(), "https");
    let seen: Value = reqwest::get(format!("{url}exp/"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["answered_by"], "api");
    assert_eq!(log.requests().len(), 1);
    tunnel.close().await;
}
