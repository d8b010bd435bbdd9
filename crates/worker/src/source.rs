//! The frameplayer source of a build: which commit, and a checkout of it in the checkout cache
//! (`checkouts/<sha>/`, Lookit's stage 4).
//!
//! Accepted sources: a git repository URL (`https://...`, `git@...`, `file://...`), or a local
//! folder (frameplayer development). A folder is built as it is on disk, uncommitted edits
//! included, even when it is a git checkout: that is what the live development loop watches.
//! Its "commit" is a hash of its contents, so an edit gives a new checkout and a new output
//! cache key. A folder pinned to a commit (`<folder>@<sha>`) is read as a repository at that
//! commit instead, and so is a `file://` URL.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use tokio::process::Command;

/// Where the frameplayer comes from, as asked for in a build request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlayerSource {
    /// A git repository (remote URL or local path) at a branch, tag or commit.
    Git {
        repository: String,
        reference: String,
    },
    /// A folder whose current contents are built (without [`GENERATED_FOLDERS`]).
    Folder(PathBuf),
}

/// Folders in a player's tree that are not its source: dependencies the build installs itself,
/// build outputs and version control. Never hashed, copied or watched.
pub const GENERATED_FOLDERS: &[&str] = &[
    "node_modules",
    "bower_components",
    "dist",
    "tmp",
    ".git",
    ".hg",
    ".svn",
];

/// The default repository and branch of Lookit (§2 stage 2).
pub const DEFAULT_PLAYER_REPOSITORY: &str = "https://github.com/lookit/ember-lookit-frameplayer";
pub const DEFAULT_PLAYER_BRANCH: &str = "master";

impl PlayerSource {
    /// Reads the `builds.player_repo` / `builds.player_ref` pair. A local path (or `file://`)
    /// must exist. A `file://` URL, or a path pinned to a commit, that is a git repository is
    /// read as one; any other local path is built as a folder.
    pub async fn parse(repository: &str, reference: &str) -> anyhow::Result<PlayerSource> {
        let repository = repository.trim();
        anyhow::ensure!(!repository.is_empty(), "the player repository is empty");
        let local = repository
            .strip_prefix("file://")
            .or_else(|| repository.starts_with('/').then_some(repository));
        let Some(local) = local else {
            return Ok(PlayerSource::Git {
                repository: repository.to_string(),
                reference: reference_or_default(reference),
            });
        };
        let path = PathBuf::from(local);
        anyhow::ensure!(
            path.is_dir(),
            "the player folder {} does not exist",
            path.display()
        );
        let as_repository = repository.starts_with("file://") || is_commit_sha(reference.trim());
        if as_repository && is_git_repository(&path).await {
            Ok(PlayerSource::Git {
                repository: path.display().to_string(),
                reference: reference_or_default(reference),
            })
        } else {
            Ok(PlayerSource::Folder(path))
        }
    }

