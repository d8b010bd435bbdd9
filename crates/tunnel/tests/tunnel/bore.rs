//! The tunnel end to end with the self-hosted provider on loopback: a real bore server, the
//! inspector proxy, a stand-in Lookit API and a real Postgres.

use std::time::Duration;

use crate::common::{tunnel_to, wait_for_status, World};
use lookit_status::TunnelState;
use lookit_tunnel::{HopResult, InspectorSettings, TunnelError};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn capture_on() -> InspectorSettings {
    InspectorSettings {
        capture: true,
        ..InspectorSettings::default()
    }
}

#[tokio::test]
async fn a_request_to_the_public_url_reaches_the_api_and_is_recorded_redacted() {
    let world = World::new(InspectorSettings::default()).await;
    let public_url = world.share().await;
    assert_eq!(world.tunnel.status().state, TunnelState::Open);
    assert_eq!(
        world.tunnel.status().public_url.as_deref(),
        Some(&*public_url)
    );

    let response = reqwest::Client::new()
        .get(format!("{public_url}exp/studies/?token=s3cret"))
        .header("authorization", "Token abc")
        .header("x-study-note", "private")
        .header("user-agent", "lookit-test")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["answered_by"], "api");
    assert_eq!(seen["target"], "/exp/studies/?token=s3cret");
    // The API can rebuild the public URL the caller used (Pipe signs over it).
    let public_host = public_url
        .trim_start_matches("http://")
        .trim_end_matches('/');
    assert_eq!(seen["x_forwarded_host"], public_host);
    assert_eq!(seen["x_forwarded_proto"], "http");

    let recent = world.tunnel.inspector().recent(10).await.unwrap();
    assert_eq!(recent.len(), 1, "{recent:?}");
    let record = &recent[0];
    assert_eq!(record.method, "GET");
    assert_eq!(record.target, "/exp/studies/?[redacted]");
    assert_eq!(record.status, Some(200));
    assert!(record.response_bytes > 0);
    assert_eq!(
        header(&record.request_headers, "authorization"),
        Some("[redacted]")
    );
    assert_eq!(
        header(&record.request_headers, "x-study-note"),
        Some("[redacted]")
    );
    assert_eq!(
        header(&record.request_headers, "user-agent"),
        Some("lookit-test")
    );
    assert_eq!(record.request_body, None);
    assert_eq!(record.response_body, None);

    let sessions = world.tunnel.sessions().await.unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].started_by, "ada@lab.example");
    assert_eq!(sessions[0].provider, "bore");
    assert_eq!(sessions[0].public_urls, vec![public_url.clone()]);
    assert_eq!(sessions[0].request_count, 1);
    assert_eq!(sessions[0].ended_at, None);
}

