//! Desktop-only settings, from plain values so they do not depend on the shared config file.

/// How the window behaves.
#[derive(Debug, Clone, Copy)]
pub struct DesktopSettings {
    /// Closing the window hides it and keeps the stack running in the tray.
    pub close_to_tray: bool,
    /// Start with the window hidden (used when starting at login).
    pub start_minimized: bool,
}

impl DesktopSettings {
    /// `--minimized` on the command line; `LOOKIT_LOCAL_DESKTOP_CLOSE_TO_TRAY=false` turns
    /// close-to-tray off.
    pub fn from_env_and_args() -> Self {
        let close_to_tray = std::env::var("LOOKIT_LOCAL_DESKTOP_CLOSE_TO_TRAY")
            .map(|v| {
                !matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "0" | "false" | "no" | "off"
                )
            })
            .unwrap_or(true);
        let start_minimized = std::env::args().any(|a| a == "--minimized");
        Self {
            close_to_tray,
            start_minimized,
        }
    }
}
