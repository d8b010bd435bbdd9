//! Uploading a build output folder (§2 stage 6), and the content types and cache policy of built
//! study files, shared by the upload (object attributes) and the API (response headers).
//!
//! Invariants: a participant loading a study during an upload gets the old build or the new one,
//! never a page of one with assets missing, and an upload that fails (a full disk, a dropped
//! connection) leaves the published build servable.
//! - A folder gets the whole build at once: the files are copied into a hidden folder next to the
//!   study's, the two trade places in one rename, and the previous build is removed after. A
//!   failed copy removes the hidden folder; the published build was never touched.
//! - Publishes of one study into a folder take turns (a lock beside the study's folder that the
//!   kernel releases when its holder dies), so a hidden folder of the study found at the start of
//!   a turn was left by a publish killed midway: it is removed then. Other studies' publishes
//!   and their hidden folders are never waited for nor touched.
//! - A bucket cannot rename a prefix: every other file is in place before any `index.html`, and
//!   files of the previous build that the new one lacks are removed only after.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as Key;
use object_store::{Attribute, Attributes, ObjectStoreExt, PutOptions, PutPayload};

use crate::{Kind, Storage, StorageError};

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
    /// Uploads every file of `folder` below `to`, replacing what an earlier upload put there:
    /// into a folder as one swap, into a bucket file by file in parallel, each with its content
    /// type and cache policy (see the module's invariants).
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
        for file in files {
            let relative = file.to_str().ok_or_else(|| StorageError::BadKey {
                key: file.display().to_string(),
                reason: "the name is not UTF-8".into(),
            })?;
            let key = crate::below(to, relative)?;
            keys.push((file, key));
        }
        let removed = match &self.kind {
            Kind::Folder(root) => {
                let files: Vec<PathBuf> = keys.iter().map(|(file, _)| file.clone()).collect();
                let (source, target) = (folder.to_path_buf(), root.join(to.as_ref()));
                tokio::task::spawn_blocking(move || swap_in(&source, &files, &target))
                    .await
                    .context("the copying task failed")
                    .map_err(read_error)??
            }
            Kind::S3(_) | Kind::Gcs => self.upload_in_place(folder, &keys, to).await?,
        };
        Ok(Uploaded {
            files: keys.len(),
            removed,
            location: self.location_of(to),
        })
    }

    /// A bucket's upload: the files in parallel, every `index.html` last, then the previous
    /// build's leftovers removed. Returns how many were removed.
    async fn upload_in_place(
        &self,
        folder: &Path,
        keys: &[(PathBuf, Key)],
        to: &Key,
    ) -> Result<usize, StorageError> {
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
        Ok(removed)
    }

    /// One file into a bucket, with the type and cache policy the bucket hands out with it.
    async fn upload_file(&self, file: PathBuf, key: Key) -> Result<(), StorageError> {
        let bytes = tokio::fs::read(&file)
            .await
            .with_context(|| format!("read {}", file.display()))
            .map_err(|source| StorageError::ReadOutput {
                path: file.clone(),
                source,
            })?;
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, content_type(key.as_ref()).into());
        attributes.insert(Attribute::CacheControl, cache_control(key.as_ref()).into());
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

