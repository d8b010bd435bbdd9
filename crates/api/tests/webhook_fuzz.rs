//! Property-based fuzzing of the two video webhooks (Pipe's `/exp/renamevideo/` and the Lambda's
//! `/api/v1/video/`): random and malformed payloads, signatures and file names, many of them
//! correctly signed so they reach the checks behind the signature. Every answer is a 4xx with a
//! JSON reason, and nothing is stored: no video row, and the video storage unchanged.
//!
//! Names never pair the study with its own response, so no generated request is a legitimate
//! registration.

mod common;

use std::collections::BTreeSet;

use base64::Engine;
use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};
use uuid::Uuid;

/// Cases per webhook: enough variety in a few seconds.
const CASES: u32 = 300;
/// The object Pipe "uploaded": requests may try to rename it.
const UPLOADED: &str = "pipe-uploaded";

struct Fixture {
    app: TestApp,
    /// (study, response of that study), twice: names mix them up, never pair them.
    pairs: [(Uuid, Uuid); 2],
    /// Runs the server (the proptest runner calls the cases synchronously); declared last so
    /// the app is dropped while it still runs.
    runtime: tokio::runtime::Runtime,
}

impl Fixture {
    fn start() -> Fixture {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let (app, pairs) = runtime.block_on(async {
            let app = spawn_app().await;
            let parent = app.user(false, false).await;
            let lab = app.lab(true).await;
            let mut pairs = Vec::new();
            for _ in 0..2 {
                let study = app.study(lab, "active").await;
                let child = app.child(parent.id).await;
                pairs.push((study, app.response(study, child).await));
            }
            (app, [pairs[0], pairs[1]])
        });
        for ext in ["mp4", "jpg"] {
            std::fs::write(
                app.videos.path().join(format!("{UPLOADED}.{ext}")),
                b"video",
            )
            .unwrap();
        }
        Fixture {
            app,
            pairs,
            runtime,
        }
    }

