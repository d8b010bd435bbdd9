//! Publishing a build output where participants load it from (§2 stage 6).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use futures::{StreamExt, TryStreamExt};
use uuid::Uuid;

use crate::settings::StorageTarget;

/// Files copied at once.
const PARALLEL_COPIES: usize = 8;

impl StorageTarget {
    /// Publishes the files of `output` as the study's runner and returns where they are. The
    /// switch is atomic for a local folder: participants see the old or the new build, never a
    /// mix.
    pub(crate) async fn publish(&self, study_id: Uuid, output: &Path) -> anyhow::Result<String> {
        match self {
            StorageTarget::LocalFolder(root) => publish_to_folder(root, study_id, output).await,
        }
    }
}

async fn publish_to_folder(root: &Path, study_id: Uuid, output: &Path) -> anyhow::Result<String> {
    tokio::fs::create_dir_all(root)
        .await
        .with_context(|| format!("create {}", root.display()))?;
    let target = root.join(study_id.to_string());
    let staging = root.join(format!(".{study_id}.{}", Uuid::new_v4().simple()));
    let files = {
        let output = output.to_path_buf();
        tokio::task::spawn_blocking(move || output_files(&output))
            .await
            .context("listing task")??
    };
    futures::stream::iter(files)
        .map(|relative| {
            let (from, to) = (output.join(&relative), staging.join(&relative));
            async move {
                if let Some(parent) = to.parent() {
                    tokio::fs::create_dir_all(parent).await?;
                }
                tokio::fs::copy(&from, &to)
                    .await
                    .with_context(|| format!("copy {}", from.display()))
            }
        })
        .buffer_unordered(PARALLEL_COPIES)
        .try_collect::<Vec<_>>()
        .await?;
    let previous = root.join(format!(".{study_id}.old.{}", Uuid::new_v4().simple()));
    if target.exists() {
        tokio::fs::rename(&target, &previous).await?;
    }
    tokio::fs::rename(&staging, &target)
        .await
        .with_context(|| format!("publish to {}", target.display()))?;
    if previous.exists() {
        tokio::fs::remove_dir_all(&previous).await?;
    }
    Ok(target.display().to_string())
}

/// Relative paths of the regular files under `root`.
pub(crate) fn output_files(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(root) {
        let entry = entry.with_context(|| format!("read {}", root.display()))?;
        if entry.file_type().is_file() {
            files.push(entry.path().strip_prefix(root)?.to_path_buf());
        }
    }
    Ok(files)
}
