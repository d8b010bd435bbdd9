//! A watched folder (or one file in it) that reports **one event per burst of changes**.
//!
//! How it works: notify's debouncer (rename pairing, one event per file) feeds a thread of our
//! own that keeps the watches and groups what arrives into bursts: a burst ends when nothing
//! relevant happened for the quiet time.
//!
//! Invariants:
//! - Ignored folders (`node_modules`, `dist`, `.git`, ...) are never watched, so their size
//!   cannot exhaust the kernel's inotify watches; every other folder has one watch, added when the
//!   folder appears (created, moved in, or re-created after the whole tree was deleted).
//! - Reading files (a build copying the folder) is not a change: only creations, writes,
//!   renames, removals and metadata changes count.
//! - A save by rename (write `x.tmp`, rename it to `x`) counts as a change of `x`.
//! - When the watched folder disappears, its nearest existing ancestor is watched until it comes
//!   back; then the whole tree is watched again and its return is a change.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use notify::{PollWatcher, RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{new_debouncer_opt, DebounceEventResult, Debouncer, NoCache};
use tokio::sync::mpsc;

use crate::ignore::{is_ignored, is_ignored_folder};
use crate::WatchError;

/// How changes are noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchMode {
    /// The kernel reports changes (inotify): immediate and cheap.
    Native,
    /// The folder is scanned every interval: for network folders, where no notices arrive.
    Poll(Duration),
}

impl WatchMode {
    /// The mode the `[watch]` section of the config asks for.
    pub fn from_config(config: &lookit_config::WatchConfig) -> WatchMode {
        if config.poll {
            WatchMode::Poll(Duration::from_secs(config.poll_interval_secs))
        } else {
            WatchMode::Native
        }
    }
}

/// What is watched below the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every file of the tree, except ignored folders and editor temporaries.
    Tree,
    /// One file of the root folder (watched through its folder, so that a save by rename, which
    /// replaces the file, is seen).
    File(PathBuf),
}

/// What a [`FolderWatch`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FolderEvent {
    /// A burst of changes ended; the changed paths, sorted.
    Changed { paths: Vec<PathBuf> },
    /// The watched folder was deleted; it is watched again when it comes back.
    Gone,
    /// Changes may be missed from now on (the watch limit was reached); the message says why
    /// and how to fix it.
    Failed { message: String },
}

/// A running watch; dropping it stops it.
pub struct FolderWatch {
    input: std_mpsc::Sender<Input>,
    thread: Option<std::thread::JoinHandle<()>>,
}

enum Input {
    Debounced(DebounceEventResult),
    Stop,
}

impl FolderWatch {
    /// Watches `root` (which must exist) and returns once every watch is in place, so a change
    /// made after this returns is reported. Fails with [`WatchError::WatchLimit`] when the
    /// kernel's inotify limit does not allow watching the whole tree.
    pub fn start(
        root: &Path,
        scope: Scope,
        mode: WatchMode,
        quiet: Duration,
    ) -> Result<(FolderWatch, mpsc::UnboundedReceiver<FolderEvent>), WatchError> {
        let root = std::fs::canonicalize(root).map_err(|source| WatchError::Folder {
            path: root.to_path_buf(),
            source,
        })?;
        if !root.is_dir() {
            return Err(WatchError::NotAFolder(root));
        }
        let scope = match scope {
            Scope::File(file) => Scope::File(root.join(file.file_name().unwrap_or_default())),
            Scope::Tree => Scope::Tree,
        };
        let (input, inputs) = std_mpsc::channel();
        let forward = input.clone();
        let handler = move |result: DebounceEventResult| {
            let _ = forward.send(Input::Debounced(result));
        };
        // The debouncer's thread wakes every tick whether or not anything changed (a quarter
        // of the quiet time unless told). Half of it: a change is still reported within one
        // and a half quiet times, and an idle app wakes half as often.
        let tick = Some(quiet / 2);
        let watcher = match mode {
            WatchMode::Native => Watcher::Native(
                new_debouncer_opt(quiet, tick, handler, NoCache, notify::Config::default())
                    .map_err(|e| WatchError::from_notify(e, &root))?,
            ),
            WatchMode::Poll(interval) => Watcher::Poll(
                new_debouncer_opt(
                    quiet,
                    tick,
                    handler,
                    NoCache,
                    notify::Config::default().with_poll_interval(interval),
                )
                .map_err(|e| WatchError::from_notify(e, &root))?,
            ),
        };
        let (events, receiver) = mpsc::unbounded_channel();
        let mut state = WatchState {
            root,
            scope,
            watcher,
            watched: HashSet::new(),
            waiting_at: None,
            events,
        };
        state.arm()?;
        let thread = std::thread::Builder::new()
            .name("lookit-watch".into())
            .spawn(move || state.run(inputs, quiet))
            .map_err(|e| WatchError::Other(format!("start the watch thread: {e}")))?;
        Ok((
            FolderWatch {
                input,
                thread: Some(thread),
            },
            receiver,
        ))
    }
}

