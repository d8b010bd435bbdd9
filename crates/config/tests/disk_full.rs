//! The disk holding the data home fills up: writing the config or the secrets fails with an
//! error that names the file and says the disk is full, and the files already there are intact
//! (written atomically: temp file + rename, the temp file removed on failure).
//!
//! The home is a small disk the test mounts (`lookit_testkit::SmallDisk`), so it needs root;
//! elsewhere it says why it skips.

use std::path::Path;

use lookit_config::{write_private, Home, Secrets, SecretsError};
use lookit_testkit::SmallDisk;

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
    let home = Home::at(disk.path());
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
    no_temp_files(disk.path());

    // Room again: the same calls succeed, nothing needed repair.
    disk.free();
    let loaded = Secrets::load_or_generate(&home.secrets_file()).unwrap();
    assert_eq!(loaded.all_values()[0], secrets.all_values()[0]);
    write_private(home.config_file(), &bigger).unwrap();
}
