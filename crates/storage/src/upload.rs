//! Uploading a build output folder (§2 stage 6), and the content types and cache policy of built
//! study files, shared by the upload (object attributes) and the API (response headers).
//!
//! Invariant: a participant loading a study during an upload gets the old build or the new one,
//! never a page of one with assets missing: every other file is in place before any
//! `index.html`, and files of the previous build that the new one lacks are removed only after.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as Key;
use object_store::{Attribute, Attributes, ObjectStoreExt, PutOptions, PutPayload};

use crate::{Storage, StorageError};

/// Files uploaded at once: enough to hide a bucket's per-request latency, few enough for a
/// 2-core machine and a home uplink.
const PARALLEL_UPLOADS: usize = 8;

/// The file that starts a study; uploaded last and never cached.
const ENTRY_POINT: &str = "index.html";

/// What an upload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    /// Files written.
    pub files: usize,
    /// Files of an earlier upload that were removed.
    pub removed: usize,
    /// Where the files are, for people (`s3://…/experiments/<uuid>`, or a folder path).
    pub location: String,
}

/// `Content-Type` of a built file by its name; text and JavaScript as UTF-8.
pub fn content_type(path: &str) -> String {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    if mime.type_() == mime_guess::mime::TEXT || mime.essence_str() == "application/javascript" {
        format!("{}; charset=utf-8", mime.essence_str())
    } else {
        mime.essence_str().to_string()
    }
}

/// `Cache-Control` of a built file: `index.html` is never cached (a new build must show at
/// once), fingerprinted assets are immutable, anything else is cached briefly.
pub fn cache_control(path: &str) -> &'static str {
    if path.rsplit('/').next() == Some(ENTRY_POINT) {
        "no-cache"
    } else if is_fingerprinted(path) {
        "public, max-age=31536000, immutable"
    } else {
        "public, max-age=300"
    }
}

/// Ember's fingerprinted names: `name-<32 hex>.ext`.
fn is_fingerprinted(path: &str) -> bool {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split('.').next().unwrap_or(file);
    stem.rsplit_once('-')
        .is_some_and(|(_, hash)| hash.len() >= 20 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Relative paths of the regular files under `root` (blocking: call it off the async threads).
pub fn output_files(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(root) {
        let entry = entry.with_context(|| format!("read {}", root.display()))?;
        if entry.file_type().is_file() {
            files.push(entry.path().strip_prefix(root)?.to_path_buf());
        }
    }
    Ok(files)
}

impl Storage {
    /// Uploads every file of `folder` below `to`, files in parallel, each with its content type
    /// and cache policy where the place keeps them; then removes what an earlier upload left
    /// under `to` that this one does not have.
    pub async fn upload_folder(&self, folder: &Path, to: &Key) -> Result<Uploaded, StorageError> {
        let read_error = |source: anyhow::Error| StorageError::ReadOutput {
            path: folder.to_path_buf(),
            source,
        };
        let files = {
            let folder = folder.to_path_buf();
            tokio::task::spawn_blocking(move || output_files(&folder))
                .await
                .context("the listing task failed")
                .and_then(|listed| listed)
                .map_err(read_error)?
        };
        let mut keys = Vec::with_capacity(files.len());
        for file in &files {
            let relative = file.to_str().ok_or_else(|| StorageError::BadKey {
                key: file.display().to_string(),
                reason: "the name is not UTF-8".into(),
            })?;
            keys.push((file, crate::below(to, relative)?));
        }
        let (entry_points, assets): (Vec<_>, Vec<_>) = keys
            .iter()
            .partition(|(file, _)| file.file_name().is_some_and(|name| name == ENTRY_POINT));
        for batch in [assets, entry_points] {
            // Owned items: futures that borrow from the stream's items are not `Send` for every
            // lifetime, which a caller in a `Send` task needs.
            let batch: Vec<(PathBuf, Key)> = batch
                .into_iter()
                .map(|(file, key)| (folder.join(file), key.clone()))
                .collect();
            futures::stream::iter(batch)
                .map(|(file, key)| self.upload_file(file, key))
                .buffer_unordered(PARALLEL_UPLOADS)
                .try_collect::<Vec<()>>()
                .await?;
        }
        let written: HashSet<&Key> = keys.iter().map(|(_, key)| key).collect();
        let stale: Vec<Key> = self
            .store
            .list(Some(to))
            .map_ok(|meta| meta.location)
            .try_filter(|key| std::future::ready(!written.contains(key)))
            .try_collect()
            .await
            .map_err(|source| StorageError::Store {
                operation: "list",
                location: self.location_of(to),
                source,
            })?;
        let removed = stale.len();
        futures::stream::iter(stale)
            .map(|key| async move {
                match self.store.delete(&key).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(source) => Err(StorageError::Store {
                        operation: "delete",
                        location: self.location_of(&key),
                        source,
                    }),
                }
            })
            .buffer_unordered(PARALLEL_UPLOADS)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(Uploaded {
            files: keys.len(),
            removed,
            location: self.location_of(to),
        })
    }

    async fn upload_file(&self, file: PathBuf, key: Key) -> Result<(), StorageError> {
        let bytes = tokio::fs::read(&file)
            .await
            .with_context(|| format!("read {}", file.display()))
            .map_err(|source| StorageError::ReadOutput {
                path: file.clone(),
                source,
            })?;
        let mut attributes = Attributes::new();
        if self.keeps_attributes() {
            attributes.insert(Attribute::ContentType, content_type(key.as_ref()).into());
            attributes.insert(Attribute::CacheControl, cache_control(key.as_ref()).into());
        }
        let options = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        self.store
            .put_opts(&key, PutPayload::from(bytes), options)
            .await
            .map(|_| ())
            .map_err(|source| StorageError::Store {
                operation: "upload",
                location: self.location_of(&key),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_files_get_their_types_and_cache_policy() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(
            content_type("assets/app.js"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type("assets/logo.png"), "image/png");
        assert_eq!(content_type("data.unknownext"), "application/octet-stream");
        assert_eq!(cache_control("index.html"), "no-cache");
        assert_eq!(cache_control("tests/index.html"), "no-cache");
        assert_eq!(
            cache_control("assets/vendor-0123456789abcdef0123456789abcdef.js"),
            "public, max-age=31536000, immutable"
        );
        assert_eq!(cache_control("assets/vendor.js"), "public, max-age=300");
        assert_eq!(cache_control("robots.txt"), "public, max-age=300");
    }
}
