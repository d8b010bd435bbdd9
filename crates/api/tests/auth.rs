//! Logging in: password, authenticator codes, setup, lockout, CSRF, tokens.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn participants_log_in_with_password_only() {
    let app = spawn_app().await;
    let user = app.user(false, false).await;
    let (status, body, session, headers) = app.login(&user.username, PASSWORD).await;
    assert_eq!(status, 200);
    assert_eq!(body["second_factor"], "not_required");
    let cookie = headers["set-cookie"].to_str().unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let session = session.unwrap();
    let me: serde_json::Value = app
        .get(&session, "/api/auth/me/")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["username"], user.username.as_str());
    // Participants do not reach researcher routes.
    let (status, detail) = error_detail(app.get(&session, "/api/researcher/studies/").await).await;
    assert_eq!(status, 403, "{detail}");
}

#[tokio::test]
async fn researchers_need_the_code_and_wrong_or_reused_codes_fail() {
    let app = spawn_app().await;
    let (_, _, lab) = app.researcher().await; // a lab to see
    let user = app.user(true, true).await;
    sqlx::query("INSERT INTO lab_researchers (lab_id, user_id) VALUES ($1, $2)")
        .bind(lab)
        .bind(user.id)
        .execute(&app.pool)
        .await
        .unwrap();
    let (status, body, session, _) = app.login(&user.username, PASSWORD).await;
    assert_eq!(status, 200);
    assert_eq!(body["second_factor"], "required");
    let session = session.unwrap();

    // Password alone is not a login.
    let (status, detail) = error_detail(app.get(&session, "/api/researcher/studies/").await).await;
    assert_eq!(status, 401);
    assert!(detail.contains("authenticator code"), "{detail}");

    let wrong = if user.code() == "000000" {
        "111111"
    } else {
        "000000"
    };
    let (status, detail) = error_detail(
        app.post(&session, "/api/auth/login/code/", json!({"code": wrong}))
            .await,
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(detail, "wrong authenticator code");

    let code = user.code();
    let response = app
        .post(&session, "/api/auth/login/code/", json!({"code": code}))
        .await;
    assert_eq!(response.status(), 204);
    let response = app.get(&session, "/api/researcher/studies/").await;
    assert_eq!(response.status(), 200);

    // A second login cannot replay the same code.
    let (_, _, second, _) = app.login(&user.username, PASSWORD).await;
    let (status, detail) = error_detail(
        app.post(
            &second.unwrap(),
            "/api/auth/login/code/",
            json!({"code": code}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 401);
    assert!(detail.contains("already used"), "{detail}");
}

#[tokio::test]
async fn researchers_without_an_authenticator_are_sent_to_set_one_up() {
    let app = spawn_app().await;
    let user = app.user(true, false).await;
    sqlx::query("UPDATE users SET totp_secret = NULL WHERE id = $1")
        .bind(user.id)
        .execute(&app.pool)
        .await
        .unwrap();
    let (_, body, session, _) = app.login(&user.username, PASSWORD).await;
    assert_eq!(body["second_factor"], "setup_required");
    let session = session.unwrap();
    let (status, detail) = error_detail(app.get(&session, "/api/researcher/studies/").await).await;
    assert_eq!(status, 403);
    assert!(detail.contains("/api/auth/totp/"), "{detail}");

    let setup: serde_json::Value = app
        .get(&session, "/api/auth/totp/")
        .await
        .json()
        .await
        .unwrap();
    let uri = setup["otpauth_uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/Lookit-test:"), "{uri}");
    assert!(uri.contains("issuer=Lookit-test"), "{uri}");
    let secret = setup["secret"].as_str().unwrap();
    assert_eq!(secret.len(), 32);
    let code = lookit_api_totp(secret, &user.username)
        .generate_current()
        .unwrap();
    let response = app
        .post(&session, "/api/auth/totp/activate/", json!({"code": code}))
        .await;
    assert_eq!(response.status(), 204);
    assert_eq!(
        app.get(&session, "/api/researcher/studies/").await.status(),
        200
    );
}

#[tokio::test]
async fn repeated_failures_lock_the_account_even_for_the_right_password() {
    let app = spawn_app().await;
    let user = app.user(false, false).await;
    for _ in 0..lookit_api::MAX_FAILURES {
        let (status, body, session, _) = app.login(&user.username, "wrong password!").await;
        assert_eq!(status, 401);
        assert_eq!(body["errors"][0]["detail"], "wrong username or password");
        assert!(session.is_none());
    }
    let (status, body, session, headers) = app.login(&user.username, PASSWORD).await;
    assert_eq!(status, 429);
    assert!(session.is_none());
    assert!(headers.contains_key("retry-after"));
    assert!(body["errors"][0]["detail"]
        .as_str()
        .unwrap()
        .contains("too many failed login attempts"));
    // Other accounts are not affected.
    let other = app.user(false, false).await;
    assert_eq!(app.login(&other.username, PASSWORD).await.0, 200);
}

#[tokio::test]
async fn cookie_writes_need_the_csrf_token_and_tokens_do_not() {
    let app = spawn_app().await;
    let (_, session, lab) = app.researcher().await;
    let body = json!({"name": "A study", "lab_id": lab});
    let response = app
        .client
        .post(app.url("/api/researcher/studies/"))
        .header("cookie", &session.cookie)
        .json(&body)
        .send()
        .await
        .unwrap();
    let (status, detail) = error_detail(response).await;
    assert_eq!(status, 403);
    assert!(detail.contains("CSRF"), "{detail}");
    assert_eq!(
        app.post(&session, "/api/researcher/studies/", body.clone())
            .await
            .status(),
        201
    );

    let token: serde_json::Value = app
        .post(&session, "/api/auth/tokens/", json!({}))
        .await
        .json()
        .await
        .unwrap();
    let token = token["token"].as_str().unwrap();
    let response = app
        .client
        .post(app.url("/api/researcher/studies/"))
        .header("authorization", format!("Token {token}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let response = app
        .client
        .get(app.url("/api/researcher/studies/"))
        .header("authorization", "Token not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_detail(response).await,
        (401, "invalid token".to_string())
    );
}

#[tokio::test]
async fn logout_ends_the_session() {
    let app = spawn_app().await;
    let user = app.user(false, false).await;
    let session = app.session(&user).await;
    assert_eq!(
        app.post(&session, "/api/auth/logout/", json!({}))
            .await
            .status(),
        204
    );
    assert_eq!(app.get(&session, "/api/auth/me/").await.status(), 401);
}

#[tokio::test]
async fn create_researcher_checks_its_input() {
    let (_db, pool) = lookit_testkit::migrated_database().await;
    let weak = lookit_api::admin::create_researcher(
        &pool,
        "test",
        "a@example.org",
        Some("1234567890123".to_string().into()),
    )
    .await
    .unwrap_err();
    assert!(weak.to_string().contains("only digits"), "{weak}");
    let bad = lookit_api::admin::create_researcher(&pool, "test", "not-an-email", None)
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("not an email"), "{bad}");
    let created = lookit_api::admin::create_researcher(&pool, "test", "R@example.org", None)
        .await
        .unwrap();
    assert!(created.generated_password.is_some());
    assert!(created.otpauth_uri.contains("issuer=Lookit-test"));
    let again = lookit_api::admin::create_researcher(&pool, "test", "r@EXAMPLE.org", None)
        .await
        .unwrap_err();
    assert!(again.to_string().contains("already exists"), "{again}");
    let qr = lookit_api::admin::render_qr_terminal(&created.otpauth_uri).unwrap();
    assert!(qr.lines().count() > 10 && qr.contains('█'));
}
