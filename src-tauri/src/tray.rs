//! The tray icon: the stack's state at a glance and the quick actions (open, start/stop the
//! stack, share, start at login, quit).

use std::sync::Mutex;

use lookit_status::StatusReport;
use tauri::menu::{CheckMenuItem, Menu, MenuEvent, MenuItem, PredefinedMenuItem};
use tauri::tray::{MouseButton, MouseButtonState, TrayIconBuilder, TrayIconEvent};
use tauri::{AppHandle, Manager, Wry};

use crate::{autostart, quit, show_window, Desktop};

/// The menu line that shows the stack's state (Linux trays show no tooltip), and the text it
/// shows. Status snapshots arrive every few seconds (CPU and memory figures); the line is set only
/// when its text changes, because each set re-exports the whole tray menu over D-Bus.
struct StatusLine {
    item: MenuItem<Wry>,
    shown: Mutex<&'static str>,
}

pub fn install(app: &AppHandle) -> tauri::Result<()> {
    let status = MenuItem::with_id(app, "status", "Stack: starting…", false, None::<&str>)?;
    let menu = Menu::with_items(
        app,
        &[
            &status,
            &PredefinedMenuItem::separator(app)?,
            &MenuItem::with_id(app, "open", "Open dashboard", true, None::<&str>)?,
            &MenuItem::with_id(app, "browser", "Open in browser", true, None::<&str>)?,
            &MenuItem::with_id(app, "start", "Start stack", true, None::<&str>)?,
            &MenuItem::with_id(app, "stop", "Stop stack", true, None::<&str>)?,
            &MenuItem::with_id(app, "share", "Share (public tunnel)", true, None::<&str>)?,
            &PredefinedMenuItem::separator(app)?,
            &CheckMenuItem::with_id(
                app,
                "autostart",
                "Start at login",
                true,
                autostart::is_enabled(),
                None::<&str>,
            )?,
            &MenuItem::with_id(app, "quit", "Quit Lookit Local", true, None::<&str>)?,
        ],
    )?;
    app.manage(StatusLine {
        item: status,
        shown: Mutex::new(""),
    });
    TrayIconBuilder::with_id("main")
        .icon(tauri::include_image!("../icons/32x32.png"))
        .tooltip("Lookit Local")
        .menu(&menu)
        .show_menu_on_left_click(false)
        .on_menu_event(on_menu)
        .on_tray_icon_event(|tray, event| {
            if let TrayIconEvent::Click {
                button: MouseButton::Left,
                button_state: MouseButtonState::Up,
                ..
            } = event
            {
                show_window(tray.app_handle());
            }
        })
        .build(app)?;
    Ok(())
}

pub fn show_status(app: &AppHandle, report: &StatusReport) {
    let text = if report.ready {
        "Stack: ready"
    } else if report.running {
        "Stack: not ready"
    } else {
        "Stack: stopped"
    };
    if let Some(line) = app.try_state::<StatusLine>() {
        let mut shown = line.shown.lock().expect("not poisoned");
        if *shown != text && line.item.set_text(text).is_ok() {
            *shown = text;
        }
    }
}

fn on_menu(app: &AppHandle, event: MenuEvent) {
    match event.id().as_ref() {
        "open" => show_window(app),
        "browser" => {
            let dashboard = app.state::<Desktop>().dashboard.clone();
            if let Err(e) = std::process::Command::new("xdg-open")
                .arg(&dashboard)
                .spawn()
            {
                tracing::warn!("could not open a browser: {e}");
            }
        }
        "start" => panel_action(app, "/stack/start"),
        "stop" => panel_action(app, "/stack/stop"),
        "share" => {
            panel_action(app, "/tunnel/start");
            show_window(app);
            if let Some(window) = app.get_webview_window(crate::MAIN_WINDOW) {
                let _ = window.eval("location.hash = '#/tunnel'");
            }
        }
        "autostart" => {
            let enable = !autostart::is_enabled();
            if let Err(e) = autostart::set_enabled(enable) {
                tracing::warn!("could not change start at login: {e:#}");
            }
        }
        "quit" => quit(app),
        _ => {}
    }
}

/// Runs a panel call in the background; a refusal is logged (the window shows the state).
fn panel_action(app: &AppHandle, path: &'static str) {
    let app = app.clone();
    tauri::async_runtime::spawn(async move {
        if let Err(e) = app.state::<Desktop>().calls.post(path).await {
            tracing::warn!("{path} failed: {e:#}");
        }
    });
}
