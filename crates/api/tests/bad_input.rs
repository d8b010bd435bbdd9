//! Inputs the schemathesis run (`scripts/api-fuzz`) found to break the API, kept as regression
//! tests: each is a 4xx with a JSON reason.

mod common;

use common::*;

#[tokio::test]
async fn a_page_far_past_the_end_is_a_404_not_an_overflow() {
    let app = spawn_app().await;
    let parent = app.user(false, false).await;
    let session = app.session(&parent).await;
    for list in ["studies", "children", "labs", "users", "demographics"] {
        let response = app
            .get(
                &session,
                &format!("/api/v1/{list}/?page=9223372036854775806"),
            )
            .await;
        let (status, detail) = error_detail(response).await;
        assert_eq!(status, 404, "{list}: {detail}");
        assert!(detail.contains("invalid page"), "{list}: {detail}");
    }
}

#[tokio::test]
async fn a_nul_character_in_text_is_a_400_not_a_500() {
    let app = spawn_app().await;
    let (_, session, lab) = app.researcher().await;
    let response = app
        .post(
            &session,
            "/api/researcher/studies/",
            serde_json::json!({"lab_id": lab, "name": "Peek\u{0}aboo"}),
        )
        .await;
    let (status, detail) = error_detail(response).await;
    assert_eq!(status, 400, "{detail}");
}
