//! Received videos as the panel shows them: the rows the API recorded, and their files in the
//! video storage. A local folder, S3 and GCS are one code path, through `lookit-storage`.
//!
//! Invariants:
//! - The panel reads the object the API renamed Pipe's upload to ([`video_object`]), in the
//!   store the API writes to.
//! - A file is streamed from the store, never read whole into memory.
//! - Every question to the store is answered within [`VideoStore`]'s bound or counts as
//!   unanswered: the store's own retries would otherwise hold a page for about a minute.

use std::future::Future;
use std::ops::Range;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use lookit_panel::{ActionError, ByteStream, StoredState, VideoContent, VideoFile, VideoSummary};
use lookit_storage::object_store::path::Path as Key;
use lookit_storage::{video_object, Storage, StorageError};
use sqlx::PgPool;
use uuid::Uuid;

use crate::records::{database_error, LIST_LIMIT};

/// How long the panel waits for the video storage to answer one question (or, when listing,
/// all the sizes together).
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Sizes asked of the store at once when listing: a list holds up to [`LIST_LIMIT`] videos.
const SIZES_AT_ONCE: usize = 16;

/// The video storage as the panel reads it: the store the API renames videos in, with a bound
/// on how long a request waits for it.
#[derive(Debug, Clone)]
pub(crate) struct VideoStore {
    storage: Storage,
    answer_within: Duration,
}

impl VideoStore {
    pub(crate) fn new(storage: Storage) -> VideoStore {
        VideoStore {
            storage,
            answer_within: ANSWER_WITHIN,
        }
    }

    /// `operation`'s answer, or why the store gave none: a missing object is not an error here
    /// (`None` from the storage), anything else names the store.
    async fn answer<T>(
        &self,
        operation: impl Future<Output = Result<T, StorageError>>,
    ) -> Result<T, ActionError> {
        match tokio::time::timeout(self.answer_within, operation).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => Err(ActionError::Upstream(format!(
                "the video storage cannot be read: {error}"
            ))),
            Err(_) => Err(ActionError::Upstream(format!(
                "the video storage {} did not answer within {:?}; check that it is reachable \
                 and the [storage] settings",
                self.storage.root(),
                self.answer_within
            ))),
        }
    }

    /// Whether the store holds each object and its size, [`SIZES_AT_ONCE`] questions at a
    /// time; whatever it has not answered within the bound, all together, is
    /// [`StoredState::Unknown`]. `None` keys cannot be stored and so are missing.
    async fn states(&self, keys: &[Option<Key>]) -> Vec<(StoredState, Option<u64>)> {
        let mut states: Vec<_> = keys
            .iter()
            .map(|key| match key {
                Some(_) => (StoredState::Unknown, None),
                None => (StoredState::Missing, None),
            })
            .collect();
        // Owned items: futures borrowing from the stream's items are not `Send` for every
        // lifetime, which the panel's `async_trait` methods require.
        let asked: Vec<(usize, Key, Storage)> = keys
            .iter()
            .enumerate()
            .filter_map(|(row, key)| Some((row, key.clone()?, self.storage.clone())))
            .collect();
        let mut answers = futures::stream::iter(asked)
            .map(|(row, key, storage)| async move { (row, storage.size_of(&key).await) })
            .buffer_unordered(SIZES_AT_ONCE);
        let deadline = tokio::time::Instant::now() + self.answer_within;
        let mut failure = None;
        loop {
            match tokio::time::timeout_at(deadline, answers.next()).await {
                Ok(Some((row, answer))) => {
                    states[row] = match answer {
                        Ok(Some(size)) => (StoredState::Stored, Some(size)),
                        Ok(None) => (StoredState::Missing, None),
                        Err(error) => {
                            failure.get_or_insert(error.to_string());
                            (StoredState::Unknown, None)
                        }
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    failure.get_or_insert(format!("no answer within {:?}", self.answer_within));
                    break;
                }
            }
        }
        if let Some(failure) = failure {
            tracing::warn!(
                storage = self.storage.root(),
                %failure,
                "the video storage did not tell the size of every video"
            );
        }
        states
    }
}

type VideoRow = (
    Uuid,
    String,
    Uuid,
    String,
    Uuid,
    String,
    bool,
    DateTime<Utc>,
);

