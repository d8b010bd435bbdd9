use std::path::Path;

use crate::{Config, ConfigError, Home};

/// Environment variables named `LOOKIT_LOCAL__<SECTION>__<KEY>` override `<section>.<key>`
/// (double underscores separate levels, case is ignored). Values are read as TOML values
/// (`8443`, `true`, `"text"`); anything that is not valid TOML is taken as a plain string.
pub const ENV_PREFIX: &str = "LOOKIT_LOCAL__";

impl Config {
    /// The configuration of `home`: its file (if any) with this process's environment overrides.
    pub fn load(home: &Home) -> Result<Config, ConfigError> {
        let path = home.config_file();
        let text = match read_text_file(path) {
            Ok(text) => Some(text),
            Err(TextFileError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(TextFileError::Io(source)) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
            Err(TextFileError::NotText(reason)) => {
                return Err(ConfigError::NotText {
                    path: path.to_path_buf(),
                    reason,
                })
            }
        };
        Self::from_sources(path, text.as_deref(), std::env::vars())
    }

    /// The configuration made of a file's text (`None`: no file) and environment variables.
    pub fn from_sources(
        path: &Path,
        text: Option<&str>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = text.unwrap_or("");
        let config = parse_file(path, text)?;
        let overrides: Vec<EnvOverride> = env
            .into_iter()
            .filter_map(|(var, value)| EnvOverride::parse(var, value))
            .collect();
        if overrides.is_empty() {
            return Ok(config);
        }
        // The file is known to be valid, so its table is too; each override is checked alone on
        // top of it so that an error names exactly the variable at fault.
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| syntax_error(path, text, &e))?;
        for o in &overrides {
            let mut trial = table.clone();
            o.apply(&mut trial);
            deserialize_value(trial).map_err(|(key, message)| ConfigError::InvalidEnv {
                var: o.var.clone(),
                key: if key.is_empty() { o.key() } else { key },
                message,
            })?;
            o.apply(&mut table);
        }
        deserialize_value(table).map_err(|(key, message)| ConfigError::InvalidEnv {
            var: "LOOKIT_LOCAL__*".into(),
            key,
            message,
        })
    }

    /// The configuration as TOML, for `config show`. Generated secrets are never in a `Config`;
    /// passwords a user wrote into connection URLs are replaced by `REDACTED`.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        for url in [
            &mut shown.postgres.url,
            &mut shown.rabbitmq.url,
            &mut shown.rabbitmq.management_url,
            &mut shown.email.smtp_url,
        ]
        .into_iter()
        .flatten()
        {
            if url.password().is_some() {
                let _ = url.set_password(Some("REDACTED"));
            }
        }
        toml::to_string_pretty(&shown).expect("a valid Config always serializes")
    }
}

/// Config and secrets files are a few kilobytes; a larger file is not one (and is not read whole).
pub(crate) const MAX_TEXT_FILE_BYTES: u64 = 1024 * 1024;

/// Why a small text file of ours could not be read as text.
#[derive(Debug)]
pub(crate) enum TextFileError {
    Io(std::io::Error),
    /// Binary, UTF-16, another 8-bit encoding, or too large; the reason says which.
    NotText(String),
}

/// Reads a config-sized UTF-8 text file (a leading byte-order mark, as some editors write, is
/// dropped), naming what is wrong when it is not one.
pub(crate) fn read_text_file(path: &Path) -> Result<String, TextFileError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(TextFileError::Io)?;
    let mut bytes = Vec::new();
    file.take(MAX_TEXT_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(TextFileError::Io)?;
    if bytes.len() as u64 > MAX_TEXT_FILE_BYTES {
        return Err(TextFileError::NotText(format!(
            "it is larger than {} KiB, far more than any configuration",
            MAX_TEXT_FILE_BYTES / 1024
        )));
    }
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    if bytes.starts_with(b"\xFF\xFE") || bytes.starts_with(b"\xFE\xFF") {
        return Err(TextFileError::NotText(
            "it is UTF-16 text; save it as UTF-8".into(),
        ));
    }
    if bytes.contains(&0) {
        return Err(TextFileError::NotText(
            "it contains binary data (NUL bytes)".into(),
        ));
    }
    String::from_utf8(bytes.to_vec()).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = bytes[..at].iter().filter(|b| **b == b'\n').count() + 1;
        TextFileError::NotText(format!(
            "line {line} is not UTF-8 (another encoding such as Latin-1?); save it as UTF-8"
        ))
    })
}

fn parse_file(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let deserializer = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let line = inner.span().map(|s| line_of(text, s.start)).unwrap_or(1);
        if key.is_empty() || key == "." {
            ConfigError::Syntax {
                path: path.to_path_buf(),
                line,
                message: inner.message().to_string(),
            }
        } else {
            ConfigError::InvalidKey {
                path: path.to_path_buf(),
                line,
                key: unknown_key(inner.message(), &key),
                message: inner.message().to_string(),
            }
        }
    })
}

/// For an unknown key the path stops at its section; add the offending key's own name.
fn unknown_key(message: &str, path: &str) -> String {
    match message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
    {
        Some(field) if !path.ends_with(field) => format!("{path}.{field}"),
        _ => path.to_string(),
    }
}

