//! The JSON:API of §7: shapes, visibility, pagination, filters, writes and errors.

mod common;

use common::*;
use serde_json::{json, Value};
use uuid::Uuid;

async fn body(response: reqwest::Response) -> Value {
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/vnd.api+json"
    );
    response.json().await.unwrap()
}

#[tokio::test]
async fn responses_are_json_api_resources_paged_by_ten_and_filtered() {
    let app = spawn_app().await;
    let parent = app.user(false, false).await;
    let session = app.session(&parent).await;
    let lab = app.lab(true).await;
    let study = app.study(lab, "active").await;
    let other_study = app.study(lab, "active").await;
    let child = app.child(parent.id).await;
    for _ in 0..11 {
        app.response(study, child).await;
    }
    let elsewhere = app.response(other_study, child).await;
    // Someone else's response is never listed.
    let stranger = app.user(false, false).await;
    let strangers_child = app.child(stranger.id).await;
    let hidden = app.response(study, strangers_child).await;

    let page1 = body(app.get(&session, "/api/v1/responses/").await).await;
    assert_eq!(page1["data"].as_array().unwrap().len(), 10);
    assert_eq!(page1["meta"]["pagination"]["count"], 12);
    assert_eq!(page1["links"]["next"], "/api/v1/responses/?page=2");
    let first = &page1["data"][0];
    assert_eq!(first["type"], "responses");
    assert!(Uuid::parse_str(first["id"].as_str().unwrap()).is_ok());
    assert!(first["attributes"]["pk"].is_i64());
    assert_eq!(first["attributes"]["recording_method"], "pipe");
    assert_eq!(
        first["relationships"]["child"]["data"]["id"],
        child.to_string()
    );
    assert_eq!(first["relationships"]["study"]["data"]["type"], "studies");

    let page2 = body(app.get(&session, "/api/v1/responses/?page=2").await).await;
    assert_eq!(page2["data"].as_array().unwrap().len(), 2);
    let (status, detail) = error_detail(app.get(&session, "/api/v1/responses/?page=3").await).await;
    assert_eq!(status, 404, "{detail}");
    let (status, _) = error_detail(app.get(&session, "/api/v1/responses/?page=zero").await).await;
    assert_eq!(status, 400);

    let filtered = body(
        app.get(&session, &format!("/api/v1/responses/?study={other_study}"))
            .await,
    )
    .await;
    assert_eq!(filtered["data"].as_array().unwrap().len(), 1);
    assert_eq!(filtered["data"][0]["id"], elsewhere.to_string());
    let by_child = body(
        app.get(
            &session,
            &format!("/api/v1/responses/?child={strangers_child}"),
        )
        .await,
    )
    .await;
    assert_eq!(by_child["meta"]["pagination"]["count"], 0);
    let (status, detail) =
        error_detail(app.get(&session, "/api/v1/responses/?child=abc").await).await;
    assert_eq!(status, 400);
    assert!(detail.contains("uuid"), "{detail}");
    let (status, _) = error_detail(
        app.get(&session, &format!("/api/v1/responses/{hidden}/"))
            .await,
    )
    .await;
    assert_eq!(status, 404);

    let nested = body(
        app.get(
            &session,
            &format!("/api/v1/studies/{other_study}/responses/"),
        )
        .await,
    )
    .await;
    assert_eq!(nested["data"][0]["id"], elsewhere.to_string());
}