    /// The commit to build: a 40-hex reference as is, otherwise the reference resolved in the
    /// repository; for a folder, the hash of its contents.
    pub async fn resolve_commit(&self) -> anyhow::Result<String> {
        match self {
            PlayerSource::Git {
                repository,
                reference,
            } => {
                if is_commit_sha(reference) {
                    return Ok(reference.to_ascii_lowercase());
                }
                let output = git(&["ls-remote", "--", repository, reference]).await?;
                output
                    .lines()
                    .filter_map(|line| line.split_whitespace().next())
                    .find(|sha| is_commit_sha(sha))
                    .map(str::to_ascii_lowercase)
                    .with_context(|| format!("{repository} has no branch or tag {reference}"))
            }
            PlayerSource::Folder(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || content_hash(&path))
                    .await
                    .context("hashing task")?
            }
        }
    }

    /// Makes sure `checkouts/<sha>/` holds the source at `sha`, filling it atomically (a
    /// half-written checkout is never used).
    pub async fn ensure_checkout(&self, checkouts: &Path, sha: &str) -> anyhow::Result<PathBuf> {
        let target = checkouts.join(sha);
        if target.is_dir() {
            return Ok(target);
        }
        tokio::fs::create_dir_all(checkouts)
            .await
            .with_context(|| format!("create {}", checkouts.display()))?;
        let staging = checkouts.join(format!(".staging-{}", uuid::Uuid::new_v4().simple()));
        tokio::fs::create_dir_all(&staging)
            .await
            .with_context(|| format!("create {}", staging.display()))?;
        let filled = self.fill(&staging, sha).await;
        let result = match filled {
            Ok(()) => match tokio::fs::rename(&staging, &target).await {
                Ok(()) => Ok(target.clone()),
                // Another build filled it meanwhile: theirs is as good as ours.
                Err(_) if target.is_dir() => Ok(target.clone()),
                Err(error) => Err(anyhow::Error::from(error)
                    .context(format!("move the checkout to {}", target.display()))),
            },
            Err(error) => Err(error),
        };
        if staging.exists() {
            let _ = tokio::fs::remove_dir_all(&staging).await;
        }
        result
    }

    async fn fill(&self, staging: &Path, sha: &str) -> anyhow::Result<()> {
        match self {
            PlayerSource::Git { repository, .. } if Path::new(repository).is_dir() => {
                extract_archive(Path::new(repository), sha, staging).await
            }
            PlayerSource::Git { repository, .. } => {
                // A shallow fetch of just that commit, then its archive: no history is kept.
                let mirror = staging.with_extension("git");
                let mirror_str = mirror.display().to_string();
                git(&["init", "--quiet", "--bare", &mirror_str]).await?;
                let fetched = git(&[
                    "-C",
                    &mirror_str,
                    "fetch",
                    "--quiet",
                    "--depth",
                    "1",
                    "--",
                    repository,
                    sha,
                ])
                .await;
                let extracted = match fetched {
                    Ok(_) => extract_archive(&mirror, sha, staging).await,
                    Err(error) => Err(error),
                };
                let _ = tokio::fs::remove_dir_all(&mirror).await;
                extracted
            }
            PlayerSource::Folder(source) => {
                let (source, staging) = (source.clone(), staging.to_path_buf());
                tokio::task::spawn_blocking(move || copy_tree(&source, &staging))
                    .await
                    .context("copying task")?
            }
        }
    }
}

fn reference_or_default(reference: &str) -> String {
    let reference = reference.trim();
    if reference.is_empty() {
        DEFAULT_PLAYER_BRANCH.to_string()
    } else {
        reference.to_string()
    }
}

/// 40 hexadecimal characters (Lookit's test for a usable `last_known_player_sha`).
pub fn is_commit_sha(value: &str) -> bool {
    value.len() == 40 && value.bytes().all(|b| b.is_ascii_hexdigit())
}

async fn is_git_repository(path: &Path) -> bool {
    let path = path.display().to_string();
    git(&["-C", &path, "rev-parse", "--git-dir"]).await.is_ok()
}

