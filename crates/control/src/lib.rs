//! One Lookit Local instance: starts the stack, the API, the worker, the tunnel guardian and the
//! control panel, supervises them and stops them cleanly. The CLI (`lookit-local up`) and the
//! desktop shell both run an instance through this crate; neither knows how the parts are wired.
//!
//! Invariants:
//! - The panel listens on 127.0.0.1 only and every request needs the instance's token.
//! - The instance record (`instance.json`, 0600) exists exactly while the instance runs.
//! - Shutdown stops, in order: the worker and the API, then the managed services, then the panel.

mod apps;
mod commands;
mod control_plane;
mod doctor;
mod instance;
mod instance_record;
mod panel_client;
mod records;
mod render;
pub mod telemetry;
mod videos;
mod watch;

pub use apps::worker_settings;
pub use commands::{lookit_env, purge, status, wait_for_exit, ServiceAddresses};
pub use instance::{run_foreground, Instance, InstanceOptions};
pub use instance_record::{InstanceRecord, RecordGuard};
/// The panel API's answer to `GET /api/tunnel/check`, for commands that read it.
pub use lookit_panel::TunnelCheck;
pub use panel_client::PanelClient;
pub use render::{render_status, render_tunnel_check};

pub use doctor::render as render_doctor;
/// Every prerequisite, with what is wrong and the command that fixes it.
pub use lookit_stack::doctor;
pub use lookit_storage::StoreLocations;

/// Installs aws-lc-rs as the process's only rustls provider. Call once at start-up, before any
/// TLS is used; calling it again is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
