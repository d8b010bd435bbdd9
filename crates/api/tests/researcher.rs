//! Researcher routes: studies, state transitions with log entries, builds through the outbox to
//! RabbitMQ, serving the built study, consent rulings and the email outbox.

mod common;

use common::broker::QueueReader;
use common::*;
use lookit_contracts::{BuildJob, EmailJob, Queue};
use serde_json::{json, Value};
use uuid::Uuid;

async fn json_of(response: reqwest::Response) -> Value {
    response.json().await.unwrap()
}

#[tokio::test]
async fn studies_move_through_states_with_log_entries_and_review_emails() {
    let app = spawn_app().await;
    let (user, session, lab) = app.researcher().await;
    let reviewer = app.user(true, true).await;
    app.make_staff(&reviewer).await;

    let created = app
        .post(
            &session,
            "/api/researcher/studies/",
            json!({"name": "Baby physics", "lab_id": lab}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let study = json_of(created).await;
    assert_eq!(study["state"], "created");
    assert_eq!(study["built"], false);
    let id = study["id"].as_str().unwrap().to_string();

    let edited = app
        .send(
            reqwest::Method::PATCH,
            &session,
            &format!("/api/researcher/studies/{id}/"),
            json!({"structure": {"frames": {"a": {"kind": "exp-lookit-text"}}, "sequence": ["a"]}}),
        )
        .await;
    assert_eq!(edited.status(), 200);
    let (status, detail) = error_detail(
        app.send(
            reqwest::Method::PATCH,
            &session,
            &format!("/api/researcher/studies/{id}/"),
            json!({"structure": {"sequence": "a"}}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 400);
    assert!(detail.contains("frames"), "{detail}");

    let transition = |to: &str| {
        let path = format!("/api/researcher/studies/{id}/transition/");
        let body = json!({"to": to});
        let app = &app;
        let session = session.clone();
        async move { app.post(&session, &path, body).await }
    };
    let (status, detail) = error_detail(transition("active").await).await;
    assert_eq!(status, 409);
    assert!(
        detail.contains("a created study cannot become active; allowed: submitted, archived"),
        "{detail}"
    );
    let (status, _) = error_detail(transition("flying").await).await;
    assert_eq!(status, 400);

    assert_eq!(transition("submitted").await.status(), 200);
    // The reviewers are mailed through the outbox.
    let (email_id, to): (Uuid, Vec<String>) =
        sqlx::query_as("SELECT id, to_addresses FROM emails WHERE template = 'study_submitted'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(to, std::slice::from_ref(&reviewer.username));
    let job: Value = sqlx::query_scalar("SELECT payload FROM job_outbox WHERE queue = 'email'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_value::<EmailJob>(job).unwrap().email_id,
        email_id
    );

    // Only staff approve.
    let (status, _) = error_detail(transition("approved").await).await;
    assert_eq!(status, 403);
    let staff_session = app.session(&reviewer).await;
    let approved = app
        .post(
            &staff_session,
            &format!("/api/researcher/studies/{id}/transition/"),
            json!({"to": "approved"}),
        )
        .await;
    assert_eq!(approved.status(), 200);
    // Not built yet: activation is refused.
    let (status, detail) = error_detail(transition("active").await).await;
    assert_eq!(status, 409);
    assert!(detail.contains("not built"), "{detail}");

    let logs = json_of(
        app.get(&session, &format!("/api/researcher/studies/{id}/logs/"))
            .await,
    )
    .await;
    let actions: Vec<&str> = logs
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["created", "edited", "submitted", "approved"]);
    assert_eq!(logs[2]["user_id"], user.id.to_string());
    assert_eq!(logs[3]["extra"]["from"], "submitted");

    // The staff reviewer sees the email in the outbox listing; the researcher does not.
    let mail = json_of(app.get(&staff_session, "/api/researcher/emails/").await).await;
    assert_eq!(mail[0]["template"], "study_submitted");
    let none = json_of(app.get(&session, "/api/researcher/emails/").await).await;
    assert_eq!(none.as_array().unwrap().len(), 0);

    // Other labs' studies are invisible.
    let (_, stranger, _) = app.researcher().await;
    let (status, _) = error_detail(
        app.get(&stranger, &format!("/api/researcher/studies/{id}/"))
            .await,
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_build_request_reaches_the_builds_queue_and_a_second_one_is_refused() {
    let (app, vhost, relay) = spawn_app_with_broker().await;
    let mut builds = QueueReader::open(vhost.amqp_url(), Queue::Builds).await;
    let (_, session, lab) = app.researcher().await;
    let study = app.study(lab, "approved").await;
    let sha = "0123456789abcdef0123456789abcdef01234567";
    sqlx::query("UPDATE studies SET metadata = $2 WHERE id = $1")
        .bind(study)
        .bind(json!({"last_known_player_sha": sha}))
        .execute(&app.pool)
        .await
        .unwrap();

    let response = app.request_build(&session, study).await;
    assert_eq!(response.status(), 202);
    let build = json_of(response).await;
    assert_eq!(build["status"], "queued");
    assert_eq!(build["player_ref"], sha);
    let build_id: Uuid = build["id"].as_str().unwrap().parse().unwrap();

    let (message_id, content_type, delivery_mode, body) = builds.next_message().await;
    let job: BuildJob = serde_json::from_value(body).unwrap();
    assert_eq!(job.build_id, build_id);
    assert_eq!(message_id, job.job_id.to_string());
    assert_eq!(content_type, "application/json");
    assert_eq!(delivery_mode, 2);

    // While it is queued, another request is refused with the reason.
    let (status, detail) = error_detail(app.request_build(&session, study).await).await;
    assert_eq!(status, 409);
    assert!(detail.contains("already queued"), "{detail}");

    // The worker's part, done by hand: it succeeded.
    let output = tempfile::tempdir().unwrap();
    sqlx::query("UPDATE builds SET status = 'succeeded', stage = 'done', log = 'ember build ok', output_location = $2, finished_at = now() WHERE id = $1")
        .bind(build_id)
        .bind(output.path().to_str().unwrap())
        .execute(&app.pool)
        .await
        .unwrap();
    let listed = json_of(
        app.get(
            &session,
            &format!("/api/researcher/studies/{study}/builds/"),
        )
        .await,
    )
    .await;
    assert_eq!(listed[0]["stage"], "done");
    assert_eq!(listed[0]["log"], "ember build ok");
    let one = json_of(
        app.get(&session, &format!("/api/researcher/builds/{build_id}/"))
            .await,
    )
    .await;
    assert_eq!(one["status"], "succeeded");

    // Same study, same pinned player: already built. A changed study builds again.
    let (status, detail) = error_detail(app.request_build(&session, study).await).await;
    assert_eq!(status, 409);
    assert!(detail.contains("already built"), "{detail}");
    let edit = app
        .send(reqwest::Method::PATCH, &session, &format!("/api/researcher/studies/{study}/"),
            json!({"name": "Renamed", "structure": {"frames": {}, "sequence": []}, "metadata": {"last_known_player_sha": sha, "note": "changed"}}))
        .await;
    assert_eq!(edit.status(), 200);
    let again = app.request_build(&session, study).await;
    assert_eq!(again.status(), 202);
    assert_ne!(builds.next_build_job().await.build_id, build_id);

    // Marked sent once the broker confirmed (the message may arrive before the mark commits).
    eventually("both jobs marked published", || async {
        published_jobs(&app.pool).await == 2
    })
    .await;
    relay.stop().await;
}

async fn built_study(app: &TestApp, lab: Uuid, state: &str) -> (Uuid, tempfile::TempDir) {
    let study = app.study(lab, state).await;
    let output = tempfile::tempdir().unwrap();
    let assets = output.path().join("assets");
    std::fs::create_dir(&assets).unwrap();
    std::fs::write(output.path().join("index.html"), "<html>study</html>").unwrap();
    std::fs::write(
        assets.join("vendor-0123456789abcdef0123456789abcdef.js"),
        "var x;",
    )
    .unwrap();
    std::fs::write(assets.join("app.css"), "body{}").unwrap();
    std::fs::write(assets.join("logo.png"), [0x89, b'P', b'N', b'G']).unwrap();
    // The worker's part: the output uploaded to the builds storage, the build marked done.
    let uploaded = app
        .state
        .settings()
        .builds
        .upload_folder(output.path(), &lookit_storage::study_prefix(study))
        .await
        .expect("upload the build output");
    sqlx::query("INSERT INTO builds (id, study_id, player_repo, player_ref, status, output_location, finished_at) VALUES ($1, $2, 'r', 'master', 'succeeded', $3, now())")
        .bind(Uuid::new_v4())
        .bind(study)
        .bind(&uploaded.location)
        .execute(&app.pool)
        .await
        .unwrap();
    (study, output)
}

#[tokio::test]
async fn built_studies_are_served_with_the_right_types_and_cache_headers() {
    built_study_files_are_served(spawn_app().await).await;
}

#[tokio::test]
async fn built_studies_in_s3_are_served_with_the_right_types_and_cache_headers() {
    let s3 = lookit_testkit::s3_server().await;
    let bucket = s3.fresh_bucket().await;
    let app = spawn_app_with(AppOptions {
        builds: Some(s3.location(&bucket, "lab/builds")),
        ..AppOptions::default()
    })
    .await;
    built_study_files_are_served(app).await;
    // They came from the bucket, where the worker uploads them.
    let listing = reqwest::get(format!(
        "{}/{bucket}?prefix=lab/builds/experiments/",
        s3.endpoint()
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(listing.contains("/assets/logo.png</Key>"), "{listing}");
}

/// What a participant's browser gets from a built study: the page, its assets with their types
/// and cache policy, 404s for what is not there.
async fn built_study_files_are_served(app: TestApp) {
    let lab = app.lab(true).await;
    let parent = app.user(false, false).await;
    let child = app.child(parent.id).await;
    let (study, _output) = built_study(&app, lab, "active").await;

    let index = app
        .get_without_session(&format!("/studies/{study}/{child}/"))
        .await;
    assert_eq!(index.status(), 200);
    assert_eq!(index.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(index.headers()["cache-control"], "no-cache");
    assert_eq!(index.text().await.unwrap(), "<html>study</html>");

    let cases = [
        (
            "assets/vendor-0123456789abcdef0123456789abcdef.js",
            "text/javascript; charset=utf-8",
            "public, max-age=31536000, immutable",
        ),
        (
            "assets/app.css",
            "text/css; charset=utf-8",
            "public, max-age=300",
        ),
        ("assets/logo.png", "image/png", "public, max-age=300"),
    ];
    for (path, content_type, cache) in cases {
        let response = app
            .get_without_session(&format!("/studies/{study}/{path}"))
            .await;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["content-type"], content_type, "{path}");
        assert_eq!(response.headers()["cache-control"], cache, "{path}");
    }
    let (status, _) = error_detail(
        app.get_without_session(&format!("/studies/{study}/assets/missing.js"))
            .await,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = error_detail(
        app.get_without_session(&format!("/studies/{study}/assets/..%2F..%2Fetc%2Fpasswd"))
            .await,
    )
    .await;
    assert!(status == 400 || status == 404, "{status}");
    let (status, _) = error_detail(
        app.get_without_session(&format!("/studies/{study}/{}/", Uuid::new_v4()))
            .await,
    )
    .await;
    assert_eq!(status, 404);
    let (status, detail) = error_detail(
        app.get_without_session(&format!("/studies/{}/{child}/", Uuid::new_v4()))
            .await,
    )
    .await;
    assert_eq!(status, 404, "{detail}");
}

#[tokio::test]
async fn researchers_preview_unpublished_studies_and_rule_on_consent() {
    let app = spawn_app().await;
    let (_, session, lab) = app.researcher().await;
    let (study, _output) = built_study(&app, lab, "approved").await;
    let parent = app.user(false, false).await;
    let child = app.child(parent.id).await;
    // Not active: participants get a 404, the lab's researcher a preview.
    let participant = app
        .get_without_session(&format!("/studies/{study}/{child}/"))
        .await;
    assert_eq!(error_detail(participant).await.0, 404);
    let preview = app
        .get(&session, &format!("/exp/studies/{study}/{child}/preview/"))
        .await;
    assert_eq!(preview.status(), 200);
    // The built page, with the preview's reload script after it.
    let page = preview.text().await.unwrap();
    assert!(page.starts_with("<html>study</html>"), "{page}");
    let (_, stranger, _) = app.researcher().await;
    let (status, _) = error_detail(
        app.get(&stranger, &format!("/exp/studies/{study}/{child}/preview/"))
            .await,
    )
    .await;
    assert_eq!(status, 404);

    let response = app.response(study, child).await;
    let path = format!("/api/researcher/responses/{response}/consent/");
    let pending = json_of(app.get(&session, &path).await).await;
    assert_eq!(pending["current"], "pending");
    let ruled = app
        .post(
            &session,
            &path,
            json!({"action": "accepted", "comments": "clear video"}),
        )
        .await;
    assert_eq!(ruled.status(), 201);
    let later = app
        .post(&session, &path, json!({"action": "rejected"}))
        .await;
    assert_eq!(later.status(), 201);
    let status = json_of(app.get(&session, &path).await).await;
    assert_eq!(status["current"], "rejected");
    assert_eq!(status["rulings"].as_array().unwrap().len(), 2);
    let (code, detail) =
        error_detail(app.post(&session, &path, json!({"action": "maybe"})).await).await;
    assert_eq!(code, 400);
    assert!(detail.contains("accepted, rejected or pending"), "{detail}");
    let (code, _) = error_detail(
        app.post(&stranger, &path, json!({"action": "accepted"}))
            .await,
    )
    .await;
    assert_eq!(code, 404);
}