/// Copies `files` (relative to `source`) into a hidden folder next to `target`, puts that folder
/// in `target`'s place and removes the previous build. Returns how many files of the previous
/// build the new one lacks. On failure `target` is as it was and the hidden folder is gone.
/// Runs during the study's [`PublishTurn`], after removing what killed publishes left.
/// Blocking.
fn swap_in(source: &Path, files: &[PathBuf], target: &Path) -> Result<usize, StorageError> {
    let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
        unreachable!("a study's folder is a folder below the store's");
    };
    let turn_error = |source| StorageError::Publish {
        path: target.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(parent).map_err(turn_error)?;
    let _turn = PublishTurn::take(parent, name).map_err(turn_error)?;
    remove_leftovers(parent, name);
    // Hidden and not a study id: never served, whatever it holds.
    let staging = parent.join(format!(
        "{}{}",
        staging_prefix(name),
        uuid::Uuid::new_v4().simple()
    ));
    if let Err(error) = copy_files(source, files, &staging, target) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(error);
    }
    let replaced = exchange(&staging, target).map_err(|source| {
        let _ = std::fs::remove_dir_all(&staging);
        StorageError::Publish {
            path: target.to_path_buf(),
            source,
        }
    })?;
    if !replaced {
        return Ok(0);
    }
    // `staging` now holds the previous build.
    let kept: HashSet<&PathBuf> = files.iter().collect();
    let removed = output_files(&staging)
        .unwrap_or_default()
        .iter()
        .filter(|file| !kept.contains(file))
        .count();
    if let Err(error) = std::fs::remove_dir_all(&staging) {
        tracing::warn!(path = %staging.display(), %error, "could not remove the previous build");
    }
    Ok(removed)
}

/// How the hidden folders of a publish of the study folder `name` begin (`.<study>.publishing-`),
/// followed by a random id: a new build being copied, or the previous one being removed (with
/// `.previous` on a filesystem without an atomic exchange).
fn staging_prefix(name: &OsStr) -> String {
    format!(".{}.publishing-", name.to_string_lossy())
}

/// One publish's turn at a study folder: an exclusive `flock` on `.<study>.lock` beside it, held
/// until dropped. Across processes too (the instance's worker and `lookit-local worker`), and a
/// killed holder's lock goes with it, so a killed publish never blocks the next. The file is
/// removed when the turn ends, so nothing stays beside a study that is not being published.
struct PublishTurn {
    path: PathBuf,
    _lock: nix::fcntl::Flock<File>,
}

impl PublishTurn {
    /// Waits for the study's turn. Blocking.
    fn take(parent: &Path, name: &OsStr) -> std::io::Result<PublishTurn> {
        use nix::fcntl::{Flock, FlockArg};
        let path = parent.join(format!(".{}.lock", name.to_string_lossy()));
        loop {
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            let lock = Flock::lock(file, FlockArg::LockExclusive)
                .map_err(|(_, errno)| std::io::Error::from(errno))?;
            // The turn we waited for removed its file as it ended: a lock on that file guards
            // nothing, the next publish locks a new one. Ours must be the file at the path.
            let held = lock.metadata()?;
            match std::fs::metadata(&path) {
                Ok(now) if (now.dev(), now.ino()) == (held.dev(), held.ino()) => {
                    return Ok(PublishTurn { path, _lock: lock })
                }
                Ok(_) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(error),
            }
        }
    }
}

