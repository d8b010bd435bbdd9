//! Garbage in the config and secrets files (random bytes, binary, other encodings, a huge file,
//! a folder in the file's place): loading gives an error that names the file and what is wrong
//! with it, never a panic, and a damaged secrets file is left as it was.

use lookit_config::{Config, ConfigError, Home, Secrets, SecretsError};
use proptest::prelude::*;

/// A home whose config file holds `bytes`.
fn home_with_config(bytes: &[u8]) -> (tempfile::TempDir, Home) {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::at(dir.path());
    std::fs::write(home.config_file(), bytes).unwrap();
    (dir, home)
}

fn config_error(bytes: &[u8]) -> String {
    let (_dir, home) = home_with_config(bytes);
    let error = Config::load(&home).expect_err("garbage is refused");
    let message = error.to_string();
    assert!(
        message.contains(&home.config_file().display().to_string()),
        "the error names the file: {message}"
    );
    message
}

#[test]
fn binary_files_are_refused_as_not_text() {
    let message = config_error(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0]);
    assert!(message.contains("binary data"), "{message}");
}

#[test]
fn utf16_files_are_refused_with_the_fix() {
    let utf16: Vec<u8> = [0xFEFFu16]
        .into_iter()
        .chain("[api]\nport = 8443\n".encode_utf16())
        .flat_map(u16::to_le_bytes)
        .collect();
    let message = config_error(&utf16);
    assert!(
        message.contains("UTF-16") && message.contains("save it as UTF-8"),
        "{message}"
    );
}

#[test]
fn latin1_files_are_refused_with_the_line() {
    let message = config_error(b"# config\n\n[email]\nfrom_address = \"caf\xe9@example.org\"\n");
    assert!(message.contains("line 4 is not UTF-8"), "{message}");
}

#[test]
fn a_utf8_byte_order_mark_is_accepted() {
    let (_dir, home) = home_with_config(b"\xEF\xBB\xBF[api]\nport = 8443\n");
    let config = Config::load(&home).expect("a BOM from a Windows editor is fine");
    assert_eq!(config.api.port.0, 8443);
}

#[test]
fn a_huge_file_is_refused_without_parsing_it() {
    let huge = "# padding\n".repeat(2 * 1024 * 1024 / 10);
    let message = config_error(huge.as_bytes());
    assert!(message.contains("larger than 1024 KiB"), "{message}");
}

#[test]
fn a_folder_in_place_of_the_config_file_is_a_read_error() {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::at(dir.path());
    std::fs::create_dir(home.config_file()).unwrap();
    let error = Config::load(&home).expect_err("a folder is no config");
    assert!(matches!(error, ConfigError::Read { .. }), "{error}");
}

#[test]
fn a_damaged_secrets_file_is_refused_and_kept() {
    for garbage in [
        &b"\x00\x01\x02binary"[..],
        b"\xff\xfe[\x00",
        b"postgres_password = \"caf\xe9\"",
        b"postgres_password = ",
        b"[[[",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.toml");
        std::fs::write(&path, garbage).unwrap();
        let error = Secrets::load_or_generate(&path).expect_err("garbage is refused");
        assert!(matches!(error, SecretsError::Damaged { .. }), "{error}");
        assert!(error.to_string().contains("move it away"), "{error}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            garbage,
            "a damaged file is not overwritten"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any bytes at all: a config or an error naming the file, never a panic.
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let (_dir, home) = home_with_config(&bytes);
        if let Err(error) = Config::load(&home) {
            prop_assert!(error.to_string().contains(&home.config_file().display().to_string()));
        }
    }

    /// Printable text that looks like TOML, mangled: a config or an error with a line number.
    #[test]
    fn mangled_toml_never_panics(text in r#"(\[[a-z_.]{0,10}\]?\n|[a-z_]{1,12} ?= ?("[ !#-~]{0,12}"?|[0-9.e+-]{1,8}|true|\[|\{[ -~]{0,10})\n){0,12}"#) {
        let (_dir, home) = home_with_config(text.as_bytes());
        if let Err(error) = Config::load(&home) {
            let message = error.to_string();
            prop_assert!(message.contains("line "), "{}", message);
        }
    }
}
