//! A study's protocol kept as JSON files in a folder: every `*.json` file directly in it is an
//! object with `frames` (frame id → frame) and/or `sequence` (frame ids in order). One file may
//! hold everything; frames may also be split over several files. Exactly one file has the
//! `sequence`, a frame id is defined once, and the sequence names only defined frames.
//!
//! The result has the shape the researcher routes require of a structure (an object with
//! `frames`, an object, and `sequence`, an array). A folder that does not make a valid protocol
//! keeps the study's old structure; the error names the file and, where it has one, the line.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Map, Value};
use sqlx::PgPool;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::folder::FolderEvent;
use crate::ignore::is_ignored;
use crate::supervisor::WatchEvent;

/// Why a protocol folder is not a valid protocol.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProtocolError {
    pub file: PathBuf,
    /// 1-based, when the problem has a place in the file.
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ", line {line}")?;
            if let Some(column) = self.column {
                write!(f, ", column {column}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ProtocolError {}

/// One protocol file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProtocolFile {
    frames: Option<Map<String, Value>>,
    sequence: Option<Vec<String>>,
}

/// The line of the first `"needle"` at or after byte `from` of `text`.
fn line_of(text: &str, needle: &str, from: usize) -> Option<usize> {
    let quoted = format!("\"{needle}\"");
    let at = text.get(from..)?.find(&quoted)? + from;
    Some(text[..at].matches('\n').count() + 1)
}

/// The structure the protocol folder makes, and the files it was made of.
pub fn read_protocol(folder: &Path) -> Result<(Value, Vec<PathBuf>), ProtocolError> {
    let at_folder = |message: String| ProtocolError {
        file: folder.to_path_buf(),
        line: None,
        column: None,
        message,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(folder)
        .map_err(|e| at_folder(format!("cannot read the protocol folder: {e}")))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json") && p.is_file())
        .filter(|p| !is_ignored(folder, p))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(at_folder(
            "no protocol files (*.json) in this folder".into(),
        ));
    }
    let mut frames = Map::new();
    let mut frame_files: Vec<(String, PathBuf)> = Vec::new();
    let mut sequence: Option<(Vec<String>, PathBuf, String)> = None;
    for file in &files {
        let text = std::fs::read_to_string(file).map_err(|e| ProtocolError {
            file: file.clone(),
            line: None,
            column: None,
            message: format!("cannot read: {e}"),
        })?;
        let mut deserializer = serde_json::Deserializer::from_str(&text);
        let at_place = |error: &serde_json::Error, message: String| ProtocolError {
            file: file.clone(),
            line: Some(error.line()),
            column: Some(error.column()),
            message,
        };
        let parsed: ProtocolFile =
            serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
                let place = e.path().to_string();
                let message = if place == "." {
                    e.inner().to_string()
                } else {
                    format!("{place}: {}", e.inner())
                };
                at_place(e.inner(), message)
            })?;
        deserializer
            .end()
            .map_err(|e| at_place(&e, e.to_string()))?;
        for (id, frame) in parsed.frames.into_iter().flatten() {
            if let Some((_, first)) = frame_files.iter().find(|(known, _)| *known == id) {
                return Err(ProtocolError {
                    file: file.clone(),
                    line: line_of(&text, &id, 0),
                    column: None,
                    message: format!("frame {id:?} is also defined in {}", first.display()),
                });
            }
            frame_files.push((id.clone(), file.clone()));
            frames.insert(id, frame);
        }
        if let Some(order) = parsed.sequence {
            if let Some((_, first, _)) = &sequence {
                return Err(ProtocolError {
                    file: file.clone(),
                    line: line_of(&text, "sequence", 0),
                    column: None,
                    message: format!("the sequence is already given in {}", first.display()),
                });
            }
            sequence = Some((order, file.clone(), text));
        }
    }
    let Some((order, file, text)) = sequence else {
        return Err(at_folder(
            "no file has a `sequence` (the frame ids in order)".into(),
        ));
    };
    let after = text.find("\"sequence\"").unwrap_or(0);
    if let Some(unknown) = order.iter().find(|id| !frames.contains_key(*id)) {
        return Err(ProtocolError {
            file,
            line: line_of(&text, unknown, after),
            column: None,
            message: format!("the sequence names frame {unknown:?}, which no file defines"),
        });
    }
    Ok((json!({ "frames": frames, "sequence": order }), files))
}

/// Keeps one study's structure equal to its protocol folder.
pub struct ProtocolSync {
    pool: PgPool,
    study: Uuid,
    folder: PathBuf,
}

impl ProtocolSync {
    pub fn new(pool: PgPool, study: Uuid, folder: &Path) -> ProtocolSync {
        ProtocolSync {
            pool,
            study,
            folder: folder.to_path_buf(),
        }
    }

