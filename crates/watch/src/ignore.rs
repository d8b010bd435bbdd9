//! Which paths under a watched folder are not the user's edits: dependency and output folders
//! (a `yarn install` or `ember build` would otherwise start a rebuild), version control, and the
//! temporary files editors write while saving.

use std::path::Path;

// Folders whose contents never start a rebuild and are not watched at all (a `node_modules`
// alone can hold more folders than the kernel's default inotify limit): the same folders the
// worker leaves out of a player's source.
use lookit_worker::GENERATED_FOLDERS as IGNORED_FOLDERS;

/// Whether a file name is an editor's temporary or backup file: vim (`.x.swp`, `x~`, its
/// `4913` write test), emacs (`.#x`, `#x#`), GNOME's `.goutputstream-*`, Kate, JetBrains and
/// generic `*.tmp`.
fn is_editor_temporary(name: &str) -> bool {
    name == "4913"
        || name == ".DS_Store"
        || name.ends_with('~')
        || name.starts_with(".#")
        || (name.starts_with('#') && name.ends_with('#'))
        || name.starts_with(".goutputstream-")
        || [
            ".swp",
            ".swo",
            ".swx",
            ".tmp",
            ".kate-swp",
            "___jb_tmp___",
            "___jb_old___",
        ]
        .iter()
        .any(|suffix| name.ends_with(suffix))
}

/// Whether `name` is a folder that is neither watched nor counted.
pub fn is_ignored_folder(name: &str) -> bool {
    IGNORED_FOLDERS.contains(&name)
}

/// Whether a change at `path` (below `root`) is ignored: any of its folders is an ignored one,
/// or its file name is an editor's temporary file. Paths outside `root` are ignored too.
pub fn is_ignored(root: &Path, path: &Path) -> bool {
    let Ok(relative) = path.strip_prefix(root) else {
        return true;
    };
    let names: Vec<&str> = relative
        .components()
        .filter_map(|c| c.as_os_str().to_str())
        .collect();
    match names.split_last() {
        None => false,
        Some((file, folders)) => {
            folders.iter().any(|f| is_ignored_folder(f))
                || is_ignored_folder(file)
                || is_editor_temporary(file)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependency_output_and_version_control_folders_are_ignored() {
        let root = Path::new("/p");
        for path in [
            "/p/node_modules/x/index.js",
            "/p/dist/index.html",
            "/p/.git/index",
            "/p/app/node_modules/y.js",
            "/p/tmp/broccoli/z",
            "/p/node_modules",
            "/elsewhere/app.js",
        ] {
            assert!(is_ignored(root, Path::new(path)), "{path}");
        }
    }

    #[test]
    fn editor_temporaries_are_ignored_but_sources_are_not() {
        let root = Path::new("/p");
        for path in [
            "/p/app/.app.js.swp",
            "/p/app/app.js~",
            "/p/app/.#app.js",
            "/p/app/#app.js#",
            "/p/app/4913",
            "/p/app/app.js.tmp",
        ] {
            assert!(is_ignored(root, Path::new(path)), "{path}");
        }
        for path in [
            "/p/app/app.js",
            "/p/package.json",
            "/p/app/distance.js",
            "/p",
        ] {
            assert!(!is_ignored(root, Path::new(path)), "{path}");
        }
    }
}