#[tokio::test]
async fn a_recorded_webhook_can_be_replayed_to_the_api() {
    let world = World::new(capture_on()).await;
    let public_url = world.share().await;
    let form = "payload=%7B%22event%22%3A%22video_copied_s3%22%7D";
    let response = reqwest::Client::new()
        .post(format!("{public_url}exp/renamevideo/"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-pipe-signature", "c2lnbmF0dXJl")
        .header("authorization", "Token abc")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let original = world.tunnel.inspector().recent(1).await.unwrap().remove(0);
    assert_eq!(original.request_body.as_deref(), Some(form));
    assert!(original
        .response_body
        .unwrap()
        .contains("\"answered_by\":\"api\""));

    let replay = world.tunnel.inspector().replay(original.id).await.unwrap();
    assert_eq!(replay.replay_of, Some(original.id));
    assert_eq!(replay.status, Some(200));
    assert_eq!(replay.target, "/exp/renamevideo/");

    let seen = world.api_log.requests();
    assert_eq!(seen.len(), 2, "the API got the request and its replay");
    assert_eq!(seen[1]["method"], "POST");
    assert_eq!(seen[1]["body"], form);
    assert_eq!(seen[1]["x_pipe_signature"], "c2lnbmF0dXJl");
    assert_eq!(seen[1]["x_forwarded_host"], seen[0]["x_forwarded_host"]);
    // Credentials are never stored, so a replay cannot carry them.
    assert_eq!(seen[0]["authorization"], "Token abc");
    assert_eq!(seen[1]["authorization"], Value::Null);
    // A replay is not a request from outside.
    assert_eq!(world.tunnel.sessions().await.unwrap()[0].request_count, 1);
}

#[tokio::test]
async fn a_request_whose_body_was_not_recorded_is_not_replayed() {
    let world = World::new(InspectorSettings::default()).await;
    let public_url = world.share().await;
    let client = reqwest::Client::new();
    client
        .post(format!("{public_url}api/v1/video/"))
        .body("{\"data\":{}}")
        .send()
        .await
        .unwrap();
    client
        .get(format!("{public_url}api/v1/studies/"))
        .send()
        .await
        .unwrap();
    let recent = world.tunnel.inspector().recent(2).await.unwrap();
    let (get, post) = (&recent[0], &recent[1]);

    let err = world.tunnel.inspector().replay(post.id).await.unwrap_err();
    assert!(matches!(err, TunnelError::NotReplayable { .. }), "{err}");
    assert!(
        err.to_string().contains("turn on inspector capture"),
        "{err}"
    );
    assert_eq!(world.api_log.requests().len(), 2, "nothing was sent");

    let replay = world.tunnel.inspector().replay(get.id).await.unwrap();
    assert_eq!(replay.status, Some(200));
    assert_eq!(world.api_log.requests().len(), 3);

    let err = world.tunnel.inspector().replay(i64::MAX).await.unwrap_err();
    assert!(matches!(err, TunnelError::UnknownRequest(_)), "{err}");
}

#[tokio::test]
async fn the_control_panel_is_not_reachable_through_the_tunnel() {
    let world = World::new(InspectorSettings::default()).await;
    let (panel, _panel_stop) =
        crate::common::serve(axum::Router::new().fallback(|| async { "control panel" })).await;
    let public_url = world.share().await;
    let public = public_url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();

    // An absolute-form target and a Host header naming the panel still end at the API.
    let mut stream = tokio::net::TcpStream::connect(&public).await.unwrap();
    let request =
        format!("GET http://{panel}/ HTTP/1.1\r\nHost: {panel}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"answered_by\":\"api\""), "{answer}");
    assert!(!answer.contains("control panel"), "{answer}");

    let seen = world.api_log.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["target"], "/");
}

