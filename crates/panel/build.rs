//! Embeds the built UI (`ui/dist`) into the binary. When the UI has not been built the crate
//! still compiles and serves a page that says how to build it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let dist = manifest.join("../../ui/dist");
    // Cargo scans a directory given here for changes; a missing one makes the script rerun, which
    // is what we want (it appears after `npm --prefix ui run build`).
    println!("cargo:rerun-if-changed={}", dist.display());

    let mut files = Vec::new();
    if dist.is_dir() {
        collect(&dist, &dist, &mut files);
    }
    files.sort();
    let built = files.iter().any(|(name, _)| name == "index.html");

    let mut out = String::new();
    writeln!(
        out,
        "/// Whether `ui/dist` held a built UI when this crate was compiled."
    )
    .unwrap();
    writeln!(out, "pub const UI_BUILT: bool = {built};").unwrap();
    writeln!(
        out,
        "/// Files of `ui/dist`: path relative to it, and content."
    )
    .unwrap();
    writeln!(out, "pub static UI_FILES: &[(&str, &[u8])] = &[").unwrap();
    for (name, path) in &files {
        writeln!(
            out,
            "    ({name:?}, include_bytes!({:?})),",
            path.display().to_string()
        )
        .unwrap();
    }
    writeln!(out, "];").unwrap();
    let target = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo")).join("ui_files.rs");
    std::fs::write(target, out).expect("write ui_files.rs");
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            collect(root, &path, files);
        } else {
            let relative = path.strip_prefix(root).expect("inside root");
            let name = relative.to_string_lossy().replace('\\', "/");
            let absolute = path.canonicalize().expect("canonical path");
            files.push((name, absolute));
        }
    }
}
