//! The worker with its stores in S3 (a real S3-compatible server, moto): build outputs are
//! uploaded to the bucket, and cleanup aborts abandoned multipart uploads there.

mod common;

use std::time::Duration;

use common::{fixture, start_worker};
use lookit_contracts::{CleanupJob, CleanupTask, Queue};
use lookit_storage::object_store::path::Path as Key;
use lookit_storage::object_store::{ObjectStoreExt, PutPayload};
use lookit_storage::{below, study_prefix};
use uuid::Uuid;

#[tokio::test]
async fn a_build_output_is_uploaded_to_s3_under_experiments() {
    let f = fixture().await;
    let s3 = lookit_testkit::s3_server().await;
    let bucket = s3.fresh_bucket().await;
    let mut settings = f.settings();
    settings.builds_store = s3.location(&bucket, "lab-builds");
    let worker = start_worker(&f.pool, settings);
    let (_connection, publisher) = f.publisher().await;

    let build_id = f.request_build(&publisher, &f.player("player", &[])).await;
    assert_eq!(f.finished_build(build_id).await, "succeeded");

    let (location, log): (String, String) =
        sqlx::query_as("SELECT output_location, log FROM builds WHERE id = $1")
            .bind(build_id)
            .fetch_one(&f.pool)
            .await
            .unwrap();
    assert_eq!(
        location,
        format!("s3://{bucket}/lab-builds/experiments/{}", f.study_id)
    );
    assert!(log.contains(&format!("to {location}")), "{log}");
    let store = s3.location(&bucket, "lab-builds").open().unwrap();
    let index = store
        .read(&below(&study_prefix(f.study_id), "index.html").unwrap())
        .await
        .unwrap()
        .expect("index.html is in the bucket");
    assert!(
        String::from_utf8_lossy(&index)
            .contains(&format!("/studies/{}/assets/frameplayer.js", f.study_id)),
        "the fingerprint prefix points at the served assets"
    );
    let asset = store
        .store()
        .get(&below(&study_prefix(f.study_id), "assets/frameplayer.js").unwrap())
        .await
        .expect("the asset is in the bucket");
    let content_type = asset
        .attributes
        .get(&lookit_storage::object_store::Attribute::ContentType)
        .map(|v| v.to_string())
        .unwrap_or_default();
    assert!(content_type.contains("javascript"), "{content_type}");
    worker.stop().await;
}

#[tokio::test]
async fn cleanup_aborts_an_abandoned_multipart_upload_in_the_video_bucket() {
    let f = fixture().await;
    let s3 = lookit_testkit::s3_server().await;
    let bucket = s3.fresh_bucket().await;
    let videos = s3.location(&bucket, "pipe");
    let mut settings = f.settings();
    settings.videos_store = Some(videos.clone());
    settings.abandoned_upload_age = Duration::ZERO;
    settings.cleanup_schedule = Vec::new();

    // A participant closed the page in the middle of a direct upload.
    let mut upload = videos
        .open()
        .unwrap()
        .store()
        .put_multipart(&Key::from("videoStream_closed_tab.mp4"))
        .await
        .unwrap();
    upload
        .put_part(PutPayload::from(vec![1u8; 2048]))
        .await
        .unwrap();
    drop(upload);
    let pending_uploads = || async {
        reqwest::get(format!("{}/{bucket}?uploads", s3.endpoint()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    assert!(pending_uploads()
        .await
        .contains("videoStream_closed_tab.mp4"));

    let worker = start_worker(&f.pool, settings);
    let (_connection, publisher) = f.publisher().await;
    let job = CleanupJob {
        job_id: Uuid::new_v4(),
        task: CleanupTask::MultipartUploads,
    };
    publisher.publish_job(Queue::Cleanup, &job).await.unwrap();
    // The job is recorded as done once its effects are; then the bucket has no upload left.
    f.row_for(
        "the cleanup job is done",
        "SELECT queue FROM processed_jobs WHERE job_id = $1",
        job.job_id,
    )
    .await;
    let listing = pending_uploads().await;
    assert!(!listing.contains("videoStream_closed_tab.mp4"), "{listing}");
    worker.stop().await;
}
