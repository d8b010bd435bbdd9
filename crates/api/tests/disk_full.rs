//! The disk holding the local video store fills up (issue #9). Pipe's webhook writes no video
//! data here: it renames Pipe's upload in place (`<pipe name>.mp4` → `<our name>.mp4`, one
//! filesystem). A rename still needs room when the folder has to grow for the new name: on a
//! full disk whose video folder has no space left in its blocks, it fails with ENOSPC. That is
//! the failure made real here, on a small ext4 disk the test mounts (root only; it says why it
//! skips otherwise).

mod common;

use std::path::Path;

use common::*;
use lookit_storage::StoreLocation;
use lookit_testkit::SmallDisk;

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
    let parent = app.user(false, false).await;
    let lab = app.lab(true).await;
    let study = app.study(lab, "active").await;
    let child = app.child(parent.id).await;
    let response = app.response(study, child).await;
    // What Pipe left in the store: the video and its snapshot under Pipe's name.
    std::fs::write(videos.join("pipe-abc.mp4"), b"video").unwrap();
    std::fs::write(videos.join("pipe-abc.jpg"), b"snapshot").unwrap();
    disk.fill();
    fill_folder(&videos);

    let name = format!("videoStream_{study}_1-video-consent_{response}_1700000000123_042");
    let payload = pipe_payload("pipe-abc", &name, "upload success");
    let signature = pipe_signature(&format!("{PUBLIC_URL}/exp/renamevideo/"), &payload);
    let call = || {
        app.client
            .post(app.url("/exp/renamevideo/"))
            .header("X-Pipe-Signature", &signature)
            .form(&[("payload", &payload)])
            .send()
    };
    let recorded = || async {
        sqlx::query_scalar::<_, String>("SELECT full_name FROM videos")
            .fetch_all(&app.pool)
            .await
            .unwrap()
    };

    let (status, detail) = error_detail(call().await.unwrap()).await;
    assert_eq!(status, 507, "{detail}");
    assert!(
        detail.contains("video storage is full") && detail.contains("call again"),
        "the answer says why and that a retry will do: {detail}"
    );
    assert!(
        !detail.contains(&disk.path().display().to_string()),
        "no path of this machine goes to Pipe: {detail}"
    );
    assert_eq!(
        std::fs::read(videos.join("pipe-abc.mp4")).unwrap(),
        b"video",
        "the video keeps Pipe's name, where the retry looks for it"
    );
    assert!(!videos.join(format!("{name}.mp4")).exists());
    assert!(videos.join("pipe-abc.jpg").exists());
    assert!(recorded().await.is_empty(), "no row without its file");

    // Room again: Pipe's retry registers the video.
    disk.free();
    let answer = call().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), format!("pipe-abc --> {name}"));
    assert_eq!(
        std::fs::read(videos.join(format!("{name}.mp4"))).unwrap(),
        b"video"
    );
    assert!(!videos.join("pipe-abc.mp4").exists());
    assert!(!videos.join("pipe-abc.jpg").exists());
    assert_eq!(recorded().await, [name]);
}