/// Received videos, newest first, with whether the store holds each one and its size.
pub(crate) async fn videos(
    pool: &PgPool,
    store: &VideoStore,
) -> Result<Vec<VideoSummary>, ActionError> {
    let rows: Vec<VideoRow> = sqlx::query_as(&format!(
        "SELECT v.id, v.full_name, v.study_id, s.name, v.response_id, v.frame_id, \
         v.is_consent_footage, v.s3_timestamp FROM videos v JOIN studies s ON s.id = v.study_id \
         ORDER BY v.s3_timestamp DESC, v.pk DESC LIMIT {LIST_LIMIT}"
    ))
    .fetch_all(pool)
    .await
    .map_err(database_error)?;
    let keys: Vec<Option<Key>> = rows
        .iter()
        .map(|row| video_object(&row.1, "mp4").ok())
        .collect();
    let states = store.states(&keys).await;
    let videos = rows
        .into_iter()
        .zip(keys)
        .zip(states)
        .map(|((row, key), (stored, size_bytes))| {
            let (id, file_name, study_id, study, response_id, frame_id, consent, recorded_at) = row;
            let location = match &key {
                Some(key) => store.storage.location_of(key),
                None => store.storage.root().to_string(),
            };
            VideoSummary {
                id,
                file_name,
                study_id,
                study,
                response_id,
                frame_id,
                consent,
                recorded_at,
                location,
                stored,
                size_bytes,
            }
        })
        .collect();
    Ok(videos)
}

