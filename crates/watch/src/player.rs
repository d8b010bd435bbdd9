//! Asking for a build with a given player: the one path shared by `lookit-local build --player`
//! and the watched player folders.

use anyhow::Context as _;
use sqlx::PgPool;
use uuid::Uuid;

/// A study's frameplayer as given on the command line: a folder (made absolute) or a
/// repository URL, optionally pinned to a commit with `@<40 hex>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Player {
    /// An absolute folder path or a URL.
    pub source: String,
    pub sha: Option<String>,
}

impl Player {
    /// Reads `<folder | URL>[@sha]`; a folder must exist.
    pub fn parse(value: &str) -> anyhow::Result<Player> {
        let (source, sha) = match value.rsplit_once('@') {
            Some((source, sha))
                if sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                (source, Some(sha.to_ascii_lowercase()))
            }
            _ => (value, None),
        };
        let source = if source.contains("://") {
            source.to_string()
        } else {
            std::fs::canonicalize(source)
                .with_context(|| {
                    format!("{source}: no such folder (give a folder or a repository URL)")
                })?
                .display()
                .to_string()
        };
        Ok(Player { source, sha })
    }
}

/// Makes `player` the study's player (as a researcher sets it in Lookit: `metadata`) and queues a
/// build, in the API's one way ([`lookit_api::queue_study_build`]). A player without a pinned
/// commit clears an old pin, which belonged to the previous player.
pub async fn queue_build_with_player(
    pool: &PgPool,
    study: Uuid,
    player: &Player,
) -> Result<lookit_api::Build, lookit_api::ApiError> {
    let updated = sqlx::query(
        "UPDATE studies SET metadata = (metadata - 'last_known_player_sha') \
         || jsonb_build_object('player_repo_url', $2::text) \
         || CASE WHEN $3::text IS NULL THEN '{}'::jsonb \
            ELSE jsonb_build_object('last_known_player_sha', $3::text) END, \
         modified_at = now() WHERE id = $1",
    )
    .bind(study)
    .bind(&player.source)
    .bind(&player.sha)
    .execute(pool)
    .await
    .map_err(anyhow::Error::from)?;
    if updated.rows_affected() == 0 {
        return Err(lookit_api::ApiError::NotFound(format!(
            "there is no study {study}"
        )));
    }
    lookit_api::queue_study_build(pool, study).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_is_made_absolute_and_a_sha_is_split_off() {
        let dir = tempfile::tempdir().unwrap();
        let sha = "0123456789ABCDEF0123456789abcdef01234567";
        let player = Player::parse(&format!("{}@{sha}", dir.path().display())).unwrap();
        assert_eq!(
            player.source,
            std::fs::canonicalize(dir.path())
                .unwrap()
                .display()
                .to_string()
        );
        assert_eq!(player.sha.as_deref(), Some(&*sha.to_ascii_lowercase()));
        let url = Player::parse("https://example.org/player.git").unwrap();
        assert_eq!(url.sha, None);
        let error = Player::parse("/no/such/player").unwrap_err().to_string();
        assert!(error.contains("/no/such/player"), "{error}");
    }
}