/// Runs git and returns its standard output; a failure carries git's own message.
async fn git(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("git")
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .await
        .context("run git (is it installed?)")?;
    anyhow::ensure!(
        output.status.success(),
        "git {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `git archive <sha>` of `repository` unpacked into `target`.
async fn extract_archive(repository: &Path, sha: &str, target: &Path) -> anyhow::Result<()> {
    let output = Command::new("bash")
        .arg("-c")
        .arg(r#"set -euo pipefail; git -C "$1" archive --format=tar "$2" | tar -x -C "$3""#)
        .arg("extract-archive")
        .arg(repository)
        .arg(sha)
        .arg(target)
        .output()
        .await
        .context("run git archive")?;
    anyhow::ensure!(
        output.status.success(),
        "archive of {sha} from {}: {}",
        repository.display(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// Files under `root` in a stable order, without [`GENERATED_FOLDERS`].
fn source_files(root: &Path) -> impl Iterator<Item = walkdir::Result<walkdir::DirEntry>> {
    walkdir::WalkDir::new(root)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|entry| {
            entry.depth() == 0
                || !entry.file_type().is_dir()
                || !GENERATED_FOLDERS
                    .iter()
                    .any(|name| entry.file_name() == *name)
        })
}

/// A 40-hex digest of a folder's file names and contents.
fn content_hash(root: &Path) -> anyhow::Result<String> {
    let mut hasher = Sha256::new();
    for entry in source_files(root) {
        let entry = entry.with_context(|| format!("read {}", root.display()))?;
        if !entry.file_type().is_file() {
            continue;
        }
        let relative = entry.path().strip_prefix(root)?;
        hasher.update(relative.to_string_lossy().as_bytes());
        hasher.update([0]);
        let contents = std::fs::read(entry.path())
            .with_context(|| format!("read {}", entry.path().display()))?;
        hasher.update((contents.len() as u64).to_le_bytes());
        hasher.update(&contents);
    }
    Ok(hex::encode(hasher.finalize())[..40].to_string())
}

fn copy_tree(source: &Path, target: &Path) -> anyhow::Result<()> {
    for entry in source_files(source) {
        let entry = entry.with_context(|| format!("read {}", source.display()))?;
        let destination = target.join(entry.path().strip_prefix(source)?);
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&destination)
                .with_context(|| format!("create {}", destination.display()))?;
        } else if entry.file_type().is_file() {
            std::fs::copy(entry.path(), &destination).with_context(|| {
                format!(
                    "copy {} to {}",
                    entry.path().display(),
                    destination.display()
                )
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_forty_hex_characters_are_a_commit() {
        assert!(is_commit_sha("0123456789abcdef0123456789ABCDEF01234567"));
        assert!(!is_commit_sha("master"));
        assert!(!is_commit_sha("0123456789abcdef0123456789abcdef0123456"));
        assert!(!is_commit_sha("g123456789abcdef0123456789abcdef01234567"));
    }

    #[tokio::test]
    async fn a_folder_is_hashed_by_content_and_copied() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("player");
        std::fs::create_dir_all(source.join("app")).unwrap();
        std::fs::write(source.join("app/index.js"), "one").unwrap();
        let player = PlayerSource::parse(source.to_str().unwrap(), "")
            .await
            .unwrap();
        assert_eq!(player, PlayerSource::Folder(source.clone()));
        let first = player.resolve_commit().await.unwrap();
        std::fs::write(source.join("app/index.js"), "two").unwrap();
        let second = player.resolve_commit().await.unwrap();
        assert_ne!(first, second, "an edit must give another key");
        let checkout = player
            .ensure_checkout(&dir.path().join("checkouts"), &second)
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(checkout.join("app/index.js")).unwrap(),
            "two"
        );
    }

    #[tokio::test]
    async fn a_git_checkout_is_built_with_its_uncommitted_edits_unless_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let checkout = dir.path().join("frameplayer");
        std::fs::create_dir_all(checkout.join("app")).unwrap();
        std::fs::write(checkout.join("app/index.js"), "committed").unwrap();
        let path = checkout.display().to_string();
        for args in [
            &["init", "--quiet"][..],
            &["-c", "user.name=t", "-c", "user.email=t@t", "add", "."],
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "commit",
                "--quiet",
                "-m",
                "one",
            ],
        ] {
            git(&[&["-C", &path][..], args].concat()).await.unwrap();
        }
        let head = git(&["-C", &path, "rev-parse", "HEAD"]).await.unwrap();
        std::fs::write(checkout.join("app/index.js"), "edited").unwrap();
        std::fs::create_dir_all(checkout.join("node_modules/dep")).unwrap();
        std::fs::write(checkout.join("node_modules/dep/index.js"), "installed").unwrap();

        let working_tree = PlayerSource::parse(&path, "master").await.unwrap();
        assert_eq!(working_tree, PlayerSource::Folder(checkout.clone()));
        let sha = working_tree.resolve_commit().await.unwrap();
        let built = working_tree
            .ensure_checkout(&dir.path().join("checkouts"), &sha)
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(built.join("app/index.js")).unwrap(),
            "edited"
        );
        assert!(
            !built.join("node_modules").exists(),
            "dependencies were copied"
        );
        // Installing dependencies is not an edit: same key.
        std::fs::write(checkout.join("node_modules/dep/index.js"), "upgraded").unwrap();
        assert_eq!(working_tree.resolve_commit().await.unwrap(), sha);

        let pinned = PlayerSource::parse(&path, head.trim()).await.unwrap();
        assert!(matches!(pinned, PlayerSource::Git { .. }), "{pinned:?}");
        let built = pinned
            .ensure_checkout(&dir.path().join("checkouts"), head.trim())
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(built.join("app/index.js")).unwrap(),
            "committed"
        );
    }

    #[tokio::test]
    async fn a_missing_folder_is_refused_with_its_path() {
        let error = PlayerSource::parse("file:///nonexistent/player", "")
            .await
            .unwrap_err();
        assert!(error.to_string().contains("/nonexistent/player"), "{error}");
    }
}
