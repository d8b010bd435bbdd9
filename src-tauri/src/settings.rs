//! The desktop shell's settings: the `[desktop]` section of the configuration, and the
//! `--minimized` flag the start-at-login entry passes.

use lookit_config::DesktopConfig;

/// How the window behaves.
#[derive(Debug, Clone, Copy)]
pub struct DesktopSettings {
    /// Closing the window hides it and keeps the stack running in the tray.
    pub close_to_tray: bool,
    /// Start with the window hidden.
    pub start_minimized: bool,
    /// `Some`: make start-at-login so at start; `None`: leave it as the tray menu set it.
    pub start_at_login: Option<bool>,
}

impl DesktopSettings {
    pub fn new(config: &DesktopConfig, args: impl IntoIterator<Item = String>) -> Self {
        Self {
            close_to_tray: config.close_to_tray,
            start_minimized: config.start_minimized || args.into_iter().any(|a| a == "--minimized"),
            start_at_login: config.start_at_login,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_entry_flag_starts_minimised_whatever_the_config_says() {
        let config = DesktopConfig::default();
        let plain = DesktopSettings::new(&config, ["lookit-local-desktop".to_string()]);
        assert!(plain.close_to_tray && !plain.start_minimized);
        let from_login = DesktopSettings::new(
            &config,
            ["lookit-local-desktop", "--minimized"].map(String::from),
        );
        assert!(from_login.start_minimized);
        let configured = DesktopSettings::new(
            &DesktopConfig {
                close_to_tray: false,
                start_minimized: true,
                start_at_login: Some(true),
                gpu: false,
            },
            Vec::new(),
        );
        assert!(!configured.close_to_tray && configured.start_minimized);
        assert_eq!(configured.start_at_login, Some(true));
    }
}