    /// Sends [`CASES`] requests that `request` makes of values of `strategy` and fails unless
    /// every answer is a 4xx with a JSON reason and, after all of them, nothing was stored or
    /// moved.
    fn assert_every_request_refused_storing_nothing<S: Strategy>(
        &self,
        strategy: S,
        request: impl Fn(S::Value) -> reqwest::RequestBuilder,
    ) {
        let before = self.runtime.block_on(self.stored());
        let mut runner = TestRunner::new(Config {
            cases: CASES,
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(&strategy, |value| {
                let (status, body) = self.runtime.block_on(async {
                    let response = request(value).send().await.unwrap();
                    (response.status().as_u16(), response.text().await.unwrap())
                });
                status_is_client_error(status, &body)
            })
            .unwrap();
        assert_eq!(
            self.runtime.block_on(self.stored()),
            before,
            "nothing was stored or moved"
        );
    }

    /// The storage's file names and the number of video rows.
    async fn stored(&self) -> (BTreeSet<String>, i64) {
        let files = walk(self.app.videos.path());
        let rows = sqlx::query_scalar("SELECT count(*) FROM videos")
            .fetch_one(&self.app.pool)
            .await
            .unwrap();
        (files, rows)
    }

    fn mismatched_ids(&self) -> impl Strategy<Value = (String, String)> {
        let [(s1, r1), (s2, r2)] = self.pairs;
        let random = any::<u128>().prop_map(|n| Uuid::from_u128(n).to_string());
        prop_oneof![
            Just((s1.to_string(), r2.to_string())),
            Just((s2.to_string(), r1.to_string())),
            random.clone().prop_map(move |r| (s1.to_string(), r)),
            random.clone().prop_map(move |s| (s, r1.to_string())),
            (random.clone(), random),
            (".{0,40}", ".{0,40}"),
        ]
    }

    /// File names: mostly the frameplayer's shape with wrong parts, some free text.
    fn names(&self) -> impl Strategy<Value = String> {
        let frame = prop_oneof![
            "[a-z0-9-]{1,12}",
            "[a-z_]{0,8}_[a-z_]{0,8}",
            ".{0,30}",
            Just("../../etc/passwd".to_string())
        ];
        let millis = prop_oneof![
            (0i64..4_102_444_800_000).prop_map(|n| n.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            ".{0,15}",
        ];
        let digits = prop_oneof!["[0-9]{3}", ".{0,5}"];
        let shaped = (any::<bool>(), self.mismatched_ids(), frame, millis, digits).prop_map(
            |(consent, (study, response), frame, millis, digits)| {
                let prefix = if consent { "consent-" } else { "" };
                format!("{prefix}videoStream_{study}_{frame}_{response}_{millis}_{digits}")
            },
        );
        prop_oneof![3 => shaped, 1 => ".{0,80}"]
    }
}

/// Relative paths of every file under `dir`.
fn walk(dir: &std::path::Path) -> BTreeSet<String> {
    let mut files = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.insert(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    files
}

/// A JSON value of any shape, for fields that expect a particular one.
fn any_json() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,20}".prop_map(Value::from),
        prop::collection::vec(".{0,5}", 0..3).prop_map(|v| json!(v)),
    ]
}

#[derive(Debug, Clone)]
enum Signature {
    Valid,
    Missing,
    /// Bytes that are not a signature (any text, or a wrong MAC).
    Wrong(String),
}

impl Signature {
    /// `request` with this signature in `header`; `valid` computes the right one.
    fn sign(
        &self,
        request: reqwest::RequestBuilder,
        header: &str,
        valid: impl FnOnce() -> String,
    ) -> reqwest::RequestBuilder {
        match self {
            Signature::Valid => request.header(header, valid()),
            Signature::Wrong(text) => match reqwest::header::HeaderValue::from_str(text) {
                Ok(value) => request.header(header, value),
                Err(_) => request,
            },
            Signature::Missing => request,
        }
    }
}

fn signatures() -> impl Strategy<Value = Signature> {
    prop_oneof![
        4 => Just(Signature::Valid),
        1 => Just(Signature::Missing),
        1 => "[ -~]{0,60}".prop_map(Signature::Wrong),
        1 => prop::collection::vec(any::<u8>(), 20).prop_map(|b| {
            Signature::Wrong(base64::engine::general_purpose::STANDARD.encode(b))
        }),
    ]
}

fn status_is_client_error(status: u16, body: &str) -> Result<(), TestCaseError> {
    prop_assert!(
        (400..500).contains(&status),
        "expected a 4xx, got {status}: {body}"
    );
    let parsed: Result<Value, _> = serde_json::from_str(body);
    prop_assert!(
        parsed.is_ok_and(|v| v["errors"][0]["detail"].is_string()),
        "a 4xx without a JSON reason: {body}"
    );
    Ok(())
}

#[test]
fn fuzzed_pipe_webhooks_are_refused_and_store_nothing() {
    let f = Fixture::start();
    let events = (
        prop_oneof![4 => Just("upload success".to_string()), 1 => ".{0,20}"],
        prop_oneof![3 => Just(UPLOADED.to_string()), 1 => ".{0,30}", 1 => Just("../pipe-uploaded".to_string())],
        f.names(),
        any_json(),
    )
        .prop_map(|(status, video_name, payload, id)| {
            json!({"version": "1.0", "event": "video_copied_s3", "data": {
                "s3UploadStatus": status, "videoName": video_name, "payload": payload, "id": id,
                "type": "MP4", "size": 1,
            }})
            .to_string()
        });
    let payloads = prop_oneof![
        4 => events,
        1 => ".{0,200}",
        1 => any_json().prop_map(|v| json!({"data": v}).to_string()),
    ];
    f.assert_every_request_refused_storing_nothing(
        (payloads, signatures(), any::<bool>()),
        |(payload, signature, as_form)| {
            let request = f.app.client.post(f.app.url("/exp/renamevideo/"));
            let signed = signature.sign(request, "X-Pipe-Signature", || {
                pipe_signature(&format!("{PUBLIC_URL}/exp/renamevideo/"), &payload)
            });
            if as_form {
                signed.form(&[("payload", &payload)])
            } else {
                signed.body(payload)
            }
        },
    );
}

#[test]
fn fuzzed_lambda_calls_are_refused_and_store_nothing() {
    let f = Fixture::start();
    let attributes = (
        prop_oneof![3 => ".{0,20}".prop_map(Value::from), 1 => any_json()],
        prop_oneof![3 => any::<i64>().prop_map(Value::from), 1 => any_json()],
        prop_oneof![3 => ".{0,20}".prop_map(Value::from), 1 => any_json()],
        f.names(),
        prop_oneof![
            3 => Just(Value::from("2024-05-01T10:00:00Z")),
            1 => ".{0,25}".prop_map(Value::from),
            1 => any_json(),
        ],
        prop_oneof![3 => any::<bool>().prop_map(Value::from), 1 => any_json()],
        prop::option::of(any_json()),
    )
        .prop_map(
            |(pipe_name, numeric_id, frame_id, full_name, timestamp, consent, extra)| {
                let mut attributes = json!({
                    "pipe_name": pipe_name, "pipe_numeric_id": numeric_id, "frame_id": frame_id,
                    "full_name": full_name, "s3_timestamp": timestamp,
                    "is_consent_footage": consent,
                });
                if let Some(extra) = extra {
                    attributes["extra"] = extra;
                }
                attributes
            },
        );
    let relationships = prop_oneof![
        4 => f.mismatched_ids().prop_map(|(study, response)| json!({
            "response": {"data": {"type": "responses", "id": response}},
            "study": {"data": {"type": "studies", "id": study}},
        })),
        1 => any_json(),
    ];
    let kinds = prop_oneof![4 => Just("videos".to_string()), 1 => ".{0,10}"];
    let documents = (attributes, relationships, kinds).prop_map(|(attributes, relationships, kind)| {
        (
            json!({"data": {"type": kind, "attributes": attributes, "relationships": relationships}})
                .to_string(),
            attributes,
        )
    });
    let bodies = prop_oneof![
        4 => documents,
        1 => ".{0,200}".prop_map(|text| (text, Value::Null)),
        1 => prop::collection::vec(any::<u8>(), 0..200)
            .prop_map(|bytes| (String::from_utf8_lossy(&bytes).into_owned(), Value::Null)),
    ];
    f.assert_every_request_refused_storing_nothing(
        (bodies, signatures()),
        |((body, attributes), signature)| {
            let request = f
                .app
                .client
                .post(f.app.url("/api/v1/video/"))
                .header("content-type", "application/vnd.api+json")
                .body(body);
            signature.sign(request, "X-AWS-Lambda-HMAC-Sig", || {
                lambda_signature(&attributes)
            })
        },
    );
}
