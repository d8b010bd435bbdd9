//! Security checks of a whole run (issue 9): `up`, the demo seed, a build, a tunnel through a
//! bore server on loopback, then `down`. While the stack runs, every listening socket of the app
//! and the services it started is on loopback; after the run, none of the generated secrets is in
//! a log file under the data home or in anything the commands printed.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{build_the_demo_study, lookit, output, up_until_ready, TEST_BUILDER};

/// Process ids of `root` and all its descendants, plus any process whose command line names
/// `home` (servers that daemonize leave the tree but keep their data folder in their arguments).
fn processes_of(root: u32, home: &Path) -> BTreeSet<u32> {
    let home = home.display().to_string();
    let mut parents = HashMap::new();
    let mut of_home = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").unwrap().map_while(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // The command (2nd field) may hold spaces and parentheses: the ppid follows the last ')'.
        if let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) {
            if let Some(ppid) = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok())
            {
                parents.insert(pid, ppid);
            }
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(&home) {
                of_home.insert(pid);
            }
        }
    }
    let mut found: BTreeSet<u32> = of_home;
    found.insert(root);
    loop {
        let more: Vec<u32> = parents
            .iter()
            .filter(|(pid, ppid)| found.contains(ppid) && !found.contains(pid))
            .map(|(pid, _)| *pid)
            .collect();
        if more.is_empty() {
            return found;
        }
        found.extend(more);
    }
}

/// The socket inodes `pid` holds open.
fn socket_inodes(pid: u32) -> BTreeSet<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return BTreeSet::new();
    };
    fds.map_while(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// Listening TCP sockets of the machine: inode → (local address in /proc's hex form, port).
fn listening_sockets() -> HashMap<u64, (String, u16)> {
    let mut sockets = HashMap::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is field 1, st field 3 (0A = LISTEN), inode field 9.
            if fields.len() > 9 && fields[3] == "0A" {
                let (address, port) = fields[1].split_once(':').unwrap();
                sockets.insert(
                    fields[9].parse().unwrap(),
                    (address.to_string(), u16::from_str_radix(port, 16).unwrap()),
                );
            }
        }
    }
    sockets
}

/// Whether a /proc/net address (little-endian hex words) is a loopback one: 127.0.0.0/8, ::1,
/// or ::ffff:127.x.x.x.
fn is_loopback(hex: &str) -> bool {
    match hex.len() {
        8 => hex.ends_with("7F"),
        32 => {
            hex == "00000000000000000000000001000000"
                || (hex.starts_with("0000000000000000FFFF0000") && hex.ends_with("7F"))
        }
        _ => false,
    }
}

/// Files under `dir` that are logs: in a `log`/`logs` folder or named `*.log`.
fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut logs = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), false)];
    while let Some((folder, in_logs)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.map_while(Result::ok) {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_lowercase();
            if path.is_dir() {
                stack.push((path, in_logs || name == "log" || name == "logs"));
            } else if in_logs || name.ends_with(".log") {
                logs.push(path);
            }
        }
    }
    logs
}

#[test]
fn a_full_run_listens_on_loopback_only_and_never_logs_a_secret() {
    let home = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let bore_stop = tokio_util::sync::CancellationToken::new();
    let bore_address = runtime.block_on(async {
        let control = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = control.local_addr().unwrap();
        let server = lookit_tunnel::BoreServer::new([127, 0, 0, 1].into(), None);
        tokio::spawn(server.run(control, bore_stop.clone()));
        address.to_string()
    });
    let running = up_until_ready(home.path(), &TEST_BUILDER);
    let mut printed = String::new();

    let demo = build_the_demo_study(home.path());
    printed.push_str(&demo.seed_output);
    printed.push_str(&demo.build_log);
    printed.push_str(&demo.build_stderr);

    let (ok, out, stderr) = output(lookit(home.path()).args([
        "tunnel",
        "start",
        "--provider",
        "bore",
        "--server",
        &bore_address,
    ]));
    assert!(ok, "tunnel start: {out}\n{stderr}");
    printed.push_str(&out);
    printed.push_str(&stderr);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, json, stderr) = output(lookit(home.path()).args(["tunnel", "status", "--json"]));
        printed.push_str(&stderr);
        let status: serde_json::Value = serde_json::from_str(&json).unwrap();
        if status["tunnel"]["state"] == "open" {
            break;
        }
        assert!(Instant::now() < deadline, "the tunnel did not open: {json}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Every listening socket of the app and its services, with the tunnel open.
    let sockets = listening_sockets();
    let mut listening = Vec::new();
    for pid in processes_of(running.child.id(), home.path()) {
        for inode in socket_inodes(pid) {
            if let Some((address, port)) = sockets.get(&inode) {
                listening.push((pid, address.clone(), *port));
            }
        }
    }
    // The panel, the API, Postgres, RabbitMQ (AMQP and management) at least.
    assert!(
        listening.len() >= 5,
        "too few listening sockets found to judge: {listening:?}"
    );
    let exposed: Vec<_> = listening
        .iter()
        .filter(|(_, address, _)| !is_loopback(address))
        .collect();
    assert!(
        exposed.is_empty(),
        "listening beyond loopback (pid, address, port): {exposed:?}"
    );

    let (ok, out, stderr) = output(lookit(home.path()).args(["down"]));
    assert!(ok, "{stderr}");
    printed.push_str(&out);
    printed.push_str(&stderr);
    printed.push_str(&running.stdout.lock().unwrap());
    printed.push_str(&running.stderr.lock().unwrap());
    bore_stop.cancel();

    let secrets = lookit_config::Secrets::load_or_generate(
        &lookit_config::Home::at(home.path()).secrets_file(),
    )
    .unwrap();
    let logs = log_files(home.path());
    assert!(
        !logs.is_empty(),
        "the run wrote no log files under {}",
        home.path().display()
    );
    for secret in secrets.all_values() {
        assert!(
            !printed.contains(secret),
            "a generated secret was printed by a command"
        );
        for log in &logs {
            let text = String::from_utf8_lossy(&std::fs::read(log).unwrap()).into_owned();
            assert!(
                !text.contains(secret),
                "a generated secret is in {}",
                log.display()
            );
        }
    }
    drop(running);
}
