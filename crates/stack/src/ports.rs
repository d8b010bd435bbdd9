use std::net::{Ipv4Addr, TcpListener};

use crate::event::{Reporter, StackEvent};

/// Picks the port a service listens on: `wanted` when it is free, any free port when `wanted` is
/// 0, and a free port (reported as a [`StackEvent::PortChanged`]) when another program holds it.
/// `previous` is the port this service used before in this run: kept when still free, so a
/// restart does not move the service.
pub(crate) fn choose_port(
    reporter: &Reporter,
    purpose: &str,
    wanted: u16,
    previous: Option<u16>,
) -> std::io::Result<(u16, Option<String>)> {
    if let Some(port) = previous.filter(|port| is_free(*port)) {
        return Ok((port, None));
    }
    if wanted != 0 && is_free(wanted) {
        return Ok((wanted, None));
    }
    let chosen = free_port()?;
    if wanted == 0 {
        return Ok((chosen, None));
    }
    let holder = port_holder(wanted)
        .map(|program| format!(" by {program}"))
        .unwrap_or_default();
    let message = format!("{purpose} port {wanted} is taken{holder}; using {chosen} instead");
    tracing::warn!(service = reporter.service, "{message}");
    reporter.send(StackEvent::PortChanged {
        service: reporter.service.into(),
        purpose: purpose.into(),
        wanted,
        chosen,
    });
    Ok((chosen, Some(message)))
}

/// True when nothing listens on `port` on the loopback address.
pub(crate) fn is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
        && TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok()
}

pub(crate) fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// The program listening on `port` (`name (pid N)`), found through /proc; `None` when it cannot be
/// seen (another user's process without root, or not Linux).
pub(crate) fn port_holder(port: u16) -> Option<String> {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            let held = target
                .strip_prefix("socket:[")
                .and_then(|rest| rest.strip_suffix(']'))
                .is_some_and(|inode| inodes.iter().any(|i| i == inode));
            if held {
                let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                return Some(format!("{} (pid {pid})", name.trim()));
            }
        }
    }
    None
}

/// Socket inodes in LISTEN state (`0A`) on `port`, from /proc/net/tcp and tcp6.
fn listening_inodes(port: u16) -> Vec<String> {
    let port_hex = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local = fields.get(1)?;
                    let listening = fields.get(3)? == &"0A";
                    (listening && local.ends_with(&port_hex))
                        .then(|| fields.get(9).map(|s| s.to_string()))?
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_port_is_named_with_its_program() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(!is_free(port));
        let holder = port_holder(port).expect("our own process is visible");
        assert!(
            holder.contains(&format!("pid {}", std::process::id())),
            "{holder}"
        );
    }

    #[test]
    fn a_taken_port_is_replaced_and_reported() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let taken = listener.local_addr().unwrap().port();
        let (events, mut received) = tokio::sync::broadcast::channel(4);
        let reporter = Reporter {
            service: "postgres",
            events,
        };
        let (chosen, message) = choose_port(&reporter, "SQL", taken, None).unwrap();
        assert_ne!(chosen, taken);
        assert!(message.unwrap().contains(&format!("port {taken} is taken")));
        assert!(matches!(
            received.try_recv().unwrap(),
            StackEvent::PortChanged { wanted, chosen: c, .. } if wanted == taken && c == chosen
        ));
    }
}
