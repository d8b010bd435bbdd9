//! A disk the API writes to fills up (issue #9).
//!
//! The video store: Pipe's webhook writes no video data here: it renames Pipe's upload in place
//! (`<pipe name>.mp4` → `<our name>.mp4`, one filesystem). A rename still needs room when the
//! folder has to grow for the new name: on a full disk whose video folder has no space left in
//! its blocks, it fails with ENOSPC. That is the failure made real here, on a small ext4 disk
//! the test mounts.
//!
//! The database: the table the webhook writes to lives in a tablespace of the test Postgres on a
//! small disk the test fills, so Postgres itself refuses the row (SQLSTATE 53100, `disk_full`).
//!
//! Both mount disks: root only; they say why they skip otherwise.
mod common;

use std::path::Path;

use common::*;
use lookit_storage::StoreLocation;
use lookit_testkit::{SmallDisk, SmallTablespace};

/// Creates empty files in `folder`, as videos received earlier, until it cannot take one more
/// name: on a full disk, no block of the folder has room left for an entry. Names hash to the
/// blocks of an indexed folder, so it stops only after many refusals in a row.
fn fill_folder(folder: &Path) {
    let mut refused_in_a_row = 0;
    for n in 0.. {
        if refused_in_a_row == 1000 {
            break;
        }
        match std::fs::File::create(folder.join(format!("videoStream_earlier_{n:06}.mp4"))) {
            Ok(_) => refused_in_a_row = 0,
            Err(error) if error.raw_os_error() == Some(28) => refused_in_a_row += 1,
            Err(error) => panic!("filling the video folder: {error}"),
        }
    }
}

/// A video Pipe uploaded for a response of an active study, left in the video store under
/// Pipe's name (`pipe-abc.mp4`, with its snapshot), and Pipe's webhook call that registers it
/// under Lookit's name.
struct PipeUpload {
    /// Lookit's name for the video.
    name: String,
    payload: String,
    signature: String,
}

impl PipeUpload {
    async fn new(app: &TestApp, videos: &Path) -> PipeUpload {
        let parent = app.user(false, false).await;
        let lab = app.lab(true).await;
        let study = app.study(lab, "active").await;
        let child = app.child(parent.id).await;
        let response = app.response(study, child).await;
        std::fs::write(videos.join("pipe-abc.mp4"), b"video").unwrap();
        std::fs::write(videos.join("pipe-abc.jpg"), b"snapshot").unwrap();
        let name = format!("videoStream_{study}_1-video-consent_{response}_1700000000123_042");
        let payload = pipe_payload("pipe-abc", &name, "upload success");
        let signature = pipe_signature(&format!("{PUBLIC_URL}/exp/renamevideo/"), &payload);
        PipeUpload {
            name,
            payload,
            signature,
        }
    }

    /// Pipe calling the webhook.
    async fn call(&self, app: &TestApp) -> reqwest::Response {
        app.client
            .post(app.url("/exp/renamevideo/"))
            .header("X-Pipe-Signature", &self.signature)
            .form(&[("payload", &self.payload)])
            .send()
            .await
            .unwrap()
    }

    /// After a refused call: the video is as Pipe left it, where its retry looks for it.
    fn assert_left_as_pipe_left_it(&self, videos: &Path) {
        assert_eq!(
            std::fs::read(videos.join("pipe-abc.mp4")).unwrap(),
            b"video",
            "the video keeps Pipe's name, where the retry looks for it"
        );
        assert!(!videos.join(format!("{}.mp4", self.name)).exists());
        assert!(videos.join("pipe-abc.jpg").exists());
    }

    /// After a successful call: the video is registered under Lookit's name.
    async fn assert_registered(&self, app: &TestApp, videos: &Path, answer: reqwest::Response) {
        assert_eq!(answer.status(), 200);
        assert_eq!(
            answer.text().await.unwrap(),
            format!("pipe-abc --> {}", self.name)
        );
        assert_eq!(
            std::fs::read(videos.join(format!("{}.mp4", self.name))).unwrap(),
            b"video"
        );
        assert!(!videos.join("pipe-abc.mp4").exists());
        assert!(!videos.join("pipe-abc.jpg").exists());
        assert_eq!(recorded(app).await, std::slice::from_ref(&self.name));
    }
}

/// The videos the database has rows for.
async fn recorded(app: &TestApp) -> Vec<String> {
    sqlx::query_scalar::<_, String>("SELECT full_name FROM videos")
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_full_video_disk_is_a_507_that_stores_nothing_and_the_retry_succeeds_once_there_is_room()
{
    let Some(disk) = SmallDisk::mount() else {
        return;
    };
    let videos = disk.path().join("videos");
    let app = spawn_app_with(AppOptions {
        videos: Some(StoreLocation::Folder(videos.clone())),
        ..AppOptions::default()
    })
    .await;
    let upload = PipeUpload::new(&app, &videos).await;
    disk.fill();
    fill_folder(&videos);

    let (status, detail) = error_detail(upload.call(&app).await).await;
    assert_eq!(status, 507, "{detail}");
    assert!(
        detail.contains("video storage is full") && detail.contains("call again"),
        "the answer says why and that a retry will do: {detail}"
    );
    assert!(
        !detail.contains(&disk.path().display().to_string()),
        "no path of this machine goes to Pipe: {detail}"
    );
    upload.assert_left_as_pipe_left_it(&videos);
    assert!(recorded(&app).await.is_empty(), "no row without its file");

    // Room again: Pipe's retry registers the video.
    disk.free();
    upload
        .assert_registered(&app, &videos, upload.call(&app).await)
        .await;
}

#[tokio::test]
async fn a_full_database_disk_is_a_507_saying_to_free_space_and_the_retry_succeeds_once_there_is_room(
) {
    let Some(tablespace) = SmallTablespace::create().await else {
        return;
    };
    let app = spawn_app().await;
    let videos = app.videos.path().to_path_buf();
    let upload = PipeUpload::new(&app, &videos).await;
    // Empty, the table has no block to put a row in: the insert must grow it on the full disk.
    tablespace.take_table(&app.pool, "videos").await;
    tablespace.disk().fill();

    let (status, detail) = error_detail(upload.call(&app).await).await;
    assert_eq!(status, 507, "a full disk is not a bug of ours: {detail}");
    assert!(
        detail.starts_with("the database's disk is full") && detail.contains("free some space"),
        "the answer says why and what to do: {detail}"
    );
    assert!(
        !detail.contains("pg_tblspc")
            && !detail.contains(&tablespace.disk().path().display().to_string()),
        "no path of this machine goes to Pipe: {detail}"
    );
    upload.assert_left_as_pipe_left_it(&videos);
    assert!(recorded(&app).await.is_empty());

    // Room again: Pipe's retry registers the video.
    tablespace.disk().free();
    upload
        .assert_registered(&app, &videos, upload.call(&app).await)
        .await;
}