fn syntax_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    ConfigError::Syntax {
        path: path.to_path_buf(),
        line: e.span().map(|s| line_of(text, s.start)).unwrap_or(1),
        message: e.message().to_string(),
    }
}

fn deserialize_value(table: toml::Table) -> Result<Config, (String, String)> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        let message = e.inner().message().to_string();
        (
            if key == "." {
                String::new()
            } else {
                unknown_key(&message, &key)
            },
            message,
        )
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

struct EnvOverride {
    var: String,
    path: Vec<String>,
    value: toml::Value,
}

impl EnvOverride {
    fn parse(var: String, raw: String) -> Option<Self> {
        let rest = var.strip_prefix(ENV_PREFIX)?;
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(raw));
        Some(Self { var, path, value })
    }

    fn key(&self) -> String {
        self.path.join(".")
    }

    fn apply(&self, table: &mut toml::Table) {
        let (last, sections) = self
            .path
            .split_last()
            .expect("split yields at least one part");
        let mut current = table;
        for section in sections {
            let entry = current
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            current = entry.as_table_mut().expect("made a table above");
        }
        current.insert(last.clone(), self.value.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Backend, Port};

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_sources(
            Path::new("/lab/config.toml"),
            Some(text),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn no_file_gives_the_documented_defaults() {
        let config = Config::from_sources(Path::new("/x"), None, Vec::new()).unwrap();
        assert_eq!(config.api.port, Port(8000));
        assert_eq!(config.postgres.database.as_str(), "lookit");
        assert_eq!(config.rabbitmq.user.as_str(), "lookit-admin");
        assert_eq!(config.stack.backend, Backend::Auto);
    }

    #[test]
    fn wrong_type_names_key_file_and_line() {
        let err = load("[api]\n\nport = \"eighty\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("expected a port number from 0 to 65535"),
            "{err}"
        );
        assert!(err.contains("/lab/config.toml"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("`api.port`"), "{err}");
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = load("[postgres]\nport = 5433\nprot = 1\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("`postgres.prot`"), "{err}");
        assert!(err.contains("expected one of"), "{err}");
    }

    #[test]
    fn unknown_section_is_an_error() {
        let err = load("[postgress]\nport = 1\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("postgress"), "{err}");
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn invalid_value_says_what_is_expected() {
        let err = load("[api]\nport = 70000\n", &[]).unwrap_err().to_string();
        assert!(
            err.contains("line 2") && err.contains("expected 0 to 65535"),
            "{err}"
        );
        let err = load("[stack]\nbackend = \"podman\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`stack.backend`") && err.contains("docker"),
            "{err}"
        );
    }

    #[test]
    fn syntax_error_gives_the_line() {
        let err = load("[api]\nport = = 1\n", &[]).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn environment_overrides_file() {
        let config = load(
            "[api]\nport = 9000\n",
            &[
                ("LOOKIT_LOCAL__API__PORT", "9443"),
                ("LOOKIT_LOCAL__STACK__BACKEND", "native"),
            ],
        )
        .unwrap();
        assert_eq!(config.api.port, Port(9443));
        assert_eq!(config.stack.backend, Backend::Native);
    }

    #[test]
    fn bad_environment_override_names_the_variable() {
        let err = load("", &[("LOOKIT_LOCAL__API__PORT", "not-a-port")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("LOOKIT_LOCAL__API__PORT"), "{err}");
        assert!(err.contains("api.port"), "{err}");
        let err = load("", &[("LOOKIT_LOCAL__API__PROT", "1")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("LOOKIT_LOCAL__API__PROT") && err.contains("api.prot"),
            "{err}"
        );
    }

    #[test]
    fn the_builder_base_image_defaults_to_node_14_and_can_point_at_a_local_image() {
        let config = load("", &[]).unwrap();
        assert_eq!(
            config.builds.builder_base_image.as_str(),
            "node:14-bullseye"
        );
        let config = load(
            "",
            &[(
                "LOOKIT_LOCAL__BUILDS__BUILDER_BASE_IMAGE",
                "lookit-test/node:latest",
            )],
        )
        .unwrap();
        assert_eq!(
            config.builds.builder_base_image.as_str(),
            "lookit-test/node:latest"
        );
        let err = load("[builds]\nbuilder_base_image = \"node 14\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`builds.builder_base_image`") && err.contains("not an image name"),
            "{err}"
        );
    }

    #[test]
    fn lookit_local_home_is_not_an_override() {
        assert!(load("", &[("LOOKIT_LOCAL_HOME", "/x")]).is_ok());
    }

    #[test]
    fn shown_config_hides_passwords_in_urls() {
        let config = load(
            "[stack]\nbackend = \"external\"\n[postgres]\nurl = \"postgres://lab:hunter2hunter2@db.lab:5432/lookit\"\n",
            &[],
        )
        .unwrap();
        let shown = config.to_toml();
        assert!(!shown.contains("hunter2hunter2"), "{shown}");
        assert!(
            shown.contains("postgres://lab:REDACTED@db.lab:5432/lookit"),
            "{shown}"
        );
    }

    #[test]
    fn shown_config_reloads_to_the_same_value() {
        let config = load("[postgres]\nport = 6543\n", &[]).unwrap();
        assert_eq!(load(&config.to_toml(), &[]).unwrap(), config);
    }
}