    /// Reads the folder and, when it is valid and differs, makes it the study's structure (with
    /// a study log entry, and the previews reloaded). An invalid folder is recorded in the study
    /// log and changes nothing. Returns whether the structure changed.
    pub async fn apply(&self) -> anyhow::Result<Result<bool, ProtocolError>> {
        let folder = self.folder.clone();
        let read = tokio::task::spawn_blocking(move || read_protocol(&folder)).await?;
        let (structure, files) = match read {
            Ok(read) => read,
            Err(error) => {
                sqlx::query(
                    "INSERT INTO study_logs (study_id, action, extra) VALUES ($1, 'protocol invalid', $2)",
                )
                .bind(self.study)
                .bind(json!({
                    "file": error.file, "line": error.line, "column": error.column,
                    "message": error.message, "error": error.to_string(),
                }))
                .execute(&self.pool)
                .await?;
                return Ok(Err(error));
            }
        };
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE studies SET structure = $2, modified_at = now() \
             WHERE id = $1 AND structure IS DISTINCT FROM $2",
        )
        .bind(self.study)
        .bind(&structure)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            return Ok(Ok(false));
        }
        // The same entry as an edit through the researcher routes, saying where it came from.
        sqlx::query("INSERT INTO study_logs (study_id, action, extra) VALUES ($1, 'edited', $2)")
            .bind(self.study)
            .bind(json!({ "fields": ["structure"], "source": "protocol folder", "files": files }))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        lookit_api::preview_reload::announce_reload(&self.pool, self.study).await?;
        Ok(Ok(true))
    }

    /// Applies the folder now and after every burst of changes, until `folder` ends or `cancel`.
    pub async fn run(
        self,
        mut folder: mpsc::UnboundedReceiver<FolderEvent>,
        events: broadcast::Sender<WatchEvent>,
        cancel: CancellationToken,
    ) {
        let study = self.study;
        self.apply_and_tell(&events).await;
        loop {
            let event = tokio::select! {
                _ = cancel.cancelled() => return,
                event = folder.recv() => event,
            };
            match event {
                None => return,
                Some(FolderEvent::Changed { .. }) => self.apply_and_tell(&events).await,
                Some(FolderEvent::Gone) => {
                    let _ = events.send(WatchEvent::FolderGone {
                        study,
                        folder: self.folder.clone(),
                    });
                }
                Some(FolderEvent::Failed { message }) => {
                    let _ = events.send(WatchEvent::Failed {
                        study: Some(study),
                        message,
                    });
                }
            }
        }
    }

    async fn apply_and_tell(&self, events: &broadcast::Sender<WatchEvent>) {
        let study = self.study;
        let event = match self.apply().await {
            Ok(Ok(changed)) => WatchEvent::ProtocolApplied { study, changed },
            Ok(Err(error)) => WatchEvent::ProtocolInvalid { study, error },
            Err(error) => WatchEvent::Failed {
                study: Some(study),
                message: format!("the protocol folder could not be applied: {error:#}"),
            },
        };
        let _ = events.send(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn frames_may_be_split_over_files_and_the_sequence_is_checked() {
        let dir = folder(&[
            (
                "main.json",
                r#"{"sequence": ["intro", "video"], "frames": {"intro": {"kind": "exp-lookit-text"}}}"#,
            ),
            (
                "video.json",
                r#"{"frames": {"video": {"kind": "exp-video"}}}"#,
            ),
            (".#main.json", "editor lock, not JSON"),
        ]);
        let (structure, files) = read_protocol(dir.path()).unwrap();
        assert_eq!(structure["sequence"], json!(["intro", "video"]));
        assert_eq!(structure["frames"]["video"]["kind"], "exp-video");
        assert_eq!(files.len(), 2);
    }

    #[test]
    fn a_syntax_error_names_file_line_and_column() {
        let dir = folder(&[(
            "main.json",
            "{\n  \"sequence\": [],\n  \"frames\": {,}\n}\n",
        )]);
        let error = read_protocol(dir.path()).unwrap_err();
        assert_eq!(error.file, dir.path().join("main.json"));
        assert_eq!(error.line, Some(3));
        assert!(
            error.to_string().contains("main.json, line 3, column"),
            "{error}"
        );
    }

    #[test]
    fn wrong_shapes_and_unknown_frames_are_named() {
        let dir = folder(&[("main.json", "{\n\"frames\": [],\n\"sequence\": []}")]);
        let error = read_protocol(dir.path()).unwrap_err();
        assert!(error.message.contains("frames"), "{error}");
        assert_eq!(error.line, Some(2));
        let dir = folder(&[(
            "main.json",
            "{\"frames\": {\"a\": {}},\n\"sequence\": [\n\"a\",\n\"b\"]}",
        )]);
        let error = read_protocol(dir.path()).unwrap_err();
        assert_eq!(error.line, Some(4), "{error}");
        assert!(error.message.contains("\"b\""), "{error}");
    }
}
