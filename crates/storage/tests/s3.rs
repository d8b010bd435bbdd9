//! The storage places against a real S3-compatible server (moto, from lookit-testkit), and
//! against Google Cloud Storage when a bucket and credentials are given.

use std::time::Duration;

use lookit_storage::object_store::path::Path as Key;
use lookit_storage::object_store::{Attribute, ObjectStoreExt, PutPayload};
use lookit_storage::{study_prefix, GcsLocation, Storage, StoreLocation};
use uuid::Uuid;

async fn s3_storage(prefix: &str) -> (Storage, String) {
    let server = lookit_testkit::s3_server().await;
    let bucket = server.fresh_bucket().await;
    let storage = server
        .location(&bucket, prefix)
        .open()
        .expect("open the S3 storage");
    (storage, bucket)
}

fn build_output(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, contents) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
    dir
}

#[tokio::test]
async fn a_build_output_lands_in_the_bucket_with_types_and_replaces_the_previous_one() {
    let (storage, bucket) = s3_storage("lab").await;
    let study = Uuid::new_v4();
    let first = build_output(&[
        ("index.html", "<html>first</html>"),
        ("assets/old-0123456789abcdef0123456789abcdef.js", "old()"),
    ]);
    storage
        .upload_folder(first.path(), &study_prefix(study))
        .await
        .expect("first upload");
    let second = build_output(&[
        ("index.html", "<html>second</html>"),
        (
            "assets/app-fedcba9876543210fedcba9876543210.js",
            "console.log(1)",
        ),
        ("assets/logo.png", "png"),
    ]);
    let uploaded = storage
        .upload_folder(second.path(), &study_prefix(study))
        .await
        .expect("second upload");
    assert_eq!((uploaded.files, uploaded.removed), (3, 1));
    assert_eq!(
        uploaded.location,
        format!("s3://{bucket}/lab/experiments/{study}")
    );

    // What S3 hands out for each object (to the API, or to a browser pointed at the bucket):
    // the types and cache policy of the files, under the configured prefix.
    let server = lookit_testkit::s3_server().await;
    let listing = reqwest::get(format!(
        "{}/{bucket}?prefix=lab/experiments/",
        server.endpoint()
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(
        listing.contains(&format!("lab/experiments/{study}/assets/logo.png")),
        "{listing}"
    );
    let attributes = |path: &'static str| {
        let key = lookit_storage::below(&study_prefix(study), path).unwrap();
        let store = storage.store().clone();
        async move {
            let attributes = store.get(&key).await.expect(path).attributes;
            let value = |attribute| {
                attributes
                    .get(&attribute)
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            };
            (
                value(Attribute::ContentType),
                value(Attribute::CacheControl),
            )
        }
    };
    assert_eq!(
        attributes("index.html").await,
        ("text/html; charset=utf-8".into(), "no-cache".into())
    );
    let (asset_type, asset_cache) =
        attributes("assets/app-fedcba9876543210fedcba9876543210.js").await;
    assert!(asset_type.contains("javascript"), "{asset_type}");
    assert_eq!(asset_cache, "public, max-age=31536000, immutable");
    assert_eq!(attributes("assets/logo.png").await.0, "image/png");
    // The first build's asset is gone.
    assert!(
        !listing.contains("old-0123456789abcdef0123456789abcdef.js"),
        "{listing}"
    );
    let read = storage
        .read(&lookit_storage::below(&study_prefix(study), "index.html").unwrap())
        .await
        .unwrap();
    assert_eq!(read.as_deref(), Some(&b"<html>second</html>"[..]));
    assert_eq!(
        storage
            .read(&lookit_storage::below(&study_prefix(study), "missing.js").unwrap())
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn abandoned_multipart_uploads_are_aborted() {
    let (storage, bucket) = s3_storage("videos").await;
    let mut upload = storage
        .store()
        .put_multipart(&Key::from("videoStream_abandoned.mp4"))
        .await
        .expect("start a multipart upload");
    upload
        .put_part(PutPayload::from(vec![7u8; 1024]))
        .await
        .expect("upload a part");
    // The uploader goes away without completing or aborting.
    drop(upload);
    let server = lookit_testkit::s3_server().await;
    let pending = || async {
        reqwest::get(format!("{}/{bucket}?uploads", server.endpoint()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    assert!(pending().await.contains("videoStream_abandoned.mp4"));

    // moto dates every upload in 2010, so only the age-0 case shows here; the age limit is
    // unit-tested in s3_uploads.rs.
    let aborted = storage
        .abort_abandoned_uploads(Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(aborted, Some(1));
    let listing = pending().await;
    assert!(!listing.contains("videoStream_abandoned.mp4"), "{listing}");
}

#[tokio::test]
async fn a_folder_has_no_multipart_uploads_and_serves_files_by_path() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::folder(dir.path().join("published")).unwrap();
    assert_eq!(
        storage
            .abort_abandoned_uploads(Duration::ZERO)
            .await
            .unwrap(),
        None
    );
    let study = Uuid::new_v4();
    let output = build_output(&[("index.html", "<html/>"), ("assets/a.js", "a()")]);
    let uploaded = storage
        .upload_folder(output.path(), &study_prefix(study))
        .await
        .unwrap();
    let expected = dir
        .path()
        .join("published/experiments")
        .join(study.to_string());
    assert_eq!(uploaded.location, expected.display().to_string());
    assert_eq!(
        std::fs::read_to_string(expected.join("assets/a.js")).unwrap(),
        "a()"
    );
    // A folder is not a file.
    assert_eq!(
        storage
            .read(&lookit_storage::below(&study_prefix(study), "assets").unwrap())
            .await
            .unwrap(),
        None
    );
}

/// Reads `range` of `key` through [`Storage::read_range`], chunk after chunk.
async fn read_part(storage: &Storage, key: &Key, range: std::ops::Range<u64>) -> Option<Vec<u8>> {
    use futures::TryStreamExt;
    let chunks = storage.read_range(key, range).await.unwrap()?;
    let chunks: Vec<bytes::Bytes> = chunks.try_collect().await.unwrap();
    Some(chunks.concat())
}

#[tokio::test]
async fn a_video_is_sized_and_read_in_parts_from_a_bucket_and_from_a_folder() {
    let (bucket, _) = s3_storage("pipe").await;
    let dir = tempfile::tempdir().unwrap();
    let folder = Storage::folder(dir.path().join("videos")).unwrap();
    let video: Vec<u8> = (0..100_000u32).map(|n| (n % 251) as u8).collect();
    let key =
        lookit_storage::video_object("videoStream_a_1-intro_b_1700000000000_123", "mp4").unwrap();
    assert_eq!(
        key.as_ref(),
        "videoStream_a_1-intro_b_1700000000000_123.mp4"
    );
    for storage in [&bucket, &folder] {
        let place = storage.root();
        storage
            .store()
            .put(&key, video.clone().into())
            .await
            .unwrap();
        assert_eq!(
            storage.size_of(&key).await.unwrap(),
            Some(100_000),
            "{place}"
        );
        assert_eq!(
            read_part(storage, &key, 0..100_000).await.as_deref(),
            Some(&video[..]),
            "{place}"
        );
        assert_eq!(
            read_part(storage, &key, 99_990..100_000).await.as_deref(),
            Some(&video[99_990..]),
            "{place}"
        );
        // Past the end stops at the end.
        assert_eq!(
            read_part(storage, &key, 65_536..200_000).await.as_deref(),
            Some(&video[65_536..]),
            "{place}"
        );
        let missing = lookit_storage::video_object("videoStream_missing", "mp4").unwrap();
        assert_eq!(storage.size_of(&missing).await.unwrap(), None, "{place}");
        assert!(
            read_part(storage, &missing, 0..1).await.is_none(),
            "{place}"
        );
    }
}

/// Google Cloud Storage cannot run here; with `LOOKIT_TEST_GCS_BUCKET` and
/// `GOOGLE_APPLICATION_CREDENTIALS` set, the same upload and read run against the real bucket.
#[tokio::test]
async fn gcs_upload_and_read_when_a_bucket_is_given() {
    let (Ok(bucket), Ok(key)) = (
        std::env::var("LOOKIT_TEST_GCS_BUCKET"),
        std::env::var("GOOGLE_APPLICATION_CREDENTIALS"),
    ) else {
        eprintln!("skipped: set LOOKIT_TEST_GCS_BUCKET and GOOGLE_APPLICATION_CREDENTIALS");
        return;
    };
    lookit_testkit::install_crypto_provider();
    let prefix = format!("lookit-test-{}", Uuid::new_v4().simple());
    let storage = StoreLocation::Gcs(GcsLocation {
        bucket,
        prefix,
        service_account_key: Some(key.into()),
    })
    .open()
    .expect("open the GCS storage");
    let study = Uuid::new_v4();
    let output = build_output(&[("index.html", "<html>gcs</html>")]);
    storage
        .upload_folder(output.path(), &study_prefix(study))
        .await
        .expect("upload to GCS");
    let index = lookit_storage::below(&study_prefix(study), "index.html").unwrap();
    assert_eq!(
        storage.read(&index).await.unwrap().as_deref(),
        Some(&b"<html>gcs</html>"[..])
    );
    storage.store().delete(&index).await.expect("clean up");
}