impl Drop for PublishTurn {
    fn drop(&mut self) {
        // Removed while still locked (the lock is released after, with the field): whoever waits
        // on this file sees it gone and takes a new one.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Removes the hidden folders that publishes of the study folder `name` killed midway left
/// beside it: a half-copied build, or a previous build swapped out but not yet removed. Only
/// during the study's turn, when no publish of it runs; other studies' folders are not looked
/// at. A leftover that cannot be removed is logged: it takes space, but the publish can go on.
/// Blocking.
fn remove_leftovers(parent: &Path, name: &OsStr) {
    let prefix = staging_prefix(name);
    let entries = match std::fs::read_dir(parent) {
        Ok(entries) => entries,
        Err(error) => {
            tracing::warn!(path = %parent.display(), %error, "could not look for leftovers of killed publishes");
            return;
        }
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        let path = entry.path();
        let removed = if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match removed {
            Ok(()) => {
                tracing::info!(path = %path.display(), "removed what a killed publish left")
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "could not remove what a killed publish left")
            }
        }
    }
}

/// Copies `files` from `source` into `staging`; an error names the file as it would have been
/// published under `target`. Blocking.
fn copy_files(
    source: &Path,
    files: &[PathBuf],
    staging: &Path,
    target: &Path,
) -> Result<(), StorageError> {
    let failed = |file: &Path| {
        let path = target.join(file);
        move |source| StorageError::Publish { path, source }
    };
    std::fs::create_dir_all(staging).map_err(failed(Path::new("")))?;
    for file in files {
        let copy = staging.join(file);
        if let Some(dir) = copy.parent() {
            std::fs::create_dir_all(dir).map_err(failed(file))?;
        }
        std::fs::copy(source.join(file), &copy).map_err(failed(file))?;
    }
    Ok(())
}

/// Puts `staging` in `target`'s place. `true`: `staging` now holds what `target` held; `false`:
/// there was no `target`. Blocking.
fn exchange(staging: &Path, target: &Path) -> std::io::Result<bool> {
    use nix::errno::Errno;
    use nix::fcntl::{renameat2, RenameFlags};
    match renameat2(None, staging, None, target, RenameFlags::RENAME_EXCHANGE) {
        Ok(()) => Ok(true),
        Err(Errno::ENOENT) => std::fs::rename(staging, target).map(|()| false),
        // A filesystem without an atomic exchange (NFS): the previous build steps aside first,
        // so for a moment the study is missing (a 404 that a reload fixes), never half built.
        Err(Errno::EINVAL) => {
            let mut aside = staging.as_os_str().to_owned();
            aside.push(".previous");
            std::fs::rename(target, &aside)?;
            if let Err(error) = std::fs::rename(staging, target) {
                let _ = std::fs::rename(&aside, target);
                return Err(error);
            }
            std::fs::rename(&aside, staging)?;
            Ok(true)
        }
        Err(errno) => Err(errno.into()),
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

    /// A build output folder with these files (path, contents).
    fn output(files: &[(&str, &str)]) -> tempfile::TempDir {
        let output = tempfile::tempdir().unwrap();
        for (name, contents) in files {
            let path = output.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, contents).unwrap();
        }
        output
    }

    /// Every file of `study` as the API serves it (read through the store), by path.
    async fn served(storage: &Storage, study: &Key, folder: &Path) -> Vec<(String, String)> {
        let mut files = Vec::new();
        for file in output_files(folder).unwrap() {
            let relative = file.to_str().unwrap().to_string();
            let key = crate::below(study, &relative).unwrap();
            let bytes = storage
                .read(&key)
                .await
                .unwrap()
                .expect("listed, so served");
            files.push((relative, String::from_utf8(bytes.to_vec()).unwrap()));
        }
        files.sort();
        files
    }

    /// Names in `folder`, sorted.
    fn names_in(folder: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(folder)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_folder_gets_the_new_build_whole_and_nothing_of_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::folder(dir.path().join("published")).unwrap();
        let study = crate::study_prefix(uuid::Uuid::new_v4());
        let first = output(&[("index.html", "first"), ("assets/first.js", "1")]);
        let uploaded = storage.upload_folder(first.path(), &study).await.unwrap();
        assert_eq!((uploaded.files, uploaded.removed), (2, 0));
        let second = output(&[("index.html", "second"), ("assets/second.js", "2")]);
        let uploaded = storage.upload_folder(second.path(), &study).await.unwrap();
        assert_eq!((uploaded.files, uploaded.removed), (2, 1));

        let published = Path::new(&uploaded.location);
        let mut files = output_files(published).unwrap();
        files.sort();
        assert_eq!(
            files,
            [Path::new("assets/second.js"), Path::new("index.html")]
        );
        assert_eq!(
            std::fs::read_to_string(published.join("index.html")).unwrap(),
            "second"
        );
        let beside: Vec<_> = std::fs::read_dir(published.parent().unwrap())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(
            beside,
            [published.file_name().unwrap()],
            "no staging folder left"
        );
    }

    #[tokio::test]
    async fn what_publishes_killed_midway_left_is_gone_once_the_study_is_published_again() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::folder(dir.path().join("published")).unwrap();
        let (study_id, other_id) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        let study = crate::study_prefix(study_id);
        let first = output(&[("index.html", "first"), ("assets/first.js", "1")]);
        let uploaded = storage.upload_folder(first.path(), &study).await.unwrap();
        let published = PathBuf::from(&uploaded.location);
        let experiments = published.parent().unwrap().to_path_buf();

        // A worker killed while copying a build: half of it in a hidden folder, and the lock
        // file of its turn (the kernel released the lock with the process).
        let half = experiments.join(format!(".{study_id}.publishing-{}", "a".repeat(32)));
        std::fs::create_dir_all(half.join("assets")).unwrap();
        std::fs::write(half.join("assets/second.js"), "2, cut sh").unwrap();
        std::fs::write(experiments.join(format!(".{study_id}.lock")), "").unwrap();
        // One killed after the swap, before removing the build it swapped out.
        let swapped_out = experiments.join(format!(".{study_id}.publishing-{}", "b".repeat(32)));
        std::fs::create_dir_all(&swapped_out).unwrap();
        std::fs::write(swapped_out.join("index.html"), "zeroth").unwrap();
        // Another study being published right now: its turn is taken, its copy under way.
        let other_name = OsStr::new(&other_id.to_string()).to_owned();
        let other_turn = PublishTurn::take(&experiments, &other_name).unwrap();
        let other_copy =
            experiments.join(format!("{}{}", staging_prefix(&other_name), "c".repeat(32)));
        std::fs::create_dir_all(&other_copy).unwrap();
        std::fs::write(other_copy.join("index.html"), "other, being copied").unwrap();

        let second = output(&[("index.html", "second"), ("assets/second.js", "2")]);
        let uploaded = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            storage.upload_folder(second.path(), &study),
        )
        .await
        .expect("another study's publish does not hold this one up")
        .unwrap();
        assert_eq!((uploaded.files, uploaded.removed), (2, 1));

