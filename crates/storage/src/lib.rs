//! Where Lookit Local keeps videos and built studies: a local folder (the default), Amazon S3 (or
//! an S3-compatible server) or Google Cloud Storage, all behind one `object_store` interface, so
//! the API (Pipe's rename, serving built studies) and the worker (uploading build outputs) never
//! care which one is configured.
//!
//! Invariants:
//! - A [`Storage`] holds an `ObjectStore` already scoped to its prefix: keys are relative to the
//!   configured place (`s3://bucket/prefix` → key `a/b` is object `prefix/a/b`).
//! - Built studies live at [`study_prefix`] (`experiments/<study_uuid>/`, Lookit's layout), the
//!   same key for the worker that writes and the API that serves.
//! - A received video is [`video_object`] `<name>.mp4` at the root of the video store, the same
//!   key for the API that renames Pipe's upload and the panel that plays it.
//! - Credentials are `SecretString`s handed to the store and never logged or shown in a
//!   location; `Debug` of every type here redacts them.

mod location;
mod s3_uploads;
mod space;
mod upload;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path as Key;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};
use uuid::Uuid;

pub use location::{GcsLocation, S3Location, StoreLocation, StoreLocations};
pub use object_store;
pub use space::is_out_of_space;
pub use upload::{cache_control, content_type, output_files, Uploaded};

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot open the storage {place}: {source}")]
    Open {
        place: String,
        #[source]
        source: object_store::Error,
    },
    #[error("cannot create the storage folder {}: {source}", path.display())]
    Folder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{key:?} is not a usable object name: {reason}")]
    BadKey { key: String, reason: String },
    #[error("cannot publish {}: {source}", path.display())]
    Publish {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the files to upload in {}: {source:#}", path.display())]
    ReadOutput {
        path: PathBuf,
        #[source]
        source: anyhow::Error,
    },
    #[error("{operation} {location} failed: {source}")]
    Store {
        operation: &'static str,
        location: String,
        #[source]
        source: object_store::Error,
    },
    #[error("S3 {operation} failed: {source:#}")]
    S3Request {
        operation: &'static str,
        #[source]
        source: anyhow::Error,
    },
    #[error("the S3 API answered {status} to {operation}: {detail}")]
    S3Api {
        operation: &'static str,
        status: u16,
        detail: String,
    },
}

/// The bytes of (part of) one object as they arrive from its store.
pub type ByteStream = BoxStream<'static, Result<Bytes, StorageError>>;

/// Which kind of place a [`Storage`] is; decides what it can do beyond `ObjectStore`.
#[derive(Debug, Clone)]
enum Kind {
    /// A local folder: no object attributes (content types come from the file names).
    Folder(PathBuf),
    /// S3: its multipart uploads can be listed and aborted.
    S3(s3_uploads::S3Bucket),
    Gcs,
}

/// One configured storage place, opened: an `ObjectStore` scoped to the place's prefix.
#[derive(Debug, Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    /// `s3://bucket/prefix`, `gs://bucket/prefix` or the folder: for messages and
    /// `builds.output_location`. Never holds a credential.
    root: String,
    kind: Kind,
}

/// The key prefix of a study's built files: `experiments/<study_uuid>` (Lookit's layout).
pub fn study_prefix(study_id: Uuid) -> Key {
    Key::from_iter(["experiments".to_string(), study_id.to_string()])
}

/// Where a video named `name` (Pipe's name, or the name the database keeps) is in the video
/// store: `<name>.<extension>` at its root, `mp4` for the video and `jpg` for Pipe's snapshot.
/// The name is read as a URL path, as Pipe sends it; `.` and `..` parts are refused.
pub fn video_object(name: &str, extension: &str) -> Result<Key, StorageError> {
    Key::from_url_path(format!("{name}.{extension}")).map_err(|e| StorageError::BadKey {
        key: format!("{name}.{extension}"),
        reason: e.to_string(),
    })
}

/// A key from a relative `a/b/c` path, refusing what could escape a prefix or is not a name:
/// empty segments, `.`, `..`, a leading `/`.
pub fn key(relative: &str) -> Result<Key, StorageError> {
    let bad = |reason: &str| StorageError::BadKey {
        key: relative.to_string(),
        reason: reason.to_string(),
    };
    if relative.is_empty() {
        return Err(bad("it is empty"));
    }
    if relative
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(bad("it must not contain empty, `.` or `..` parts"));
    }
    Key::parse(relative).map_err(|e| bad(&e.to_string()))
}

