//! Video registration: Pipe's webhook (§4) and the AWS Lambda.

mod common;

use common::*;
use lookit_storage::object_store::ObjectStoreExt;
use serde_json::{json, Value};
use uuid::Uuid;

struct Fixture {
    app: TestApp,
    study: Uuid,
    response: Uuid,
}

async fn fixture() -> Fixture {
    fixture_with(AppOptions::default()).await
}

async fn fixture_with(options: AppOptions) -> Fixture {
    let app = spawn_app_with(options).await;
    let parent = app.user(false, false).await;
    let lab = app.lab(true).await;
    let study = app.study(lab, "active").await;
    let child = app.child(parent.id).await;
    let response = app.response(study, child).await;
    sqlx::query("UPDATE responses SET exp_data = $2 WHERE id = $1")
        .bind(response)
        .bind(json!({"1-video-consent": {"frameType": "CONSENT"}}))
        .execute(&app.pool)
        .await
        .unwrap();
    Fixture {
        app,
        study,
        response,
    }
}

impl Fixture {
    fn name(&self, frame: &str) -> String {
        format!(
            "videoStream_{}_{frame}_{}_1700000000123_042",
            self.study, self.response
        )
    }

    fn upload(&self, pipe_name: &str) {
        std::fs::write(
            self.app.videos.path().join(format!("{pipe_name}.mp4")),
            b"video",
        )
        .unwrap();
        std::fs::write(
            self.app.videos.path().join(format!("{pipe_name}.jpg")),
            b"snapshot",
        )
        .unwrap();
    }

    async fn call(
        &self,
        payload: &str,
        signature: Option<String>,
        forwarded_host: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .app
            .client
            .post(self.app.url("/exp/renamevideo/"))
            .form(&[("payload", payload)]);
        if let Some(signature) = signature {
            request = request.header("X-Pipe-Signature", signature);
        }
        if let Some(host) = forwarded_host {
            request = request
                .header("X-Forwarded-Host", host)
                .header("X-Forwarded-Proto", "https");
        }
        request.send().await.unwrap()
    }

    async fn videos(&self) -> Vec<(String, String, bool, String)> {
        sqlx::query_as(
            "SELECT full_name, pipe_name, is_consent_footage, frame_id FROM videos ORDER BY pk",
        )
        .fetch_all(&self.app.pool)
        .await
        .unwrap()
    }
}

#[tokio::test]
async fn a_signed_webhook_renames_the_video_and_records_it() {
    let f = fixture().await;
    let name = f.name("2-my_video_frame");
    f.upload("pipe-abc");
    let payload = pipe_payload("pipe-abc", &name, "upload success");
    let signature = pipe_signature(&format!("{PUBLIC_URL}/exp/renamevideo/"), &payload);
    let response = f.call(&payload, Some(signature), None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().await.unwrap(),
        format!("pipe-abc --> {name}")
    );
    assert!(f.app.videos.path().join(format!("{name}.mp4")).exists());
    assert!(!f.app.videos.path().join("pipe-abc.mp4").exists());
    assert!(!f.app.videos.path().join("pipe-abc.jpg").exists());
    assert_eq!(
        f.videos().await,
        [(
            name,
            "pipe-abc".to_string(),
            false,
            "2-my_video_frame".to_string()
        )]
    );
}