#[tokio::test]
async fn the_frameplayer_creates_and_patches_its_session() {
    let app = spawn_app().await;
    let parent = app.user(false, false).await;
    let session = app.session(&parent).await;
    let lab = app.lab(true).await;
    let study = app.study(lab, "active").await;
    let child = app.child(parent.id).await;
    let create = json!({"data": {
        "type": "responses",
        "attributes": {"sequence": [], "exp-data": {}, "conditions": {}, "global_event_timings": []},
        "relationships": {
            "child": {"data": {"type": "children", "id": child}},
            "study": {"data": {"type": "studies", "id": study}},
        },
    }});
    let response = app
        .post(&session, "/api/v1/responses/", create.clone())
        .await;
    assert_eq!(response.status(), 201);
    let created = body(response).await;
    let id = created["data"]["id"].as_str().unwrap().to_string();
    assert_eq!(created["data"]["attributes"]["is_preview"], false);

    let patch = json!({"data": {"type": "responses", "id": id, "attributes": {
        "exp_data": {"0-intro": {"frameType": "DEFAULT", "eventTimings": []}},
        "sequence": ["0-intro"],
        "completed": true,
        "pk": 12345,
    }}});
    let response = app
        .send(
            reqwest::Method::PATCH,
            &session,
            &format!("/api/v1/responses/{id}/"),
            patch,
        )
        .await;
    assert_eq!(response.status(), 200);
    let patched = body(response).await;
    assert_eq!(
        patched["data"]["attributes"]["sequence"],
        json!(["0-intro"])
    );
    assert_eq!(patched["data"]["attributes"]["completed"], true);
    let stored: (Value, bool) =
        sqlx::query_as("SELECT exp_data, completed FROM responses WHERE id = $1")
            .bind(Uuid::parse_str(&id).unwrap())
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(stored.0["0-intro"]["frameType"], "DEFAULT");
    assert!(stored.1);

    // Errors are JSON:API error objects saying what is wrong.
    let path = format!("/api/v1/responses/{id}/");
    let cases = [
        (
            json!({"data": {"type": "studies", "id": id, "attributes": {}}}),
            409,
            "data.type",
        ),
        (
            json!({"data": {"type": "responses", "id": Uuid::new_v4(), "attributes": {}}}),
            409,
            "does not match",
        ),
        (
            json!({"data": {"type": "responses", "id": id, "attributes": {"colour": 1}}}),
            400,
            "unknown attribute colour",
        ),
        (
            json!({"data": {"type": "responses", "id": id, "attributes": {"completed": "yes"}}}),
            400,
            "true or false",
        ),
        (
            json!({"data": {"type": "responses", "id": id, "attributes": {"sequence": {}}}}),
            400,
            "an array",
        ),
        (json!({"nodata": true}), 400, "data"),
    ];
    for (document, status, needle) in cases {
        let (got, detail) = error_detail(
            app.send(reqwest::Method::PATCH, &session, &path, document)
                .await,
        )
        .await;
        assert_eq!(got, status, "{detail}");
        assert!(detail.contains(needle), "{detail} lacks {needle}");
    }
    let response = app
        .client
        .patch(app.url(&path))
        .header("cookie", &session.cookie)
        .header("x-csrftoken", &session.csrf)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (status, _) = error_detail(response).await;
    assert_eq!(status, 400);

    // Not your child, or an unknown study.
    let stranger = app.user(false, false).await;
    let theirs = app.child(stranger.id).await;
    let mut foreign = create.clone();
    foreign["data"]["relationships"]["child"]["data"]["id"] = json!(theirs);
    let (status, detail) =
        error_detail(app.post(&session, "/api/v1/responses/", foreign).await).await;
    assert_eq!(
        (status, detail.as_str()),
        (400, "child: not one of your children")
    );
    let mut unknown = create;
    unknown["data"]["relationships"]["study"]["data"]["id"] = json!(Uuid::new_v4());
    let (status, _) = error_detail(app.post(&session, "/api/v1/responses/", unknown).await).await;
    assert_eq!(status, 400);
    // A stranger cannot patch it.
    let stranger_session = app.session(&stranger).await;
    let (status, _) = error_detail(
        app.send(
            reqwest::Method::PATCH,
            &stranger_session,
            &path,
            json!({"data": {"type": "responses", "id": id, "attributes": {"completed": false}}}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn read_only_resources_show_what_the_caller_may_see() {
    let app = spawn_app().await;
    let parent = app.user(false, false).await;
    let session = app.session(&parent).await;
    let approved = app.lab(true).await;
    let unapproved = app.lab(false).await;
    let active = app.study(approved, "active").await;
    let draft = app.study(approved, "created").await;
    let child = app.child(parent.id).await;
    let stranger = app.user(false, false).await;
    app.child(stranger.id).await;

    let studies = body(app.get(&session, "/api/v1/studies/").await).await;
    let ids: Vec<&str> = studies["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [active.to_string()]);
    assert_eq!(
        studies["data"][0]["relationships"]["lab"]["data"]["id"],
        approved.to_string()
    );
    assert!(studies["data"][0]["attributes"]["structure"]["frames"].is_object());
    let (status, _) = error_detail(
        app.get(&session, &format!("/api/v1/studies/{draft}/"))
            .await,
    )
    .await;
    assert_eq!(status, 404);

    let labs = body(app.get(&session, "/api/v1/labs/").await).await;
    assert_eq!(labs["meta"]["pagination"]["count"], 1);
    assert_eq!(labs["data"][0]["id"], approved.to_string());
    let (status, _) = error_detail(
        app.get(&session, &format!("/api/v1/labs/{unapproved}/"))
            .await,
    )
    .await;
    assert_eq!(status, 404);

    let users = body(app.get(&session, "/api/v1/users/").await).await;
    assert_eq!(users["meta"]["pagination"]["count"], 1);
    assert_eq!(
        users["data"][0]["attributes"]["username"],
        parent.username.as_str()
    );

    let children = body(app.get(&session, "/api/v1/children/").await).await;
    assert_eq!(children["meta"]["pagination"]["count"], 1);
    assert_eq!(children["data"][0]["attributes"]["birthday"], "2023-01-01");
    let mine = body(
        app.get(&session, &format!("/api/v1/users/{}/children/", parent.id))
            .await,
    )
    .await;
    assert_eq!(mine["data"][0]["id"], child.to_string());
    let (status, _) = error_detail(
        app.get(
            &session,
            &format!("/api/v1/users/{}/children/", stranger.id),
        )
        .await,
    )
    .await;
    assert_eq!(status, 404);
    let (status, detail) =
        error_detail(app.get(&session, "/api/v1/children/not-a-uuid/").await).await;
    assert_eq!(status, 400, "{detail}");

    // Without a login: 401 with a JSON body.
    let response = app.get_without_session("/api/v1/studies/").await;
    let (status, detail) = error_detail(response).await;
    assert_eq!(status, 401);
    assert!(detail.contains("authentication required"), "{detail}");
}

#[tokio::test]
async fn researchers_see_their_labs_responses() {
    let app = spawn_app().await;
    let (_, session, lab) = app.researcher().await;
    let study = app.study(lab, "created").await;
    let other_lab = app.lab(true).await;
    let other_study = app.study(other_lab, "active").await;
    let parent = app.user(false, false).await;
    let child = app.child(parent.id).await;
    let ours = app.response(study, child).await;
    app.response(other_study, child).await;
    let listed = body(app.get(&session, "/api/v1/responses/").await).await;
    assert_eq!(listed["meta"]["pagination"]["count"], 1);
    assert_eq!(listed["data"][0]["id"], ours.to_string());
    let children = body(app.get(&session, "/api/v1/children/").await).await;
    assert_eq!(children["data"][0]["id"], child.to_string());
}

#[tokio::test]
async fn demographics_are_only_ever_the_callers_own() {
    let app = spawn_app().await;
    let parent = app.user(false, false).await;
    let session = app.session(&parent).await;
    let stranger = app.user(false, false).await;
    let mut ids = Vec::new();
    for (user, country) in [(parent.id, "US"), (parent.id, "CA"), (stranger.id, "GB")] {
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO demographics (id, user_id, country, child_birthdays, race_identification, number_of_books) \
             VALUES ($1, $2, $3, '{2023-01-01}', '{white,asian}', 40)",
        )
        .bind(id)
        .bind(user)
        .bind(country)
        .execute(&app.pool)
        .await
        .unwrap();
        ids.push(id);
    }

    let listed = body(app.get(&session, "/api/v1/demographics/").await).await;
    assert_eq!(listed["meta"]["pagination"]["count"], 2);
    let first = &listed["data"][0];
    assert_eq!(first["type"], "demographics");
    assert_eq!(first["id"], ids[0].to_string());
    assert_eq!(first["attributes"]["country"], "US");
    assert_eq!(
        first["attributes"]["child_birthdays"],
        json!(["2023-01-01"])
    );
    assert_eq!(
        first["attributes"]["race_identification"],
        json!(["white", "asian"])
    );
    assert_eq!(first["attributes"]["number_of_books"], 40);
    assert_eq!(
        first["relationships"]["user"]["data"]["id"],
        parent.id.to_string()
    );
    let one = body(
        app.get(&session, &format!("/api/v1/demographics/{}/", ids[1]))
            .await,
    )
    .await;
    assert_eq!(one["data"]["attributes"]["country"], "CA");
    let (status, _) = error_detail(
        app.get(&session, &format!("/api/v1/demographics/{}/", ids[2]))
            .await,
    )
    .await;
    assert_eq!(status, 404);
    // Read-only: no writes.
    let (status, detail) = error_detail(
        app.post(
            &session,
            "/api/v1/demographics/",
            json!({"data": {"type": "demographics", "attributes": {"country": "FR"}}}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 405, "{detail}");
}

#[tokio::test]
async fn researchers_give_feedback_that_the_participant_reads() {
    let app = spawn_app().await;
    let (researcher, researcher_session, lab) = app.researcher().await;
    let study = app.study(lab, "active").await;
    let parent = app.user(false, false).await;
    let parent_session = app.session(&parent).await;
    let child = app.child(parent.id).await;
    let response = app.response(study, child).await;
    let other_lab = app.lab(true).await;
    let elsewhere = app
        .response(app.study(other_lab, "active").await, child)
        .await;

    let give = |response: Uuid, comment: Value| {
        json!({"data": {
            "type": "feedback",
            "attributes": {"comment": comment},
            "relationships": {"response": {"data": {"type": "responses", "id": response}}},
        }})
    };
    let created = app
        .post(
            &researcher_session,
            "/api/v1/feedback/",
            give(response, json!("Thank you, lovely session!")),
        )
        .await;
    assert_eq!(created.status(), 201);
    let created = body(created).await;
    let id = created["data"]["id"].as_str().unwrap().to_string();
    assert_eq!(created["data"]["type"], "feedback");
    assert_eq!(
        created["data"]["relationships"]["researcher"]["data"]["id"],
        researcher.id.to_string()
    );

    // The participant who owns the response reads it; a stranger does not.
    let listed = body(app.get(&parent_session, "/api/v1/feedback/").await).await;
    assert_eq!(listed["meta"]["pagination"]["count"], 1);
    assert_eq!(
        listed["data"][0]["attributes"]["comment"],
        "Thank you, lovely session!"
    );
    assert_eq!(
        listed["data"][0]["relationships"]["response"]["data"]["id"],
        response.to_string()
    );
    let filtered = body(
        app.get(
            &parent_session,
            &format!("/api/v1/feedback/?response={elsewhere}"),
        )
        .await,
    )
    .await;
    assert_eq!(filtered["meta"]["pagination"]["count"], 0);
    let one = body(
        app.get(&parent_session, &format!("/api/v1/feedback/{id}/"))
            .await,
    )
    .await;
    assert_eq!(one["data"]["id"], id);
    let stranger = app.user(false, false).await;
    let stranger_session = app.session(&stranger).await;
    let (status, _) = error_detail(
        app.get(&stranger_session, &format!("/api/v1/feedback/{id}/"))
            .await,
    )
    .await;
    assert_eq!(status, 404);

    // Only researchers with access write it, and the comment must say something.
    let (status, detail) = error_detail(
        app.post(
            &parent_session,
            "/api/v1/feedback/",
            give(response, json!("I liked it")),
        )
        .await,
    )
    .await;
    assert_eq!(status, 403, "{detail}");
    assert!(detail.contains("researchers"), "{detail}");
    let cases = [
        (give(elsewhere, json!("Not our lab")), 400, "your labs"),
        (give(response, json!("  ")), 400, "comment"),
        (give(response, json!(5)), 400, "must be a string"),
        (
            json!({"data": {"type": "responses", "attributes": {"comment": "x"}}}),
            409,
            "data.type",
        ),
        (
            json!({"data": {"type": "feedback", "attributes": {"comment": "x"}}}),
            400,
            "relationship response",
        ),
    ];
    for (document, status, needle) in cases {
        let (got, detail) = error_detail(
            app.post(&researcher_session, "/api/v1/feedback/", document)
                .await,
        )
        .await;
        assert_eq!(got, status, "{detail}");
        assert!(detail.contains(needle), "{detail} lacks {needle}");
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM feedback")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 1);
}
