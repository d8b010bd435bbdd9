//! The server as a whole: HTTPS with the local CA, the OpenAPI document, health, JSON errors for
//! unknown routes and methods, and the demo seed.

mod common;

use common::*;
use serde_json::Value;

#[tokio::test]
async fn https_with_the_local_ca_and_secure_cookies() {
    let certs = tempfile::tempdir().unwrap();
    let ca = lookit_api::tls::LocalCa::load_or_create(certs.path()).unwrap();
    let tls = ca.server_config().unwrap();
    // A second load reuses the files (same CA), so trusted browsers stay happy.
    let again = lookit_api::tls::LocalCa::load_or_create(certs.path()).unwrap();
    assert_eq!(again.ca_pem(), ca.ca_pem());
    let app = spawn_app_with(AppOptions {
        tls: Some(tls),
        cookie_secure: true,
        ..Default::default()
    })
    .await;
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.ca_pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/api/health/", app.addr.port());
    let response = client.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let health: Value = response.json().await.unwrap();
    assert_eq!(health["database"], "ok");

    let user = app.user(false, false).await;
    let response = client
        .post(format!(
            "https://127.0.0.1:{}/api/auth/login/",
            app.addr.port()
        ))
        .json(&serde_json::json!({"username": user.username, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        cookie.contains("; Secure")
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
}

#[tokio::test]
async fn openapi_lists_every_route() {
    let app = spawn_app().await;
    let doc: Value = reqwest::get(app.url("/api/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/api/health/",
        "/api/auth/login/",
        "/api/auth/login/code/",
        "/api/auth/totp/",
        "/api/auth/totp/activate/",
        "/api/auth/logout/",
        "/api/auth/me/",
        "/api/auth/tokens/",
        "/api/v1/users/",
        "/api/v1/users/{id}/",
        "/api/v1/users/{id}/children/",
        "/api/v1/labs/",
        "/api/v1/labs/{id}/",
        "/api/v1/studies/",
        "/api/v1/studies/{id}/",
        "/api/v1/studies/{id}/responses/",
        "/api/v1/children/",
        "/api/v1/children/{id}/",
        "/api/v1/responses/",
        "/api/v1/responses/{id}/",
        "/api/v1/demographics/",
        "/api/v1/demographics/{id}/",
        "/api/v1/feedback/",
        "/api/v1/feedback/{id}/",
        "/api/v1/video/",
        "/api/researcher/studies/",
        "/api/researcher/studies/{id}/",
        "/api/researcher/studies/{id}/transition/",
        "/api/researcher/studies/{id}/logs/",
        "/api/researcher/studies/{id}/builds/",
        "/api/researcher/builds/{id}/",
        "/api/researcher/responses/{id}/consent/",
        "/api/researcher/emails/",
        "/exp/renamevideo/",
        "/studies/{study}/{path}",
        "/exp/studies/{study}/{child}/preview/",
    ] {
        assert!(
            paths.contains_key(path),
            "{path} is not in the OpenAPI document"
        );
    }
    let response_ops = paths["/api/v1/responses/{id}/"].as_object().unwrap();
    assert!(
        response_ops.contains_key("get")
            && response_ops.contains_key("patch")
            && response_ops.contains_key("put")
    );
    assert_eq!(doc["info"]["title"], "Lookit Local API");
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let app = spawn_app().await;
    let (status, detail) =
        error_detail(reqwest::get(app.url("/nothing/here")).await.unwrap()).await;
    assert_eq!(status, 404);
    assert!(detail.contains("openapi.json"), "{detail}");
    let response = app
        .client
        .delete(app.url("/api/v1/studies/"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_detail(response).await.0, 405);
    // A body that is not JSON where JSON is expected.
    let response = app
        .client
        .post(app.url("/api/auth/login/"))
        .header("content-type", "text/plain")
        .body("username=x")
        .send()
        .await
        .unwrap();
    assert_eq!(error_detail(response).await.0, 415);
}

#[tokio::test]
async fn health_reports_the_broker() {
    let vhost = lookit_testkit::fresh_vhost().await;
    let app = spawn_app_with(AppOptions {
        amqp_url: Some(vhost.amqp_url().into()),
        ..Default::default()
    })
    .await;
    let (status, health) = app.health().await;
    assert_eq!(status, 200);
    assert_eq!(health["broker"], "ok");

    let unreachable = spawn_app_with(AppOptions {
        amqp_url: Some("amqp://nobody:wrong@127.0.0.1:1/%2f".into()),
        ..Default::default()
    })
    .await;
    let (status, health) = unreachable.health().await;
    assert_eq!(status, 503);
    assert_eq!(health["database"], "ok");
    assert!(health["broker"]
        .as_str()
        .unwrap()
        .starts_with("unreachable"));
}

/// The broker connections of `vhost` that the health route opened, by their names (client
/// address and port), as the management API lists them.
async fn health_check_connections(vhost: &lookit_testkit::TestVhost) -> Vec<String> {
    let connections = vhost
        .management_get(&format!("vhosts/{}/connections", vhost.name()))
        .await;
    connections
        .as_array()
        .expect("a list of connections")
        .iter()
        .filter(|c| c["client_properties"]["connection_name"] == "lookit-api health check")
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn health_checks_share_one_kept_broker_connection() {
    // A connection per check was most of an idle instance's own work (the panel asks every
    // few seconds): the checks use one, and it stays open between them.
    let vhost = lookit_testkit::fresh_vhost().await;
    let app = spawn_app_with(AppOptions {
        amqp_url: Some(vhost.amqp_url().into()),
        ..Default::default()
    })
    .await;
    for _ in 0..3 {
        assert_eq!(app.health().await.1["broker"], "ok");
    }
    eventually("the management API lists the kept connection", || async {
        !health_check_connections(&vhost).await.is_empty()
    })
    .await;
    let kept = health_check_connections(&vhost).await;
    assert_eq!(kept.len(), 1, "one connection for three checks: {kept:?}");
    for _ in 0..3 {
        assert_eq!(app.health().await.1["broker"], "ok");
    }
    assert_eq!(
        health_check_connections(&vhost).await,
        kept,
        "later checks use the same connection"
    );
}

#[tokio::test]
async fn demo_seed_makes_records_to_click_on() {
    let app = spawn_app().await;
    let first = lookit_api::demo::seed(&app.pool).await.unwrap();
    let second = lookit_api::demo::seed(&app.pool).await.unwrap();
    assert_eq!(first.researcher, second.researcher);
    assert_ne!(first.study, second.study);
    let json = serde_json::to_value(&first).unwrap();
    for key in [
        "lab",
        "researcher",
        "participant",
        "study",
        "child",
        "response",
    ] {
        assert!(json[key].is_string(), "{key}");
    }
    let (child_of, study_of): (uuid::Uuid, uuid::Uuid) =
        sqlx::query_as("SELECT child_id, study_id FROM responses WHERE id = $1")
            .bind(first.response)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((child_of, study_of), (first.child, first.study));
}
