//! The disk holding the data home fills up: writing the config or the secrets fails with an
//! error that names the file and says the disk is full, and the files already there are intact
//! (written atomically: temp file + rename, the temp file removed on failure).
//!
//! The home is a 16 MB tmpfs the test mounts, so it needs root; elsewhere it says why it skips.

use std::io::Write;
use std::path::{Path, PathBuf};

use lookit_config::{write_private, Home, Secrets, SecretsError};

/// A small tmpfs mounted for one test, unmounted when dropped (even when the test fails).
struct SmallDisk {
    mount: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount() -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path().join("home");
        std::fs::create_dir(&mount).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs"])
            .arg(&mount)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("SKIPPED: mounting a tmpfs needs root (run the tests as root, as scripts/test does on CI)");
            return None;
        }
        Some(SmallDisk { mount, _dir: dir })
    }

    /// Writes a filler file until the disk refuses more.
    fn fill(&self) {
        let mut filler = std::fs::File::create(self.mount.join("filler")).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        loop {
            match filler.write_all(&chunk).and_then(|()| filler.sync_all()) {
                Ok(()) => continue,
                Err(e) if e.raw_os_error() == Some(28) => return, // ENOSPC
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.mount)
            .status();
    }
}

fn no_temp_files(dir: &Path) {
    let temps: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map_while(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tmp"))
        .collect();
    assert!(temps.is_empty(), "temp files left behind: {temps:?}");
}

#[test]
fn a_full_disk_fails_config_and_secrets_writes_clearly_and_keeps_the_old_files() {
    let Some(disk) = SmallDisk::mount() else {
        return;
    };
    let home = Home::at(&disk.mount);
    let config = "[api]\nport = 8443\n";
    write_private(home.config_file(), config).unwrap();
    let secrets = Secrets::load_or_generate(&home.secrets_file()).unwrap();
    // A secrets file from an older version lacks a secret: loading it must write the file.
    let old_secrets = format!("postgres_password = \"{}\"\n", secrets.all_values()[0]);
    std::fs::write(home.secrets_file(), &old_secrets).unwrap();

    disk.fill();

    let bigger = format!("{config}# {}\n", "x".repeat(256 * 1024));
    let error = write_private(home.config_file(), &bigger).expect_err("the disk is full");
    assert_eq!(error.raw_os_error(), Some(28), "{error}");
    assert_eq!(
        std::fs::read_to_string(home.config_file()).unwrap(),
        config,
        "the config file is intact"
    );

    let error = Secrets::load_or_generate(&home.secrets_file()).expect_err("the disk is full");
    assert!(matches!(error, SecretsError::Write { .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.contains(&home.secrets_file().display().to_string())
            && message.contains("No space left on device"),
        "the error names the file and the full disk: {message}"
    );
    assert_eq!(
        std::fs::read_to_string(home.secrets_file()).unwrap(),
        old_secrets,
        "the secrets file is intact"
    );
    no_temp_files(&disk.mount);

    // Room again: the same calls succeed, nothing needed repair.
    std::fs::remove_file(disk.mount.join("filler")).unwrap();
    let loaded = Secrets::load_or_generate(&home.secrets_file()).unwrap();
    assert_eq!(loaded.all_values()[0], secrets.all_values()[0]);
    write_private(home.config_file(), &bigger).unwrap();
}