impl Drop for FolderWatch {
    fn drop(&mut self) {
        let _ = self.input.send(Input::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How often a watch whose root is gone looks for it besides waiting for the notice.
const ROOT_LOOKOUT: Duration = Duration::from_secs(1);

/// The debouncer over the kernel's notices or over polling.
enum Watcher {
    Native(Debouncer<RecommendedWatcher, NoCache>),
    Poll(Debouncer<PollWatcher, NoCache>),
}

impl Watcher {
    fn watch(&mut self, path: &Path) -> notify::Result<()> {
        match self {
            Watcher::Native(d) => d.watch(path, RecursiveMode::NonRecursive),
            Watcher::Poll(d) => d.watch(path, RecursiveMode::NonRecursive),
        }
    }

    /// The kernel drops the watch of a deleted folder by itself, so failing here is normal.
    fn unwatch(&mut self, path: &Path) {
        let _ = match self {
            Watcher::Native(d) => d.unwatch(path),
            Watcher::Poll(d) => d.unwatch(path),
        };
    }
}

struct WatchState {
    root: PathBuf,
    scope: Scope,
    watcher: Watcher,
    /// Folders with a watch of their own.
    watched: HashSet<PathBuf>,
    /// While the root is gone: the ancestor watched for its return.
    waiting_at: Option<PathBuf>,
    events: mpsc::UnboundedSender<FolderEvent>,
}

impl WatchState {
    /// Watches the root and, for a tree, every folder below it that is not ignored.
    fn arm(&mut self) -> Result<(), WatchError> {
        match self.scope {
            Scope::File(_) => self.watch_folder(self.root.clone()),
            Scope::Tree => self.watch_tree(self.root.clone()),
        }
    }

    fn watch_folder(&mut self, folder: PathBuf) -> Result<(), WatchError> {
        if self.watched.contains(&folder) {
            return Ok(());
        }
        match self.watcher.watch(&folder) {
            Ok(()) => {
                self.watched.insert(folder);
                Ok(())
            }
            // Deleted between being seen and being watched: nothing left to watch.
            Err(e) if matches!(e.kind, notify::ErrorKind::PathNotFound) => Ok(()),
            Err(e) => Err(WatchError::from_notify(e, &folder)),
        }
    }

    /// Each folder is watched before it is listed, so a subfolder created meanwhile is either
    /// listed or reported by the new watch: none is missed.
    fn watch_tree(&mut self, top: PathBuf) -> Result<(), WatchError> {
        let mut folders = vec![top];
        while let Some(folder) = folders.pop() {
            self.watch_folder(folder.clone())?;
            let Ok(entries) = std::fs::read_dir(&folder) else {
                continue;
            };
            folders.extend(
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .filter(|e| !e.file_name().to_str().is_some_and(is_ignored_folder))
                    .map(|e| e.path()),
            );
        }
        Ok(())
    }

    fn relevant(&self, path: &Path) -> bool {
        match &self.scope {
            Scope::File(file) => path == file,
            Scope::Tree => !is_ignored(&self.root, path),
        }
    }

    fn run(mut self, inputs: std_mpsc::Receiver<Input>, quiet: Duration) {
        loop {
            let mut burst = BTreeSet::new();
            let input = if self.waiting_at.is_some() {
                // While the root is gone, also look for it every ROOT_LOOKOUT: the notice of its
                // return was once missed on a loaded machine, and a watch that never resumes
                // is worse than one check a second of a folder that is not there.
                match inputs.recv_timeout(ROOT_LOOKOUT) {
                    Ok(input) => Some(input),
                    Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
                }
            } else {
                match inputs.recv() {
                    Ok(input) => Some(input),
                    Err(_) => return,
                }
            };
            match input {
                Some(Input::Debounced(result)) => self.absorb(result, &mut burst),
                Some(Input::Stop) => return,
                None => self.follow_root(&mut burst),
            }
            if burst.is_empty() {
                continue;
            }
            // The burst goes on while relevant changes keep arriving within the quiet time.
            loop {
                match inputs.recv_timeout(quiet) {
                    Ok(Input::Debounced(result)) => self.absorb(result, &mut burst),
                    Ok(Input::Stop) | Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
                    Err(std_mpsc::RecvTimeoutError::Timeout) => break,
                }
            }
            let paths = burst.into_iter().collect();
            if self.events.send(FolderEvent::Changed { paths }).is_err() {
                return;
            }
        }
    }

    /// Adds the relevant paths of `result` to `burst` and keeps the watches in step with the
    /// folders that appeared or disappeared.
    fn absorb(&mut self, result: DebounceEventResult, burst: &mut BTreeSet<PathBuf>) {
        let events = match result {
            Ok(events) => events,
            Err(errors) => {
                for error in errors {
                    self.report(WatchError::from_notify(error, &self.root));
                }
                return;
            }
        };
        for event in events {
            if event.kind.is_access() {
                continue;
            }
            if event.need_rescan() {
                // The kernel's queue overflowed: anything may have changed.
                burst.insert(self.root.clone());
            }
            for path in &event.paths {
                if self.relevant(path) {
                    burst.insert(path.clone());
                }
                if self.waiting_at.is_some() {
                    continue;
                }
                if matches!(self.scope, Scope::Tree)
                    && path.is_dir()
                    && !is_ignored(&self.root, path)
                    && !self.watched.contains(path)
                {
                    if let Err(error) = self.watch_tree(path.clone()) {
                        self.report(error);
                    }
                } else if self.watched.contains(path) && !path.exists() {
                    self.watched.remove(path);
                    self.watcher.unwatch(path);
                }
            }
        }
        self.follow_root(burst);
    }

    /// Notices the root disappearing and coming back.
    fn follow_root(&mut self, burst: &mut BTreeSet<PathBuf>) {
        let present = self.root.is_dir();
        match (&self.waiting_at, present) {
            (None, false) => {
                for folder in std::mem::take(&mut self.watched) {
                    self.watcher.unwatch(&folder);
                }
                burst.clear();
                let ancestor = self
                    .root
                    .ancestors()
                    .skip(1)
                    .find(|a| a.is_dir())
                    .map(Path::to_path_buf);
                if let Some(ancestor) = ancestor {
                    if let Err(e) = self.watcher.watch(&ancestor) {
                        self.report(WatchError::from_notify(e, &ancestor));
                    }
                    self.waiting_at = Some(ancestor);
                }
                let _ = self.events.send(FolderEvent::Gone);
                // Re-created between the check and the ancestor's watch: catch it now.
                if self.root.is_dir() {
                    self.follow_root(burst);
                }
            }
            (Some(ancestor), true) => {
                let ancestor = ancestor.clone();
                self.watcher.unwatch(&ancestor);
                self.waiting_at = None;
                match self.arm() {
                    Ok(()) => {
                        burst.insert(self.root.clone());
                    }
                    Err(error) => self.report(error),
                }
            }
            _ => {}
        }
        // While waiting, only the root's return matters.
        if self.waiting_at.is_some() {
            burst.clear();
        }
    }

    fn report(&self, error: WatchError) {
        tracing::warn!(root = %self.root.display(), "{error}");
        let _ = self.events.send(FolderEvent::Failed {
            message: error.to_string(),
        });
    }
}