/// `relative` (checked as by [`key`]) below `prefix`.
pub fn below(prefix: &Key, relative: &str) -> Result<Key, StorageError> {
    let relative = key(relative)?;
    Ok(Key::from_iter(prefix.parts().chain(relative.parts())))
}

impl Storage {
    /// A local folder, created when missing.
    pub fn folder(path: impl Into<PathBuf>) -> Result<Storage, StorageError> {
        StoreLocation::Folder(path.into()).open()
    }

    /// Where this place is (`s3://bucket/prefix`, `gs://…` or the folder), for people.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The store, scoped to this place's prefix.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Where `key` is, for people: a file path for a folder, `s3://bucket/prefix/key` or
    /// `gs://…` for a bucket.
    pub fn location_of(&self, key: &Key) -> String {
        match &self.kind {
            Kind::Folder(folder) => folder.join(key.as_ref()).display().to_string(),
            Kind::S3(_) | Kind::Gcs if key.as_ref().is_empty() => self.root.clone(),
            Kind::S3(_) | Kind::Gcs => format!("{}/{}", self.root.trim_end_matches('/'), key),
        }
    }

    /// The object's bytes; `None` when there is no such object (or the key names a folder).
    pub async fn read(&self, key: &Key) -> Result<Option<Bytes>, StorageError> {
        let fetched = match self.store.get(key).await {
            Ok(result) => result.bytes().await,
            Err(e) => Err(e),
        };
        match fetched {
            Ok(bytes) => Ok(Some(bytes)),
            Err(source) => self.absent_or_failed("read", key, source),
        }
    }

    /// The object's size in bytes; `None` when there is no such object (or the key names a
    /// folder).
    pub async fn size_of(&self, key: &Key) -> Result<Option<u64>, StorageError> {
        match self.store.head(key).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(source) => self.absent_or_failed("read the size of", key, source),
        }
    }

    /// The bytes `range` of the object, streamed as they come from the store (a file 8 KiB at a
    /// time, a bucket's answer as it downloads): never the whole object in memory. `range` must
    /// be non-empty and start within the object; a range past its end stops at the end.
    /// `None` when there is no such object.
    pub async fn read_range(
        &self,
        key: &Key,
        range: Range<u64>,
    ) -> Result<Option<ByteStream>, StorageError> {
        let options = GetOptions {
            range: Some(GetRange::Bounded(range)),
            ..GetOptions::default()
        };
        match self.store.get_opts(key, options).await {
            Ok(result) => {
                let location = self.location_of(key);
                let chunks = result
                    .into_stream()
                    .map_err(move |source| StorageError::Store {
                        operation: "read",
                        location: location.clone(),
                        source,
                    });
                Ok(Some(chunks.boxed()))
            }
            Err(source) => self.absent_or_failed("read", key, source),
        }
    }

    /// `Ok(None)` for an object that is not there, the error otherwise.
    fn absent_or_failed<T>(
        &self,
        operation: &'static str,
        key: &Key,
        source: object_store::Error,
    ) -> Result<Option<T>, StorageError> {
        match source {
            object_store::Error::NotFound { .. } => Ok(None),
            source if self.names_a_folder(key) => {
                tracing::debug!(%key, %source, "{operation} of a folder");
                Ok(None)
            }
            source => Err(StorageError::Store {
                operation,
                location: self.location_of(key),
                source,
            }),
        }
    }

    /// The local store refuses to read a directory with an error of its own (not NotFound).
    fn names_a_folder(&self, key: &Key) -> bool {
        match &self.kind {
            Kind::Folder(folder) => Path::new(folder).join(key.as_ref()).is_dir(),
            Kind::S3(_) | Kind::Gcs => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_leave_their_prefix() {
        assert!(key("../etc/passwd").is_err());
        assert!(key("/etc/passwd").is_err());
        assert!(key("assets//app.js").is_err());
        assert!(key("").is_err());
        assert_eq!(key("assets/app.js").unwrap().as_ref(), "assets/app.js");
        let study = Uuid::new_v4();
        assert_eq!(
            below(&study_prefix(study), "assets/app.js")
                .unwrap()
                .as_ref(),
            format!("experiments/{study}/assets/app.js")
        );
        assert!(below(&study_prefix(study), "../other/index.html").is_err());
    }

    #[test]
    fn built_studies_live_under_experiments() {
        let study = Uuid::new_v4();
        assert_eq!(study_prefix(study).as_ref(), format!("experiments/{study}"));
    }
}