/// The stored file of a received video, wherever the video storage is.
pub(crate) async fn video_file(
    pool: &PgPool,
    store: &VideoStore,
    id: Uuid,
) -> Result<VideoFile, ActionError> {
    let name: Option<String> = sqlx::query_scalar("SELECT full_name FROM videos WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(database_error)?;
    let name = name.ok_or_else(|| ActionError::NotFound(format!("video {id}")))?;
    let key = video_object(&name, "mp4")
        .map_err(|e| ActionError::NotFound(format!("the file of video {name}: {e}")))?;
    let size = store.answer(store.storage.size_of(&key)).await?;
    let size = size.ok_or_else(|| {
        ActionError::NotFound(format!(
            "{} is not in the video storage (not uploaded yet, or deleted)",
            store.storage.location_of(&key)
        ))
    })?;
    Ok(VideoFile {
        file_name: format!("{name}.mp4"),
        content_type: lookit_storage::content_type(key.as_ref()),
        size,
        content: Box::new(StoredVideo {
            store: store.clone(),
            key,
        }),
    })
}

/// One video's object in the video storage, read when the panel sends it.
struct StoredVideo {
    store: VideoStore,
    key: Key,
}

#[async_trait::async_trait]
impl VideoContent for StoredVideo {
    async fn read(self: Box<Self>, range: Range<u64>) -> Result<ByteStream, ActionError> {
        let location = self.store.storage.location_of(&self.key);
        let chunks = self
            .store
            .answer(self.store.storage.read_range(&self.key, range))
            .await?
            .ok_or_else(|| {
                ActionError::NotFound(format!("{location} is no longer in the video storage"))
            })?;
        Ok(chunks
            .map_err(move |error| {
                // The response has begun: the player sees it end early, the log says why.
                tracing::warn!(%location, %error, "sending a video stopped");
                std::io::Error::other(error)
            })
            .boxed())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use lookit_panel::{
        ControlPlane, PanelEvent, PanelState, ServiceAction, ServiceName, StackAction,
    };
    use lookit_status::StatusReport;
    use lookit_storage::object_store::ObjectStoreExt;
    use reqwest::StatusCode;
    use serde_json::Value;
    use tokio::sync::broadcast;

    use super::*;
    use crate::records::tests::demo_database;

    const TOKEN: &str = "videos-test-token";

    /// An instance that has received videos and nothing else: the real database rows and store,
    /// behind the panel's HTTP API.
    struct ReceivedVideos {
        pool: PgPool,
        store: VideoStore,
        events: broadcast::Sender<PanelEvent>,
    }

    #[async_trait::async_trait]
    impl ControlPlane for ReceivedVideos {
        async fn status(&self) -> StatusReport {
            StatusReport::default()
        }
        fn subscribe(&self) -> broadcast::Receiver<PanelEvent> {
            self.events.subscribe()
        }
        async fn service_action(
            &self,
            _: &ServiceName,
            _: ServiceAction,
        ) -> Result<(), ActionError> {
            Err(ActionError::NotAvailable("services".into()))
        }
        async fn stack_action(&self, _: StackAction) -> Result<(), ActionError> {
            Err(ActionError::NotAvailable("the stack".into()))
        }
        async fn logs(&self, _: &ServiceName, _: usize) -> Result<Vec<String>, ActionError> {
            Err(ActionError::NotAvailable("logs".into()))
        }
        async fn shutdown(&self) {}
        async fn videos(&self) -> Result<Vec<VideoSummary>, ActionError> {
            videos(&self.pool, &self.store).await
        }
        async fn video_file(&self, id: Uuid) -> Result<VideoFile, ActionError> {
            video_file(&self.pool, &self.store, id).await
        }
    }

    /// The panel on a free loopback port, serving `control`; stops when dropped.
    struct Panel {
        base: String,
        http: reqwest::Client,
        _stop: tokio::sync::oneshot::Sender<()>,
    }

    impl Panel {
        async fn start(pool: PgPool, store: VideoStore) -> Panel {
            crate::install_crypto_provider();
            let control = Arc::new(ReceivedVideos {
                pool,
                store,
                events: broadcast::channel(4).0,
            });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let state = PanelState {
                control,
                token: TOKEN.into(),
            };
            tokio::spawn(lookit_panel::run(listener, state, async move {
                let _ = stopped.await;
            }));
            Panel {
                base,
                http: reqwest::Client::new(),
                _stop: stop,
            }
        }

        fn get(&self, path: &str) -> reqwest::RequestBuilder {
            self.http
                .get(format!("{}/api{path}", self.base))
                .bearer_auth(TOKEN)
        }

        async fn list(&self) -> Vec<Value> {
            let answer = self.get("/videos").send().await.unwrap();
            assert_eq!(answer.status(), StatusCode::OK);
            answer.json().await.unwrap()
        }

        /// Status, `Content-Range` and body of the video's file, with `range` if given.
        async fn file(
            &self,
            id: Uuid,
            range: Option<&str>,
        ) -> (StatusCode, Option<String>, Vec<u8>) {
            let mut request = self.get(&format!("/videos/{id}/file"));
            if let Some(range) = range {
                request = request.header("Range", range);
            }
            let answer = request.send().await.unwrap();
            let status = answer.status();
            let content_range = answer
                .headers()
                .get("content-range")
                .map(|v| v.to_str().unwrap().to_string());
            (
                status,
                content_range,
                answer.bytes().await.unwrap().to_vec(),
            )
        }

        async fn error(&self, id: Uuid) -> (StatusCode, String) {
            let answer = self
                .get(&format!("/videos/{id}/file"))
                .send()
                .await
                .unwrap();
            let status = answer.status();
            let body: Value = answer.json().await.unwrap();
            (status, body["error"].as_str().unwrap().to_string())
        }
    }

    /// Records a video of the demo study as the Pipe webhook does; returns its id and name.
    async fn record_video(pool: &PgPool, ids: &lookit_api::demo::DemoIds) -> (Uuid, String) {
        let id = Uuid::new_v4();
        let name = format!(
            "videoStream_{}_1-video-consent_{}_1700000000000_{}",
            ids.study,
            ids.response,
            &id.simple().to_string()[..3]
        );
        sqlx::query(
            "INSERT INTO videos (id, full_name, pipe_name, s3_timestamp, frame_id, study_id, response_id, is_consent_footage) \
             VALUES ($1, $2, $3, now(), '1-video-consent', $4, $5, true)",
        )
        .bind(id)
        .bind(&name)
        .bind(format!("pipe-{id}"))
        .bind(ids.study)
        .bind(ids.response)
        .execute(pool)
        .await
        .unwrap();
        (id, name)
    }

    /// A recognisable video: every byte tells its position, so a wrong range shows.
    fn video_bytes() -> Vec<u8> {
        (0..300_000u32).map(|n| (n % 251) as u8).collect()
    }

    /// Puts one video in `storage` and one only in the database, then checks what the panel
    /// lists and serves of each; returns the listed rows.
    async fn stored_and_missing_videos_through_the_panel(storage: Storage) -> Vec<Value> {
        let (_database, pool, ids) = demo_database().await;
        let (stored, name) = record_video(&pool, &ids).await;
        let (missing, missing_name) = record_video(&pool, &ids).await;
        let video = video_bytes();
        let key = video_object(&name, "mp4").unwrap();
        storage
            .store()
            .put(&key, video.clone().into())
            .await
            .unwrap();
        let panel = Panel::start(pool, VideoStore::new(storage.clone())).await;

        let list = panel.list().await;
        let row = |id: Uuid| {
            list.iter()
                .find(|row| row["id"] == id.to_string())
                .unwrap()
                .clone()
        };
        assert_eq!(row(stored)["stored"], "stored");
        assert_eq!(row(stored)["size_bytes"], 300_000);
        assert_eq!(row(stored)["location"], storage.location_of(&key));
        assert_eq!(row(missing)["stored"], "missing");
        assert_eq!(row(missing)["size_bytes"], Value::Null);

        let (status, content_range, whole) = panel.file(stored, None).await;
        assert_eq!((status, content_range), (StatusCode::OK, None));
        assert!(whole == video, "the whole video comes back as stored");
        let (status, content_range, part) = panel.file(stored, Some("bytes=100000-165535")).await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(content_range.as_deref(), Some("bytes 100000-165535/300000"));
        assert!(
            part == video[100_000..165_536],
            "exactly the bytes asked for"
        );
        let (status, _, tail) = panel.file(stored, Some("bytes=-10")).await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(tail, video[299_990..]);
        let (status, content_range, _) = panel.file(stored, Some("bytes=300000-")).await;
        assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(content_range.as_deref(), Some("bytes */300000"));

        let (status, message) = panel.error(missing).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{message}");
        let missing_at = storage.location_of(&video_object(&missing_name, "mp4").unwrap());
        assert!(
            message.contains(&missing_at) && message.contains("not in the video storage"),
            "{message}"
        );
        let (status, message) = panel.error(Uuid::new_v4()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{message}");
        list
    }

    #[tokio::test]
    async fn a_video_in_s3_is_listed_with_its_size_and_served_whole_and_in_parts() {
        let s3 = lookit_testkit::s3_server().await;
        let bucket = s3.fresh_bucket().await;
        let storage = s3.location(&bucket, "pipe").open().unwrap();
        let list = stored_and_missing_videos_through_the_panel(storage).await;
        let stored = list.iter().find(|row| row["stored"] == "stored").unwrap();
        assert!(
            stored["location"]
                .as_str()
                .unwrap()
                .starts_with(&format!("s3://{bucket}/pipe/videoStream_")),
            "{stored}"
        );
    }

    #[tokio::test]
    async fn a_video_in_the_local_folder_is_served_by_the_same_path() {
        let folder = tempfile::tempdir().unwrap();
        let storage = Storage::folder(folder.path().join("videos")).unwrap();
        let list = stored_and_missing_videos_through_the_panel(storage).await;
        let stored = list.iter().find(|row| row["stored"] == "stored").unwrap();
        let file = std::path::PathBuf::from(stored["location"].as_str().unwrap());
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 300_000);
    }

    #[tokio::test]
    async fn a_video_store_that_does_not_answer_is_named_in_a_502_and_sizes_are_unknown() {
        let (_database, pool, ids) = demo_database().await;
        let (id, _) = record_video(&pool, &ids).await;
        // A server that takes connections and never answers them.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let location = lookit_storage::StoreLocation::S3(lookit_storage::S3Location {
            bucket: "lab-videos".into(),
            prefix: String::new(),
            region: "us-east-1".into(),
            endpoint: Some(
                format!("http://{}", silent.local_addr().unwrap())
                    .parse()
                    .unwrap(),
            ),
            access_key_id: Some("id".into()),
            secret_access_key: Some("secret".into()),
        });
        let store = VideoStore {
            storage: location.open().unwrap(),
            answer_within: Duration::from_millis(300),
        };
        let panel = Panel::start(pool, store).await;

        let list = panel.list().await;
        assert_eq!(list[0]["stored"], "unknown");
        assert_eq!(list[0]["size_bytes"], Value::Null);
        let (status, message) = panel.error(id).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{message}");
        assert!(
            message.contains("s3://lab-videos") && message.contains("did not answer"),
            "{message}"
        );
    }
}