#[tokio::test]
async fn a_lost_tunnel_server_is_detected_and_the_new_url_reported_when_it_returns() {
    let world = World::new(InspectorSettings::default()).await;
    let first_url = world.share().await;
    let mut status = world.tunnel.subscribe();

    world.bore.stop();
    let lost = wait_for_status(&mut status, "reconnecting", |s| {
        s.state == TunnelState::Reconnecting
    })
    .await;
    assert_eq!(lost.public_url, None);
    assert!(lost.message.unwrap().contains("reconnecting"));
    assert!(
        reqwest::get(&first_url).await.is_err(),
        "the old URL is gone"
    );

    let _returned = world.bore.restart().await;
    let back = wait_for_status(&mut status, "open again", |s| s.state == TunnelState::Open).await;
    let second_url = back.public_url.clone().unwrap();
    assert_ne!(second_url, first_url);
    let message = back.message.unwrap();
    assert!(
        message.contains(&format!("changed from {first_url} to {second_url}")),
        "{message}"
    );
    assert!(
        message.contains(&format!("{second_url}exp/renamevideo/")),
        "{message}"
    );

    let seen: Value = reqwest::get(format!("{second_url}exp/"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["answered_by"], "api");
    let sessions = world.tunnel.sessions().await.unwrap();
    assert_eq!(sessions.len(), 1, "a reconnect continues the session");
    assert_eq!(sessions[0].public_urls, vec![first_url, second_url]);
}

#[tokio::test]
async fn stopping_closes_the_public_url_and_ends_the_session() {
    let world = World::new(InspectorSettings::default()).await;
    let public_url = world.share().await;
    world.tunnel.stop().await.unwrap();
    assert_eq!(world.tunnel.status().state, TunnelState::Off);
    assert_eq!(world.tunnel.status().public_url, None);
    assert!(reqwest::get(&public_url).await.is_err());
    let session = world.tunnel.sessions().await.unwrap().remove(0);
    assert!(session.ended_at.is_some());
    assert!(session.duration() >= chrono::Duration::zero());
    // Stopping again is harmless, and the tunnel can be started again.
    world.tunnel.stop().await.unwrap();
    world.share().await;
    assert_eq!(world.tunnel.sessions().await.unwrap().len(), 2);
}

#[tokio::test]
async fn the_end_to_end_check_names_the_hop_that_fails() {
    let world = World::new(InspectorSettings::default()).await;
    assert!(matches!(
        world.tunnel.check().await.unwrap_err(),
        TunnelError::NotRunning
    ));
    world.share().await;
    let check = world.tunnel.check().await.unwrap();
    assert!(check.all_ok(), "{check:?}");
    assert_eq!(check.database, HopResult::Ok);
    assert_eq!(check.broker, HopResult::Ok);
    assert_eq!(check.first_failure(), None);

    world.api_stop.cancel();
    // Wait for the stand-in API to be gone (its port refuses connections).
    tokio::time::timeout(Duration::from_secs(30), async {
        while tokio::net::TcpStream::connect(world.api).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the stand-in API stops");
    let check = world.tunnel.check().await.unwrap();
    assert_eq!(check.public_url, HopResult::Ok);
    assert_eq!(check.proxy, HopResult::Ok);
    assert!(matches!(check.api, HopResult::Failed(_)), "{check:?}");
    // Behind an API that does not answer, nothing can be checked.
    assert_eq!(check.database, HopResult::NotChecked);
    assert_eq!(check.broker, HopResult::NotChecked);
    assert!(check.first_failure().unwrap().starts_with("Lookit API"));

    // What a caller on the internet sees meanwhile: a clear 502, recorded.
    let public_url = world.tunnel.status().public_url.unwrap();
    let response = reqwest::get(format!("{public_url}exp/")).await.unwrap();
    assert_eq!(response.status(), 502);
    let record = world.tunnel.inspector().recent(1).await.unwrap().remove(0);
    assert_eq!(record.status, None);
    assert!(record.error.unwrap().contains("did not answer"));
}

#[tokio::test]
async fn the_end_to_end_check_names_the_service_the_api_cannot_reach() {
    let world = World::new(InspectorSettings::default()).await;
    world.share().await;
    let refused = "unreachable: connection refused (os error 111)";
    let silent = "unreachable: no answer within 3 s";
    for (database, broker, named) in [
        (refused, "ok", format!("database: {refused}")),
        ("ok", silent, format!("broker: {silent}")),
    ] {
        world.api_health.set(database, broker);
        let check = world.tunnel.check().await.unwrap();
        assert_eq!(check.public_url, HopResult::Ok);
        assert_eq!(check.proxy, HopResult::Ok);
        assert_eq!(check.api, HopResult::Ok, "the API itself answers");
        let hop = |health: &str| match health {
            "ok" => HopResult::Ok,
            failed => HopResult::Failed(failed.into()),
        };
        assert_eq!(check.database, hop(database));
        assert_eq!(check.broker, hop(broker));
        assert!(!check.all_ok());
        assert_eq!(check.first_failure(), Some(named));
    }
    // The check's own requests are not requests through the tunnel.
    assert!(world
        .tunnel
        .inspector()
        .recent(10)
        .await
        .unwrap()
        .is_empty());

    // With both down, the database (earlier on the path) is named first.
    world
        .api_health
        .set("unreachable: timed out", "unreachable: refused");
    let check = world.tunnel.check().await.unwrap();
    assert!(matches!(check.broker, HopResult::Failed(_)), "{check:?}");
    assert_eq!(
        check.first_failure().as_deref(),
        Some("database: unreachable: timed out")
    );

    // An API run without a broker has none to check, and that is not a failure.
    world.api_health.set("ok", "not configured");
    let check = world.tunnel.check().await.unwrap();
    assert_eq!(check.broker, HopResult::NotChecked);
    assert!(check.all_ok(), "{check:?}");
}

#[tokio::test]
async fn the_check_of_an_api_without_a_health_route_leaves_database_and_broker_unchecked() {
    let (_db, pool) = lookit_testkit::migrated_database().await;
    let (api, _api_stop) =
        crate::common::serve(axum::Router::new().route("/", axum::routing::get(|| async { "hi" })))
            .await;
    let bore = crate::common::BoreHost::start().await;
    let tunnel = tunnel_to(pool, &format!("http://{api}"), None, Default::default());
    tunnel
        .start(bore.settings(), "ada@lab.example")
        .await
        .unwrap();
    let check = tunnel.check().await.unwrap();
    assert_eq!(check.api, HopResult::Ok);
    assert_eq!(check.database, HopResult::NotChecked);
    assert_eq!(check.broker, HopResult::NotChecked);
    assert!(check.all_ok(), "{check:?}");
    let hops: Vec<&str> = check.hops().iter().map(|(key, _, _)| *key).collect();
    assert_eq!(
        hops,
        ["public_url", "proxy", "api", "database", "broker"],
        "hops are listed along the path"
    );
    tunnel.stop().await.unwrap();
}

#[tokio::test]
async fn an_api_whose_health_route_hangs_is_named_with_what_may_hang_behind_it() {
    let (_db, pool) = lookit_testkit::migrated_database().await;
    // As the real API does while its database is down: the health route waits on the pool.
    let (api, _api_stop) = crate::common::serve(axum::Router::new().route(
        "/api/health/",
        axum::routing::get(std::future::pending::<&'static str>),
    ))
    .await;
    let bore = crate::common::BoreHost::start().await;
    let tunnel = tunnel_to(pool, &format!("http://{api}"), None, Default::default());
    let mut settings = bore.settings();
    settings.guardian.probe_timeout = Duration::from_secs(1);
    tunnel.start(settings, "ada@lab.example").await.unwrap();
    let check = tunnel.check().await.unwrap();
    assert_eq!(check.public_url, HopResult::Ok);
    assert_eq!(check.database, HopResult::NotChecked);
    let failure = check.first_failure().unwrap();
    assert!(
        failure.starts_with("Lookit API: ")
            && failure.contains("did not answer its health route within 1 s")
            && failure.contains("database or broker may be hanging"),
        "{failure}"
    );
    tunnel.stop().await.unwrap();
}

#[tokio::test]
async fn a_bore_server_with_a_secret_refuses_a_client_without_one() {
    lookit_testkit::install_crypto_provider();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let control = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let secret = secrecy::SecretString::from("lab-secret");
    tokio::spawn(
        lookit_tunnel::BoreServer::new("127.0.0.1".parse().unwrap(), Some(&secret))
            .run(listener, stop.clone()),
    );
    let (api, _, _, _api_stop) = crate::common::start_api().await;
    use lookit_tunnel::TunnelProvider;

    let without = lookit_tunnel::BoreProvider::new(control.to_string().parse().unwrap(), None);
    let err = without.open(api).await.err().expect("refused");
    assert!(err.to_string().contains("requires a secret"), "{err}");

    let with = lookit_tunnel::BoreProvider::new(control.to_string().parse().unwrap(), Some(secret));
    let tunnel = with.open(api).await.unwrap();
    let seen: Value = reqwest::get(tunnel.public_url().as_str())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["answered_by"], "api");
    stop.cancel();
}

#[tokio::test]
async fn an_https_api_signed_by_the_local_ca_is_reached_through_the_tunnel() {
    let (_db, pool) = lookit_testkit::migrated_database().await;
    let (api, log, ca_pem) = crate::common::start_https_api().await;
    let bore = crate::common::BoreHost::start().await;
    let api_url = format!("https://{api}");
    let tunnel = tunnel_to(pool.clone(), &api_url, Some(ca_pem), Default::default());
    let status = tunnel
        .start(bore.settings(), "ada@lab.example")
        .await
        .unwrap();
    let public_url = status.public_url.unwrap();
    let seen: Value = reqwest::get(format!("{public_url}exp/studies/"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["answered_by"], "api");
    assert_eq!(log.requests().len(), 1);
    assert!(tunnel.check().await.unwrap().all_ok());
    let reached = log.requests().len();

    // Without the CA the API's certificate is not trusted, and the check says so.
    let untrusting = tunnel_to(pool, &api_url, None, Default::default());
    untrusting
        .start(bore.settings(), "ada@lab.example")
        .await
        .unwrap();
    let check = untrusting.check().await.unwrap();
    assert!(matches!(check.api, HopResult::Failed(_)), "{check:?}");
    assert_eq!(log.requests().len(), reached, "nothing reached the API");
}