#[tokio::test]
async fn a_signed_webhook_renames_the_video_object_in_s3() {
    let s3 = lookit_testkit::s3_server().await;
    let bucket = s3.fresh_bucket().await;
    let f = fixture_with(AppOptions {
        videos: Some(s3.location(&bucket, "pipe")),
        ..AppOptions::default()
    })
    .await;
    // What Pipe leaves in the bucket: the video and its snapshot under Pipe's name.
    let videos = &f.app.state.settings().videos;
    for (key, body) in [("pipe-s3.mp4", "video"), ("pipe-s3.jpg", "snapshot")] {
        videos
            .store()
            .put(&key.into(), body.as_bytes().to_vec().into())
            .await
            .unwrap();
    }
    let name = f.name("1-video-consent");
    let payload = pipe_payload("pipe-s3", &name, "upload success");
    let signature = pipe_signature(&format!("{PUBLIC_URL}/exp/renamevideo/"), &payload);
    let response = f.call(&payload, Some(signature), None).await;
    assert_eq!(response.status(), 200);

    let listing = reqwest::get(format!("{}/{bucket}?prefix=pipe/", s3.endpoint()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        listing.contains(&format!("<Key>pipe/{name}.mp4</Key>")),
        "{listing}"
    );
    assert!(
        !listing.contains("pipe-s3"),
        "Pipe's names are gone: {listing}"
    );
    let renamed = videos
        .read(&format!("{name}.mp4").as_str().into())
        .await
        .unwrap();
    assert_eq!(renamed.as_deref(), Some(&b"video"[..]));
    let recorded = f.videos().await;
    assert_eq!(recorded.len(), 1);
    assert!(recorded[0].2, "the consent frame marks consent footage");
}

#[tokio::test]
async fn consent_footage_is_marked_by_prefix_or_by_the_frame() {
    let f = fixture().await;
    let prefixed = format!("consent-{}", f.name("0-intro"));
    let consent_frame = f.name("1-video-consent");
    for (pipe, name) in [("p1", &prefixed), ("p2", &consent_frame)] {
        f.upload(pipe);
        let payload = pipe_payload(pipe, name, "upload success");
        let signature = pipe_signature(&format!("{PUBLIC_URL}/exp/renamevideo/"), &payload);
        assert_eq!(f.call(&payload, Some(signature), None).await.status(), 200);
    }
    let consent: Vec<bool> = f.videos().await.into_iter().map(|v| v.2).collect();
    assert_eq!(consent, [true, true]);
}

#[tokio::test]
async fn the_tunnel_host_is_accepted_and_the_public_url_can_change() {
    let f = fixture().await;
    f.upload("p1");
    let payload = pipe_payload("p1", &f.name("frame"), "upload success");
    let signature = pipe_signature("https://abc.tunnel.local/exp/renamevideo/", &payload);
    assert_eq!(
        f.call(&payload, Some(signature), Some("abc.tunnel.local"))
            .await
            .status(),
        200
    );

    f.app
        .state
        .public_url()
        .set(Some("https://new.example.net".parse().unwrap()));
    f.upload("p2");
    let payload = pipe_payload("p2", &f.name("other"), "upload success");
    let signature = pipe_signature("https://new.example.net/exp/renamevideo/", &payload);
    assert_eq!(f.call(&payload, Some(signature), None).await.status(), 200);
}

#[tokio::test]
async fn bad_signatures_statuses_and_names_are_refused_with_the_reason() {
    let f = fixture().await;
    f.upload("pipe-abc");
    let url = format!("{PUBLIC_URL}/exp/renamevideo/");
    let good = pipe_payload("pipe-abc", &f.name("frame"), "upload success");

    // Tampered payload: signed one thing, sent another.
    let tampered = good.replace("493534", "493535");
    let (status, detail) = error_detail(
        f.call(&tampered, Some(pipe_signature(&url, &good)), None)
            .await,
    )
    .await;
    assert_eq!(status, 403);
    assert!(detail.contains("does not match"), "{detail}");

    // Signed for another host.
    let other_host = pipe_signature("https://evil.example.com/exp/renamevideo/", &good);
    let (status, _) = error_detail(f.call(&good, Some(other_host), None).await).await;
    assert_eq!(status, 403);

    // No header.
    let (status, detail) = error_detail(f.call(&good, None, None).await).await;
    assert_eq!(status, 400);
    assert!(detail.contains("X-Pipe-Signature"), "{detail}");

    // Missing payload field.
    let response = f
        .app
        .client
        .post(f.app.url("/exp/renamevideo/"))
        .header("X-Pipe-Signature", "abc=")
        .form(&[("other", "x")])
        .send()
        .await
        .unwrap();
    let (status, detail) = error_detail(response).await;
    assert_eq!(
        (status, detail.as_str()),
        (400, "the form field payload is missing")
    );

    // Upload not successful.
    let failed = pipe_payload("pipe-abc", &f.name("frame"), "upload failed");
    let (status, detail) = error_detail(
        f.call(&failed, Some(pipe_signature(&url, &failed)), None)
            .await,
    )
    .await;
    assert_eq!(status, 403);
    assert!(detail.contains("not successful"), "{detail}");

    // Malformed names, and an unknown response.
    let cases = [
        (
            "videoStream_nonsense_frame_x_1_042".to_string(),
            "not a study uuid",
        ),
        (
            format!("videoStream_{}_frame_{}_123_42", f.study, f.response),
            "3 random digits",
        ),
        (
            format!("clip_{}_frame_{}_1700000000123_042", f.study, f.response),
            "videoStream_",
        ),
        (
            format!(
                "videoStream_{}_frame_{}_1700000000123_042",
                f.study,
                Uuid::new_v4()
            ),
            "no response",
        ),
    ];
    for (name, reason) in cases {
        let payload = pipe_payload("pipe-abc", &name, "upload success");
        let (status, detail) = error_detail(
            f.call(&payload, Some(pipe_signature(&url, &payload)), None)
                .await,
        )
        .await;
        assert_eq!(status, 400, "{detail}");
        assert!(detail.contains(reason), "{detail} lacks {reason}");
    }
    // A video that is not in storage.
    let missing = pipe_payload("never-uploaded", &f.name("frame"), "upload success");
    let (status, detail) = error_detail(
        f.call(&missing, Some(pipe_signature(&url, &missing)), None)
            .await,
    )
    .await;
    assert_eq!(status, 400);
    assert!(detail.contains("not in the video storage"), "{detail}");
    assert!(f.videos().await.is_empty());
}

#[tokio::test]
async fn the_lambda_registers_videos_with_a_valid_signature_only() {
    let f = fixture().await;
    let attributes = json!({
        "pipe_name": "pipe-xyz", "pipe_numeric_id": 77, "frame_id": "2-frame",
        "full_name": f.name("2-frame"), "s3_timestamp": "2024-05-01T10:00:00Z",
        "is_consent_footage": false,
    });
    let document = json!({"data": {"type": "videos", "attributes": attributes, "relationships": {
        "response": {"data": {"type": "responses", "id": f.response}},
        "study": {"data": {"type": "studies", "id": f.study}},
    }}});
    // Python's json.dumps default separators: the signature is over the compact form.
    let pretty = serde_json::to_string_pretty(&document).unwrap();
    let post = |signature: Option<String>, body: String| {
        let mut request = f
            .app
            .client
            .post(f.app.url("/api/v1/video/"))
            .header("content-type", "application/vnd.api+json")
            .body(body);
        if let Some(signature) = signature {
            request = request.header("X-AWS-Lambda-HMAC-Sig", signature);
        }
        request.send()
    };
    let (status, detail) = error_detail(post(None, pretty.clone()).await.unwrap()).await;
    assert_eq!(status, 401);
    assert!(detail.contains("missing"), "{detail}");
    let (status, _) = error_detail(post(Some("00ff".into()), pretty.clone()).await.unwrap()).await;
    assert_eq!(status, 401);
    let response = post(Some(lambda_signature(&attributes)), pretty)
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["data"]["type"], "videos");
    assert_eq!(f.videos().await.len(), 1);
    // The same video again is a conflict, not a 500.
    let again = post(Some(lambda_signature(&attributes)), document.to_string())
        .await
        .unwrap();
    assert_eq!(error_detail(again).await.0, 409);
}
