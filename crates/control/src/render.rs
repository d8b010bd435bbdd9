//! Plain-text views of the status for the terminal.

use std::fmt::Write;

use lookit_panel::{HopOutcome, TunnelCheck};
use lookit_status::{ServiceState, StatusReport, TunnelState};

/// `lookit-local status` without `--json`: one line per service and queue, then the URLs.
pub fn render_status(report: &StatusReport) -> String {
    let mut out = String::new();
    let headline = match (report.running, report.ready) {
        (true, true) => "Lookit Local is running and ready",
        (true, false) => "Lookit Local is running but not ready",
        (false, _) => "Lookit Local is not running",
    };
    let _ = writeln!(out, "{headline}");
    if !report.services.is_empty() {
        let _ = writeln!(out, "\nServices:");
        for s in &report.services {
            let state = match s.state {
                ServiceState::Stopped => "stopped",
                ServiceState::Starting => "starting",
                ServiceState::Ready => "ready",
                ServiceState::Failed => "FAILED",
                ServiceState::Stopping => "stopping",
            };
            let _ = write!(
                out,
                "  {:<10} {:<9} {:<9} {}",
                s.name,
                state,
                s.backend,
                s.address.as_deref().unwrap_or("-")
            );
            if let Some(usage) = usage_text(s.cpu_percent, s.memory_bytes) {
                let _ = write!(out, "  {usage}");
            }
            if let Some(message) = &s.message {
                let _ = write!(out, "  ({message})");
            }
            out.push('\n');
        }
    }
    if !report.queues.is_empty() {
        let _ = writeln!(out, "\nQueues:            ready  unacked  consumers");
        for q in &report.queues {
            let _ = writeln!(
                out,
                "  {:<15} {:>7}  {:>7}  {:>9}",
                q.name, q.ready, q.unacked, q.consumers
            );
        }
    }
    let _ = writeln!(out);
    if let Some(url) = &report.api.url {
        let _ = writeln!(out, "API:       {url}");
    }
    if let Some(url) = &report.panel.url {
        let _ = writeln!(out, "Dashboard: {url}");
    }
    let tunnel = match report.tunnel.state {
        TunnelState::Off => "off".to_string(),
        TunnelState::Starting => "starting".to_string(),
        TunnelState::Open => format!(
            "open at {}",
            report.tunnel.public_url.as_deref().unwrap_or("?")
        ),
        TunnelState::Reconnecting => "reconnecting".to_string(),
        TunnelState::Failed => format!(
            "failed: {}",
            report.tunnel.message.as_deref().unwrap_or("unknown error")
        ),
    };
    let _ = writeln!(out, "Tunnel:    {tunnel}");
    out
}

/// `CPU 1.5%, 48.0 MiB`: what a service uses, when it was measured.
fn usage_text(cpu_percent: Option<f32>, memory_bytes: Option<u64>) -> Option<String> {
    let cpu = cpu_percent.map(|cpu| format!("CPU {cpu:.1}%"));
    let memory = memory_bytes.map(|bytes| format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0)));
    match (cpu, memory) {
        (None, None) => None,
        (cpu, memory) => Some(
            [cpu, memory]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(", "),
        ),
    }
}

/// `lookit-local tunnel status`: the end-to-end check, one line per hop along the path.
pub fn render_tunnel_check(check: &TunnelCheck) -> String {
    let mut out = String::new();
    let headline = match &check.first_failure {
        None if check.ok => "End-to-end check passed".to_string(),
        None => "End-to-end check incomplete".to_string(),
        Some(failure) => format!("End-to-end check FAILED at {failure}"),
    };
    let _ = writeln!(out, "{headline}");
    for hop in &check.hops {
        let result = match hop.result {
            HopOutcome::Ok => "ok",
            HopOutcome::Failed => "FAILED",
            HopOutcome::NotChecked => "not checked",
        };
        let _ = write!(out, "  {:<16} {result}", hop.label);
        if let Some(detail) = &hop.detail {
            let _ = write!(out, ": {detail}");
        }
        let _ = writeln!(out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use lookit_status::{QueueDepth, ServiceStatus};

    #[test]
    fn failed_service_and_its_reason_are_visible() {
        let report = StatusReport {
            running: true,
            services: vec![ServiceStatus {
                name: "postgres".into(),
                state: ServiceState::Failed,
                backend: "native".into(),
                address: Some("127.0.0.1:5433".into()),
                started_at: None,
                restarts: 2,
                cpu_percent: Some(1.25),
                memory_bytes: Some(48 * 1024 * 1024),
                message: Some("exited with status 1".into()),
            }],
            queues: vec![QueueDepth {
                name: "builds".into(),
                ready: 3,
                unacked: 1,
                consumers: 1,
                publish_rate: None,
                deliver_rate: None,
            }],
            ..Default::default()
        };
        let text = render_status(&report);
        assert!(text.contains("running but not ready"), "{text}");
        assert!(
            text.contains("FAILED") && text.contains("exited with status 1"),
            "{text}"
        );
        assert!(
            text.contains("builds") && text.contains("      3"),
            "{text}"
        );
        assert!(text.contains("Tunnel:    off"), "{text}");
        assert!(text.contains("CPU 1.2%, 48.0 MiB"), "{text}");
    }

    #[test]
    fn the_tunnel_check_names_the_failing_hop_and_why() {
        let hop = |key: &str, result: HopOutcome, detail: Option<&str>| lookit_panel::TunnelHop {
            hop: key.into(),
            label: key.into(),
            result,
            detail: detail.map(Into::into),
        };
        let check = TunnelCheck {
            ok: false,
            first_failure: Some("broker: unreachable: refused".into()),
            hops: vec![
                hop("api", HopOutcome::Ok, None),
                hop("broker", HopOutcome::Failed, Some("unreachable: refused")),
            ],
        };
        let text = render_tunnel_check(&check);
        assert!(
            text.starts_with("End-to-end check FAILED at broker: unreachable: refused"),
            "{text}"
        );
        assert!(text.contains("  api              ok\n"), "{text}");
        assert!(
            text.contains("  broker           FAILED: unreachable: refused\n"),
            "{text}"
        );
    }
}
