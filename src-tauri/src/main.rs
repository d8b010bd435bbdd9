//! The Lookit Local desktop app: a window on the control panel, a tray icon with quick actions,
//! one instance only. Thin by design: the instance (`lookit-control`) does all the work and the
//! window shows the same panel a browser would.
//!
//! Invariants:
//! - A second launch only focuses the first (single-instance plugin, registered first).
//! - Quitting stops the services this app started, then exits; an instance that was already
//!   running for this home (`lookit-local up`) is shown, never stopped.

#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

mod autostart;
mod panel_calls;
mod settings;
mod tray;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use lookit_control::{Instance, InstanceOptions, InstanceRecord};
use lookit_panel::PanelEvent;
use tauri::{AppHandle, Manager, RunEvent, WebviewUrl, WebviewWindowBuilder, WindowEvent};
use tokio::sync::Notify;

use crate::panel_calls::PanelCalls;
use crate::settings::DesktopSettings;

const MAIN_WINDOW: &str = "main";

/// What the app keeps for its lifetime (Tauri managed state).
pub struct Desktop {
    /// The panel URL with the token in the fragment.
    dashboard: String,
    calls: PanelCalls,
    settings: DesktopSettings,
    /// Set once quitting began, so closing the window then really closes it.
    quitting: AtomicBool,
    /// Wakes the task that owns our instance to stop it; `None` when we only show another one.
    stop_owned: Option<Arc<Notify>>,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("Lookit Local could not start: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    lookit_control::install_crypto_provider();
    let options = InstanceOptions::from_env()?;
    if !options.config.desktop.gpu {
        paint_on_the_cpu();
    }
    let settings = DesktopSettings::new(&options.config.desktop, std::env::args());
    let _log = lookit_control::telemetry::init(
        &options.config.log,
        &options.home.logs_dir(),
        "lookit-local-desktop",
    )?;
    if let Some(enabled) = settings.start_at_login {
        // The configuration decides; a failure only costs the login entry, not the app.
        if let Err(e) = autostart::set_enabled(enabled) {
            tracing::warn!("could not set start at login to {enabled}: {e:#}");
        }
    }
    let app = tauri::Builder::default()
        // First, so a second launch hands over before doing anything else.
        .plugin(tauri_plugin_single_instance::init(|app, _args, _cwd| {
            show_window(app)
        }))
        .setup(move |app| {
            setup(app, options, settings)?;
            Ok(())
        })
        .on_window_event(|window, event| {
            if let WindowEvent::CloseRequested { api, .. } = event {
                let desktop = window.state::<Desktop>();
                if desktop.settings.close_to_tray && !desktop.quitting.load(Ordering::SeqCst) {
                    // Keeps the stack running; the tray brings the window back.
                    api.prevent_close();
                    let _ = window.hide();
                }
            }
        })
        .build(tauri::generate_context!())
        .context("start the desktop window")?;
    app.run(|app, event| {
        // The last window closed (close-to-tray off): stop cleanly instead of just exiting.
        if let RunEvent::ExitRequested {
            api, code: None, ..
        } = event
        {
            api.prevent_exit();
            quit(app);
        }
    });
    Ok(())
}

fn setup(
    app: &mut tauri::App,
    options: InstanceOptions,
    settings: DesktopSettings,
) -> anyhow::Result<()> {
    let handle = app.handle().clone();
    let running = InstanceRecord::read_live(&options.home.instance_file())?;
    let (dashboard, stop_owned) = match running {
        Some(record) => {
            tracing::info!(pid = record.pid, "showing the instance that already runs");
            (record.dashboard_url(), None)
        }
        None => {
            let instance = tauri::async_runtime::block_on(Instance::start(options))?;
            let dashboard = instance.panel_url();
            let stop = Arc::new(Notify::new());
            tauri::async_runtime::spawn(follow_status(handle.clone(), instance.subscribe()));
            tauri::async_runtime::spawn(own_instance(handle.clone(), instance, stop.clone()));
            (dashboard, Some(stop))
        }
    };
    let calls = PanelCalls::from_dashboard_url(&dashboard)?;
    let url: tauri::Url = dashboard.parse().context("read the dashboard URL")?;
    let window = WebviewWindowBuilder::new(app, MAIN_WINDOW, WebviewUrl::External(url))
        .title("Lookit Local")
        .inner_size(1200.0, 820.0)
        .min_inner_size(720.0, 480.0)
        .visible(!settings.start_minimized)
        .build()
        .context("open the dashboard window")?;
    window
        .with_webview(keep_webkit_small)
        .context("set up the dashboard window's web view")?;
    app.manage(Desktop {
        dashboard,
        calls,
        settings,
        quitting: AtomicBool::new(false),
        stop_owned,
    });
    tray::install(&handle).context("create the tray icon")?;
    Ok(())
}

/// Has WebKit paint the panel on the CPU and never set up the GPU (`desktop.gpu` off). The panel
/// is a few cards and a chart: composited GPU rendering shows nothing more there, while setting
/// it up loads Mesa, and with it LLVM, into the window process (about 25 MiB of the idle
/// memory in BENCHMARKS.md). A variable the user set wins. Runs before GTK and WebKit read
/// these, and while this process still has one thread (changing the environment is not safe
/// once others run).
fn paint_on_the_cpu() {
    for (name, value) in [
        // GTK: no GL context for the window.
        ("GDK_GL", "disable"),
        // WebKit: no DMA-BUF renderer, so the page is painted on the CPU (non-composited).
        ("WEBKIT_DISABLE_DMABUF_RENDERER", "1"),
        // Otherwise WebKit opens an EGL display only to ask which GPU to render with; it names
        // none here, and without the renderer above none is used.
        ("WEBKIT_WEB_RENDER_DEVICE_FILE", "/dev/null"),
    ] {
        if std::env::var_os(name).is_none() {
            std::env::set_var(name, value);
        }
    }
}

/// The window shows one local page that never navigates: WebKit's caches for browsing (earlier
/// pages, resources of other sites) have nothing to serve here. WebKit documents this model for
/// such apps; at idle on the Overview it measured no smaller than the default (BENCHMARKS.md),
/// its saving is in what browsing the pages would otherwise keep cached.
fn keep_webkit_small(webview: tauri::webview::PlatformWebview) {
    #[cfg(target_os = "linux")]
    {
        use webkit2gtk::{CacheModel, WebContextExt, WebViewExt};
        if let Some(context) = webview.inner().context() {
            context.set_cache_model(CacheModel::DocumentViewer);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = webview;
}

/// Holds the instance we started until someone asks it to stop (the tray's Quit, the UI,
/// `lookit-local down`), then stops it and ends the app.
async fn own_instance(app: AppHandle, instance: Instance, stop: Arc<Notify>) {
    tokio::select! {
        _ = instance.stop_requested() => {}
        _ = stop.notified() => {}
    }
    app.state::<Desktop>()
        .quitting
        .store(true, Ordering::SeqCst);
    if let Some(window) = app.get_webview_window(MAIN_WINDOW) {
        let _ = window.hide();
    }
    if let Err(e) = instance.shutdown().await {
        tracing::error!("stopping the services failed: {e:#}");
    }
    app.exit(0);
}

/// Keeps the tray's status line in step with the stack.
async fn follow_status(app: AppHandle, mut events: tokio::sync::broadcast::Receiver<PanelEvent>) {
    loop {
        match events.recv().await {
            Ok(PanelEvent::Status { report }) => tray::show_status(&app, &report),
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
        }
    }
}

pub fn show_window(app: &AppHandle) {
    if let Some(window) = app.get_webview_window(MAIN_WINDOW) {
        let _ = window.unminimize();
        let _ = window.show();
        let _ = window.set_focus();
    }
}

/// Stops what we started (if anything) and exits.
pub fn quit(app: &AppHandle) {
    let desktop = app.state::<Desktop>();
    if desktop.quitting.swap(true, Ordering::SeqCst) {
        return;
    }
    match &desktop.stop_owned {
        Some(stop) => stop.notify_one(),
        None => app.exit(0),
    }
}