        assert_eq!(
            served(&storage, &study, &published).await,
            [
                ("assets/second.js".to_string(), "2".to_string()),
                ("index.html".to_string(), "second".to_string())
            ],
            "the study is served whole, as the second build made it"
        );
        assert_eq!(
            names_in(&experiments),
            [
                format!(".{other_id}.lock"),
                other_copy
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
                study_id.to_string(),
            ],
            "the killed publishes' folders and lock are gone; the other study's are untouched"
        );
        assert_eq!(
            std::fs::read_to_string(other_copy.join("index.html")).unwrap(),
            "other, being copied"
        );
        drop(other_turn);
    }

    #[tokio::test]
    async fn publishes_of_one_study_at_the_same_time_both_succeed_and_leave_one_build_whole() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::folder(dir.path().join("published")).unwrap();
        let study = crate::study_prefix(uuid::Uuid::new_v4());
        // Enough files that the copies overlap: without turns, each publish would take the
        // other's half copy for a leftover and remove it under it.
        let build = |name: &str| {
            let files: Vec<(String, String)> = (0..300)
                .map(|n| (format!("assets/{n}.js"), name.to_string()))
                .chain([("index.html".to_string(), name.to_string())])
                .collect();
            let files: Vec<(&str, &str)> = files
                .iter()
                .map(|(path, contents)| (path.as_str(), contents.as_str()))
                .collect();
            output(&files)
        };
        let (a, b) = (build("a"), build("b"));
        let (from_a, from_b) = tokio::join!(
            storage.upload_folder(a.path(), &study),
            storage.upload_folder(b.path(), &study)
        );
        let published = PathBuf::from(from_a.unwrap().location);
        from_b.unwrap();

        let files = served(&storage, &study, &published).await;
        assert_eq!(files.len(), 301);
        let winner = &files[0].1;
        assert!(
            files.iter().all(|(_, contents)| contents == winner),
            "every file from the same build"
        );
        assert_eq!(
            names_in(published.parent().unwrap()),
            [published
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()],
            "nothing beside the study"
        );
    }
}
